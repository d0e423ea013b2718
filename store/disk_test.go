package store_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

func listAll(t *testing.T, s store.Store) []cid.Cid {
	t.Helper()
	var ids []cid.Cid
	if err := s.List(t.Context(), func(id cid.Cid) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatalf("List: %v", err)
	}
	slices.SortFunc(ids, func(a, b cid.Cid) int { return strings.Compare(a.KeyString(), b.KeyString()) })
	return ids
}

func packFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "packs", "*.pack"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// reopen closes d and opens its directory again, as a restarted agent would.
func reopen(t *testing.T, d *store.Disk, dir string, opts store.DiskOptions) *store.Disk {
	t.Helper()
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	d, err := store.OpenDiskWith(dir, opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestDiskPacksAreZstdStreams checks the layout: chunks go into packs, not
// files, and `zstd -d` reads a pack, sealed or being written, as the chunks
// it holds, one after another.
func TestDiskPacksAreZstdStreams(t *testing.T) {
	dir := t.TempDir()
	s := openDiskWith(t, dir, store.DiskOptions{PackSize: 300 << 10})
	var all []byte
	for i := range 6 {
		data := storetest.Text(uint64(i), 100<<10)
		if i%2 == 1 {
			data = storetest.Random(uint64(i), 100<<10)
		}
		all = append(all, data...)
		if err := s.Put(t.Context(), manifest.ChunkID(data), data); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	packs := packFiles(t, dir)
	if len(packs) != 2 {
		t.Fatalf("%d packs for 6 chunks of 100 KiB in packs of 300 KiB, want 2 (one sealed): %v", len(packs), packs)
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks")); !os.IsNotExist(err) {
		t.Errorf("a chunks directory: %v", err)
	}
	zstdCLI, err := exec.LookPath("zstd")
	if err != nil {
		t.Skip("zstd CLI not installed")
	}
	var got []byte
	for _, p := range packs {
		out, err := exec.Command(zstdCLI, "-d", "-c", "-q", p).Output()
		if err != nil {
			t.Fatalf("zstd -d %s: %v", filepath.Base(p), err)
		}
		got = append(got, out...)
	}
	if !bytes.Equal(got, all) {
		t.Errorf("zstd -d of the packs gave %d bytes, not the %d bytes of the chunks in order", len(got), len(all))
	}
}

// flip flips one byte of a file.
func flip(t *testing.T, p string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestDiskQuarantinesCorruptChunks flips one byte of a stored frame and
// checks that whichever read meets it first reports ErrCorrupt naming the
// chunk, and that the chunk is then absent (so a fetch fetches it again),
// reported once, still absent after a restart, and whole once put again.
func TestDiskQuarantinesCorruptChunks(t *testing.T) {
	t.Parallel()
	positions := map[string]func(int64) int64{
		"first":  func(int64) int64 { return 0 },
		"header": func(int64) int64 { return 4 },
		"middle": func(n int64) int64 { return n / 2 },
		"last":   func(n int64) int64 { return n - 1 },
	}
	readers := map[string]func(t *testing.T, s *store.Disk, m *manifest.Manifest, victim cid.Cid) error{
		"Get": func(t *testing.T, s *store.Disk, _ *manifest.Manifest, victim cid.Cid) error {
			_, err := s.Get(t.Context(), victim)
			return err
		},
		"AppendFrame": func(t *testing.T, s *store.Disk, _ *manifest.Manifest, victim cid.Cid) error {
			_, err := s.AppendFrame(t.Context(), victim, nil)
			return err
		},
		"Fsck": func(t *testing.T, s *store.Disk, m *manifest.Manifest, victim cid.Cid) error {
			var problems []store.Problem
			res, err := store.Fsck(t.Context(), s, func(p store.Problem) { problems = append(problems, p) })
			if err != nil {
				t.Fatalf("Fsck: %v", err)
			}
			if len(problems) != 1 || problems[0].CID != victim || problems[0].Kind != store.Corrupt || !slices.Equal(problems[0].Pins, []string{m.Name}) {
				t.Errorf("Fsck problems = %v, want only %s corrupt, pinned by %s", problems, victim, m.Name)
			}
			if res.Corrupt != 1 || res.Missing != 0 {
				t.Errorf("Fsck = %+v, want 1 corrupt and none missing", res)
			}
			return problems[0].Err
		},
		"Extract": func(t *testing.T, s *store.Disk, m *manifest.Manifest, victim cid.Cid) error {
			parent := t.TempDir()
			err := store.Extract(t.Context(), s, m, filepath.Join(parent, "release"), store.ExtractOptions{})
			checkNoLeftovers(t, parent)
			return err
		},
	}
	for _, kind := range []string{"compressed", "raw"} {
		for where, at := range positions {
			for reader, read := range readers {
				t.Run(kind+"/"+where+"/"+reader, func(t *testing.T) {
					dir := t.TempDir()
					var reported []cid.Cid
					var mu sync.Mutex
					opts := store.DiskOptions{OnCorrupt: func(id cid.Cid, err error) {
						mu.Lock()
						reported = append(reported, id)
						mu.Unlock()
					}}
					s := openDiskWith(t, dir, opts)
					ctx := t.Context()
					files := sampleFiles()
					m := publish(t, s, "HF-S041000005-012", files)
					if err := s.Pin(ctx, m.Name, m.ChunkIDs()); err != nil {
						t.Fatal(err)
					}
					// core.dll is text then random: its first chunk
					// compresses, its last does not.
					f := m.Files[3]
					victim := f.Chunks[0].CID
					if kind == "raw" {
						victim = f.Chunks[len(f.Chunks)-1].CID
					}
					content, err := s.Get(ctx, victim)
					if err != nil {
						t.Fatal(err)
					}
					loc, err := s.Locate(ctx, victim)
					if err != nil {
						t.Fatal(err)
					}
					flip(t, loc.Pack, loc.Offset+at(loc.Size))

					err = read(t, s, m, victim)
					if !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), victim.String()) {
						t.Errorf("%s: %v, want ErrCorrupt naming %s", reader, err, victim)
					}
					if ok, _ := s.Has(ctx, victim); ok {
						t.Error("Has reports the corrupt chunk present")
					}
					if _, err := s.Get(ctx, victim); !errors.Is(err, store.ErrNotFound) {
						t.Errorf("Get after quarantine: %v, want ErrNotFound", err)
					}
					if !slices.Equal(reported, []cid.Cid{victim}) || s.Quarantined() != 1 {
						t.Errorf("reported %v, Quarantined() = %d; want %s once", reported, s.Quarantined(), victim)
					}
					s = reopen(t, s, dir, opts)
					if ok, _ := s.Has(ctx, victim); ok {
						t.Error("the quarantined chunk is back after a restart")
					}
					if err := s.Put(ctx, victim, content); err != nil {
						t.Fatal(err)
					}
					s = reopen(t, s, dir, opts)
					if got, err := s.Get(ctx, victim); err != nil || !bytes.Equal(got, content) {
						t.Errorf("Get after putting the chunk again and a restart: %v", err)
					}
				})
			}
		}
	}
}

// TestDiskTruncatedPack cuts a sealed pack short: reads of the chunks cut
// off fail as corrupt, the chunks before the cut still read, and a restart
// keeps what is whole.
func TestDiskTruncatedPack(t *testing.T) {
	dir := t.TempDir()
	opts := store.DiskOptions{PackSize: 200 << 10}
	s := openDiskWith(t, dir, opts)
	var ids []cid.Cid
	for i := range 4 {
		data := storetest.Random(uint64(i), 60<<10)
		ids = append(ids, manifest.ChunkID(data))
		if err := s.Put(t.Context(), ids[i], data); err != nil {
			t.Fatal(err)
		}
	}
	loc, err := s.Locate(t.Context(), ids[3])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(loc.Pack, loc.Offset+100); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(t.Context(), ids[3]); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("Get of a chunk cut off: %v, want ErrCorrupt", err)
	}
	s = reopen(t, s, dir, opts)
	if got := listAll(t, s); len(got) != 3 {
		t.Errorf("after a restart %d chunks, want the 3 before the cut", len(got))
	}
	for _, id := range ids[:3] {
		if _, err := s.Get(t.Context(), id); err != nil {
			t.Error(err)
		}
	}
	if r := s.Recovered(); r.BytesCut != 100+82 {
		t.Errorf("Recovered = %+v, want the 182 bytes of the cut record", r)
	}
}

func TestDiskMissingPinnedChunk(t *testing.T) {
	t.Parallel()
	s := openDisk(t, t.TempDir())
	ctx := t.Context()
	m := publish(t, s, "HF-S041000005-012", sampleFiles())
	if err := s.Pin(ctx, m.Name, m.ChunkIDs()); err != nil {
		t.Fatal(err)
	}
	victim := m.Files[0].Chunks[0].CID
	if err := s.Delete(ctx, victim); err != nil {
		t.Fatal(err)
	}
	var problems []store.Problem
	res, err := store.Fsck(ctx, s, func(p store.Problem) { problems = append(problems, p) })
	if err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	if len(problems) != 1 || problems[0].CID != victim || problems[0].Kind != store.Missing || !slices.Equal(problems[0].Pins, []string{m.Name}) {
		t.Errorf("Fsck problems = %v, want %s missing, pinned by %s", problems, victim, m.Name)
	}
	if !strings.Contains(problems[0].String(), m.Name) || !strings.Contains(problems[0].String(), "missing") {
		t.Errorf("Problem.String() = %q", problems[0])
	}
	if res.Missing != 1 || res.Corrupt != 0 {
		t.Errorf("Fsck = %+v", res)
	}
}

// TestDiskRemovesWhatKilledWritersLeft: an unsealed repack output and a
// half-written record are gone after open; GC removes repack outputs and
// stale pin files, and says so.
func TestDiskRemovesWhatKilledWritersLeft(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	data := storetest.Text(1, 1000)
	id := manifest.ChunkID(data)
	if err := s.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(t.Context(), "pkg", []cid.Cid{id}); err != nil {
		t.Fatal(err)
	}
	active := packFiles(t, dir)[0]
	f, err := os.OpenFile(active, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0x5e, 0x2a, 0x4d, 0x18, 70, 0, 0, 0, 'C', 36}) // a record cut short
	f.Close()
	temp := filepath.Join(dir, "packs", "00000000000000ff.pack.tmp")
	if err := os.WriteFile(temp, []byte("half a repack"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, dir, store.DiskOptions{})
	if r := s.Recovered(); r.TempsRemoved != 1 || r.BytesCut != 10 {
		t.Errorf("Recovered = %+v, want 1 temporary file and 10 bytes removed", r)
	}
	if _, err := os.Stat(temp); !os.IsNotExist(err) {
		t.Errorf("repack output left after open: %v", err)
	}
	old := time.Now().Add(-2 * time.Hour)
	temps := map[string]bool{ // path: removed by GC
		filepath.Join(dir, "packs", "00000000000000fe.pack.tmp"): true,
		filepath.Join(dir, "pins", ".tmp-old"):                   true,
		filepath.Join(dir, "pins", ".tmp-new"):                   false,
	}
	for p := range temps {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(p, "new") {
			os.Chtimes(p, old, old)
		}
	}
	res, err := store.GC(t.Context(), s, store.GCOptions{Grace: time.Hour})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if res.TempsRemoved != 2 || res.Pinned != 1 || res.Deleted != 0 {
		t.Errorf("GC = %+v, want 2 temporary files removed and the pinned chunk kept", res)
	}
	for p, gone := range temps {
		if _, err := os.Stat(p); (err == nil) == gone {
			t.Errorf("%s: removed %v, stat after GC: %v", p, gone, err)
		}
	}
	if got, err := s.Get(t.Context(), id); err != nil || !bytes.Equal(got, data) {
		t.Errorf("Get: %v", err)
	}
}

// TestDiskCorruptPinStopsGC checks that GC deletes nothing when a pin file
// cannot be read: it would otherwise delete the chunks that pin protects.
func TestDiskCorruptPinStopsGC(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	data := storetest.Text(1, 1000)
	id := manifest.ChunkID(data)
	if err := s.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pins", "pkg"), []byte(id.String()+"\nnot a cid\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pins(t.Context()); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("Pins: %v, want ErrCorrupt", err)
	}
	if _, err := store.GC(t.Context(), s, store.GCOptions{}); err == nil {
		t.Error("GC succeeded with a corrupt pin")
	}
	if ok, _ := s.Has(t.Context(), id); !ok {
		t.Error("GC deleted a chunk while a pin was unreadable")
	}
}

