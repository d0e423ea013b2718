package testnet

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/patchctl/patchctl/agent"
)

// DemoConfig describes a demo run: a network of sites, a generated pack, and
// the rates of its links in bytes/s.
type DemoConfig struct {
	Sites, NodesPerSite int
	PackSize            int64
	WAN                 int64
	NodeLink            int64
	OriginUplink        int64
	WANLatency          time.Duration
	LANLatency          time.Duration
	// Baseline also runs the scenario with the swarm off.
	Baseline bool
	// Delta also publishes a second version with DeltaFraction of its
	// bytes changed in scattered places and measures what it moves.
	Delta         bool
	DeltaFraction float64
	// Dir holds the members' data dirs; empty is a fresh temporary
	// directory (in memory where possible, see scratchDir) removed at the
	// end.
	Dir    string
	Logger *slog.Logger
	// Progress, if set, is told what the demo is doing.
	Progress func(string)
}

// DemoReport is what a demo measured. Byte counts are real bytes through the
// shaped links, protocol overhead included.
type DemoReport struct {
	Sites        int   `json:"site_count"`
	NodesPerSite int   `json:"nodes_per_site"`
	PackSize     int64 `json:"pack_size"`
	// PackBytes is what must move for one copy: the stored (compressed)
	// bytes of the release's distinct chunks.
	PackBytes          int64        `json:"pack_bytes"`
	WAN                int64        `json:"wan_bytes_per_second"`
	NodeLink           int64        `json:"node_link_bytes_per_second"`
	OriginUplink       int64        `json:"origin_uplink_bytes_per_second"`
	Seconds            float64      `json:"seconds"`
	LowerBoundSeconds  float64      `json:"lower_bound_seconds"`
	TimeOverLowerBound float64      `json:"time_over_lower_bound"`
	OriginBytesOut     int64        `json:"origin_bytes_out"`
	SiteReports        []SiteReport `json:"sites"`
	Baseline           *Baseline    `json:"baseline,omitempty"`
	Delta              *Delta       `json:"delta,omitempty"`
}

// SiteReport is one site's part of a run.
type SiteReport struct {
	Name       string  `json:"name"`
	Nodes      int     `json:"nodes"`
	Installed  int     `json:"installed"`
	Replicated bool    `json:"replicated"`
	WANBytesIn int64   `json:"wan_bytes_in"`
	WANCopies  float64 `json:"wan_copies"` // WANBytesIn / PackBytes
}

// Baseline is the same scenario with every node fetching from the origin.
type Baseline struct {
	Seconds            float64   `json:"seconds"`
	TimeOverLowerBound float64   `json:"time_over_lower_bound"`
	WANBytesInPerSite  []int64   `json:"wan_bytes_in_per_site"`
	WANCopiesPerSite   []float64 `json:"wan_copies_per_site"`
	Installed          int       `json:"installed"`
	OriginBytesOut     int64     `json:"origin_bytes_out"`
}

// Delta is what a second version with a few changes moved.
type Delta struct {
	ChangedBytes      int64   `json:"changed_bytes"`
	NewChunkBytes     int64   `json:"new_chunk_bytes"` // stored bytes of chunks the first version lacks
	Seconds           float64 `json:"seconds"`
	WANBytesInPerSite []int64 `json:"wan_bytes_in_per_site"`
	// WANOverChanged is the mean over sites of WAN bytes in ÷ bytes changed.
	WANOverChanged float64 `json:"wan_over_changed"`
}

// demoRelease is the name the demo publishes under.
const demoRelease = "SP-S041000005"

// demoNextRelease is the delta's release: the next service pack, which
// retires the first where it installs.
const demoNextRelease = "SP-S041000006"

