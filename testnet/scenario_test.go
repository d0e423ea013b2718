package testnet

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// markerHook is the install hook of test releases: it leaves a marker file
// in the release directory.
var markerHook = []string{"/bin/sh", "-c", "echo installed > installed.marker"}

// startNetwork starts a network for a test and stops it when the test ends.
func startNetwork(t *testing.T, cfg Config) *Network {
	t.Helper()
	cfg.Dir = t.TempDir()
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 500 * time.Millisecond
	}
	n, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// publish publishes a generated pack of size bytes at the origin.
func publish(t *testing.T, n *Network, name string, seed uint64, size int64) *Release {
	t.Helper()
	sources, err := WritePack(t.TempDir(), seed, size)
	if err != nil {
		t.Fatal(err)
	}
	r, err := n.Publish(t.Context(), name, sources, markerHook)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func waitInstalled(t *testing.T, n *Network, name string, timeout time.Duration, sites ...*Site) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	if err := n.WaitInstalled(ctx, name, sites...); err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		for _, m := range s.Nodes {
			marker := filepath.Join(m.dir, "installed", name, "installed.marker")
			if _, err := os.Stat(marker); err != nil {
				t.Errorf("%s: hook left no marker: %v", m.Name, err)
			}
		}
	}
}

// wanRatio is the bytes into s over its WAN per byte of one copy of r.
func wanRatio(s *Site, r *Release) float64 {
	return float64(s.WANDown.Bytes()) / float64(r.StoredSize)
}

func TestASiteWithTenNodesFetchesOverItsWANOnceWhileAllTenWantTheRelease(t *testing.T) {
	n := startNetwork(t, Config{Sites: 1, NodesPerSite: 10, WAN: 4 << 20, WANLatency: 5 * time.Millisecond})
	r := publish(t, n, "SP-S041000005", 1, 4<<20)
	if err := n.Announce(1, r); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, r.Name, time.Minute, n.Sites...)
	ratio := wanRatio(n.Sites[0], r)
	t.Logf("pack %d bytes stored; WAN in %d bytes (%.3f copies)", r.StoredSize, n.Sites[0].WANDown.Bytes(), ratio)
	if ratio > 1.05 {
		t.Errorf("the site's WAN carried %.3f copies of the release, want at most 1.05", ratio)
	}
}
