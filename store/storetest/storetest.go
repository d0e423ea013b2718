// Package storetest is the conformance suite of store.Store: every
// implementation runs Run, so that they all keep the same contract.
package storetest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/klauspost/compress/zstd"
	mh "github.com/multiformats/go-multihash"
	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// Run runs the conformance suite. open returns a new, empty store for one
// subtest; it should register its own cleanup with t.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, open) })
	t.Run("List", func(t *testing.T) { testList(t, open) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, open) })
	t.Run("NotFound", func(t *testing.T) { testNotFound(t, open) })
	t.Run("PutMismatch", func(t *testing.T) { testPutMismatch(t, open) })
	t.Run("PutFrame", func(t *testing.T) { testPutFrame(t, open) })
	t.Run("PutFrameMismatch", func(t *testing.T) { testPutFrameMismatch(t, open) })
	t.Run("PutFrameCorrupt", func(t *testing.T) { testPutFrameCorrupt(t, open) })
	t.Run("IdempotentPut", func(t *testing.T) { testIdempotentPut(t, open) })
	t.Run("InvalidID", func(t *testing.T) { testInvalidID(t, open) })
	t.Run("Pins", func(t *testing.T) { testPins(t, open) })
	t.Run("ConcurrentPuts", func(t *testing.T) { testConcurrentPuts(t, open) })
	t.Run("GC", func(t *testing.T) { testGC(t, open) })
	t.Run("Fsck", func(t *testing.T) { testFsck(t, open) })
}

// Random returns n incompressible bytes determined by seed.
func Random(seed uint64, n int) []byte {
	b := make([]byte, n)
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rand.NewChaCha8(key).Read(b)
	return b
}

// Text returns n bytes of compressible, source-code-like text determined by
// seed.
func Text(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	words := []string{"func", "return", "err", "nil", "if", "ctx", "store", "chunk", "frame", "data", "{", "}", "(", ")", ":=", "\n\t", "\n"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		if r.IntN(4) == 0 {
			fmt.Fprintf(&b, "%d", r.IntN(1000))
		}
		b.WriteByte(' ')
	}
	return b.Bytes()[:n]
}

func put(t *testing.T, s store.Store, data []byte) cid.Cid {
	t.Helper()
	id := manifest.ChunkID(data)
	if err := s.Put(t.Context(), id, data); err != nil {
		t.Fatalf("Put: %v", err)
	}
	return id
}

func mustGet(t *testing.T, s store.Store, id cid.Cid, want []byte) {
	t.Helper()
	got, err := s.Get(t.Context(), id)
	if err != nil {
		t.Fatalf("Get %s: %v", id, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get %s: got %d bytes, want %d bytes (content differs)", id, len(got), len(want))
	}
}

func mustHave(t *testing.T, s store.Store, id cid.Cid, want bool) {
	t.Helper()
	ok, err := s.Has(t.Context(), id)
	if err != nil {
		t.Fatalf("Has %s: %v", id, err)
	}
	if ok != want {
		t.Fatalf("Has %s = %v, want %v", id, ok, want)
	}
}

func list(t *testing.T, s store.Store) []cid.Cid {
	t.Helper()
	var ids []cid.Cid
	if err := s.List(t.Context(), func(id cid.Cid) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatalf("List: %v", err)
	}
	sortIDs(ids)
	return ids
}

func sortIDs(ids []cid.Cid) {
	slices.SortFunc(ids, func(a, b cid.Cid) int { return strings.Compare(a.KeyString(), b.KeyString()) })
}

func syncStore(t *testing.T, s store.Store) {
	t.Helper()
	if sy, ok := s.(store.Syncer); ok {
		if err := sy.Sync(t.Context()); err != nil {
			t.Fatalf("Sync: %v", err)
		}
	}
}

func testRoundTrip(t *testing.T, open func(*testing.T) store.Store) {
	tests := []struct {
		name string
		data []byte
		// maxStored bounds the stored frame, to check that compressible
		// data is compressed and incompressible data is not inflated.
		maxStored int
	}{
		{"empty", nil, 16},
		{"tiny", []byte("hello"), 32},
		{"text", Text(1, 200<<10), 100 << 10},
		{"random", Random(2, 64<<10), 64<<10 + 64},
		{"random multi-block", Random(3, 1<<20+17), 1<<20 + 17 + 64},
		{"text multi-block", Text(4, 1<<20), 512 << 10},
		{"mixed", append(Text(5, 32<<10), Random(6, 32<<10)...), 60 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			before := time.Now()
			id := put(t, s, tt.data)
			after := time.Now()
			mustHave(t, s, id, true)
			mustGet(t, s, id, tt.data)
			frame, err := s.GetFrame(ctx, id)
			if err != nil {
				t.Fatalf("GetFrame: %v", err)
			}
			dec, err := store.DecodeFrame(nil, frame, manifest.MaxChunkSize)
			if err != nil || !bytes.Equal(dec, tt.data) {
				t.Fatalf("DecodeFrame(GetFrame) = %d bytes, %v; want the content", len(dec), err)
			}
			if len(frame) > tt.maxStored {
				t.Errorf("stored %d bytes for %d bytes of content, want at most %d", len(frame), len(tt.data), tt.maxStored)
			}
			info, err := s.Stat(ctx, id)
			if err != nil {
				t.Fatalf("Stat: %v", err)
			}
			if info.StoredSize != int64(len(frame)) {
				t.Errorf("Stat StoredSize = %d, frame is %d bytes", info.StoredSize, len(frame))
			}
			// File systems may round times; allow a second either way.
			if info.Modified.Before(before.Add(-time.Second)) || info.Modified.After(after.Add(time.Second)) {
				t.Errorf("Stat Modified = %v, want between %v and %v", info.Modified, before, after)
			}
			syncStore(t, s)
		})
	}
}

