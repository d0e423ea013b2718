package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/store"
)

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:      "gc",
		Usage:     "delete chunks no release pins",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "grace", Value: store.DefaultGCGrace, Usage: "keep unpinned chunks written more recently than this (a publish or fetch may be about to pin them)"},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			g := globalsOf(c)
			s, _, err := g.openStore()
			if err != nil {
				return err
			}
			res, err := store.GC(c.Context, s, store.GCOptions{Grace: c.Duration("grace")})
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]any{"removed_chunks": res.Deleted, "removed_bytes": res.BytesFreed, "pinned_chunks": res.Pinned, "fresh_chunks": res.Fresh, "temps_removed": res.TempsRemoved})
			}
			fmt.Fprintf(g.stdout, "removed %d chunks (%s); kept %d pinned and %d unpinned within the grace period\n", res.Deleted, humanBytes(res.BytesFreed), res.Pinned, res.Fresh)
			return nil
		},
	}
}
