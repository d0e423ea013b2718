package testnet

import (
	"os"
	"testing"
	"time"
)

// benchDemo runs the demo scenario b.N times and reports, as medians over
// `make bench` runs: the worst site's WAN bytes over one copy, the time until
// every node installed over the lower bound, the same for the baseline with
// the swarm off, and for a second version with 2% of its bytes changed, WAN
// bytes over bytes changed.
func benchDemo(b *testing.B, cfg DemoConfig) {
	cfg.Baseline, cfg.Delta, cfg.DeltaFraction = true, true, 0.02
	for b.Loop() {
		rep, err := RunDemo(b.Context(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		var worst float64
		for _, s := range rep.SiteReports {
			worst = max(worst, s.WANCopies)
			if s.Installed != s.Nodes {
				b.Fatalf("%s installed %d of %d", s.Name, s.Installed, s.Nodes)
			}
		}
		var baseWorst float64
		for _, c := range rep.Baseline.WANCopiesPerSite {
			baseWorst = max(baseWorst, c)
		}
		b.ReportMetric(worst, "wan-copies/site")
		b.ReportMetric(rep.TimeOverLowerBound, "x-lower-bound")
		b.ReportMetric(float64(rep.OriginBytesOut)/float64(rep.PackBytes), "origin-copies")
		b.ReportMetric(baseWorst, "baseline-wan-copies/site")
		b.ReportMetric(rep.Baseline.TimeOverLowerBound, "baseline-x-lower-bound")
		b.ReportMetric(rep.Delta.WANOverChanged, "delta-wan/changed")
		b.ReportMetric(rep.Seconds, "s-installed")
	}
}

// BenchmarkDemo3Sites5Nodes is `patchctl demo` at its defaults.
func BenchmarkDemo3Sites5Nodes(b *testing.B) {
	benchDemo(b, DemoConfig{
		Sites: 3, NodesPerSite: 5, PackSize: 64 << 20,
		WAN: 20e6 / 8, NodeLink: 1e9 / 8, OriginUplink: 100e6 / 8,
		WANLatency: 20 * time.Millisecond, LANLatency: 250 * time.Microsecond,
	})
}

// benchOneCopy runs a site of a proxy and three nodes through a generated
// service pack of size bytes and a next version with 2% of its bytes
// changed, once with the nodes letting go of what they installed (the
// default) and once with --keep-chunks, and reports: each node's data dir
// over the bytes it installed once the site finished the pack, and once it
// finished the next version (whose files and the first's, kept for a
// rollback, are then installed); the bytes into the nodes over the LAN for
// the next version, both ways; the share of the chunks the two versions
// have in common that the nodes took from their installed files; and the
// seconds the next version took to install everywhere, both ways. The
// data dirs are on the disk under os.TempDir(), not in memory as the
// demo's (docs/decisions/0034): what a node's disk holds, and what reading
// its installed files back costs, are what this measures.
func benchOneCopy(b *testing.B, size int64) {
	cfg := Config{
		NodesPerSite: 3,
		WAN:          100e6 / 8, NodeLink: 1e9 / 8, OriginUplink: 1e9 / 8,
		WANLatency: 20 * time.Millisecond, LANLatency: 250 * time.Microsecond,
	}
	run := func(keep bool) oneCopy {
		dir, err := os.MkdirTemp("", "patchctl-bench-onecopy-")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		c := cfg
		c.KeepChunks, c.Dir = keep, dir
		return oneCopyScenario(b.Context(), b, c, size, 0.02, 30*time.Minute)
	}
	worst := func(dirs []int64, installed int64) float64 {
		var w float64
		for _, d := range dirs {
			w = max(w, float64(d)/float64(installed))
		}
		return w
	}
	for b.Loop() {
		drop, keep := run(false), run(true)
		seeded := len(drop.sp2.Manifest.ChunkIDs())
		for _, s := range drop.seeded {
			seeded = min(seeded, s)
		}
		b.ReportMetric(worst(drop.dataDir, drop.installed), "datadir/installed")
		b.ReportMetric(worst(drop.dataDir2, drop.installed2), "datadir/installed-next")
		b.ReportMetric(worst(keep.dataDir, keep.installed), "keep-datadir/installed")
		b.ReportMetric(worst(keep.dataDir2, keep.installed2), "keep-datadir/installed-next")
		b.ReportMetric(float64(drop.lan)/1e6, "next-lan-MB")
		b.ReportMetric(float64(keep.lan)/1e6, "keep-next-lan-MB")
		b.ReportMetric(float64(seeded)/float64(drop.shared), "seeded/shared")
		b.ReportMetric(drop.seconds, "next-s")
		b.ReportMetric(keep.seconds, "keep-next-s")
	}
}

// BenchmarkOneCopy64MiBOnDisk is benchOneCopy with a 64 MiB pack; the
// 512 MiB pack of the target is BenchmarkOneCopyScale512MiBOnDisk (build tag
// scale: `SCALE=OneCopyScale make bench`).
func BenchmarkOneCopy64MiBOnDisk(b *testing.B) { benchOneCopy(b, 64<<20) }
