package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/lifecycle"
)

func installCommand() *cli.Command {
	return &cli.Command{
		Name:      "install",
		Usage:     "on a node: install a release deployed as available, or run a failed install again",
		ArgsUsage: "RELEASE",
		Flags:     adminFlags("admin", "the node's"),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "RELEASE"); err != nil {
				return err
			}
			return runInstall(c, globalsOf(c), c.Args().First())
		},
	}
}

func runInstall(c *cli.Context, g globals, name string) error {
	ac, err := adminClient(c, g, "admin")
	if err != nil {
		return err
	}
	res, err := ac.Install(c.Context, name)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(res)
	}
	if lifecycle.InEffect(res.State) {
		fmt.Fprintf(g.stdout, "%s is installed already (%s)\n", name, res.State)
		return nil
	}
	fmt.Fprintf(g.stdout, "install of %s requested (now %s); `patchctl about` shows it once installed\n", name, res.State)
	return nil
}
