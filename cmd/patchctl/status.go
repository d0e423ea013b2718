package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/lifecycle"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "per release and site: nodes targeted, replicated X/Y, installed X/Y, and each failure with its node and reason",
		ArgsUsage: "[RELEASE]",
		Flags:     adminFlags("origin", "the origin's (or a proxy's)"),
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usageError("status: at most one RELEASE")
			}
			return runStatus(c, globalsOf(c), c.Args().First())
		},
	}
}

func runStatus(c *cli.Context, g globals, release string) error {
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return err
	}
	st, err := ac.Status(c.Context, release)
	if err != nil {
		return err
	}
	if g.json {
		if release != "" && len(st.Releases) == 1 {
			return g.printJSON(st.Releases[0])
		}
		return g.printJSON(st)
	}
	printFleet(g.stdout, st)
	for _, w := range st.Warnings {
		fmt.Fprintf(g.stderr, "patchctl: warning: %s\n", w)
	}
	return nil
}

// printFleet prints the fleet view as a table per release.
func printFleet(out io.Writer, st adminapi.FleetStatus) {
	if len(st.Releases) == 0 {
		fmt.Fprintln(out, "no releases in the index")
	}
	for i, r := range st.Releases {
		if i > 0 {
			fmt.Fprintln(out)
		}
		switch {
		case r.Withdrawn && r.Uninstall:
			fmt.Fprintf(out, "%s (withdrawn; uninstalled where it was installed)\n", r.Name)
		case r.Withdrawn:
			fmt.Fprintf(out, "%s (withdrawn)\n", r.Name)
		default:
			fmt.Fprintln(out, r.Name)
		}
		if len(r.Sites) == 0 {
			fmt.Fprintln(out, "  not deployed")
			continue
		}
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  SITE\tNODES\tREPLICATED\tINSTALLED\tFAILED\tOFFLINE\tOTHER")
		for _, s := range r.Sites {
			var other []string
			for state, n := range s.States {
				switch state {
				case lifecycle.Installed, lifecycle.Failed, lifecycle.Refused:
				default:
					other = append(other, fmt.Sprintf("%d %s", n, state))
				}
			}
			sort.Strings(other)
			fmt.Fprintf(tw, "  %s\t%d\t%d/%d\t%d/%d\t%d\t%d\t%s\n", s.Site, s.Nodes, s.Replicated, s.Nodes, s.Installed, s.Nodes, len(s.Failed), len(s.Offline), strings.Join(other, ", "))
		}
		tw.Flush()
		for _, s := range r.Sites {
			for _, f := range s.Failed {
				fmt.Fprintf(out, "  %s %s %s: %s\n", s.Site, f.Node, f.State, f.Reason)
			}
			for _, b := range s.Blocked {
				fmt.Fprintf(out, "  %s %s blocked: %s\n", s.Site, b.Node, b.Reason)
			}
			for _, d := range s.Downloading {
				fmt.Fprintf(out, "  %s %s downloading: %.1f%% (%s of %s)\n", s.Site, d.Node, d.Percent, humanBytes(d.Bytes), humanBytes(d.Total))
			}
			for _, o := range s.Offline {
				fmt.Fprintf(out, "  %s %s offline: last seen %s\n", s.Site, o.Node, o.LastSeen.Local().Format(time.DateTime))
			}
		}
	}
	for _, u := range st.Unenrolled {
		fmt.Fprintf(out, "\nstatus refused from %s for %s (last %s): not enrolled; if it is the sites' proxy, run patchctl enrol --site SITE %s\n",
			u.Peer, strings.Join(u.Sites, ", "), u.Seen.Local().Format(time.DateTime), u.Peer)
	}
}