// RunDemo builds the network, publishes a generated pack at the origin,
// announces it, waits until every node has installed it, and reports; then,
// as configured, the baseline and the delta.
func RunDemo(ctx context.Context, cfg DemoConfig) (*DemoReport, error) {
	progress := cfg.Progress
	if progress == nil {
		progress = func(string) {}
	}
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp(scratchDir(), "patchctl-demo-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	netCfg := Config{
		Sites: cfg.Sites, NodesPerSite: cfg.NodesPerSite,
		WAN: cfg.WAN, NodeLink: cfg.NodeLink, OriginUplink: cfg.OriginUplink,
		WANLatency: cfg.WANLatency, LANLatency: cfg.LANLatency,
		SiblingProxies: true, Logger: cfg.Logger,
		Dir: filepath.Join(dir, "swarm"),
	}
	progress(fmt.Sprintf("generating a %d-byte pack", cfg.PackSize))
	packDir := filepath.Join(dir, "pack-v1")
	sources, err := WritePack(packDir, 1, cfg.PackSize)
	if err != nil {
		return nil, err
	}

	progress(fmt.Sprintf("starting %d sites × %d nodes, a proxy per site and an origin", cfg.Sites, cfg.NodesPerSite))
	n, err := New(ctx, netCfg)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	rel, err := n.Publish(ctx, demoRelease, sources, demoHook)
	if err != nil {
		return nil, err
	}
	rep := &DemoReport{
		Sites: cfg.Sites, NodesPerSite: cfg.NodesPerSite, PackSize: cfg.PackSize, PackBytes: rel.StoredSize,
		WAN: cfg.WAN, NodeLink: cfg.NodeLink, OriginUplink: cfg.OriginUplink,
	}
	rep.LowerBoundSeconds = lowerBound(rel.StoredSize, cfg.WAN, cfg.NodeLink, cfg.OriginUplink)
	progress(fmt.Sprintf("published %s: %d bytes to move; distributing", rel.Name, rel.StoredSize))
	secs, err := distribute(ctx, n, 1, rel)
	if err != nil {
		return nil, err
	}
	rep.Seconds = secs
	rep.TimeOverLowerBound = secs / rep.LowerBoundSeconds
	rep.OriginBytesOut = n.Origin.Up.Bytes()
	for _, s := range n.Sites {
		sr := SiteReport{Name: s.Name, Nodes: len(s.Nodes), Replicated: Replicated(s, rel.Name), WANBytesIn: s.WANDown.Bytes()}
		for _, m := range s.Nodes {
			if Installed(m, rel.Name) {
				sr.Installed++
			}
		}
		sr.WANCopies = float64(sr.WANBytesIn) / float64(rel.StoredSize)
		rep.SiteReports = append(rep.SiteReports, sr)
	}

	if cfg.Delta {
		progress("publishing a second version with scattered changes")
		d, err := runDelta(ctx, n, rel, sources, filepath.Join(dir, "pack-v2"), cfg.DeltaFraction)
		if err != nil {
			return nil, fmt.Errorf("delta: %w", err)
		}
		rep.Delta = d
	}
	n.Close()

	if cfg.Baseline {
		progress("baseline: every node fetching from the origin")
		netCfg.NoSwarm, netCfg.SiblingProxies = true, false
		netCfg.Dir = filepath.Join(dir, "baseline")
		b, err := New(ctx, netCfg)
		if err != nil {
			return nil, err
		}
		defer b.Close()
		brel, err := b.Publish(ctx, demoRelease, sources, demoHook)
		if err != nil {
			return nil, err
		}
		secs, err := distribute(ctx, b, 1, brel)
		if err != nil {
			return nil, fmt.Errorf("baseline: %w", err)
		}
		base := &Baseline{Seconds: secs, TimeOverLowerBound: secs / rep.LowerBoundSeconds, OriginBytesOut: b.Origin.Up.Bytes()}
		for _, s := range b.Sites {
			base.WANBytesInPerSite = append(base.WANBytesInPerSite, s.WANDown.Bytes())
			base.WANCopiesPerSite = append(base.WANCopiesPerSite, float64(s.WANDown.Bytes())/float64(brel.StoredSize))
			for _, m := range s.Nodes {
				if Installed(m, brel.Name) {
					base.Installed++
				}
			}
		}
		rep.Baseline = base
	}
	return rep, nil
}