func testList(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	if ids := list(t, s); len(ids) != 0 {
		t.Fatalf("List of an empty store = %v", ids)
	}
	var want []cid.Cid
	for i := range 20 {
		want = append(want, put(t, s, Random(uint64(100+i), 1000+i)))
	}
	sortIDs(want)
	if got := list(t, s); !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	stop := errors.New("stop")
	n := 0
	err := s.List(t.Context(), func(cid.Cid) error {
		n++
		return stop
	})
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("List with fn failing: called %d times, returned %v; want 1 call and the error of fn", n, err)
	}
	// fn may delete the chunk it is given.
	if err := s.List(t.Context(), func(id cid.Cid) error { return s.Delete(t.Context(), id) }); err != nil {
		t.Fatalf("List deleting every chunk: %v", err)
	}
	if ids := list(t, s); len(ids) != 0 {
		t.Fatalf("List after deleting all = %v", ids)
	}
}

func testDelete(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	ctx := t.Context()
	a := put(t, s, Text(10, 5000))
	b := put(t, s, Text(11, 5000))
	if err := s.Delete(ctx, a); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	mustHave(t, s, a, false)
	if _, err := s.Get(ctx, a); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, a); err != nil {
		t.Errorf("Delete of an absent chunk: %v, want nil", err)
	}
	if got := list(t, s); !slices.Equal(got, []cid.Cid{b}) {
		t.Errorf("List after Delete = %v, want [%s]", got, b)
	}
	mustGet(t, s, b, Text(11, 5000))
	syncStore(t, s)
}

func testNotFound(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	ctx := t.Context()
	id := manifest.ChunkID([]byte("absent"))
	mustHave(t, s, id, false)
	if _, err := s.Get(ctx, id); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get: %v, want ErrNotFound", err)
	} else if !strings.Contains(err.Error(), id.String()) {
		t.Errorf("Get error %q does not name the chunk", err)
	}
	if _, err := s.GetFrame(ctx, id); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetFrame: %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, id); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Stat: %v, want ErrNotFound", err)
	}
	pins, err := s.Pins(ctx)
	if err != nil || len(pins) != 0 {
		t.Errorf("Pins of an empty store = %v, %v", pins, err)
	}
}

func testPutMismatch(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	id := manifest.ChunkID([]byte("the real content"))
	err := s.Put(t.Context(), id, []byte("other content"))
	if !errors.Is(err, store.ErrMismatch) {
		t.Fatalf("Put of content under another ID: %v, want ErrMismatch", err)
	}
	mustHave(t, s, id, false)
	mustHave(t, s, manifest.ChunkID([]byte("other content")), false)
	// A chunk larger than any chunk can be is refused even if its ID is
	// right: Get could not return it.
	big := make([]byte, manifest.MaxChunkSize+1)
	if err := s.Put(t.Context(), manifest.ChunkID(big), big); !errors.Is(err, manifest.ErrTooLarge) {
		t.Errorf("Put of %d bytes: %v, want manifest.ErrTooLarge", len(big), err)
	}
	if ids := list(t, s); len(ids) != 0 {
		t.Fatalf("List after refused Puts = %v", ids)
	}
}

