package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
)

func retryCommand() *cli.Command {
	return &cli.Command{
		Name:      "retry",
		Usage:     "re-run the failed installs of a release, on every node or one",
		ArgsUsage: "RELEASE",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "node", Usage: "only this node's failed install (`PEER-ID`)"},
		}, adminFlags("origin", "the origin's")...),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "RELEASE"); err != nil {
				return err
			}
			return runRetry(c, globalsOf(c), adminapi.RetryRequest{Release: c.Args().First(), Node: c.String("node")})
		},
	}
}

func runRetry(c *cli.Context, g globals, req adminapi.RetryRequest) error {
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return err
	}
	res, err := ac.Retry(c.Context, req)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(res)
	}
	who := "every node where it failed"
	if req.Node != "" {
		who = req.Node
	}
	fmt.Fprintf(g.stdout, "retry %d of %s ordered for %s (%d failed as last reported); it reaches the nodes at their next report\n", res.Generation, res.Release, who, res.Failed)
	return nil
}
