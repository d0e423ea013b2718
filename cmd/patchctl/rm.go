package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/agent"
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
			ref := c.Args().First()
			if err := refuseListed(g, cat, ref); err != nil {
				return err
			}
			r, err := cat.Get(ref)
			if err != nil && !errors.Is(err, agent.ErrReleaseNotFound) && cat.Has(ref) {
				// An entry that does not read is removed by its name.
				if err := s.Unpin(c.Context, ref); err != nil {
					return err
				}
				if err := cat.Remove(ref); err != nil {
					return err
				}
				if g.json {
					return g.printJSON(map[string]string{"removed": ref})
				}
				fmt.Fprintf(g.stdout, "removed %s, whose envelope was unreadable (%v); run patchctl gc to free its chunks\n", ref, err)
				return nil
			}
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
