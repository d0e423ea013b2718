package testnet

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
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

func waitInstalled(t *testing.T, n *Network, r *Release, timeout time.Duration, sites ...*Site) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	if err := n.WaitInstalled(ctx, r, sites...); err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		for _, m := range s.Nodes {
			marker := filepath.Join(m.dir, "installed", r.Name, "installed.marker")
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
	waitInstalled(t, n, r, time.Minute, n.Sites...)
	ratio := wanRatio(n.Sites[0], r)
	t.Logf("pack %d bytes stored; WAN in %d bytes (%.3f copies)", r.StoredSize, n.Sites[0].WANDown.Bytes(), ratio)
	if ratio > 1.05 {
		t.Errorf("the site's WAN carried %.3f copies of the release, want at most 1.05", ratio)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTheProxyRestartsMidDistributionAndTheSiteStillCompletesResuming(t *testing.T) {
	n := startNetwork(t, Config{Sites: 1, NodesPerSite: 4, WAN: 2 << 20, WANLatency: 5 * time.Millisecond})
	s := n.Sites[0]
	r := publish(t, n, "SP-S041000005", 2, 8<<20)
	if err := n.Announce(1, r); err != nil {
		t.Fatal(err)
	}
	half := r.StoredSize / 2
	waitFor(t, time.Minute, "the proxy to hold half the release", func() bool {
		return StoredBytes(t.Context(), s.Proxy.Agent.Peer().Store, r.Manifest) >= half
	})
	held := StoredBytes(t.Context(), s.Proxy.Agent.Peer().Store, r.Manifest)
	if err := n.Stop(s.Proxy); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := n.Start(t.Context(), s.Proxy); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, r, 2*time.Minute, s)
	ratio := wanRatio(s, r)
	t.Logf("proxy held %d of %d bytes when stopped; the site's WAN carried %.3f copies in all", held, r.StoredSize, ratio)
	// Starting over would cost at least 1.5 copies: the proxy had half.
	if ratio > 1.35 {
		t.Errorf("the site's WAN carried %.3f copies: the proxy did not resume", ratio)
	}
}

func TestOneSiteIsPartitionedTheOthersCompleteThePartitionHealsAndItCatchesUp(t *testing.T) {
	n := startNetwork(t, Config{Sites: 3, NodesPerSite: 2, WAN: 4 << 20, SiblingProxies: true})
	cut := n.Sites[2]
	n.Partition(cut, true)
	before := cut.WANDown.Bytes() // the agents' first polls, before the cut
	r := publish(t, n, "SP-S041000005", 3, 2<<20)
	if err := n.Announce(1, r); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, r, time.Minute, n.Sites[:2]...)
	for _, m := range cut.Nodes {
		if Installed(m, r.Name) {
			t.Fatalf("%s installed the release through a partition", m.Name)
		}
	}
	if in := cut.WANDown.Bytes() - before; in != 0 {
		t.Fatalf("%d bytes crossed the partitioned WAN", in)
	}
	n.Partition(cut, false)
	waitInstalled(t, n, r, time.Minute, cut)
	for _, s := range n.Sites {
		t.Logf("%s: WAN in %.3f copies", s.Name, wanRatio(s, r))
	}
}

func TestANodeThatWasOfflineDuringTheAnnouncementCatchesUpByPolling(t *testing.T) {
	n := startNetwork(t, Config{Sites: 1, NodesPerSite: 3, WAN: 4 << 20})
	s := n.Sites[0]
	late := s.Nodes[2]
	if err := n.Stop(late); err != nil {
		t.Fatal(err)
	}
	r := publish(t, n, "SP-S041000005", 4, 2<<20)
	if err := n.Announce(1, r); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	on := &Site{Name: s.Name, Nodes: s.Nodes[:2]}
	if err := n.WaitInstalled(ctx, r, on); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(t.Context(), late); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, r, time.Minute, s)
	if ratio := wanRatio(s, r); ratio > 1.05 {
		t.Errorf("the site's WAN carried %.3f copies; the late node should have fetched inside the site", ratio)
	}
}

func TestProxiesOfTwoSitesShareChunksSoTheOriginSendsAboutOneCopyInAll(t *testing.T) {
	n := startNetwork(t, Config{Sites: 2, NodesPerSite: 2, WAN: 4 << 20, WANLatency: 5 * time.Millisecond, SiblingProxies: true})
	r := publish(t, n, "SP-S041000005", 5, 8<<20)
	if err := n.Announce(1, r); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, r, time.Minute, n.Sites...)
	origin := float64(n.Origin.Up.Bytes()) / float64(r.StoredSize)
	t.Logf("origin sent %.3f copies; sites received %.3f and %.3f", origin, wanRatio(n.Sites[0], r), wanRatio(n.Sites[1], r))
	// Without sharing the origin sends two copies; a proxy that gives up
	// on a slow sibling fetches a chunk from the origin instead, and a
	// loaded machine makes that happen a little more often.
	if origin > 1.25 {
		t.Errorf("the origin sent %.3f copies for two sites, want about one", origin)
	}
	for _, s := range n.Sites {
		if ratio := wanRatio(s, r); ratio > 1.05 {
			t.Errorf("%s's WAN carried %.3f copies, want at most 1.05", s.Name, ratio)
		}
	}
}