// TestDiskOneProcessAtATime: a second open in this process shares the
// store; another process is refused (see TestDiskCrashLosesNothingAcknowledged
// for the lock across processes).
func TestDiskOneProcessAtATime(t *testing.T) {
	dir := t.TempDir()
	a := openDisk(t, dir)
	b := openDisk(t, filepath.Join(dir, ".", ""))
	if a != b {
		t.Fatal("a second open in the same process made a second store")
	}
	data := []byte("shared")
	if err := a.Put(t.Context(), manifest.ChunkID(data), data); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.Has(t.Context(), manifest.ChunkID(data)); !ok {
		t.Error("the second open does not see the first's chunk")
	}
}

// op is one step of TestDiskReopensToWhatItHeld.
type op int

const (
	opPut op = iota
	opDelete
	opGC
	opReopen
	opCompact
)

// TestDiskReopensToWhatItHeld runs random puts, deletes, GCs with repacks
// and restarts against a model, with packs of a few chunks: after every
// restart the store holds exactly the chunks the model does, each whole.
// Deleted chunks stay deleted however their tombstones and records were
// repacked, and after GCs that emptied the store and removed every pack,
// whose IDs a restart then gives out again.
func TestDiskReopensToWhatItHeld(t *testing.T) {
	for seed := range uint64(6) {
		t.Run("seed"+string(rune('0'+seed)), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 7))
			dir := t.TempDir()
			opts := store.DiskOptions{PackSize: 64 << 10}
			s := openDiskWith(t, dir, opts)
			ctx := t.Context()
			chunks := make([][]byte, 40)
			for i := range chunks {
				chunks[i] = storetest.Random(seed<<8|uint64(i), 4<<10+r.IntN(12<<10))
			}
			held := make(map[int]bool)
			var repacks [2]int
			defer func() { t.Logf("compactions removed %d packs and wrote %d", repacks[0], repacks[1]) }()
			for step := range 400 {
				i := r.IntN(len(chunks))
				id := manifest.ChunkID(chunks[i])
				switch o := op(r.IntN(20)); {
				case o < 9:
					if err := s.Put(ctx, id, chunks[i]); err != nil {
						t.Fatal(err)
					}
					held[i] = true
				case o < 16:
					if err := s.Delete(ctx, id); err != nil {
						t.Fatal(err)
					}
					delete(held, i)
				case o < 18:
					// A GC keeps about half, or now and then nothing:
					// every pack goes, the one being written too.
					everything := r.IntN(4) == 0
					var pinned []cid.Cid
					for j := range held {
						if !everything && r.IntN(2) == 0 {
							pinned = append(pinned, manifest.ChunkID(chunks[j]))
						}
					}
					if err := s.Pin(ctx, "pkg", pinned); err != nil {
						t.Fatal(err)
					}
					if _, err := store.GC(ctx, s, store.GCOptions{}); err != nil {
						t.Fatalf("step %d: GC: %v", step, err)
					}
					clear(held)
					for _, id := range pinned {
						held[slices.IndexFunc(chunks, func(c []byte) bool { return manifest.ChunkID(c) == id })] = true
					}
				case o < 19:
					removed, written, err := s.Compact()
					if err != nil {
						t.Fatalf("step %d: compact: %v", step, err)
					}
					repacks[0] += removed
					repacks[1] += written
				default:
					s = reopen(t, s, dir, opts)
				}
				if step%50 == 49 {
					s = reopen(t, s, dir, opts)
				}
				checkHolds(t, s, chunks, held)
			}
			s = reopen(t, s, dir, opts)
			checkHolds(t, s, chunks, held)
		})
	}
}