func testPutFrame(t *testing.T, open func(*testing.T) store.Store) {
	foreign, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	text := Text(20, 100<<10)
	tests := []struct {
		name  string
		data  []byte
		frame []byte
	}{
		{"text", text, store.EncodeFrame(nil, text)},
		{"random", Random(21, 70<<10), store.EncodeFrame(nil, Random(21, 70<<10))},
		{"empty", nil, store.EncodeFrame(nil, nil)},
		// A frame from another encoder, with a checksum: stored as
		// received, never recompressed.
		{"foreign", text, foreign.EncodeAll(text, nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			id := manifest.ChunkID(tt.data)
			if err := s.PutFrame(ctx, id, tt.frame); err != nil {
				t.Fatalf("PutFrame: %v", err)
			}
			got, err := s.GetFrame(ctx, id)
			if err != nil {
				t.Fatalf("GetFrame: %v", err)
			}
			if !bytes.Equal(got, tt.frame) {
				t.Fatalf("GetFrame returned %d bytes, not the %d bytes of the frame put", len(got), len(tt.frame))
			}
			mustGet(t, s, id, tt.data)
			// A frame from one store goes into another as it is.
			s2 := open(t)
			if err := s2.PutFrame(ctx, id, got); err != nil {
				t.Fatalf("PutFrame of a GetFrame: %v", err)
			}
			mustGet(t, s2, id, tt.data)
		})
	}
}

func testPutFrameMismatch(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	id := manifest.ChunkID(Text(30, 1000))
	err := s.PutFrame(t.Context(), id, store.EncodeFrame(nil, Text(31, 1000)))
	if !errors.Is(err, store.ErrMismatch) {
		t.Fatalf("PutFrame of a frame of other content: %v, want ErrMismatch", err)
	}
	mustHave(t, s, id, false)
	if ids := list(t, s); len(ids) != 0 {
		t.Fatalf("List after a refused PutFrame = %v", ids)
	}
}

// rawFrameHeader returns a zstd frame header that declares size bytes of
// content.
func rawFrameHeader(size uint32) []byte {
	h := binary.LittleEndian.AppendUint32(nil, 0xFD2FB528)
	h = append(h, 2<<6|1<<5) // 4-byte content size, single segment
	return binary.LittleEndian.AppendUint32(h, size)
}

// blockHeader returns a zstd block header.
func blockHeader(last bool, typ, size int) []byte {
	h := uint32(size)<<3 | uint32(typ)<<1
	if last {
		h |= 1
	}
	return []byte{byte(h), byte(h >> 8), byte(h >> 16)}
}

func testPutFrameCorrupt(t *testing.T, open func(*testing.T) store.Store) {
	data := Text(40, 10000)
	good := store.EncodeFrame(nil, data)
	noSize, err := zstd.NewWriter(nil, zstd.WithSingleSegment(false), zstd.WithEncoderCRC(false))
	if err != nil {
		t.Fatal(err)
	}
	defer noSize.Close()
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name  string
		id    cid.Cid
		frame []byte
	}{
		{"empty input", manifest.ChunkID(nil), nil},
		{"garbage", manifest.ChunkID(data), []byte("this is not a zstd frame at all")},
		{"truncated", manifest.ChunkID(data), good[:len(good)-5]},
		{"header only", manifest.ChunkID(data), good[:6]},
		{"two frames", manifest.ChunkID(slices.Concat(data, data)), cat(good, good)},
		{"trailing bytes", manifest.ChunkID(data), cat(good, []byte{0})},
		{"skippable frame after", manifest.ChunkID(data), cat(good, []byte{0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0})},
		// A bomb: a few bytes that claim a content size beyond the cap.
		{"declared size over the cap", manifest.ChunkID(nil), cat(rawFrameHeader(manifest.MaxChunkSize+1), blockHeader(true, 1, 128<<10), []byte{'a'})},
		// A bomb that lies about its size: an RLE block of 128 KiB in a
		// frame that declares 10 bytes.
		{"content over the declared size", manifest.ChunkID(bytes.Repeat([]byte{'a'}, 10)), cat(rawFrameHeader(10), blockHeader(true, 1, 128<<10), []byte{'a'})},
		{"content under the declared size", manifest.ChunkID([]byte("abc")), cat(rawFrameHeader(10), blockHeader(true, 0, 3), []byte("abc"))},
		{"no content size", manifest.ChunkID([]byte("abc")), noSize.EncodeAll([]byte("abc"), nil)},
		{"reserved block type", manifest.ChunkID([]byte("abc")), cat(rawFrameHeader(3), blockHeader(true, 3, 3), []byte("abc"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			err := s.PutFrame(t.Context(), tt.id, tt.frame)
			if !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("PutFrame: %v, want ErrCorrupt", err)
			}
			mustHave(t, s, tt.id, false)
		})
	}
}