func TestEvictionNeverDropsAChunkATargetedNotYetInstalledReleaseNeeds(t *testing.T) {
	const quota = 1 << 20
	// The stopped node stays within the proxy's offline threshold, as a
	// node restarting for its install would: its pins hold.
	n := startNetwork(t, Config{Sites: 1, NodesPerSite: 2, WAN: 8 << 20, CacheQuota: quota, OfflineAfter: 1000})
	s := n.Sites[0]
	old := publish(t, n, "SP-S041000005", 6, 2<<20)
	if err := n.Announce(1, old); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, old, time.Minute, s)
	// Once every node reported the first release installed, the proxy
	// unpins it, and the quota evicts it.
	waitFor(t, 30*time.Second, "the installed release to be evicted down to the quota", func() bool {
		return StoredBytes(t.Context(), s.Proxy.Agent.Peer().Store, old.Manifest) <= quota
	})

	offline := s.Nodes[1]
	if err := n.Stop(offline); err != nil {
		t.Fatal(err)
	}
	next := publish(t, n, "SP-S041000006", 7, 2<<20)
	if err := n.Announce(2, old, next); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := n.WaitInstalled(ctx, next, &Site{Nodes: s.Nodes[:1]}); err != nil {
		t.Fatal(err)
	}
	// Over its quota, the proxy still holds every chunk of the release
	// the offline node has not installed.
	if held := StoredBytes(t.Context(), s.Proxy.Agent.Peer().Store, next.Manifest); held != next.StoredSize {
		t.Fatalf("the proxy holds %d of %d bytes of a release a site node still needs", held, next.StoredSize)
	}
	before := s.WANDown.Bytes()
	if err := n.Start(t.Context(), offline); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, next, time.Minute, s)
	if again := s.WANDown.Bytes() - before; again > next.StoredSize/20 {
		t.Errorf("the returning node's install pulled %d bytes over the WAN; the proxy should have served it", again)
	}
}

// rotChunk flips a bit in the middle of chunk id's frame in s's pack, as
// bit rot on the disk would.
func rotChunk(t *testing.T, s *store.Disk, id cid.Cid) {
	t.Helper()
	loc, err := s.Locate(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(loc.Pack, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, loc.Offset+loc.Size/2); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, loc.Offset+loc.Size/2); err != nil {
		t.Fatal(err)
	}
}

func TestAChunkDamagedOnANodesDiskIsFetchedAgainAndTheInstallGoesOn(t *testing.T) {
	// The node keeps its chunks, so that the one fetched again is seen
	// in its store after the install.
	n := startNetwork(t, Config{Sites: 1, NodesPerSite: 1, WAN: 16 << 20, KeepChunks: true})
	node := n.Sites[0].Nodes[0]
	r := publish(t, n, "SP-S041000005", 8, 2<<20)
	ix := n.NewIndex(1, r)
	ix.Deployments = append(ix.Deployments, manifest.Deployment{Release: r.Name, Mode: manifest.ModeAvailable})
	if err := n.SetIndex(ix); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the node to download the release", func() bool {
		return stateOf(node, r.Name).State == lifecycle.Downloaded
	})

	// Bit rot on the node's disk, in the middle of one chunk's frame.
	s := node.Agent.Peer().Store
	victim := r.Manifest.ChunkIDs()[len(r.Manifest.ChunkIDs())/2]
	rotChunk(t, s, victim)

	if _, err := node.Agent.API().(adminapi.Node).Install(t.Context(), r.Name); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, r, time.Minute, n.Sites[0])
	if q := s.Quarantined(); q != 1 {
		t.Errorf("the node quarantined %d chunks, want the one damaged", q)
	}
	if ok, err := s.Has(t.Context(), victim); !ok || err != nil {
		t.Errorf("the damaged chunk is not held again: %v %v", ok, err)
	}
	if _, err := s.Get(t.Context(), victim); err != nil {
		t.Errorf("the chunk fetched again does not read: %v", err)
	}
}

func TestAChunkDamagedAtTheOriginIsFetchedBackFromAProxyAndTheRolloutGoesOn(t *testing.T) {
	n := startNetwork(t, Config{Sites: 2, NodesPerSite: 1, WAN: 16 << 20})
	first, second := n.Sites[0], n.Sites[1]
	r := publish(t, n, "SP-S041000005", 9, 2<<20)
	r.Entry.Sites = []string{first.Name}
	if err := n.Announce(1, r); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, r, time.Minute, first)

	// Bit rot at the origin, in a chunk only the first site's proxy holds
	// a copy of.
	origin := n.Origin.Agent.Peer().Store
	victim := r.Manifest.ChunkIDs()[len(r.Manifest.ChunkIDs())/3]
	rotChunk(t, origin, victim)

	// The second site's proxy fetching it is what finds the damage.
	r.Entry.Sites = nil
	if err := n.Announce(2, r); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, r, time.Minute, second)
	if q := origin.Quarantined(); q != 1 {
		t.Errorf("the origin quarantined %d chunks, want the one damaged", q)
	}
	if _, err := origin.Get(t.Context(), victim); err != nil {
		t.Errorf("the origin does not hold the damaged chunk again: %v", err)
	}
}

