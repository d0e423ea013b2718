package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

// openReadOnly opens dir read-only; the test closes it when it ends.
func openReadOnly(t testing.TB, dir string) *store.Disk {
	t.Helper()
	d, err := store.OpenDiskReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

// treeOf describes every file and directory under dir by its size, mode and
// modification time: what a write would change.
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	tree := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		tree[p] = fmt.Sprintf("%d %v %d", fi.Size(), fi.Mode(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func checkTreeUnchanged(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, was := range before {
		if now, ok := after[p]; !ok {
			t.Errorf("%s removed", p)
		} else if now != was {
			t.Errorf("%s changed: %s, was %s", p, now, was)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s created", p)
		}
	}
}

// putChunks puts n chunks of random content and returns their contents by
// ID, in the order put.
func putChunks(t *testing.T, s store.Putter, seed uint64, n, size int) ([]cid.Cid, map[cid.Cid][]byte) {
	t.Helper()
	var ids []cid.Cid
	content := make(map[cid.Cid][]byte)
	for i := range n {
		data := storetest.Random(seed<<32|uint64(i), size+i*16)
		id := manifest.ChunkID(data)
		if err := s.Put(t.Context(), id, data); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		content[id] = data
	}
	return ids, content
}

// TestDiskReadOnlyReadsBesideAWriterThatRepacks opens a read-only Disk on the
// dir of a writer in this process, then reads from it while the writer
// deletes, repacks and removes the packs it reads, and writes more: the
// reader is a Disk of its own, every read of a chunk it listed succeeds
// (kept chunks, and deleted ones from packs removed since it opened), nothing
// is reported corrupt, and a reader opened afterwards sees what the writer
// holds.
func TestDiskReadOnlyReadsBesideAWriterThatRepacks(t *testing.T) {
	dir := t.TempDir()
	opts := store.DiskOptions{PackSize: 256 << 10, OnCorrupt: func(id cid.Cid, err error) { t.Errorf("quarantined: %v", err) }}
	w := openDiskWith(t, dir, opts)
	ctx := t.Context()
	ids, content := putChunks(t, w, 1, 400, 8<<10)
	var keep, drop []cid.Cid
	for i, id := range ids {
		if i%2 == 0 {
			keep = append(keep, id)
		} else {
			drop = append(drop, id)
		}
	}
	r := openReadOnly(t, dir)
	if r == w || !r.ReadOnly() || w.ReadOnly() {
		t.Fatalf("OpenDiskReadOnly beside a writer in this process returned %p (read-only %v), the writer %p", r, r.ReadOnly(), w)
	}
	if got, want := listAll(t, r), listAll(t, w); !slices.Equal(got, want) {
		t.Fatalf("the reader lists %d chunks, the writer %d", len(got), len(want))
	}
	packsBefore := packFiles(t, dir)

	var stop atomic.Bool
	g, gctx := errgroup.WithContext(ctx)
	for n := range 3 {
		g.Go(func() error { // readers
			for i := 0; !stop.Load(); i++ {
				id := keep[(i*7+n)%len(keep)]
				if i%3 == 0 {
					id = drop[(i*5+n)%len(drop)]
				}
				got, err := r.Get(gctx, id)
				if err != nil {
					return fmt.Errorf("reader: %w", err)
				}
				if !bytes.Equal(got, content[id]) {
					return errors.New("reader: read other content")
				}
				if _, err := r.AppendFrame(gctx, id, nil); err != nil {
					return fmt.Errorf("reader: %w", err)
				}
			}
			return nil
		})
	}
	g.Go(func() error { // the writer goes on writing
		for i := 0; !stop.Load(); i++ {
			data := storetest.Text(uint64(i), 4<<10)
			if err := w.Put(gctx, manifest.ChunkID(data), data); err != nil {
				return err
			}
		}
		return nil
	})
	for round := range 4 {
		for i, id := range drop {
			if i%4 == round {
				if err := w.Delete(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
		}
		if _, _, err := w.Compact(); err != nil {
			t.Fatalf("compact: %v", err)
		}
	}
	stop.Store(true)
	if err := g.Wait(); err != nil {
		t.Fatalf("while the writer repacked: %v", err)
	}
	packsAfter := packFiles(t, dir)
	removed := 0
	for _, p := range packsBefore {
		if !slices.Contains(packsAfter, p) {
			removed++
		}
	}
	if removed == 0 {
		t.Fatalf("the writer removed none of the %d packs the reader loaded: nothing was tested", len(packsBefore))
	}
	if r.Quarantined() != 0 {
		t.Errorf("the reader quarantined %d chunks", r.Quarantined())
	}
	if err := w.Put(ctx, drop[0], content[drop[0]]); err != nil {
		t.Fatal(err)
	}
	if err := r.Put(ctx, drop[0], content[drop[0]]); !errors.Is(err, store.ErrReadOnly) {
		t.Errorf("Put to the reader beside a writer: %v, want ErrReadOnly", err)
	}
	later := openReadOnly(t, dir)
	if got, want := listAll(t, later), listAll(t, w); !slices.Equal(got, want) {
		t.Errorf("a reader opened after the repacks lists %d chunks, the writer %d", len(got), len(want))
	}
	t.Logf("the writer removed %d of the %d packs the reader loaded", removed, len(packsBefore))
}

// TestDiskReadOnlyWritesNothing opens read-only a dir that a killed writer
// left with a record cut short, an unfinished repack and a stale pin file:
// every write method fails with ErrReadOnly, reads and a GC dry run work,
// and no file or directory changes; a writable open then finds what to
// repair.
func TestDiskReadOnlyWritesNothing(t *testing.T) {
	dir := t.TempDir()
	w, err := store.OpenDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	ids, content := putChunks(t, w, 2, 3, 2<<10)
	if err := w.Pin(t.Context(), "pkg", ids[:1]); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(packFiles(t, dir)[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0x5e, 0x2a, 0x4d, 0x18, 70, 0, 0, 0, 'C', 36}) // a record cut short
	f.Close()
	for _, p := range []string{filepath.Join(dir, "packs", "00000000000000ff.pack.tmp"), filepath.Join(dir, "pins", ".tmp-old")} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	before := treeOf(t, dir)

	r := openReadOnly(t, dir)
	ctx := t.Context()
	data := storetest.Text(9, 1000)
	id := manifest.ChunkID(data)
	frame := store.EncodeFrame(nil, data)
	writes := map[string]func() error{
		"Put":             func() error { return r.Put(ctx, id, data) },
		"Put of a stored": func() error { return r.Put(ctx, ids[0], content[ids[0]]) },
		"PutFrame":        func() error { return r.PutFrame(ctx, id, frame) },
		"PutFrameContent": func() error { return r.PutFrameContent(ctx, id, frame, nil) },
		"Add": func() error {
			_, err := r.Add(ctx, data)
			return err
		},
		"Batch": func() error {
			_, err := r.NewBatch().Add(ctx, data)
			return err
		},
		"Delete":           func() error { return r.Delete(ctx, ids[1]) },
		"Delete of absent": func() error { return r.Delete(ctx, id) },
		"Pin":              func() error { return r.Pin(ctx, "pkg2", ids) },
		"Unpin":            func() error { return r.Unpin(ctx, "pkg") },
		"GC": func() error {
			_, err := store.GC(ctx, r, store.GCOptions{})
			return err
		},
		"Compact": func() error {
			_, _, err := r.Compact()
			return err
		},
	}
	for name, write := range writes {
		if err := write(); !errors.Is(err, store.ErrReadOnly) {
			t.Errorf("%s: %v, want ErrReadOnly", name, err)
		}
	}

	if got := listAll(t, r); len(got) != 3 {
		t.Errorf("the reader lists %d chunks, want 3", len(got))
	}
	for _, id := range ids {
		if got, err := r.Get(ctx, id); err != nil || !bytes.Equal(got, content[id]) {
			t.Errorf("Get: %v", err)
		}
	}
	if pins, err := r.Pins(ctx); err != nil || !slices.Equal(pins["pkg"], ids[:1]) {
		t.Errorf("Pins = %v, %v", pins, err)
	}
	if res, err := store.GC(ctx, r, store.GCOptions{DryRun: true}); err != nil || res.Deleted != 2 || res.Pinned != 1 {
		t.Errorf("GC dry run = %+v, %v; want 2 to delete, 1 pinned", res, err)
	}
	if err := r.Sync(ctx); err != nil {
		t.Errorf("Sync: %v", err)
	}
	if rec := r.Recovered(); rec != (store.Recovery{}) {
		t.Errorf("Recovered = %+v, want nothing", rec)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	checkTreeUnchanged(t, before, treeOf(t, dir))

	w = openDisk(t, dir)
	if rec := w.Recovered(); rec.TempsRemoved != 1 || rec.BytesCut != 10 {
		t.Errorf("a writable open after the reader: Recovered = %+v, want the temporary file and 10 bytes to repair", rec)
	}
}

// TestDiskReadOnlyReportsCorruptChunksAndQuarantinesNothing flips a byte of a
// frame in a sealed pack beside an idle writer: each read of the reader
// reports ErrCorrupt naming the chunk, and the chunk stays listed and on
// disk.
func TestDiskReadOnlyReportsCorruptChunksAndQuarantinesNothing(t *testing.T) {
	readers := map[string]func(t *testing.T, r *store.Disk, m *manifest.Manifest, victim cid.Cid) error{
		"Get": func(t *testing.T, r *store.Disk, _ *manifest.Manifest, victim cid.Cid) error {
			_, err := r.Get(t.Context(), victim)
			return err
		},
		"AppendFrame": func(t *testing.T, r *store.Disk, _ *manifest.Manifest, victim cid.Cid) error {
			_, err := r.AppendFrame(t.Context(), victim, nil)
			return err
		},
		"Fsck": func(t *testing.T, r *store.Disk, m *manifest.Manifest, victim cid.Cid) error {
			var problems []store.Problem
			if _, err := store.Fsck(t.Context(), r, func(p store.Problem) { problems = append(problems, p) }); err != nil {
				t.Fatalf("Fsck: %v", err)
			}
			if len(problems) != 1 || problems[0].CID != victim || problems[0].Kind != store.Corrupt {
				t.Fatalf("Fsck problems = %v, want only %s corrupt", problems, victim)
			}
			return problems[0].Err
		},
		"VerifyRelease": func(t *testing.T, r *store.Disk, m *manifest.Manifest, victim cid.Cid) error {
			var problems []store.Problem
			if _, err := store.VerifyRelease(t.Context(), r, m, store.VerifyOptions{Problem: func(p store.Problem) { problems = append(problems, p) }}); err != nil {
				t.Fatalf("VerifyRelease: %v", err)
			}
			if len(problems) == 0 || problems[0].CID != victim {
				t.Fatalf("VerifyRelease problems = %v, want %s first", problems, victim)
			}
			return problems[0].Err
		},
	}
	for name, read := range readers {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			w := openDiskWith(t, dir, store.DiskOptions{PackSize: 256 << 10, OnCorrupt: func(id cid.Cid, err error) { t.Errorf("the writer quarantined %s", id) }})
			ctx := t.Context()
			m := publish(t, w, "HF-S041000005-012", sampleFiles())
			if err := w.Pin(ctx, m.Name, m.ChunkIDs()); err != nil {
				t.Fatal(err)
			}
			packs := packFiles(t, dir)
			active := slices.Max(packs)
			var victim cid.Cid
			var loc store.Location
			for _, c := range m.Files[0].Chunks {
				l, err := w.Locate(ctx, c.CID)
				if err != nil {
					t.Fatal(err)
				}
				if l.Pack != active {
					victim, loc = c.CID, l
					break
				}
			}
			if !victim.Defined() {
				t.Fatalf("no chunk of %s in a sealed pack: %v", m.Files[0].Path, packs)
			}
			flip(t, loc.Pack, loc.Offset+loc.Size/2)
			before := treeOf(t, dir)
			r := openReadOnly(t, dir)
			err := read(t, r, m, victim)
			if !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), victim.String()) {
				t.Errorf("%s: %v, want ErrCorrupt naming %s", name, err, victim)
			}
			if ok, _ := r.Has(ctx, victim); !ok {
				t.Error("the reader dropped the corrupt chunk")
			}
			if _, err := r.Get(ctx, victim); !errors.Is(err, store.ErrCorrupt) {
				t.Errorf("Get again: %v, want ErrCorrupt", err)
			}
			if r.Quarantined() != 0 {
				t.Errorf("Quarantined() = %d", r.Quarantined())
			}
			checkTreeUnchanged(t, before, treeOf(t, dir))
		})
	}
}

// TestDiskReadOnlyTakesABadRecordOfTheActivePackForTorn: a record of the pack
// being written whose frame fails its checksum is what a power loss leaves,
// and a writable open drops it; a reader cannot tell it from one that rotted,
// and does not list it either, rather than report as corrupt a chunk the
// writer may not hold.
func TestDiskReadOnlyTakesABadRecordOfTheActivePackForTorn(t *testing.T) {
	dir := t.TempDir()
	w := openDisk(t, dir)
	ids, _ := putChunks(t, w, 5, 3, 8<<10)
	loc, err := w.Locate(t.Context(), ids[1])
	if err != nil {
		t.Fatal(err)
	}
	flip(t, loc.Pack, loc.Offset+loc.Size/2)
	r := openReadOnly(t, dir)
	if got := listAll(t, r); len(got) != 2 || slices.Contains(got, ids[1]) {
		t.Errorf("the reader lists %d chunks, want the 2 whole ones", len(got))
	}
	if _, err := r.Get(t.Context(), ids[1]); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get of the torn chunk: %v, want ErrNotFound", err)
	}
}

// TestDiskReadOnlyLoadsAgainWhenItsRecordIsBad: a reader holds the record of
// a chunk that rotted, and the writer has since quarantined it, stored it
// again or repacked it: the reader's read loads the index again and gives
// what the writer holds, the content or ErrNotFound, not ErrCorrupt.
func TestDiskReadOnlyLoadsAgainWhenItsRecordIsBad(t *testing.T) {
	tests := []struct {
		name string
		// writer acts on the victim, whose read quarantined it; it
		// returns whether the writer holds the victim afterwards.
		writer func(t *testing.T, w *store.Disk, victim cid.Cid, content []byte, packOf string, others []cid.Cid) bool
	}{
		{"quarantined", func(*testing.T, *store.Disk, cid.Cid, []byte, string, []cid.Cid) bool { return false }},
		{"stored again", func(t *testing.T, w *store.Disk, victim cid.Cid, content []byte, _ string, _ []cid.Cid) bool {
			if err := w.Put(t.Context(), victim, content); err != nil {
				t.Fatal(err)
			}
			return true
		}},
		{"stored again, its pack removed", func(t *testing.T, w *store.Disk, victim cid.Cid, content []byte, packOf string, others []cid.Cid) bool {
			if err := w.Put(t.Context(), victim, content); err != nil {
				t.Fatal(err)
			}
			for _, id := range others {
				if err := w.Delete(t.Context(), id); err != nil {
					t.Fatal(err)
				}
			}
			// Deletes start a compaction in the background; Compact
			// waits for it, and the pack is gone either way.
			if _, _, err := w.Compact(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(packOf); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the victim's pack is still there: %v", err)
			}
			return true
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			w := openDiskWith(t, dir, store.DiskOptions{PackSize: 64 << 10})
			ctx := t.Context()
			ids, content := putChunks(t, w, 3, 20, 8<<10)
			victim := ids[0] // in the first pack, sealed
			loc, err := w.Locate(ctx, victim)
			if err != nil {
				t.Fatal(err)
			}
			var others []cid.Cid // the rest of the victim's pack
			for _, id := range ids[1:] {
				if l, _ := w.Locate(ctx, id); l.Pack == loc.Pack {
					others = append(others, id)
				}
			}
			r := openReadOnly(t, dir)
			flip(t, loc.Pack, loc.Offset+loc.Size/2)
			if _, err := w.Get(ctx, victim); !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("the writer's Get of the victim: %v, want ErrCorrupt", err)
			}
			held := tt.writer(t, w, victim, content[victim], loc.Pack, others)
			got, err := r.Get(ctx, victim)
			switch {
			case held && (err != nil || !bytes.Equal(got, content[victim])):
				t.Errorf("the reader's Get: %v, want the content the writer holds", err)
			case !held && !errors.Is(err, store.ErrNotFound):
				t.Errorf("the reader's Get: %v, want ErrNotFound", err)
			}
			if r.Quarantined() != 0 {
				t.Errorf("the reader quarantined %d chunks", r.Quarantined())
			}
		})
	}
}

