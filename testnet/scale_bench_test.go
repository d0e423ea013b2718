//go:build scale

package testnet

import (
	"testing"
	"time"
)

// BenchmarkDemoScale20Sites25Nodes is 500 nodes, each verifying and
// installing, on this machine's cores; its baseline alone runs about seven
// minutes, so it sits behind the scale build tag (`SCALE=DemoScale make
// bench`).
func BenchmarkDemoScale20Sites25Nodes(b *testing.B) {
	benchDemo(b, DemoConfig{
		Sites: 20, NodesPerSite: 25, PackSize: 4 << 20,
		WAN: 1e6 / 8, NodeLink: 1e9 / 8, OriginUplink: 100e6 / 8,
		WANLatency: 20 * time.Millisecond, LANLatency: 250 * time.Microsecond,
	})
}

// BenchmarkOneCopyScale512MiBOnDisk is benchOneCopy with the 512 MiB pack of
// the target (docs/decisions/0051): a few minutes and some 8 GiB of disk.
func BenchmarkOneCopyScale512MiBOnDisk(b *testing.B) { benchOneCopy(b, 512<<20) }
