package main

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/manifest"
)

func trustCommand() *cli.Command {
	keyFlags := []cli.Flag{
		&cli.StringSliceFlag{Name: "key", Usage: "private key `FILE` that is in the root and signs it (repeatable)"},
		&cli.StringSliceFlag{Name: "pub", Usage: "public key `FILE` to trust without signing now (repeatable)"},
		&cli.IntFlag{Name: "threshold", Usage: "signatures a manifest needs", DefaultText: "1, or the old root's"},
		&cli.DurationFlag{Name: "lifetime", Value: 2 * 365 * 24 * time.Hour, Usage: "how long the root stays valid"},
		&cli.StringFlag{Name: "out", Usage: "write the signed root to `FILE`", Required: true},
	}
	return &cli.Command{
		Name:  "trust",
		Usage: "make, rotate and show trust roots (the publisher keys nodes accept)",
		Subcommands: []*cli.Command{
			{
				Name:      "init",
				Usage:     "make a first trust root, self-signed by its keys",
				ArgsUsage: " ",
				Flags:     keyFlags,
				Action: func(c *cli.Context) error {
					if err := exactArgs(c, 0, "no arguments"); err != nil {
						return err
					}
					return runTrustInit(globalsOf(c), c.StringSlice("key"), c.StringSlice("pub"), c.Int("threshold"), c.Duration("lifetime"), c.String("out"))
				},
			},
			{
				Name:      "rotate",
				Usage:     "make the next trust root: signed by the old root's threshold and its own",
				ArgsUsage: " ",
				Flags: append(slices.Clone(keyFlags),
					&cli.StringFlag{Name: "trust", Usage: "the current root `FILE`", Required: true},
					&cli.StringSliceFlag{Name: "remove", Usage: "key `ID` to drop (repeatable)"},
					&cli.StringSliceFlag{Name: "sign", Usage: "private key `FILE` that signs but is not in the new root (an old key; repeatable)"},
				),
				Action: func(c *cli.Context) error {
					if err := exactArgs(c, 0, "no arguments"); err != nil {
						return err
					}
					return runTrustRotate(globalsOf(c), c)
				},
			},
			{
				Name:      "push",
				Usage:     "hand the origin a rotated trust root: it travels down the tree, every agent taking it only along the chain of roots",
				ArgsUsage: "ROOT-FILE",
				Flags:     adminFlags("origin", "the origin's"),
				Action: func(c *cli.Context) error {
					if err := exactArgs(c, 1, "ROOT-FILE"); err != nil {
						return err
					}
					return runTrustPush(c, globalsOf(c), c.Args().First())
				},
			},
			{
				Name:      "show",
				Usage:     "print a trust root after checking its signatures",
				ArgsUsage: "TRUST-FILE",
				Action: func(c *cli.Context) error {
					if err := exactArgs(c, 1, "TRUST-FILE"); err != nil {
						return err
					}
					data, err := os.ReadFile(c.Args().First())
					if err != nil {
						return err
					}
					root, err := loadTrust(c.Args().First())
					if err != nil {
						return err
					}
					signers, err := root.Signers(data)
					if err != nil {
						return err
					}
					g := globalsOf(c)
					if err := printRoot(g, root, ""); err != nil || g.json {
						return err
					}
					fmt.Fprintf(g.stdout, "signed by %s\n", strings.Join(signers.Trusted, ", "))
					writeSigners(g.stdout, signers)
					return nil
				},
			},
		},
	}
}

// loadTrust reads and checks an operator-installed trust root.
func loadTrust(path string) (*manifest.Root, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	root, err := manifest.ParseTrustedRoot(data, time.Now())
	if err != nil {
		return nil, fmt.Errorf("trust root %s: %w", path, err)
	}
	return root, nil
}

func readKeys(privFiles, pubFiles []string) (signers []ed25519.PrivateKey, pubs []ed25519.PublicKey, err error) {
	for _, f := range privFiles {
		k, err := readPrivateKey(f)
		if err != nil {
			return nil, nil, err
		}
		signers = append(signers, k)
		pubs = append(pubs, k.Public().(ed25519.PublicKey))
	}
	for _, f := range pubFiles {
		k, err := readPublicKey(f)
		if err != nil {
			return nil, nil, err
		}
		pubs = append(pubs, k)
	}
	return signers, pubs, nil
}

