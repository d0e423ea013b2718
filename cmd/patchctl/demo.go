//go:build demo

package main

import (
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/testnet"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name: "demo",
		Usage: "run an origin, a proxy per site and the sites' nodes in this process over shaped loopback links; " +
			"publish a generated pack, distribute and install it, then the same with the swarm off, and report",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "sites", Value: 3, Usage: "number of sites"},
			&cli.IntFlag{Name: "nodes", Value: 5, Usage: "nodes per site"},
			&cli.StringFlag{Name: "size", Value: "64MiB", Usage: "pack `SIZE` before compression (B, KiB, MiB, GiB)"},
			&cli.StringFlag{Name: "wan", Value: "20Mbit", Usage: "each site's WAN `RATE` per direction (bit, Kbit, Mbit, Gbit per second)"},
			&cli.StringFlag{Name: "node-link", Value: "1Gbit", Usage: "each node's and proxy's link `RATE`"},
			&cli.StringFlag{Name: "origin-uplink", Value: "100Mbit", Usage: "the origin's link `RATE`"},
			&cli.DurationFlag{Name: "wan-latency", Value: 20 * time.Millisecond, Usage: "one-way latency of each site's WAN"},
			&cli.DurationFlag{Name: "lan-latency", Value: 250 * time.Microsecond, Usage: "one-way latency of each node's link"},
			&cli.BoolFlag{Name: "no-baseline", Usage: "skip the run with the swarm off"},
			&cli.BoolFlag{Name: "no-delta", Usage: "skip the second version with scattered changes"},
			&cli.Float64Flag{Name: "delta-changes", Value: 0.02, Usage: "fraction of the second version's bytes changed"},
			&cli.StringFlag{Name: "dir", Usage: "keep the members' data dirs in `DIR` (default: a temporary directory, in /dev/shm where there is one, removed)"},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			return runDemo(c, globalsOf(c))
		},
	}
}

func runDemo(c *cli.Context, g globals) error {
	cfg := testnet.DemoConfig{
		Sites: c.Int("sites"), NodesPerSite: c.Int("nodes"),
		WANLatency: c.Duration("wan-latency"), LANLatency: c.Duration("lan-latency"),
		Baseline: !c.Bool("no-baseline"), Delta: !c.Bool("no-delta"), DeltaFraction: c.Float64("delta-changes"),
		Dir: c.String("dir"),
	}
	if cfg.Sites < 1 || cfg.NodesPerSite < 1 || cfg.Sites*cfg.NodesPerSite > 2000 {
		return usageError("demo: --sites and --nodes must be at least 1 and make at most 2000 nodes")
	}
	if cfg.DeltaFraction <= 0 || cfg.DeltaFraction > 1 {
		return usageError("demo: --delta-changes must be in (0, 1]")
	}
	var err error
	if cfg.PackSize, err = parseSize(c.String("size")); err != nil {
		return usageError("demo: --size: %v", err)
	}
	if cfg.PackSize < 64<<10 {
		return usageError("demo: --size must be at least 64KiB")
	}
	for _, r := range []struct {
		flag string
		dst  *int64
	}{{"wan", &cfg.WAN}, {"node-link", &cfg.NodeLink}, {"origin-uplink", &cfg.OriginUplink}} {
		if *r.dst, err = parseRate(c.String(r.flag)); err != nil {
			return usageError("demo: --%s: %v", r.flag, err)
		}
	}
	if !g.json {
		cfg.Progress = func(s string) { fmt.Fprintf(g.stderr, "demo: %s\n", s) }
	}
	// The soft memory limit suits one node per process; the demo runs
	// dozens of them in this one.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(math.MaxInt64)
	}
	rep, err := testnet.RunDemo(c.Context, cfg)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(rep)
	}
	printDemo(g, rep)
	return nil
}

func printDemo(g globals, r *testnet.DemoReport) {
	w := g.stdout
	fmt.Fprintf(w, "\n%d sites × %d nodes, a proxy per site; pack %s, %s to move for one copy\n",
		r.Sites, r.NodesPerSite, humanBytes(r.PackSize), humanBytes(r.PackBytes))
	fmt.Fprintf(w, "links: site WAN %s, node %s, origin uplink %s\n\n", humanRate(r.WAN), humanRate(r.NodeLink), humanRate(r.OriginUplink))
	fmt.Fprintf(w, "%-22s %-28s", "", "swarm")
	if r.Baseline != nil {
		fmt.Fprintf(w, " %s", "baseline (every node from the origin)")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-22s %-28s", "all installed after", fmt.Sprintf("%.1f s = %.2f × %.1f s bound", r.Seconds, r.TimeOverLowerBound, r.LowerBoundSeconds))
	if b := r.Baseline; b != nil {
		fmt.Fprintf(w, " %.1f s = %.2f × bound", b.Seconds, b.TimeOverLowerBound)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-22s %-28s", "origin sent", copies(r.OriginBytesOut, r.PackBytes))
	if b := r.Baseline; b != nil {
		fmt.Fprintf(w, " %s", copies(b.OriginBytesOut, r.PackBytes))
	}
	fmt.Fprintln(w)
	for i, s := range r.SiteReports {
		status := fmt.Sprintf("installed %d/%d", s.Installed, s.Nodes)
		fmt.Fprintf(w, "%-22s %-28s", s.Name+" WAN in", copies(s.WANBytesIn, r.PackBytes)+", "+status)
		if b := r.Baseline; b != nil && i < len(b.WANBytesInPerSite) {
			fmt.Fprintf(w, " %s", copies(b.WANBytesInPerSite[i], r.PackBytes))
		}
		fmt.Fprintln(w)
	}
	if d := r.Delta; d != nil {
		fmt.Fprintf(w, "\nsecond version: %s changed in scattered 4 KiB runs (%s of new chunks); installed everywhere after %.1f s\n",
			humanBytes(d.ChangedBytes), humanBytes(d.NewChunkBytes), d.Seconds)
		for i, in := range d.WANBytesInPerSite {
			fmt.Fprintf(w, "  %s WAN in %s = %.2f × the bytes changed\n", r.SiteReports[i].Name, humanBytes(in), float64(in)/float64(max(1, d.ChangedBytes)))
		}
	}
}

func copies(n, pack int64) string {
	return fmt.Sprintf("%s (%.2f copies)", humanBytes(n), float64(n)/float64(max(1, pack)))
}

func humanRate(bytesPerSecond int64) string {
	bits := float64(bytesPerSecond) * 8
	switch {
	case bytesPerSecond == 0:
		return "unlimited"
	case bits >= 1e9:
		return fmt.Sprintf("%g Gbit/s", bits/1e9)
	case bits >= 1e6:
		return fmt.Sprintf("%g Mbit/s", bits/1e6)
	default:
		return fmt.Sprintf("%g Kbit/s", bits/1e3)
	}
}

// extraCommands are the commands of the demo build.
func extraCommands() []*cli.Command { return []*cli.Command{demoCommand()} }
