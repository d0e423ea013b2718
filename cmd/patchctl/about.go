package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

func aboutCommand() *cli.Command {
	return &cli.Command{
		Name:      "about",
		Usage:     "list the releases a node has installed, those retired, and those on their way or stopped (failed, blocked, available) with why",
		ArgsUsage: " ",
		Flags:     adminFlags("admin", "the node's"),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			return runAbout(c, globalsOf(c))
		},
	}
}

func runAbout(c *cli.Context, g globals) error {
	ac, err := adminClient(c, g, "admin")
	if err != nil {
		return err
	}
	ab, err := ac.About(c.Context)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(ab)
	}
	tw := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RELEASE\tSTATE\tINSTALLED\tNOTE")
	for _, e := range ab.Installed {
		note := ""
		if e.RestartRequired {
			note = "takes effect when the machine restarts"
		}
		fmt.Fprintf(tw, "%s\tinstalled\t%s\t%s\n", e.Name, e.InstalledAt.Local().Format(time.DateTime), note)
	}
	for _, e := range ab.Retired {
		fmt.Fprintf(tw, "%s\tretired\t%s\tretired by %s on %s\n", e.Name, e.InstalledAt.Local().Format(time.DateTime), e.RetiredBy, e.RetiredAt.Local().Format(time.DateTime))
	}
	for _, e := range ab.Others {
		fmt.Fprintf(tw, "%s\t%s\t-\t%s\n", e.Name, e.State, e.Reason)
	}
	return tw.Flush()
}
