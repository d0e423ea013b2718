package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

func keyCommand() *cli.Command {
	return &cli.Command{
		Name:  "key",
		Usage: "make signing keys and private network keys",
		Subcommands: []*cli.Command{
			{
				Name:      "network",
				Usage:     "make a private network key (swarm.key): only nodes holding it can join the swarm",
				ArgsUsage: " ",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "out", Usage: "write the key to `FILE` (mode 0600)", Required: true},
				},
				Action: func(c *cli.Context) error {
					if err := exactArgs(c, 0, "no arguments"); err != nil {
						return err
					}
					g := globalsOf(c)
					if err := writeNewFile(c.String("out"), p2p.GenerateNetworkKey(), 0o600); err != nil {
						return err
					}
					if g.json {
						return g.printJSON(map[string]string{"network_key": c.String("out")})
					}
					fmt.Fprintf(g.stdout, "network key: %s (give it to every node of the swarm, keep it secret)\n", c.String("out"))
					return nil
				},
			},
			{
				Name:      "generate",
				Usage:     "make an ed25519 signing key pair: NAME.key (private, mode 0600) and NAME.pub",
				ArgsUsage: " ",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "out", Usage: "NAME: write NAME.key and NAME.pub", Required: true},
				},
				Action: func(c *cli.Context) error {
					if err := exactArgs(c, 0, "no arguments"); err != nil {
						return err
					}
					return runKeyGenerate(globalsOf(c), c.String("out"))
				},
			},
		},
	}
}

func runKeyGenerate(g globals, out string) error {
	priv, err := manifest.GenerateKey()
	if err != nil {
		return err
	}
	privPEM, err := manifest.MarshalPrivateKey(priv)
	if err != nil {
		return err
	}
	pub := priv.Public().(ed25519.PublicKey)
	pubPEM, err := manifest.MarshalPublicKey(pub)
	if err != nil {
		return err
	}
	// O_EXCL: never overwrite a signing key someone may still need.
	if err := writeNewFile(out+".key", privPEM, 0o600); err != nil {
		return err
	}
	if err := writeNewFile(out+".pub", pubPEM, 0o644); err != nil {
		os.Remove(out + ".key")
		return err
	}
	id := manifest.KeyID(pub)
	if g.json {
		return g.printJSON(map[string]string{"key_id": id, "private_key": out + ".key", "public_key": out + ".pub"})
	}
	fmt.Fprintf(g.stdout, "key %s\nprivate key: %s (keep it secret)\npublic key:  %s\n", id, out+".key", out+".pub")
	return nil
}

func writeNewFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, os.ErrExist) {
		return usageError("%s exists; not overwriting it", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readPrivateKey reads a NAME.key file and refuses one that others can read.
func readPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := manifest.ParsePrivateKey(data)
	if err != nil {
		if _, perr := manifest.ParsePublicKey(data); perr == nil {
			return nil, usageError("%s is a public key; sign with the private key (NAME.key), or name a key to trust without signing with --pub", path)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: private key is readable by others (mode %o); run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	return key, nil
}

func readPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := manifest.ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}