func testIdempotentPut(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	ctx := t.Context()
	data := Text(50, 20000)
	id := put(t, s, data)
	first, err := s.Stat(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, data)
	if err := s.PutFrame(ctx, id, store.EncodeFrame(nil, data)); err != nil {
		t.Fatalf("PutFrame of a present chunk: %v", err)
	}
	second, err := s.Stat(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if second.Modified.Before(first.Modified) {
		t.Errorf("Put of a present chunk moved Modified back from %v to %v", first.Modified, second.Modified)
	}
	if second.StoredSize != first.StoredSize {
		t.Errorf("Put of a present chunk changed its stored size from %d to %d", first.StoredSize, second.StoredSize)
	}
	if ids := list(t, s); len(ids) != 1 {
		t.Errorf("List after putting one chunk three times = %v", ids)
	}
	mustGet(t, s, id, data)
}

func testInvalidID(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	ctx := t.Context()
	data := []byte("content")
	sum, err := mh.Sum(data, mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]cid.Cid{
		"undefined": cid.Undef,
		"CIDv0":     cid.NewCidV0(sum),
		"dag-pb":    cid.NewCidV1(cid.DagProtobuf, sum),
	}
	for name, id := range ids {
		t.Run(name, func(t *testing.T) {
			if err := s.Put(ctx, id, data); err == nil {
				t.Errorf("Put accepted %s", name)
			}
			if err := s.PutFrame(ctx, id, store.EncodeFrame(nil, data)); err == nil {
				t.Errorf("PutFrame accepted %s", name)
			}
			if _, err := s.Get(ctx, id); err == nil {
				t.Errorf("Get accepted %s", name)
			}
			if ok, _ := s.Has(ctx, id); ok {
				t.Errorf("Has(%s) = true", name)
			}
			if err := s.Pin(ctx, "pkg", []cid.Cid{id}); err == nil {
				t.Errorf("Pin accepted %s", name)
			}
		})
	}
	if got := list(t, s); len(got) != 0 {
		t.Errorf("List = %v after only invalid Puts", got)
	}
}

func testPins(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	ctx := t.Context()
	a := manifest.ChunkID([]byte("a"))
	b := manifest.ChunkID([]byte("b"))
	c := manifest.ChunkID([]byte("c"))
	const hf, sp, generic = "HF-S041000005-012", "SP-S041000005", "tools_1.2+build-3"
	check := func(want map[string][]cid.Cid) {
		t.Helper()
		got, err := s.Pins(ctx)
		if err != nil {
			t.Fatalf("Pins: %v", err)
		}
		if len(got) != len(want) {
			t.Fatalf("Pins = %v, want %v", got, want)
		}
		for name, ids := range want {
			if !slices.Equal(got[name], ids) {
				t.Fatalf("Pins[%s] = %v, want %v", name, got[name], ids)
			}
		}
	}
	// Pins reference chunks whether or not they are stored.
	for name, ids := range map[string][]cid.Cid{hf: {a, b}, sp: {b, c}, generic: {}} {
		if err := s.Pin(ctx, name, ids); err != nil {
			t.Fatalf("Pin %s: %v", name, err)
		}
	}
	check(map[string][]cid.Cid{hf: {a, b}, sp: {b, c}, generic: {}})
	if err := s.Pin(ctx, hf, []cid.Cid{c}); err != nil {
		t.Fatal(err)
	}
	check(map[string][]cid.Cid{hf: {c}, sp: {b, c}, generic: {}})
	if err := s.Unpin(ctx, sp); err != nil {
		t.Fatal(err)
	}
	if err := s.Unpin(ctx, sp); err != nil {
		t.Errorf("Unpin of an absent pin: %v, want nil", err)
	}
	if err := s.Unpin(ctx, generic); err != nil {
		t.Fatal(err)
	}
	check(map[string][]cid.Cid{hf: {c}})
	for _, bad := range []string{"", ".", "..", "../x", ".hidden", "a/b", `a\b`, "a b", "-x", strings.Repeat("x", 200)} {
		if err := s.Pin(ctx, bad, []cid.Cid{a}); err == nil {
			t.Errorf("Pin accepted the name %q", bad)
		}
		if err := s.Unpin(ctx, bad); err == nil {
			t.Errorf("Unpin accepted the name %q", bad)
		}
	}
	check(map[string][]cid.Cid{hf: {c}})
}

func testConcurrentPuts(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	ctx := t.Context()
	same := Text(60, 50000)
	var distinct [][]byte
	for i := range 16 {
		if i%2 == 0 {
			distinct = append(distinct, Random(uint64(61+i), 20000))
		} else {
			distinct = append(distinct, Text(uint64(61+i), 20000))
		}
	}
	var g errgroup.Group
	for i := range 16 {
		g.Go(func() error { return s.Put(ctx, manifest.ChunkID(same), same) })
		g.Go(func() error { return s.Put(ctx, manifest.ChunkID(distinct[i]), distinct[i]) })
		g.Go(func() error {
			return s.PutFrame(ctx, manifest.ChunkID(distinct[i]), store.EncodeFrame(nil, distinct[i]))
		})
		g.Go(func() error {
			// Readers during writes see a chunk whole or not at all.
			_, err := s.Get(ctx, manifest.ChunkID(same))
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("concurrent Puts: %v", err)
	}
	syncStore(t, s)
	mustGet(t, s, manifest.ChunkID(same), same)
	for _, d := range distinct {
		mustGet(t, s, manifest.ChunkID(d), d)
	}
	if ids := list(t, s); len(ids) != 17 {
		t.Errorf("List has %d chunks, want 17", len(ids))
	}
}

func testGC(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	ctx := t.Context()
	pinned := put(t, s, Text(70, 3000))
	loose1 := put(t, s, Text(71, 3000))
	loose2 := put(t, s, Random(72, 3000))
	if err := s.Pin(ctx, "pkg", []cid.Cid{pinned}); err != nil {
		t.Fatal(err)
	}
	// Within the grace period nothing goes.
	res, err := store.GC(ctx, s, store.GCOptions{Grace: time.Hour})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if res.Pinned != 1 || res.Fresh != 2 || res.Deleted != 0 {
		t.Errorf("GC within grace = %+v, want 1 pinned, 2 fresh, 0 deleted", res)
	}
	// A dry run two hours later counts but keeps.
	later := time.Now().Add(2 * time.Hour)
	res, err = store.GC(ctx, s, store.GCOptions{Grace: time.Hour, Now: later, DryRun: true})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if res.Deleted != 2 || res.BytesFreed <= 0 {
		t.Errorf("dry-run GC = %+v, want 2 to delete", res)
	}
	mustHave(t, s, loose1, true)
	// Two hours later the unpinned chunks are old.
	res, err = store.GC(ctx, s, store.GCOptions{Grace: time.Hour, Now: later})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if res.Pinned != 1 || res.Deleted != 2 || res.BytesFreed <= 0 {
		t.Errorf("GC after grace = %+v, want 1 pinned, 2 deleted", res)
	}
	mustHave(t, s, pinned, true)
	mustHave(t, s, loose1, false)
	mustHave(t, s, loose2, false)
	// Zero grace deletes what is unpinned at once.
	loose3 := put(t, s, Text(73, 3000))
	if err := s.Unpin(ctx, "pkg"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.GC(ctx, s, store.GCOptions{Now: time.Now().Add(time.Second)}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	mustHave(t, s, pinned, false)
	mustHave(t, s, loose3, false)
}

func testFsck(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	ctx := t.Context()
	var ids []cid.Cid
	var size int64
	for i := range 10 {
		d := Text(uint64(80+i), 10000+i)
		ids = append(ids, put(t, s, d))
		size += int64(len(d))
	}
	absent := manifest.ChunkID([]byte("never stored"))
	if err := s.Pin(ctx, "HF-S041000005-012", []cid.Cid{ids[0], absent}); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(ctx, "HF-S041000005-013", []cid.Cid{absent, ids[1]}); err != nil {
		t.Fatal(err)
	}
	var problems []store.Problem
	res, err := store.Fsck(ctx, s, func(p store.Problem) { problems = append(problems, p) })
	if err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	if res.Chunks != 10 || res.Bytes != size || res.Corrupt != 0 || res.Missing != 1 {
		t.Errorf("Fsck = %+v, want 10 chunks of %d bytes, 1 missing", res, size)
	}
	want := store.Problem{CID: absent, Kind: store.Missing, Pins: []string{"HF-S041000005-012", "HF-S041000005-013"}}
	if len(problems) != 1 || problems[0].CID != want.CID || problems[0].Kind != want.Kind || !slices.Equal(problems[0].Pins, want.Pins) {
		t.Errorf("Fsck problems = %v, want [%v]", problems, want)
	}
}
