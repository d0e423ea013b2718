package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func rmCommand() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "forget a release: drop its envelope and its pin (gc then frees chunks no other release uses)",
		ArgsUsage: "NAME|CID",
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "NAME|CID"); err != nil {
				return err
			}
			g := globalsOf(c)
			s, cat, err := g.openStore()
			if err != nil {
				return err
			}
			r, err := cat.Get(c.Args().First())
			if err != nil {
				return err
			}
			// Unpin first: a crash between the two leaves a listed release
			// whose chunks gc may take, which verify reports, rather than
			// pinned chunks nothing lists.
			if err := s.Unpin(c.Context, r.Name); err != nil {
				return err
			}
			if err := cat.Remove(r.Name); err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]string{"removed": r.Name, "cid": r.CID.String()})
			}
			fmt.Fprintf(g.stdout, "removed %s; run patchctl gc to free its chunks\n", r.Name)
			return nil
		},
	}
}