func runTrustInit(g globals, privFiles, pubFiles []string, threshold int, lifetime time.Duration, out string) error {
	if len(privFiles) == 0 {
		return usageError("trust init: at least one --key is needed to sign the root")
	}
	signers, pubs, err := readKeys(privFiles, pubFiles)
	if err != nil {
		return err
	}
	if threshold == 0 {
		threshold = 1
	}
	root, err := manifest.NewRoot(pubs, threshold, 1, time.Now().Add(lifetime))
	if err != nil {
		return err
	}
	data, err := manifest.SignRoot(root, signers...)
	if err != nil {
		return err
	}
	// A root of several key holders is signed one after another: written
	// with fewer signatures than it needs, it says who else must sign.
	signed, err := root.Signers(data)
	if err != nil {
		return err
	}
	if err := writeNewFile(out, data, 0o644); err != nil {
		return err
	}
	if err := printRoot(g, root, out); err != nil || g.json {
		return err
	}
	fmt.Fprintf(g.stdout, "signed by %s\n", strings.Join(signed.Trusted, ", "))
	writeSigners(g.stdout, signed)
	if !signed.Enough() {
		fmt.Fprintf(g.stdout, "agents refuse %s until it has %d signatures\n", out, root.Threshold)
	}
	return nil
}

func runTrustRotate(g globals, c *cli.Context) error {
	// An expired root can still hand over to its successor: that is how a
	// fleet recovers from a root left to expire.
	data, err := os.ReadFile(c.String("trust"))
	if err != nil {
		return err
	}
	old, err := manifest.LoadRoot(data)
	if err != nil {
		return fmt.Errorf("trust root %s: %w", c.String("trust"), err)
	}
	signers, added, err := readKeys(c.StringSlice("key"), c.StringSlice("pub"))
	if err != nil {
		return err
	}
	oldSigners, _, err := readKeys(c.StringSlice("sign"), nil)
	if err != nil {
		return err
	}
	remove := c.StringSlice("remove")
	for _, id := range remove {
		if !slices.ContainsFunc(old.Keys, func(k manifest.RootKey) bool { return k.ID == id }) {
			return usageError("trust rotate: --remove %s: no key of root version %d has that ID (its keys: %s)", id, old.Version, strings.Join(old.KeyIDs(), ", "))
		}
	}
	var pubs []ed25519.PublicKey
	for _, k := range old.Keys {
		if !slices.Contains(remove, k.ID) {
			pubs = append(pubs, k.PublicKey)
		}
	}
	for _, k := range added {
		if !slices.ContainsFunc(pubs, func(p ed25519.PublicKey) bool { return p.Equal(k) }) {
			pubs = append(pubs, k)
		}
	}
	threshold := c.Int("threshold")
	if threshold == 0 {
		threshold = min(old.Threshold, len(pubs))
	}
	next, err := manifest.NewRoot(pubs, threshold, old.Version+1, time.Now().Add(c.Duration("lifetime")))
	if err != nil {
		return err
	}
	data, err = manifest.SignRoot(next, append(signers, oldSigners...)...)
	if err != nil {
		return err
	}
	if _, err := old.Rotate(data, time.Now()); err != nil {
		return fmt.Errorf("trust rotate: nodes holding version %d would refuse the new root: %w", old.Version, err)
	}
	if err := writeNewFile(c.String("out"), data, 0o644); err != nil {
		return err
	}
	return printRoot(g, next, c.String("out"))
}

func runTrustPush(c *cli.Context, g globals, file string) error {
	env, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if _, err := manifest.LoadRoot(env); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return err
	}
	v, err := ac.PostRoot(c.Context, env)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(map[string]any{"version": v})
	}
	fmt.Fprintf(g.stdout, "the origin follows trust root version %d; the agents below take it at once or at their next poll\n", v)
	return nil
}

func printRoot(g globals, r *manifest.Root, path string) error {
	ids := make([]string, len(r.Keys))
	for i, k := range r.Keys {
		ids[i] = k.ID
	}
	if g.json {
		return g.printJSON(map[string]any{"file": path, "version": r.Version, "threshold": r.Threshold, "expires": r.Expires, "keys": ids})
	}
	if path != "" {
		fmt.Fprintf(g.stdout, "wrote %s\n", path)
	}
	fmt.Fprintf(g.stdout, "trust root version %d, %d of %d keys, expires %s\n", r.Version, r.Threshold, len(r.Keys), r.Expires.UTC().Format(time.RFC3339))
	for _, id := range ids {
		fmt.Fprintf(g.stdout, "  key %s\n", id)
	}
	return nil
}
