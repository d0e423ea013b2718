package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
)

// A damaged disk hands the pack parsers any bytes: they must return errors,
// never panic, and never allocate more than the bytes they were given on
// the word of a length field. The seed corpora under
// testdata/fuzz/<FuzzName>/ are packs and records of a tiny store, written
// by go test -run TestFuzzSeeds -update; without -update, that test checks
// that the seeds still parse, so that the fuzzers start from the format as
// it is.

var update = flag.Bool("update", false, "rewrite the fuzz seed corpora in testdata/fuzz from a tiny store")

// FuzzReadIndex: readIndex (the footer and the index frame of a sealed
// pack) accepts only an index that points inside the pack, and what it
// accepts reads back the same once written again. Each input is also read
// with the checksum in its footer made to match, so that the fuzzer gets
// past it to the records.
func FuzzReadIndex(f *testing.F) {
	f.Fuzz(func(t *testing.T, pack []byte) {
		checkReadIndex(t, pack)
		checkReadIndex(t, resealIndex(pack))
	})
}

func checkReadIndex(t *testing.T, pack []byte) {
	idx, err := readIndex(bytes.NewReader(pack), int64(len(pack)))
	if err != nil {
		return
	}
	if idx.start < packHeaderSize || idx.start > int64(len(pack)) {
		t.Fatalf("index starts at %d of a pack of %d bytes", idx.start, len(pack))
	}
	for _, r := range idx.recs {
		if r.typ == recChunk && (r.off < packHeaderSize || r.off+r.frameLen() > idx.start) {
			t.Fatalf("a chunk record of %d bytes at %d, the index at %d", r.frameLen(), r.off, idx.start)
		}
	}
	again := appendIndex(bytes.Clone(pack[:idx.start]), idx.recs, idx.replaces)
	back, err := readIndex(bytes.NewReader(again), int64(len(again)))
	if err != nil {
		t.Fatalf("the index written again does not read: %v", err)
	}
	if back.start != idx.start || !slices.Equal(back.recs, idx.recs) || !slices.Equal(back.replaces, idx.replaces) {
		t.Fatal("the index written again reads otherwise")
	}
}

// resealIndex returns a copy of pack whose footer's checksum matches the
// index frame the footer's length points to, if it points to one.
func resealIndex(pack []byte) []byte {
	b := bytes.Clone(pack)
	if len(b) < footerSize {
		return b
	}
	foot := b[len(b)-footerSize:]
	if n := int(binary.LittleEndian.Uint32(foot)); n >= footerSize && n <= len(b) {
		binary.LittleEndian.PutUint64(foot[4:], xxhash.Sum64(b[len(b)-n:len(b)-footerSize+4]))
	}
	return b
}

// FuzzParsePayload: a record header is accepted whole or not at all, and
// only if it names a chunk; one whose checksum holds is exactly the bytes
// appendPayload makes of it.
func FuzzParsePayload(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		r, rest, err := parsePayload(p)
		unsummed, unsummedRest, uerr := parsePayloadSum(p, false)
		if uerr == nil && manifest.CheckChunkID(unsummed.id) != nil {
			t.Fatalf("a record of %s, which names no chunk", unsummed.id)
		}
		if err == nil {
			if uerr != nil || unsummed != r || len(unsummedRest) != len(rest) {
				t.Fatalf("a header whose checksum holds parses otherwise unchecked: %v", uerr)
			}
			if got := appendPayload(nil, &r); !bytes.Equal(got, p[:len(p)-len(rest)]) {
				t.Fatalf("header %x reads as a record that writes as %x", p[:len(p)-len(rest)], got)
			}
		}
		if uerr != nil {
			return
		}
		back, rest, err := parsePayload(appendPayload(nil, &unsummed))
		if err != nil || back != unsummed || len(rest) != 0 {
			t.Fatalf("a record written again does not read back: %v", err)
		}
	})
}

// FuzzScanPack: scanPack (the pack header and the records of a pack being
// written) keeps only records inside what it read, and only chunk frames
// that match their checksums. Each input is also scanned with its records'
// checksums made to match, so that the fuzzer gets past them.
func FuzzScanPack(f *testing.F) {
	f.Fuzz(func(t *testing.T, pack []byte) {
		checkScanPack(t, pack)
		checkScanPack(t, resealRecords(pack))
	})
}

