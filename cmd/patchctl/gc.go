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
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "grace", Value: store.DefaultGCGrace, Usage: "keep unpinned chunks written more recently than this (a publish or fetch may be about to pin them)"},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			g := globalsOf(c)
			s, cat, err := g.openStore()
			if err != nil {
				return err
			}
			repinned, err := repinListed(c, g, s, cat)
			if err != nil {
				return err
			}
			res, err := store.GC(c.Context, s, store.GCOptions{Grace: c.Duration("grace")})
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]any{"removed_chunks": res.Deleted, "removed_bytes": res.BytesFreed, "pinned_chunks": res.Pinned, "fresh_chunks": res.Fresh, "temps_removed": res.TempsRemoved, "repinned": repinned})
			}
			for _, name := range repinned {
				fmt.Fprintf(g.stdout, "pinned %s again: the origin's index lists it\n", name)
			}
			fmt.Fprintf(g.stdout, "removed %d chunks (%s); kept %d pinned and %d unpinned within the grace period\n", res.Deleted, humanBytes(res.BytesFreed), res.Pinned, res.Fresh)
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

// refuseListed refuses to forget a release the origin's index lists.
func refuseListed(g globals, cat *agent.Catalog, ref string) error {
	ix, err := originIndexHere(g)
	if err != nil || ix == nil {
		return err
	}
	name := ref
	if r, err := cat.Get(ref); err == nil {
		name = r.Name
	}
	if e, ok := ix.Lookup(name); ok && !e.Withdrawn {
		return fmt.Errorf("%s is listed in the origin's index version %d, and nodes may still fetch it; withdraw it first (patchctl withdraw): %w", name, ix.Version, adminapi.ErrConflict)
	}
	return nil
}

// repinListed pins again every release the origin's index lists whose pin is
// gone, so that gc never takes chunks nodes may still fetch.
func repinListed(c *cli.Context, g globals, s *store.Disk, cat *agent.Catalog) ([]string, error) {
	ix, err := originIndexHere(g)
	if err != nil || ix == nil {
		return nil, err
	}
	pins, err := s.Pins(c.Context)
	if err != nil {
		return nil, err
	}
	var again []string
	for _, e := range ix.Releases {
		if _, ok := pins[e.Name]; ok || e.Withdrawn {
			continue
		}
		r, err := cat.Get(e.Name)
		if err != nil {
			continue // not held here: nothing to keep
		}
		if err := s.Pin(c.Context, r.Name, r.Manifest.ChunkIDs()); err != nil {
			return again, err
		}
		again = append(again, r.Name)
	}
	return again, nil
}