// TestDiskReadOnlyBesideAWriterProcess opens a store read-only again and
// again while a child process puts, deletes and repacks in it: the store is
// locked against a writable open but not against the reader, every chunk
// the reader lists reads whole, and it lists every chunk whose Put returned
// before it opened and that was never deleted.
func TestDiskReadOnlyBesideAWriterProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a writer process")
	}
	dir := t.TempDir()
	cmd, sc := child(t, "write", dir, 0)
	if !sc.Scan() || sc.Text() != "open" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the child did not open the store: %q", sc.Text())
	}
	var mu sync.Mutex
	var lines []string
	more := make(chan struct{}, 1)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
			select {
			case more <- struct{}{}:
			default:
			}
		}
	}()
	// waitLines waits until the child has said n lines; false if it ended
	// first.
	waitLines := func(n int) (int, bool) {
		for {
			mu.Lock()
			have := len(lines)
			mu.Unlock()
			if have >= n {
				return have, true
			}
			select {
			case <-more:
			case <-ended:
				return have, false
			}
		}
	}
	type round struct {
		said   int // lines the child had said when the reader opened
		listed map[cid.Cid]bool
	}
	var rounds []round
	for i := range 8 {
		said, ok := waitLines((i + 1) * 250)
		if !ok {
			break
		}
		if s, err := store.OpenDisk(dir); !errors.Is(err, store.ErrLocked) {
			t.Errorf("a writable open beside the child: %v, want ErrLocked", err)
			if err == nil {
				s.Close()
			}
		}
		r, err := store.OpenDiskReadOnly(dir)
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		ids := listAll(t, r)
		var g errgroup.Group
		g.SetLimit(4)
		for n, id := range ids {
			g.Go(func() error {
				if n%8 == 0 {
					_, err := r.Get(t.Context(), id) // decoded and hashed
					return err
				}
				_, err := r.AppendFrame(t.Context(), id, nil)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			t.Errorf("round %d: a chunk the reader listed: %v", i, err)
		}
		if r.Quarantined() != 0 {
			t.Errorf("round %d: the reader quarantined %d chunks", i, r.Quarantined())
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		listed := make(map[cid.Cid]bool, len(ids))
		for _, id := range ids {
			listed[id] = true
		}
		rounds = append(rounds, round{said, listed})
	}
	cmd.Process.Kill()
	cmd.Wait()
	<-ended
	if len(rounds) < 2 {
		t.Fatalf("the child ended after %d rounds", len(rounds))
	}
	deleted := make(map[string]bool) // ever, or about to be
	for _, line := range lines {
		if verb, id, _ := strings.Cut(line, " "); verb == "deleting" {
			deleted[id] = true
		}
	}
	for i, rd := range rounds {
		missing := 0
		for _, line := range lines[:rd.said] {
			verb, id, _ := strings.Cut(line, " ")
			if verb != "put" || deleted[id] {
				continue
			}
			c, _ := cid.Decode(id)
			if !rd.listed[c] {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("round %d: %d chunks put before the reader opened, never deleted, not listed", i, missing)
		}
		t.Logf("round %d: the reader opened after %d lines and listed %d chunks", i, rd.said, len(rd.listed))
	}
	s := openDisk(t, dir)
	if _, err := store.Fsck(t.Context(), s, func(p store.Problem) { t.Errorf("fsck after the child: %v", p) }); err != nil {
		t.Fatal(err)
	}
}

// TestDiskReadOnlyCloseReleasesItsFiles counts the descriptors this process
// holds on the packs directory: a reader holds one a pack until Close.
func TestDiskReadOnlyCloseReleasesItsFiles(t *testing.T) {
	dir := t.TempDir()
	w := openDiskWith(t, dir, store.DiskOptions{PackSize: 64 << 10})
	putChunks(t, w, 4, 30, 8<<10)
	packs := len(packFiles(t, dir))
	held := func() int {
		t.Helper()
		fds, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skipf("no /proc/self/fd: %v", err)
		}
		n := 0
		for _, fd := range fds {
			if p, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(p, filepath.Join(dir, "packs")) {
				n++
			}
		}
		return n
	}
	before := held()
	r, err := store.OpenDiskReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	open := held()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if after := held(); open-before != packs || after != before {
		t.Errorf("descriptors on the packs: %d with the writer, %d with a reader too, %d once it closed; want %d more while it was open", before, open, after, packs)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestDiskReadOnlyOpenFailsWithoutAPackStore: a dir with no store, or one
// still of the file-per-chunk layout, does not open read-only, and stays as
// it was.
func TestDiskReadOnlyOpenFailsWithoutAPackStore(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		check   func(err error) bool
	}{
		{"no store", func(*testing.T, string) {}, func(err error) bool { return errors.Is(err, fs.ErrNotExist) }},
		{"file-per-chunk layout", func(t *testing.T, dir string) {
			writeFileLayout(t, dir, 5)
			if err := os.MkdirAll(filepath.Join(dir, "packs"), 0o750); err != nil {
				t.Fatal(err)
			}
		}, func(err error) bool { return err != nil && strings.Contains(err.Error(), "file-per-chunk layout") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.prepare(t, dir)
			before := treeOf(t, dir)
			r, err := store.OpenDiskReadOnly(dir)
			if err == nil {
				r.Close()
			}
			if !tt.check(err) {
				t.Errorf("OpenDiskReadOnly: %v", err)
			}
			if after := treeOf(t, dir); !maps.Equal(before, after) {
				checkTreeUnchanged(t, before, after)
			}
		})
	}
}