// scratchDir is where a demo keeps its members' data dirs by default: a
// memory file system where there is one. Every member stands for a machine
// with a disk of its own; on one shared disk, the flushes of dozens of
// members would queue behind each other and the demo would measure that disk
// instead of the network.
func scratchDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if f, err := os.CreateTemp("/dev/shm", "patchctl-probe-"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return "/dev/shm"
		}
	}
	return os.TempDir()
}

// demoHook is the demo's install hook: it leaves a marker in the release
// directory.
var demoHook = []string{"/bin/sh", "-c", "echo installed > installed.marker"}

// lowerBound is the least time one copy of packBytes can take to reach every
// node: each site's WAN, each node's link and the origin's uplink must carry
// it at least once.
func lowerBound(packBytes, wan, nodeLink, uplink int64) float64 {
	var lb float64
	for _, rate := range []int64{wan, nodeLink, uplink} {
		if rate > 0 {
			lb = max(lb, float64(packBytes)/float64(rate))
		}
	}
	return lb
}

// distribute announces rel in an index of version and waits until every
// node has installed it, returning the seconds that took.
func distribute(ctx context.Context, n *Network, version uint64, rel *Release) (float64, error) {
	start := time.Now()
	if err := n.Announce(version, rel); err != nil {
		return 0, err
	}
	if err := n.WaitInstalled(ctx, rel, n.Sites...); err != nil {
		return 0, err
	}
	return time.Since(start).Seconds(), nil
}

// runDelta publishes a copy of the pack with fraction of its bytes changed
// in scattered 4 KiB runs as the next version of rel, distributes it, and
// measures the WAN bytes that moved against the bytes changed.
func runDelta(ctx context.Context, n *Network, rel *Release, sources []agent.Source, dir string, fraction float64) (*Delta, error) {
	var changed int64
	var v2 []agent.Source
	rng := rand.New(rand.NewPCG(7, 11))
	for _, src := range sources {
		local := filepath.Join(dir, filepath.FromSlash(src.Path))
		c, err := copyChanged(src.Local, local, fraction, rng)
		if err != nil {
			return nil, err
		}
		changed += c
		src.Local = local
		v2 = append(v2, src)
	}
	before := make([]int64, len(n.Sites))
	for i, s := range n.Sites {
		before[i] = s.WANDown.Bytes()
	}
	rel2, err := n.Publish(ctx, demoNextRelease, v2, demoHook)
	if err != nil {
		return nil, err
	}
	old := make(map[string]bool)
	for _, id := range rel.Manifest.ChunkIDs() {
		old[id.KeyString()] = true
	}
	d := &Delta{ChangedBytes: changed}
	for _, id := range rel2.Manifest.ChunkIDs() {
		if !old[id.KeyString()] {
			info, err := n.Origin.Agent.Peer().Store.Stat(ctx, id)
			if err != nil {
				return nil, err
			}
			d.NewChunkBytes += info.StoredSize
		}
	}
	if d.Seconds, err = distribute(ctx, n, 2, rel2); err != nil {
		return nil, err
	}
	var sum float64
	for i, s := range n.Sites {
		in := s.WANDown.Bytes() - before[i]
		d.WANBytesInPerSite = append(d.WANBytesInPerSite, in)
		sum += float64(in) / float64(max(1, changed))
	}
	d.WANOverChanged = sum / float64(len(n.Sites))
	return d, nil
}

// copyChanged copies src to dst, overwriting about fraction of its bytes
// with random 4 KiB runs at random offsets, and returns the bytes changed.
func copyChanged(src, dst string, fraction float64, rng *rand.Rand) (int64, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return 0, err
	}
	const run = 4 << 10
	runs := int(float64(len(data)) * fraction / run)
	var changed int64
	buf := make([]byte, run)
	for range runs {
		if len(data) <= run {
			break
		}
		off := rng.IntN(len(data) - run)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		copy(data[off:], buf)
		changed += run
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, err
	}
	return changed, os.WriteFile(dst, data, 0o644)
}