func checkHolds(t *testing.T, s *store.Disk, chunks [][]byte, held map[int]bool) {
	t.Helper()
	var want []cid.Cid
	for i := range held {
		want = append(want, manifest.ChunkID(chunks[i]))
	}
	slices.SortFunc(want, func(a, b cid.Cid) int { return strings.Compare(a.KeyString(), b.KeyString()) })
	if got := listAll(t, s); !slices.Equal(got, want) {
		t.Fatalf("store holds %d chunks, the model %d", len(got), len(want))
	}
	for i := range held {
		if got, err := s.Get(t.Context(), manifest.ChunkID(chunks[i])); err != nil || !bytes.Equal(got, chunks[i]) {
			t.Fatalf("Get: %v", err)
		}
	}
}

// TestDiskGCRepacksWhileReadersAndWritersRun deletes half of the chunks and
// compacts, again and again, while readers read the other half and writers
// add more: every read of a kept chunk succeeds, nothing is quarantined, and
// after a restart the store holds what it should.
func TestDiskGCRepacksWhileReadersAndWritersRun(t *testing.T) {
	dir := t.TempDir()
	opts := store.DiskOptions{PackSize: 256 << 10, OnCorrupt: func(id cid.Cid, err error) { t.Errorf("quarantined: %v", err) }}
	s := openDiskWith(t, dir, opts)
	ctx := t.Context()
	var keep, drop []cid.Cid
	content := make(map[cid.Cid][]byte)
	for i := range 400 {
		data := storetest.Random(uint64(i), 8<<10+i*16)
		id := manifest.ChunkID(data)
		content[id] = data
		if err := s.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			keep = append(keep, id)
		} else {
			drop = append(drop, id)
		}
	}
	var stop atomic.Bool
	var added sync.Map
	g, gctx := errgroup.WithContext(ctx)
	for w := range 3 {
		g.Go(func() error { // readers
			for i := 0; !stop.Load(); i++ {
				id := keep[(i*7+w)%len(keep)]
				got, err := s.Get(gctx, id)
				if err != nil {
					return err
				}
				if !bytes.Equal(got, content[id]) {
					return errors.New("read other content")
				}
				if _, err := s.AppendFrame(gctx, id, nil); err != nil {
					return err
				}
			}
			return nil
		})
	}
	g.Go(func() error { // a writer
		for i := 0; !stop.Load(); i++ {
			data := storetest.Text(uint64(i), 4<<10)
			id := manifest.ChunkID(data)
			if err := s.Put(gctx, id, data); err != nil {
				return err
			}
			added.Store(id, data)
		}
		return nil
	})
	for round := range 4 {
		for i, id := range drop {
			if i%4 == round {
				if err := s.Delete(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
		}
		if _, _, err := s.Compact(); err != nil {
			t.Fatalf("compact: %v", err)
		}
	}
	stop.Store(true)
	if err := g.Wait(); err != nil {
		t.Fatalf("while compacting: %v", err)
	}
	_, live, size := s.PackStats()
	if size > 3*live {
		t.Errorf("after compaction packs hold %d bytes of which %d live", size, live)
	}
	s = reopen(t, s, dir, opts)
	for _, id := range keep {
		if got, err := s.Get(ctx, id); err != nil || !bytes.Equal(got, content[id]) {
			t.Fatalf("kept chunk after restart: %v", err)
		}
	}
	for _, id := range drop {
		if ok, _ := s.Has(ctx, id); ok {
			t.Fatalf("deleted chunk back after restart")
		}
	}
	added.Range(func(k, v any) bool {
		if got, err := s.Get(ctx, k.(cid.Cid)); err != nil || !bytes.Equal(got, v.([]byte)) {
			t.Fatalf("chunk written during compaction: %v", err)
		}
		return true
	})
}

// TestCacheQuotaReclaimsPackSpace: a cache over a Disk evicts by deleting,
// and the Disk compacts by itself, so its packs stay near the quota.
func TestCacheQuotaReclaimsPackSpace(t *testing.T) {
	src, ids := upstreamWith(t, 200, 20<<10)
	dir := t.TempDir()
	d := openDiskWith(t, dir, store.DiskOptions{PackSize: 256 << 10})
	const quota = 512 << 10
	c, err := store.NewCache(t.Context(), d, src, quota)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := c.GetFrame(t.Context(), id); err != nil {
			t.Fatal(err)
		}
	}
	if st := c.Stats(); st.Bytes > quota {
		t.Errorf("cache holds %d bytes over a quota of %d", st.Bytes, quota)
	}
	// Compaction runs in the background; Close waits for it.
	d = reopen(t, d, dir, store.DiskOptions{PackSize: 256 << 10})
	if _, _, size := d.PackStats(); size > 4*quota {
		t.Errorf("packs hold %d bytes for a cache of quota %d", size, quota)
	}
}

