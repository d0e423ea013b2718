package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/store"
)

func fsckCommand() *cli.Command {
	return &cli.Command{
		Name:      "fsck",
		Usage:     "verify every stored chunk and find pinned chunks that are missing; exit 1 if any",
		ArgsUsage: " ",
		Description: "A corrupt chunk is quarantined: removed from the store, so that it is fetched again.\n" +
			"On a data dir an agent is running on, the agent checks, through its admin API, and\n" +
			"fetches every quarantined chunk again from its peers; with --repair, every missing one too.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "repair", Usage: "have the agent running on the data dir fetch the missing chunks from its peers"},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			return runFsck(c, globalsOf(c))
		},
	}
}

func runFsck(c *cli.Context, g globals) error {
	s, _, ac, err := g.openStoreOrAgent(c)
	if err != nil {
		return err
	}
	var rep adminapi.FsckReport
	if ac != nil {
		if rep, err = ac.CheckStore(c.Context, c.Bool("repair")); err != nil {
			return err
		}
	} else {
		defer s.Close()
		if c.Bool("repair") {
			return usageError("--repair fetches from the peers of the agent running on the data dir, and none runs on %s: start it, or fetch the release again (patchctl fetch)", g.dataDir)
		}
		rep.Problems = []adminapi.FsckProblem{}
		res, err := store.Fsck(c.Context, s, func(p store.Problem) {
			rep.Problems = append(rep.Problems, adminapi.FsckProblem{CID: p.CID.String(), Kind: p.Kind.String(), Pins: p.Pins})
		})
		if err != nil {
			return err
		}
		rep.Chunks, rep.OK = res.Chunks, len(rep.Problems) == 0
	}
	if g.json {
		if err := g.printJSON(rep); err != nil {
			return err
		}
	} else {
		for _, p := range rep.Problems {
			fmt.Fprintf(g.stdout, "%s %s", p.Kind, p.CID)
			if len(p.Pins) > 0 {
				fmt.Fprintf(g.stdout, " (needed by %s)", strings.Join(p.Pins, ", "))
			}
			fmt.Fprintln(g.stdout)
		}
		if rep.Mending > 0 {
			fmt.Fprintf(g.stdout, "the agent is fetching %d chunks again from its peers; patchctl fsck again shows what is left\n", rep.Mending)
		}
	}
	if len(rep.Problems) > 0 {
		return &exitError{code: adminapi.ExitBadData, err: fmt.Errorf("fsck: %d of %d chunks corrupt or missing", len(rep.Problems), rep.Chunks)}
	}
	if !g.json {
		fmt.Fprintf(g.stdout, "ok: %d chunks verified\n", rep.Chunks)
	}
	return nil
}
