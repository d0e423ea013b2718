package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/store"
)

func extractCommand() *cli.Command {
	return &cli.Command{
		Name:      "extract",
		Usage:     "assemble a release's files into a new directory, checking every chunk and file digest",
		ArgsUsage: "NAME|CID DIR",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "trust", Usage: "also check the release's signatures against this trust root `FILE` first"},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 2, "NAME|CID DIR"); err != nil {
				return err
			}
			return runExtract(c, globalsOf(c), c.String("trust"), c.Args().Get(0), c.Args().Get(1))
		},
	}
}

func runExtract(c *cli.Context, g globals, trustFile, ref, dir string) error {
	s, cat, err := g.openStoreForReading()
	if err != nil {
		return err
	}
	defer s.Close()
	r, err := cat.Get(ref)
	if err != nil {
		return err
	}
	m := r.Manifest
	if trustFile != "" {
		root, err := loadTrust(trustFile)
		if err != nil {
			return err
		}
		if m, _, err = verifyEnvelope(cat, root, r.Envelope); err != nil {
			return err
		}
	}
	bar := newProgress(g, m.TotalSize(), "extract", true)
	err = store.Extract(c.Context, s, m, dir, store.ExtractOptions{Progress: func(n int64) { progressSet(bar, n) }})
	if errors.Is(err, store.ErrNotFound) {
		// The release is held, so a chunk it needs is missing: bad data,
		// which a fetch of the release brings again.
		return fmt.Errorf("%w: missing from the store (patchctl fsck lists what else is; fetching the release again brings it): %w", err, adminapi.ErrBadData)
	}
	if err != nil {
		return err
	}
	progressDone(bar)
	if g.json {
		return g.printJSON(map[string]any{"name": m.Name, "cid": r.CID.String(), "dir": dir, "files": len(m.Files), "bytes": m.TotalSize()})
	}
	fmt.Fprintf(g.stdout, "extracted %s: %d files, %s into %s\n", m.Name, len(m.Files), humanBytes(m.TotalSize()), dir)
	return nil
}
