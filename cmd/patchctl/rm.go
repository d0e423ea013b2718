package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
)

func rmCommand() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "forget a release: drop its envelope and its pin (gc then frees chunks no other release uses)",
		ArgsUsage: "NAME|CID",
		Description: "On a data dir an agent is running on, the agent removes it, through its admin API.\n" +
			"At the origin, a release its index lists stays until it is withdrawn.",
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "NAME|CID"); err != nil {
				return err
			}
			g := globalsOf(c)
			ref := c.Args().First()
			var res adminapi.Removal
			s, cat, ac, err := g.openStoreOrAgent(c)
			switch {
			case err != nil:
				return err
			case ac != nil:
				res, err = ac.RemoveRelease(c.Context, ref)
			default:
				defer s.Close()
				ix, ierr := originIndexHere(g)
				if ierr != nil {
					return ierr
				}
				res, err = agent.RemoveRelease(c.Context, s, cat, ref, ix)
			}
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(res)
			}
			if res.Unreadable != "" {
				fmt.Fprintf(g.stdout, "removed %s, whose envelope was unreadable (%s); run patchctl gc to free its chunks\n", res.Name, res.Unreadable)
				return nil
			}
			fmt.Fprintf(g.stdout, "removed %s; run patchctl gc to free its chunks\n", res.Name)
			return nil
		},
	}
}
