package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
)

func indexCommand() *cli.Command {
	return &cli.Command{
		Name:  "index",
		Usage: "the signed index of releases an origin announces down the tree",
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "sign the next index version with releases held here added (or their sites changed)",
				ArgsUsage: "NAME...",
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "key", Usage: "signing key `FILE` (repeatable, up to the trust root's threshold)", Required: true},
					&cli.StringSliceFlag{Name: "site", Usage: "only this `SITE` fetches the releases (repeatable; default every site)"},
					&cli.StringFlag{Name: "to", Usage: "also deploy the releases to the nodes `SELECTOR` matches (as patchctl deploy --to; empty is every node)"},
					&cli.StringFlag{Name: "mode", Value: manifest.ModeAssigned, Usage: "with --to: assigned or available"},
					&cli.StringFlag{Name: "window", Usage: "with --to: install only between `HH:MM-HH:MM`, the node's local time"},
					&cli.StringFlag{Name: "channel", Value: "stable", Usage: "the index's channel"},
					&cli.DurationFlag{Name: "lifetime", Value: 30 * 24 * time.Hour, Usage: "how long the index stays valid"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return usageError("index add: name at least one release")
					}
					return runIndexAdd(c, globalsOf(c))
				},
			},
			{
				Name:      "renew",
				Usage:     "sign the origin's next index version with nothing changed but a new expiry (an index that expires stops the fleet)",
				ArgsUsage: " ",
				Flags:     slices.Concat(indexSigningFlags(), adminFlags("origin", "the origin's")),
				Action: func(c *cli.Context) error {
					if err := exactArgs(c, 0, "no arguments"); err != nil {
						return err
					}
					return runIndexRenew(c, globalsOf(c))
				},
			},
			{
				Name:      "push",
				Usage:     "hand the origin a signed index made with --out and signed by more key holders (patchctl sign)",
				ArgsUsage: "INDEX-FILE",
				Flags:     adminFlags("origin", "the origin's"),
				Action: func(c *cli.Context) error {
					if err := exactArgs(c, 1, "INDEX-FILE"); err != nil {
						return err
					}
					return runIndexPush(c, globalsOf(c), c.Args().First())
				},
			},
			{
				Name:      "show",
				Usage:     "print the index held here",
				ArgsUsage: " ",
				Action: func(c *cli.Context) error {
					g := globalsOf(c)
					ix, err := readIndex(g)
					if err != nil {
						return err
					}
					if ix == nil {
						return fmt.Errorf("no index in %s: %w", g.dataDir, os.ErrNotExist)
					}
					if g.json {
						return g.printJSON(ix)
					}
					fmt.Fprintf(g.stdout, "index version %d, channel %s, expires %s\n", ix.Version, ix.Channel, ix.Expires.Format(time.RFC3339))
					for _, d := range ix.Deployments {
						fmt.Fprintf(g.stdout, "deployed %s %s to %q window %q\n", d.Release, d.Mode, d.Selector, d.Window)
					}
					for _, r := range ix.Releases {
						fmt.Fprintf(g.stdout, "%s\t%s\tsequence %d\tsites %v\n", r.Name, r.CID, r.Sequence, r.Sites)
					}
					return nil
				},
			},
		},
	}
}

// readIndex returns the index held in the data dir, or nil if none. It does
// not verify the signatures: the agents that take it do.
func readIndex(g globals) (*manifest.Index, error) {
	data, err := os.ReadFile(filepath.Join(g.dataDir, agent.IndexFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseIndexEnvelope(data)
}

// parseIndexEnvelope returns the index of an envelope without verifying
// it, or nil for none.
func parseIndexEnvelope(env []byte) (*manifest.Index, error) {
	if env == nil {
		return nil, nil
	}
	e, err := manifest.ParseEnvelope(env)
	if err != nil {
		return nil, err
	}
	return manifest.ParseIndex(e.Payload)
}

func runIndexRenew(c *cli.Context, g globals) error {
	is, err := readIndexSigning(c)
	if err != nil {
		return err
	}
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return err
	}
	ix, _, err := editOriginIndex(c.Context, ac, is, func(held, _ *manifest.Index) (bool, error) {
		if held == nil {
			return false, fmt.Errorf("the origin has no index to renew: %w", adminapi.ErrNotFound)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(map[string]any{"version": ix.Version, "expires": ix.Expires, "file": is.out})
	}
	if is.out != "" {
		fmt.Fprintf(g.stdout, "index version %d, expiring %s, written to %s\n", ix.Version, ix.Expires.UTC().Format(time.RFC3339), is.out)
		return nil
	}
	fmt.Fprintf(g.stdout, "the origin follows index version %d, expiring %s\n", ix.Version, ix.Expires.UTC().Format(time.RFC3339))
	return nil
}

func runIndexPush(c *cli.Context, g globals, file string) error {
	env, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return err
	}
	v, err := ac.PostIndex(c.Context, env)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(map[string]any{"version": v})
	}
	fmt.Fprintf(g.stdout, "the origin follows index version %d\n", v)
	return nil
}

func runIndexAdd(c *cli.Context, g globals) error {
	if err := positive(c, "lifetime"); err != nil {
		return err
	}
	signers, _, err := readKeys(c.StringSlice("key"), nil)
	if err != nil {
		return err
	}
	cat, err := g.openCatalog()
	if err != nil {
		return err
	}
	var deploy *manifest.Deployment
	if c.IsSet("to") {
		d, err := deploymentFlags(c, "")
		if err != nil {
			return err
		}
		deploy = &d
	}
	var ix *manifest.Index
	// Under the index file's lock, which a running origin takes too, so
	// that the version signed here builds on the one it holds.
	err = agent.EditIndexFile(g.dataDir, func(heldEnv []byte) ([]byte, error) {
		held, err := parseIndexEnvelope(heldEnv)
		if err != nil {
			return nil, err
		}
		now := time.Now()
		ix = &manifest.Index{Version: 1, Channel: c.String("channel"), Created: now, Expires: now.Add(c.Duration("lifetime"))}
		if held != nil {
			ix.Version, ix.Releases, ix.Deployments, ix.Proxies = held.Version+1, held.Releases, held.Deployments, held.Proxies
		}
		for _, name := range c.Args().Slice() {
			r, err := cat.Get(name)
			if err != nil {
				return nil, err
			}
			entry := manifest.IndexEntry{Name: r.Name, CID: r.CID.String(), Sequence: r.Manifest.Sequence, Sites: c.StringSlice("site")}
			replaced := false
			for i := range ix.Releases {
				if ix.Releases[i].Name == r.Name {
					ix.Releases[i], replaced = entry, true
				}
			}
			if !replaced {
				ix.Releases = append(ix.Releases, entry)
			}
			if deploy != nil {
				d := *deploy
				d.Release = r.Name
				if !slices.Contains(ix.Deployments, d) {
					ix.Deployments = append(ix.Deployments, d)
				}
			}
		}
		return manifest.SignIndex(ix, signers...)
	})
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(map[string]any{"version": ix.Version, "releases": len(ix.Releases)})
	}
	fmt.Fprintf(g.stdout, "index version %d with %d releases; a running origin announces it at its next poll\n", ix.Version, len(ix.Releases))
	return nil
}
