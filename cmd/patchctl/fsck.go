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
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			return runFsck(c, globalsOf(c))
		},
	}
}

func runFsck(c *cli.Context, g globals) error {
	s, _, err := g.openStore()
	if err != nil {
		return err
	}
	var problems []store.Problem
	res, err := store.Fsck(c.Context, s, func(p store.Problem) { problems = append(problems, p) })
	if err != nil {
		return err
	}
	if g.json {
		list := make([]map[string]any, len(problems))
		for i, p := range problems {
			list[i] = map[string]any{"cid": p.CID.String(), "kind": p.Kind.String(), "pins": p.Pins}
		}
		if err := g.printJSON(map[string]any{"chunks": res.Chunks, "ok": len(problems) == 0, "problems": list}); err != nil {
			return err
		}
	} else {
		for _, p := range problems {
			fmt.Fprintf(g.stdout, "%s %s", p.Kind, p.CID)
			if len(p.Pins) > 0 {
				fmt.Fprintf(g.stdout, " (needed by %s)", strings.Join(p.Pins, ", "))
			}
			fmt.Fprintln(g.stdout)
		}
	}
	if len(problems) > 0 {
		return &exitError{code: adminapi.ExitBadData, err: fmt.Errorf("fsck: %d of %d chunks corrupt or missing", len(problems), res.Chunks)}
	}
	if !g.json {
		fmt.Fprintf(g.stdout, "ok: %d chunks verified\n", res.Chunks)
	}
	return nil
}
