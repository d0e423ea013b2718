package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/manifest"
)

func signCommand() *cli.Command {
	return &cli.Command{
		Name: "sign",
		Usage: "add signatures to a signed envelope (a release, an index or a trust root), as a second key holder does on their own machine; " +
			"a release of the data dir is named by its name, anything else by its file",
		ArgsUsage: "ENVELOPE-FILE|RELEASE",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "key", Usage: "signing key `FILE` (NAME.key; repeatable)", Required: true},
			&cli.StringFlag{Name: "trust", Usage: "say what the trust root in `FILE` still needs"},
			&cli.StringFlag{Name: "out", Usage: "write the signed envelope to `FILE` instead of in place"},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "ENVELOPE-FILE|RELEASE"); err != nil {
				return err
			}
			return runSign(c, globalsOf(c), c.Args().First())
		},
	}
}

func runSign(c *cli.Context, g globals, ref string) error {
	keys, _, err := readKeys(c.StringSlice("key"), nil)
	if err != nil {
		return err
	}
	env, save, err := loadSignable(g, ref, c.String("out"))
	if err != nil {
		return err
	}
	signed, err := manifest.AddSignatures(env, keys...)
	if err != nil {
		return err
	}
	if err := save(signed); err != nil {
		return err
	}
	return printSigners(c, g, signed)
}

// loadSignable returns the envelope ref names, a file or a release of the
// data dir's catalog, and how to save it signed: in place, or to out.
func loadSignable(g globals, ref, out string) ([]byte, func([]byte) error, error) {
	if data, err := os.ReadFile(ref); err == nil {
		dst := ref
		if out != "" {
			dst = out
		}
		return data, func(b []byte) error { return replaceFile(dst, b) }, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	cat, err := g.openCatalog()
	if err != nil {
		return nil, nil, err
	}
	r, err := cat.Get(ref)
	if err != nil {
		return nil, nil, fmt.Errorf("%s is neither a file nor a release of %s: %w", ref, g.dataDir, err)
	}
	if out != "" {
		return r.Envelope, func(b []byte) error { return replaceFile(out, b) }, nil
	}
	return r.Envelope, func(b []byte) error { return cat.Save(r.Name, b) }, nil
}

// printSigners says what an envelope is and who signed it, and with
// --trust what its root still needs.
func printSigners(c *cli.Context, g globals, env []byte) error {
	e, err := manifest.ParseEnvelope(env)
	if err != nil {
		return err
	}
	what := describeEnvelope(e)
	var signers *manifest.Signers
	if f := c.String("trust"); f != "" {
		root, err := loadTrust(f)
		if err != nil {
			return err
		}
		s, err := root.Signers(env)
		if err != nil {
			return err
		}
		signers = &s
	}
	if g.json {
		v := map[string]any{"envelope": what, "key_ids": e.KeyIDs()}
		if signers != nil {
			v["signers"] = signers
			v["enough"] = signers.Enough()
		}
		return g.printJSON(v)
	}
	fmt.Fprintf(g.stdout, "%s: signed by %s\n", what, strings.Join(e.KeyIDs(), ", "))
	if signers != nil {
		writeSigners(g.stdout, *signers)
	}
	return nil
}

// writeSigners says whether the trusted signatures reach the threshold, and
// who may add theirs.
func writeSigners(w io.Writer, s manifest.Signers) {
	if s.Enough() {
		fmt.Fprintf(w, "  %d trusted signatures of the %d the trust root requires: enough\n", len(s.Trusted), s.Threshold)
		return
	}
	fmt.Fprintf(w, "  %d trusted signatures of the %d the trust root requires; %s may add theirs with patchctl sign\n",
		len(s.Trusted), s.Threshold, strings.Join(s.Unsigned, " or "))
}

// describeEnvelope names what an envelope holds, from its readable fields.
func describeEnvelope(e *manifest.Envelope) string {
	switch e.Type {
	case manifest.TypeManifest:
		return fmt.Sprintf("release %s sequence %d", e.Name, e.Sequence)
	case manifest.TypeIndex:
		return fmt.Sprintf("index of channel %s version %d", e.Channel, e.Version)
	case manifest.TypeRoot:
		return fmt.Sprintf("trust root version %d", e.Version)
	}
	return e.Type
}

// replaceFile writes data to path through a temporary file and a rename,
// keeping the mode of the file it replaces.
func replaceFile(path string, data []byte) error {
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// errNotEnoughKeys says how a threshold of several key holders signs an
// index: with --out, one after another, then index push.
func errNotEnoughKeys(have, need int) error {
	return fmt.Errorf("the trust root requires %d signatures and %d keys were given: write the index with --out FILE, "+
		"have another key holder run patchctl sign --key KEY FILE, then hand it to the origin with patchctl index push FILE: %w",
		need, have, adminapi.ErrUsage)
}