func TestANodeKeepsTheLastServicePackForARollbackAndFreesTheRest(t *testing.T) {
	// The node keeps the chunks of what it installed, so that what it
	// keeps and frees shows in its store too; by default it lets go of
	// the chunks of every release its site holds, and keeps the files.
	n := startNetwork(t, Config{Sites: 1, NodesPerSite: 1, WAN: 32 << 20, KeepChunks: true})
	node := n.Sites[0].Nodes[0]
	sp1 := publish(t, n, "SP-S041000005", 11, 1<<20)
	hf1 := publish(t, n, "HF-S041000005-001", 12, 256<<10)
	sp2 := publish(t, n, "SP-S041000006", 13, 1<<20)
	sp3 := publish(t, n, "SP-S041000007", 14, 1<<20)
	// Each service pack in turn, the hotfix with the first.
	for v, rels := range [][]*Release{{sp1, hf1}, {sp1, hf1, sp2}, {sp1, hf1, sp2, sp3}} {
		if err := n.Announce(uint64(v+1), rels...); err != nil {
			t.Fatal(err)
		}
		waitInstalled(t, n, rels[len(rels)-1], time.Minute, n.Sites[0])
	}
	waitFor(t, 30*time.Second, "the retired releases to be retired", func() bool {
		return stateOf(node, sp2.Name).State == lifecycle.Retired && stateOf(node, sp1.Name).State == lifecycle.Retired
	})

	// The node lets go of the files and envelopes on its own; the chunks
	// it frees on its own after an hour's grace, or when an operator's gc
	// says 0.
	waitFor(t, 30*time.Second, "the node to remove the oldest service pack's files", func() bool {
		_, err := os.Stat(filepath.Join(node.dir, "installed", sp1.Name))
		return os.IsNotExist(err) && !node.Agent.Peer().Catalog.Has(hf1.Name)
	})
	rep, err := node.Agent.API().CollectGarbage(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	p := node.Agent.Peer()
	for _, c := range []struct {
		r    *Release
		kept bool
	}{{sp1, false}, {hf1, false}, {sp2, true}, {sp3, true}} {
		_, err := os.Stat(filepath.Join(node.dir, "installed", c.r.Name))
		if tree := err == nil; tree != c.kept {
			t.Errorf("%s: installed files held %v, want %v", c.r.Name, tree, c.kept)
		}
		if held := StoredBytes(t.Context(), p.Store, c.r.Manifest); (held == c.r.StoredSize) != c.kept {
			t.Errorf("%s: %d of %d bytes of chunks held; kept %v", c.r.Name, held, c.r.StoredSize, c.kept)
		}
		if c.kept != p.Catalog.Has(c.r.Name) {
			t.Errorf("%s: envelope held %v, want %v", c.r.Name, !c.kept, c.kept)
		}
		// What happened to each release stays known.
		if want := map[bool]string{false: lifecycle.Retired, true: stateOf(node, c.r.Name).State}[c.kept]; stateOf(node, c.r.Name).State != want {
			t.Errorf("%s: state %s, want %s", c.r.Name, stateOf(node, c.r.Name).State, want)
		}
	}
	if rep.RemovedChunks == 0 || rep.RemovedBytes == 0 {
		t.Errorf("gc reported %+v, want the chunks of the releases let go freed", rep)
	}
	var chunks int64
	_ = p.Store.List(t.Context(), func(id cid.Cid) error {
		if info, err := p.Store.Stat(t.Context(), id); err == nil {
			chunks += info.StoredSize
		}
		return nil
	})
	if want := sp2.StoredSize + sp3.StoredSize; chunks > want {
		t.Errorf("the node holds %d bytes of chunks, more than the %d of the two service packs it keeps", chunks, want)
	}
}

func TestANodeRemovesWhatAKilledAgentLeftWhenItStartsAgain(t *testing.T) {
	n := startNetwork(t, Config{Sites: 1, NodesPerSite: 1, WAN: 32 << 20})
	node := n.Sites[0].Nodes[0]
	if err := n.Stop(node); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{
		filepath.Join(node.dir, "installed", ".staging-SP-S041000005", "bin", "tool"),
		filepath.Join(node.dir, "installed", ".SP-S041000005.assembly-123", "x"),
		filepath.Join(node.dir, "releases", ".tmp-SP-S041000005.json-456"),
	}
	for _, f := range leftovers {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte("left by a killed agent"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Start(t.Context(), node); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the leftovers to be removed", func() bool {
		for _, f := range leftovers {
			if _, err := os.Stat(f); err == nil {
				return false
			}
		}
		return true
	})
	if _, err := os.Stat(filepath.Join(node.dir, "installed")); err != nil {
		t.Errorf("the installed directory itself went: %v", err)
	}
}