func checkScanPack(t *testing.T, pack []byte) {
	res, err := scanPack(bytes.NewReader(pack), int64(len(pack)))
	if err != nil {
		return
	}
	if res.end < packHeaderSize || res.end > int64(len(pack)) {
		t.Fatalf("scan ends at %d of a pack of %d bytes", res.end, len(pack))
	}
	for _, r := range res.recs {
		if r.off < packHeaderSize || r.off >= res.end {
			t.Fatalf("a record at %d, outside [%d, %d)", r.off, packHeaderSize, res.end)
		}
		if r.typ != recChunk {
			continue
		}
		if end := r.off + r.frameLen(); end > res.end || xxhash.Sum64(pack[r.off:end]) != r.frameSum() {
			t.Fatalf("a chunk record at %d whose frame is not whole", r.off)
		}
	}
}

// resealRecords returns a copy of pack in which every record that scanPack
// would read up to the first it cannot has a header checksum, and a chunk
// record a frame checksum, that match.
func resealRecords(pack []byte) []byte {
	b := bytes.Clone(pack)
	pos := packHeaderSize
	for pos+frameHeader <= len(b) && binary.LittleEndian.Uint32(b[pos:]) == skippableMagic {
		n := int(binary.LittleEndian.Uint32(b[pos+4:]))
		if n < fixedHeader || n > fixedHeader+maxCIDLen+4 || pos+frameHeader+n > len(b) {
			break
		}
		p := b[pos+frameHeader : pos+frameHeader+n]
		body := fixedHeader + int(p[1])
		if body+4 != n {
			break
		}
		pos += frameHeader + n
		if p[0] == recChunk {
			fl := binary.LittleEndian.Uint64(p[18:])
			if fl > uint64(len(b)-pos) {
				break
			}
			binary.LittleEndian.PutUint64(p[26:], xxhash.Sum64(b[pos:pos+int(fl)]))
			pos += int(fl)
		}
		binary.LittleEndian.PutUint32(p[body:], uint32(xxhash.Sum64(p[:body])))
	}
	return b
}

// FuzzOpenPack opens a data dir whose one pack holds the input (its
// checksums made to match), read-only and then writable, and reads every
// chunk listed: errors, never a panic; and the read-only open leaves the
// pack as it was.
func FuzzOpenPack(f *testing.F) {
	f.Fuzz(func(t *testing.T, pack []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "packs", packName(1)+packExt)
		for _, p := range []string{filepath.Dir(path), filepath.Join(dir, "pins")} {
			if err := os.Mkdir(p, dirPerm); err != nil {
				t.Fatal(err)
			}
		}
		pack = resealIndex(resealRecords(pack))
		if err := os.WriteFile(path, pack, 0o640); err != nil {
			t.Fatal(err)
		}
		if r, err := OpenDiskReadOnly(dir); err == nil {
			readEveryChunk(t, r)
			r.Close()
		}
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, pack) {
			t.Fatalf("the read-only open changed the pack: %v", err)
		}
		if w, err := OpenDisk(dir); err == nil {
			readEveryChunk(t, w)
			w.Close()
		}
	})
}

