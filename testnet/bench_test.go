package testnet

import (
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
