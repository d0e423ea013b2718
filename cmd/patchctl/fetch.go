package main

import (
	"fmt"
	"sort"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
)

func fetchCommand() *cli.Command {
	return &cli.Command{
		Name:      "fetch",
		Usage:     "fetch a release from peers: its envelope, verified against the trust root, then every missing chunk, verified as it arrives",
		ArgsUsage: "NAME|CID",
		Flags: append(swarmFlags(),
			&cli.StringFlag{Name: "trust", Usage: "trust root `FILE`", Required: true},
			&cli.StringSliceFlag{Name: "peer", Usage: "peer `MULTIADDR` ending in /p2p/<peer-id> (repeatable)", Required: true},
			&cli.StringFlag{Name: "extract", Usage: "then assemble the release's files into the new directory `DIR`"},
			&cli.DurationFlag{Name: "stall-timeout", Value: 15 * time.Second, Usage: "give up on a peer's request that delivers nothing for this long"},
		),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "NAME|CID"); err != nil {
				return err
			}
			return runFetch(c, globalsOf(c), c.Args().First())
		},
	}
}

func runFetch(c *cli.Context, g globals, ref string) error {
	root, err := loadTrust(c.String("trust"))
	if err != nil {
		return err
	}
	cfg, err := peerConfig(c, g)
	if err != nil {
		return err
	}
	n, err := agent.NewPeer(c.Context, cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	n.Serve(agent.Serving{})
	peers, err := n.Connect(c.StringSlice("peer"))
	if err != nil {
		return usageError("%v", err)
	}
	var bar = newProgress(g, 0, "fetch", true)
	opts := agent.FetchOptions{
		Swarm: p2p.FetchConfig{StallTimeout: c.Duration("stall-timeout")},
		Progress: func(p p2p.FetchProgress) {
			if bar != nil {
				bar.ChangeMax64(p.BytesTotal)
				progressSet(bar, p.BytesDone)
			}
		},
	}
	sum, err := n.Fetch(c.Context, root, ref, peers, opts)
	if sum != nil && (g.json || err == nil) {
		progressDone(bar)
		if perr := printFetch(g, sum); perr != nil && err == nil {
			err = perr
		}
	}
	if err != nil {
		return err
	}
	if dir := c.String("extract"); dir != "" {
		ebar := newProgress(g, sum.Manifest.TotalSize(), "extract", true)
		err := store.Extract(c.Context, n.Store, sum.Manifest, dir, store.ExtractOptions{Progress: func(b int64) { progressSet(ebar, b) }})
		if err != nil {
			return err
		}
		progressDone(ebar)
		if !g.json {
			fmt.Fprintf(g.stdout, "extracted into %s\n", dir)
		}
	}
	return nil
}

func printFetch(g globals, s *agent.FetchSummary) error {
	if g.json {
		return g.printJSON(s)
	}
	fmt.Fprintf(g.stdout, "fetched %s (%s)\n", s.Name, s.CID)
	fmt.Fprintf(g.stdout, "chunks  %d total, %d already here, %d fetched\n", s.ChunksTotal, s.ChunksPresent, s.ChunksFetched)
	rate := float64(s.BytesFetched) / max(s.Seconds, 1e-3)
	fmt.Fprintf(g.stdout, "bytes   %s on the wire in %.1fs (%s/s)\n", humanBytes(s.BytesFetched), s.Seconds, humanBytes(int64(rate)))
	ids := make([]string, 0, len(s.Peers))
	for id := range s.Peers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(g.stdout, "  from %s: %s\n", id, humanBytes(s.Peers[id]))
	}
	for _, id := range s.Banned {
		fmt.Fprintf(g.stdout, "  banned %s: it sent a chunk that failed verification\n", id)
	}
	return nil
}
