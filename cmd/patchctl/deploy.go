package main

import (
	"fmt"
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
)

func deployCommand() *cli.Command {
	return &cli.Command{
		Name:      "deploy",
		Usage:     "deploy a release to the nodes a selector matches: sign the origin's next index with the deployment added",
		ArgsUsage: "RELEASE",
		Flags: slices.Concat(indexSigningFlags(), []cli.Flag{
			&cli.StringFlag{Name: "to", Usage: "`SELECTOR`: key=value terms joined by commas, all of which must match (site=, target=client|server, node=, or a label); empty is every node"},
			&cli.StringFlag{Name: "mode", Value: manifest.ModeAssigned, Usage: "assigned (download and install) or available (download; install on request)"},
			&cli.StringFlag{Name: "window", Usage: "install only between `HH:MM-HH:MM`, the node's local time (assigned only)"},
			&cli.BoolFlag{Name: "unseen-labels", Usage: "allow --to labels no node reports yet (for nodes that will carry them)"},
		}, adminFlags("origin", "the origin's")),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "RELEASE"); err != nil {
				return err
			}
			return runDeploy(c, globalsOf(c), c.Args().First())
		},
	}
}

func runDeploy(c *cli.Context, g globals, name string) error {
	d, err := deploymentFlags(c, name)
	if err != nil {
		return err
	}
	is, err := readIndexSigning(c)
	if err != nil {
		return err
	}
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return err
	}
	if !c.Bool("unseen-labels") {
		if err := checkLabels(c, ac, d.Selector); err != nil {
			return err
		}
	}
	ix, added, err := editOriginIndex(c.Context, ac, is, func(held, next *manifest.Index) (bool, error) {
		if held == nil {
			return false, fmt.Errorf("the origin has no index yet; publish %s there first (publish --origin): %w", name, agent.ErrReleaseNotFound)
		}
		if _, ok := held.Lookup(name); !ok {
			return false, fmt.Errorf("release %s is not in the origin's index; publish it there first (publish --origin): %w", name, agent.ErrReleaseNotFound)
		}
		if slices.Contains(held.Deployments, d) {
			return false, nil
		}
		// Deploying a withdrawn release deploys it again.
		for i := range next.Releases {
			if next.Releases[i].Name == name {
				next.Releases[i].Withdrawn, next.Releases[i].Uninstall = false, false
			}
		}
		next.Deployments = append(next.Deployments, d)
		return true, nil
	})
	if err != nil {
		return err
	}
	return printDeploy(g, d, ix.Version, added)
}

// checkLabels refuses a selector with a label that no node of the fleet
// reports: a deployment to site=a misspelt sit=a would match nothing, and
// say nothing.
func checkLabels(c *cli.Context, ac *adminapi.Client, selector string) error {
	sel, err := lifecycle.ParseSelector(selector)
	if err != nil || len(sel.LabelKeys()) == 0 {
		return err
	}
	st, err := ac.Status(c.Context, "")
	if err != nil {
		return err
	}
	known := map[string]bool{"site": true, "target": true, "node": true}
	for _, k := range st.LabelKeys {
		known[k] = true
	}
	for _, k := range sel.LabelKeys() {
		if known[k] {
			continue
		}
		msg := fmt.Sprintf("--to: no node reports a label %q", k)
		if near := nearest(k, known); near != "" {
			msg += fmt.Sprintf("; did you mean %q?", near)
		}
		return usageError("%s (give --unseen-labels to deploy to nodes that will carry it)", msg)
	}
	return nil
}

// deploymentFlags reads --to, --mode and --window into a deployment of
// release, in the canonical form of each.
func deploymentFlags(c *cli.Context, release string) (manifest.Deployment, error) {
	sel, err := lifecycle.ParseSelector(c.String("to"))
	if err != nil {
		return manifest.Deployment{}, usageError("--to: %v", err)
	}
	win, err := lifecycle.ParseWindow(c.String("window"))
	if err != nil {
		return manifest.Deployment{}, usageError("--window: %v", err)
	}
	mode := c.String("mode")
	if mode != manifest.ModeAssigned && mode != manifest.ModeAvailable {
		return manifest.Deployment{}, usageError("--mode %q: want assigned or available", mode)
	}
	if !win.IsZero() && mode != manifest.ModeAssigned {
		return manifest.Deployment{}, usageError("--window applies to assigned deployments; an available one installs when asked")
	}
	return manifest.Deployment{Release: release, Selector: sel.String(), Mode: mode, Window: win.String()}, nil
}

func printDeploy(g globals, d manifest.Deployment, version uint64, added bool) error {
	if g.json {
		return g.printJSON(map[string]any{"deployment": d, "index_version": version, "added": added})
	}
	to := d.Selector
	if to == "" {
		to = "every node"
	}
	win := ""
	if d.Window != "" {
		win = " in " + d.Window
	}
	if !added {
		fmt.Fprintf(g.stdout, "%s is already deployed %s to %s%s (index version %d); nothing changed\n", d.Release, d.Mode, to, win, version)
		return nil
	}
	fmt.Fprintf(g.stdout, "deployed %s %s to %s%s: index version %d\n", d.Release, d.Mode, to, win, version)
	return nil
}