func readEveryChunk(t *testing.T, d *Disk) {
	ctx := context.Background()
	err := d.List(ctx, func(id cid.Cid) error {
		if _, err := d.Stat(ctx, id); err != nil {
			return fmt.Errorf("Stat of a listed chunk: %w", err)
		}
		d.Get(ctx, id)
		d.AppendFrame(ctx, id, nil)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestFuzzSeeds checks, or with -update writes, the seed corpora: packs and
// records of a tiny store.
func TestFuzzSeeds(t *testing.T) {
	if *update {
		writeFuzzSeeds(t)
	}
	sealed := func(replaces bool) func([]byte) error {
		return func(b []byte) error {
			idx, err := readIndex(bytes.NewReader(b), int64(len(b)))
			if err == nil && replaces != (len(idx.replaces) > 0) {
				err = fmt.Errorf("names %d packs replaced", len(idx.replaces))
			}
			return err
		}
	}
	scanned := func(b []byte) error {
		res, err := scanPack(bytes.NewReader(b), int64(len(b)))
		types := make(map[byte]bool)
		for _, r := range res.recs {
			types[r.typ] = true
		}
		if err == nil && (!types[recChunk] || !types[recTomb] || !types[recTouch]) {
			err = fmt.Errorf("records of types %v, want a chunk, a tombstone and a touch", types)
		}
		return err
	}
	payload := func(typ byte) func([]byte) error {
		return func(b []byte) error {
			r, _, err := parsePayload(b)
			if err == nil && r.typ != typ {
				err = fmt.Errorf("a record of type %q", r.typ)
			}
			return err
		}
	}
	checks := map[string]map[string]func([]byte) error{
		"FuzzReadIndex":    {"sealed": sealed(false), "repacked": sealed(true)},
		"FuzzScanPack":     {"active": scanned, "sealed": sealed(false)},
		"FuzzParsePayload": {"chunk": payload(recChunk), "tombstone": payload(recTomb), "touch": payload(recTouch)},
		"FuzzOpenPack":     {"sealed": sealed(false), "active": scanned},
	}
	for target, seeds := range checks {
		for name, check := range seeds {
			p := filepath.Join("testdata", "fuzz", target, name)
			b, err := readCorpusFile(p)
			if err == nil {
				err = check(b)
			}
			if err != nil {
				t.Errorf("%s: %v (go test -run TestFuzzSeeds -update writes the seeds anew)", p, err)
			}
		}
	}
}

// writeFuzzSeeds writes the seed corpora from a tiny store: packs of 2 KiB
// holding compressed and raw frames, a tombstone, a touch and a repack.
func writeFuzzSeeds(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	d, err := OpenDiskWith(dir, DiskOptions{PackSize: 2 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var ids []cid.Cid
	for i := range 8 {
		data := text(uint64(i), 300)
		if i%2 == 1 {
			data = random(uint64(i), 200)
		}
		id := manifest.ChunkID(data)
		if _, _, err := d.store(id, EncodeFrame(nil, data), time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	// Tombstones written as Delete does, but for its compaction in the
	// background, which would take the pack being written.
	del := func(id cid.Cid) {
		e, ok := d.lookup(id)
		if !ok {
			t.Fatalf("%s not stored", id)
		}
		if err := d.remove(id, e); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids[:4] {
		del(id)
	}
	if _, err := d.compact(ctx); err != nil {
		t.Fatal(err)
	}
	// New chunks in a pack sealed as it is, then a pack being written
	// with a chunk, a tombstone and a touch.
	for i := range 3 {
		data := text(uint64(200+i), 300)
		if err := d.Put(ctx, manifest.ChunkID(data), data); err != nil {
			t.Fatal(err)
		}
	}
	d.amu.Lock()
	full := d.active
	d.active = nil
	d.amu.Unlock()
	if err := d.seal(full); err != nil {
		t.Fatal(err)
	}
	data := text(100, 300)
	id := manifest.ChunkID(data)
	if err := d.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	del(id)
	if err := d.Put(ctx, ids[7], random(7, 200)); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	seeds := make(map[string]map[string][]byte)
	add := func(target, name string, b []byte) {
		if seeds[target] == nil {
			seeds[target] = make(map[string][]byte)
		}
		seeds[target][name] = b
	}
	d.mu.RLock()
	packs := make([]*pack, 0, len(d.packs))
	for _, p := range d.packs {
		packs = append(packs, p)
	}
	d.mu.RUnlock()
	for _, p := range packs {
		b, err := os.ReadFile(p.path)
		if err != nil {
			t.Fatal(err)
		}
		idx, err := readIndex(bytes.NewReader(b), int64(len(b)))
		switch {
		case err == nil && len(idx.replaces) > 0:
			add("FuzzReadIndex", "repacked", b)
		case err == nil:
			add("FuzzReadIndex", "sealed", b)
			add("FuzzScanPack", "sealed", b)
			add("FuzzOpenPack", "sealed", b)
		default:
			add("FuzzScanPack", "active", b)
			add("FuzzOpenPack", "active", b)
			res, err := scanPack(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res.recs {
				name := map[byte]string{recChunk: "chunk", recTomb: "tombstone", recTouch: "touch"}[r.typ]
				add("FuzzParsePayload", name, appendPayload(nil, &r))
			}
		}
	}
	for target, files := range seeds {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// readCorpusFile reads a corpus file of one []byte value.
func readCorpusFile(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	s, ok := strings.CutPrefix(string(b), "go test fuzz v1\n[]byte(")
	s, ok2 := strings.CutSuffix(s, ")\n")
	if !ok || !ok2 {
		return nil, errors.New("not a corpus file of one []byte")
	}
	v, err := strconv.Unquote(s)
	return []byte(v), err
}
