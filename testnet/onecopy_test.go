package testnet

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/lifecycle"
)

// fetchLog keeps the "fetch done" lines of the agents of a network, as the
// log says them.
type fetchLog struct {
	mu   sync.Mutex
	done []map[string]any
}

func (l *fetchLog) handler() slog.Handler { return &fetchLogHandler{log: l} }

// fetched returns the fetch done lines of the release called name.
func (l *fetchLog) fetched(name string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, d := range l.done {
		if d["release"] == name {
			out = append(out, d)
		}
	}
	return out
}

type fetchLogHandler struct {
	log   *fetchLog
	attrs []slog.Attr
}

func (h *fetchLogHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *fetchLogHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "agent: fetch done" {
		return nil
	}
	line := map[string]any{}
	for _, a := range h.attrs {
		line[a.Key] = a.Value.Any()
	}
	r.Attrs(func(a slog.Attr) bool {
		line[a.Key] = a.Value.Any()
		return true
	})
	h.log.mu.Lock()
	h.log.done = append(h.log.done, line)
	h.log.mu.Unlock()
	return nil
}

func (h *fetchLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &fetchLogHandler{log: h.log, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

func (h *fetchLogHandler) WithGroup(string) slog.Handler { return h }

// dirBytes sums the sizes of the regular files under dir.
func dirBytes(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return total
}

// oneCopy is what a site did with a service pack and its next version.
type oneCopy struct {
	sp1, sp2 *Release
	// installed is the bytes of SP1's files on a node; dataDir and packs
	// are each node's data dir and pack files once the site finished SP1.
	installed      int64
	dataDir, packs []int64
	// installed2 and dataDir2 are the same once the site finished SP2:
	// the files of SP2 and of SP1, retired and kept for a rollback.
	installed2 int64
	dataDir2   []int64
	// lan is the bytes into the site's nodes while they took SP2, wan
	// the bytes into the site over its WAN meanwhile.
	lan, wan int64
	// shared counts SP2's distinct chunks that SP1 has too; seeded and
	// fetched what each node's fetch of SP2 took from its installed files
	// and from peers.
	shared          int
	seeded, fetched []int
	seconds         float64 // from announcing SP2 until every node installed it
}

// oneCopyScenario runs a site of a proxy and cfg.NodesPerSite nodes (data
// dirs under cfg.Dir) through SP1, a generated pack of size bytes, then
// SP2, SP1 with fraction of its bytes changed in scattered places, and
// measures both. With cfg.KeepChunks unset the nodes let go of each
// release's chunks once the site finished it: the scenario waits for that
// (within timeout) before it measures.
func oneCopyScenario(ctx context.Context, tb testing.TB, cfg Config, size int64, fraction float64, timeout time.Duration) oneCopy {
	tb.Helper()
	logs := &fetchLog{}
	cfg.Sites, cfg.Logger = 1, slog.New(logs.handler())
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 500 * time.Millisecond
	}
	n, err := New(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	defer n.Close()
	s := n.Sites[0]
	packDir := filepath.Join(cfg.Dir, "pack")
	sources, err := WritePack(filepath.Join(packDir, "v1"), 21, size)
	if err != nil {
		tb.Fatal(err)
	}
	var out oneCopy
	if out.sp1, err = n.Publish(ctx, "SP-S041000005", sources, markerHook); err != nil {
		tb.Fatal(err)
	}
	if err := n.Announce(1, out.sp1); err != nil {
		tb.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := n.WaitInstalled(wctx, out.sp1, s); err != nil {
		tb.Fatal(err)
	}
	out.installed = dirBytes(filepath.Join(s.Nodes[0].dir, "installed", out.sp1.Name))
	// The site has finished a release once its proxy holds it and, where
	// nodes let go of chunks, each of them has let go and has the space
	// back.
	finish := func(r *Release) {
		tb.Helper()
		finished := func() (bool, string) {
			if !Replicated(s, r.Name) {
				return false, "the proxy does not hold " + r.Name + " whole"
			}
			if cfg.KeepChunks {
				return true, ""
			}
			for _, m := range s.Nodes {
				if held := StoredBytes(ctx, m.Agent.Peer().Store, r.Manifest); held > 0 {
					return false, fmt.Sprintf("%s holds %d bytes of %s's chunks", m.Name, held, r.Name)
				}
				if packs := dirBytes(filepath.Join(m.dir, "packs")); packs > out.installed/20 {
					return false, fmt.Sprintf("%s's packs hold %d bytes", m.Name, packs)
				}
			}
			return true, ""
		}
		for {
			ok, state := finished()
			if ok {
				return
			}
			select {
			case <-wctx.Done():
				tb.Fatalf("the site did not finish %s: %s", r.Name, state)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	finish(out.sp1)
	for _, m := range s.Nodes {
		out.dataDir = append(out.dataDir, dirBytes(m.dir))
		out.packs = append(out.packs, dirBytes(filepath.Join(m.dir, "packs")))
	}

	// SP2: the same pack with scattered changes.
	rng := rand.New(rand.NewPCG(5, 6))
	var v2 []agent.Source
	for _, src := range sources {
		local := filepath.Join(packDir, "v2", filepath.FromSlash(src.Path))
		if _, err := copyChanged(src.Local, local, fraction, rng); err != nil {
			tb.Fatal(err)
		}
		src.Local = local
		v2 = append(v2, src)
	}
	if out.sp2, err = n.Publish(ctx, "SP-S041000006", v2, markerHook); err != nil {
		tb.Fatal(err)
	}
	old := map[string]bool{}
	for _, id := range out.sp1.Manifest.ChunkIDs() {
		old[id.KeyString()] = true
	}
	for _, id := range out.sp2.Manifest.ChunkIDs() {
		if old[id.KeyString()] {
			out.shared++
		}
	}
	lanBefore := make([]int64, len(s.Nodes))
	for i, m := range s.Nodes {
		lanBefore[i] = m.Down.Bytes()
	}
	wanBefore := s.WANDown.Bytes()
	start := time.Now()
	if err := n.Announce(2, out.sp1, out.sp2); err != nil {
		tb.Fatal(err)
	}
	if err := n.WaitInstalled(wctx, out.sp2, s); err != nil {
		tb.Fatal(err)
	}
	out.seconds = time.Since(start).Seconds()
	for i, m := range s.Nodes {
		out.lan += m.Down.Bytes() - lanBefore[i]
	}
	out.wan = s.WANDown.Bytes() - wanBefore
	// Only nodes log their fetches so.
	for _, d := range logs.fetched(out.sp2.Name) {
		seeded, _ := d["chunks_seeded"].(int64)
		fetched, _ := d["chunks_fetched"].(int64)
		out.seeded = append(out.seeded, int(seeded))
		out.fetched = append(out.fetched, int(fetched))
	}
	finish(out.sp2)
	out.installed2 = dirBytes(filepath.Join(s.Nodes[0].dir, "installed"))
	for _, m := range s.Nodes {
		out.dataDir2 = append(out.dataDir2, dirBytes(m.dir))
	}
	if cfg.KeepChunks {
		// Checked once SP2 is in: nodes that let go do so within moments
		// of their install.
		for _, m := range s.Nodes {
			if held := StoredBytes(ctx, m.Agent.Peer().Store, out.sp1.Manifest); held != out.sp1.StoredSize {
				tb.Errorf("%s keeps chunks, yet holds %d of SP1's %d bytes", m.Name, held, out.sp1.StoredSize)
			}
		}
	}
	return out
}

func TestASiteKeepsOneCopyOfAServicePackAndTheNextTakesItsChunksFromTheInstalledFiles(t *testing.T) {
	const size, fraction = 8 << 20, 0.03
	run := func(keep bool) oneCopy {
		cfg := Config{NodesPerSite: 3, WAN: 16 << 20, WANLatency: 2 * time.Millisecond, KeepChunks: keep, Dir: t.TempDir()}
		return oneCopyScenario(t.Context(), t, cfg, size, fraction, 2*time.Minute)
	}
	drop, keep := run(false), run(true)

	for i := range drop.dataDir {
		t.Logf("node %d after SP1: data dir %d bytes, packs %d, installed %d (%.3f×)", i+1, drop.dataDir[i], drop.packs[i], drop.installed, float64(drop.dataDir[i])/float64(drop.installed))
		if limit := drop.installed * 11 / 10; drop.dataDir[i] > limit {
			t.Errorf("node %d's data dir holds %d bytes after SP1, more than 1.1 × the %d installed", i+1, drop.dataDir[i], drop.installed)
		}
	}
	for i := range drop.dataDir2 {
		t.Logf("node %d after SP2: data dir %d bytes, installed (SP2 and SP1 kept) %d (%.3f×)", i+1, drop.dataDir2[i], drop.installed2, float64(drop.dataDir2[i])/float64(drop.installed2))
		if limit := drop.installed2 * 11 / 10; drop.dataDir2[i] > limit {
			t.Errorf("node %d's data dir holds %d bytes after SP2, more than 1.1 × the %d installed", i+1, drop.dataDir2[i], drop.installed2)
		}
	}
	for i := range keep.dataDir {
		if keep.packs[i] < keep.sp1.StoredSize {
			t.Errorf("with --keep-chunks node %d's packs hold %d bytes, less than SP1's %d", i+1, keep.packs[i], keep.sp1.StoredSize)
		}
	}
	t.Logf("SP2 shares %d of its %d chunks with SP1", drop.shared, len(drop.sp2.Manifest.ChunkIDs()))
	t.Logf("LAN into the nodes for SP2: %d bytes letting go of chunks (seeded %v, fetched %v), %d keeping them (fetched %v); WAN %d and %d",
		drop.lan, drop.seeded, drop.fetched, keep.lan, keep.fetched, drop.wan, keep.wan)
	if len(drop.seeded) != len(drop.dataDir) {
		t.Fatalf("%d nodes logged their fetch of SP2, want %d", len(drop.seeded), len(drop.dataDir))
	}
	for i, seeded := range drop.seeded {
		if seeded < drop.shared*9/10 {
			t.Errorf("a node took %d of SP2's chunks from SP1's installed files, want most of the %d shared", seeded, drop.shared)
		}
		if drop.fetched[i] > len(drop.sp2.Manifest.ChunkIDs())-drop.shared+drop.shared/10 {
			t.Errorf("a node fetched %d chunks of SP2, %d of which are new", drop.fetched[i], len(drop.sp2.Manifest.ChunkIDs())-drop.shared)
		}
	}
	for i, fetched := range drop.fetched {
		if i < len(keep.fetched) && fetched > keep.fetched[i] {
			t.Errorf("a node letting go of chunks fetched %d chunks of SP2, one keeping them %d", fetched, keep.fetched[i])
		}
	}
	// Both move SP2's new chunks and the same protocol traffic; what the
	// swarm's duplicate requests at the end add varies by a tenth or so
	// from run to run.
	if drop.lan > keep.lan*6/5 {
		t.Errorf("the nodes took %d bytes over the LAN for SP2 after letting go of SP1's chunks, %d keeping them", drop.lan, keep.lan)
	}
}

func TestANodeThatLetsGoOfChunksKeepsThoseAFailedInstallNeedsAndTheRetryInstallsIt(t *testing.T) {
	// The node starts as agents before letting go did, keeping every
	// chunk; SP2, which shares most of its chunks with SP1, fails its
	// install; the node restarts letting go of chunks.
	n := startNetwork(t, Config{Sites: 1, NodesPerSite: 1, WAN: 32 << 20, KeepChunks: true})
	node := n.Sites[0].Nodes[0]
	sources, err := WritePack(filepath.Join(t.TempDir(), "v1"), 31, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	sp1, err := n.Publish(t.Context(), "SP-S041000005", sources, markerHook)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Announce(1, sp1); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, sp1, time.Minute, n.Sites[0])
	rng := rand.New(rand.NewPCG(7, 8))
	v2dir := t.TempDir()
	var v2 []agent.Source
	for _, src := range sources {
		local := filepath.Join(v2dir, filepath.FromSlash(src.Path))
		if _, err := copyChanged(src.Local, local, 0.03, rng); err != nil {
			t.Fatal(err)
		}
		src.Local = local
		v2 = append(v2, src)
	}
	allow := filepath.Join(node.dir, "allow")
	sp2, err := n.Publish(t.Context(), "SP-S041000006", v2, []string{"/bin/sh", "-c", "test -f " + allow + " && echo installed > installed.marker"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Announce(2, sp1, sp2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "SP2's install to fail", func() bool { return stateOf(node, sp2.Name).State == lifecycle.Failed })

	if err := n.Stop(node); err != nil {
		t.Fatal(err)
	}
	node.Reconfigure(func(c *agent.Config) { c.Node.KeepChunks = false })
	if err := n.Start(t.Context(), node); err != nil {
		t.Fatal(err)
	}
	p := node.Agent.Peer()
	eventually(t, 30*time.Second, "the node lets go of SP1's chunks", func() (bool, string) {
		pins, err := p.Store.Pins(t.Context())
		_, sp1Pinned := pins[sp1.Name]
		return err == nil && !sp1Pinned, fmt.Sprintf("pins %v, err %v", len(pins), err)
	})
	// What the failed install needs stays; the rest of SP1 goes, and no
	// chunk counts as missing.
	if held := StoredBytes(t.Context(), p.Store, sp2.Manifest); held != sp2.StoredSize {
		t.Errorf("the node holds %d of the %d bytes of chunks its failed install needs", held, sp2.StoredSize)
	}
	in2 := map[string]bool{}
	for _, id := range sp2.Manifest.ChunkIDs() {
		in2[id.KeyString()] = true
	}
	for _, id := range sp1.Manifest.ChunkIDs() {
		if ok, _ := p.Store.Has(t.Context(), id); ok && !in2[id.KeyString()] {
			t.Errorf("chunk %s of SP1 alone is still held", id)
			break
		}
	}
	rep, err := node.Agent.API().CheckStore(t.Context(), false)
	if err != nil || !rep.OK {
		t.Errorf("fsck after letting go: %+v %v", rep, err)
	}

	// The operator's retry installs SP2 from what the node holds.
	before := node.Down.Bytes()
	if err := os.WriteFile(allow, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Agent.API().(adminapi.Node).Install(t.Context(), sp2.Name); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, sp2, time.Minute, n.Sites[0])
	if again := node.Down.Bytes() - before; again > sp2.StoredSize/10 {
		t.Errorf("the retry took %d bytes over the LAN; SP2's %d bytes of chunks were held", again, sp2.StoredSize)
	}
	// SP2 then goes the way of SP1: its files are the one copy.
	eventually(t, 30*time.Second, "the node lets go of SP2's chunks", func() (bool, string) {
		held := StoredBytes(t.Context(), p.Store, sp2.Manifest)
		return held == 0, fmt.Sprintf("%d bytes held", held)
	})
	for _, r := range []*Release{sp1, sp2} {
		if _, err := os.Stat(filepath.Join(node.dir, "installed", r.Name, "installed.marker")); err != nil {
			t.Errorf("%s's installed files: %v", r.Name, err)
		}
	}
	if rep, err := node.Agent.API().CheckStore(t.Context(), false); err != nil || !rep.OK {
		t.Errorf("fsck at the end: %+v %v", rep, err)
	}
}
