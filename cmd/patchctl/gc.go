package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:      "gc",
		Usage:     "delete chunks no release pins",
		ArgsUsage: " ",
		Description: "On a data dir an agent is running on, the agent collects, through its admin API.\n" +
			"At the origin, every release its index lists is kept whole.",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "grace", Value: store.DefaultGCGrace, Usage: "keep unpinned chunks written more recently than this (a publish or fetch may be about to pin them)"},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			if c.Duration("grace") < 0 {
				return usageError("--grace must not be negative, not %s", c.Duration("grace"))
			}
			g := globalsOf(c)
			var rep adminapi.GCReport
			s, cat, ac, err := g.openStoreOrAgent(c)
			switch {
			case err != nil:
				return err
			case ac != nil:
				rep, err = ac.CollectGarbage(c.Context, c.Duration("grace"))
			default:
				defer s.Close()
				ix, ierr := originIndexHere(g)
				if ierr != nil {
					return ierr
				}
				rep, err = agent.CollectGarbage(c.Context, s, cat, ix, c.Duration("grace"))
			}
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(rep)
			}
			for _, name := range rep.Repinned {
				fmt.Fprintf(g.stdout, "pinned %s again: the origin's index lists it\n", name)
			}
			for _, name := range rep.Released {
				fmt.Fprintf(g.stdout, "let go of %s: the node is done with it\n", name)
			}
			if rep.TreesRemoved > 0 || rep.LeftoversRemoved > 0 {
				fmt.Fprintf(g.stdout, "removed %d installed file trees and %d leftovers of killed agents\n", rep.TreesRemoved, rep.LeftoversRemoved)
			}
			fmt.Fprintf(g.stdout, "removed %d chunks (%s); kept %d pinned and %d unpinned within the grace period", rep.RemovedChunks, humanBytes(rep.RemovedBytes), rep.PinnedChunks, rep.FreshChunks)
			if rep.SpaceReclaimed > 0 {
				fmt.Fprintf(g.stdout, "; %s of disk reclaimed", humanBytes(rep.SpaceReclaimed))
			}
			fmt.Fprintln(g.stdout)
			return nil
		},
	}
}

// originIndexHere returns the index of the data dir's agent if that agent is the
// origin (nil otherwise), whose listed releases must stay whole: nodes may
// fetch any of them.
func originIndexHere(g globals) (*manifest.Index, error) {
	info := readAgentInfo(g.dataDir)
	if info == nil || info.Role != string(agent.RoleOrigin) {
		return nil, nil
	}
	return readIndex(g)
}
