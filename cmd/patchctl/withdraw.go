package main

import (
	"fmt"
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
)

func withdrawCommand() *cli.Command {
	return &cli.Command{
		Name: "withdraw",
		Usage: "withdraw a release: sign the origin's next index with it deployed nowhere; nodes that have not installed it stop, proxies let it go, " +
			"and with --uninstall nodes that installed it run its signed uninstall command",
		ArgsUsage: "RELEASE",
		Flags: slices.Concat(indexSigningFlags(), []cli.Flag{
			&cli.BoolFlag{Name: "uninstall", Usage: "also run the release's uninstall command (publish --uninstall-cmd) where it is installed"},
		}, adminFlags("origin", "the origin's")),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "RELEASE"); err != nil {
				return err
			}
			return runWithdraw(c, globalsOf(c), c.Args().First())
		},
	}
}

func runWithdraw(c *cli.Context, g globals, name string) error {
	is, err := readIndexSigning(c)
	if err != nil {
		return err
	}
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return err
	}
	uninstall := c.Bool("uninstall")
	ix, changed, err := editOriginIndex(c.Context, ac, is, func(held, next *manifest.Index) (bool, error) {
		var e *manifest.IndexEntry
		for i := range next.Releases {
			if next.Releases[i].Name == name {
				e = &next.Releases[i]
			}
		}
		if e == nil {
			return false, fmt.Errorf("release %s is not in the origin's index: %w", name, agent.ErrReleaseNotFound)
		}
		if e.Withdrawn && e.Uninstall == (e.Uninstall || uninstall) {
			return false, nil
		}
		e.Withdrawn, e.Uninstall = true, e.Uninstall || uninstall
		next.Deployments = slices.DeleteFunc(next.Deployments, func(d manifest.Deployment) bool { return d.Release == name })
		return true, nil
	})
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(map[string]any{"release": name, "uninstall": uninstall, "changed": changed, "index_version": ix.Version, "file": is.out})
	}
	what := "withdrawn"
	if uninstall {
		what = "withdrawn, to be uninstalled where it is installed"
	}
	switch {
	case !changed:
		fmt.Fprintf(g.stdout, "%s is %s already (index version %d); nothing changed\n", name, what, ix.Version)
	case is.out != "":
		fmt.Fprintf(g.stdout, "%s %s: index version %d written to %s (patchctl sign, then patchctl index push)\n", name, what, ix.Version, is.out)
	default:
		fmt.Fprintf(g.stdout, "%s %s: index version %d\n", name, what, ix.Version)
	}
	return nil
}