// TestDiskGCGivesBackTheSpaceOfAStoreSmallerThanAPack publishes releases into
// a store whose one pack is still being written, unpins some and collects
// with no grace: once the pack is mostly dead, GC seals it and keeps only
// what is live, so that a store emptied holds next to no pack bytes; a pack
// mostly live is left as it is.
func TestDiskGCGivesBackTheSpaceOfAStoreSmallerThanAPack(t *testing.T) {
	small := []testFile{{"patch.bin", 0o644, storetest.Random(11, 100<<10)}}
	tests := []struct {
		name        string
		kept, freed []testFile // the releases pinned and unpinned
		reclaims    bool
	}{
		{"everything removed", nil, sampleFiles(), true},
		{"most removed", small, sampleFiles(), true},
		{"little removed", sampleFiles(), small, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openDisk(t, dir)
			ctx := t.Context()
			var keep []cid.Cid
			if tt.kept != nil {
				m := publish(t, s, "HF-S041000005-012", tt.kept)
				keep = m.ChunkIDs()
				if err := s.Pin(ctx, m.Name, keep); err != nil {
					t.Fatal(err)
				}
			}
			m := publish(t, s, "HF-S041000005-013", tt.freed)
			if err := s.Pin(ctx, m.Name, m.ChunkIDs()); err != nil {
				t.Fatal(err)
			}
			if err := s.Unpin(ctx, m.Name); err != nil {
				t.Fatal(err)
			}
			_, live, _ := s.PackStats()
			before := packBytes(t, dir)
			res, err := store.GC(ctx, s, store.GCOptions{})
			if err != nil {
				t.Fatalf("GC: %v", err)
			}
			after := packBytes(t, dir)
			_, keptLive, _ := s.PackStats()
			t.Logf("GC %+v; packs of %d bytes (%d live) before, %d (%d live) after", res, before, live, after, keptLive)
			if res.Deleted == 0 {
				t.Fatal("GC deleted nothing")
			}
			// GC's tombstones are reclaimed too, if their pack is.
			if shrank := before - after; res.SpaceReclaimed < shrank {
				t.Errorf("GC says it reclaimed %d bytes, the packs shrank by %d", res.SpaceReclaimed, shrank)
			}
			switch {
			case tt.reclaims && (res.SpaceReclaimed <= 0 || after > keptLive+keptLive/8+1<<10):
				t.Errorf("packs of %d bytes hold %d live after GC", after, keptLive)
			case !tt.reclaims && (res.SpaceReclaimed != 0 || res.PacksWritten != 0):
				t.Errorf("GC rewrote a pack mostly live: %+v", res)
			}
			s = reopen(t, s, dir, store.DiskOptions{})
			got := listAll(t, s)
			slices.SortFunc(keep, func(a, b cid.Cid) int { return strings.Compare(a.KeyString(), b.KeyString()) })
			if keep = slices.Compact(keep); !slices.Equal(got, keep) {
				t.Errorf("after GC and a restart the store holds %d chunks, want the %d pinned", len(got), len(keep))
			}
			for _, id := range keep {
				if _, err := s.Get(ctx, id); err != nil {
					t.Errorf("a pinned chunk after GC: %v", err)
				}
			}
		})
	}
}

// packBytes sums the sizes of the pack files in dir.
func packBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	for _, p := range packFiles(t, dir) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}
