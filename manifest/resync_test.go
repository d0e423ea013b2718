package manifest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

// The walker must never make a damaged or shifted archive cost more than
// plain FastCDC: after it loses its place it resumes at the next header
// (docs/decisions/0050). These tests change archives the ways the walk can
// lose its place and compare what the second version stores anew under
// both methods.

// edit is one change between two versions of a file: at off in the old
// version, del bytes are dropped and ins put in their place.
type edit struct {
	off, del int
	ins      []byte
}

// applyEdits returns data changed by edits, which must not overlap.
func applyEdits(data []byte, edits []edit) []byte {
	es := append([]edit(nil), edits...)
	sort.Slice(es, func(i, j int) bool { return es[i].off < es[j].off })
	out := make([]byte, 0, len(data)+len(data)/16)
	at := 0
	for _, e := range es {
		if e.off < at || e.off+e.del > len(data) {
			panic(fmt.Sprintf("edit at %d+%d overlaps the one before or runs past %d", e.off, e.del, len(data)))
		}
		out = append(append(out, data[at:e.off]...), e.ins...)
		at = e.off + e.del
	}
	return append(out, data[at:]...)
}

// damage is a way to change an archive that can make the walk lose its
// place.
type damage int

const (
	insertBytes    damage = iota // 1 to 6,000 bytes inserted anywhere
	insertBlocks                 // 1 to 8 whole 512-byte blocks inserted anywhere
	overwriteHdr                 // 100 to 20,000 random bytes over a member header
	damagedHdr                   // one byte of a member header changed
	memberCutShort               // a member's data loses 1 to 4,096 bytes at its end, its header unchanged
	numDamages
)

func (d damage) String() string {
	return [...]string{"inserted bytes", "inserted blocks", "overwrite across a header", "damaged header", "member cut short"}[d]
}

// testArchive is an archive and where its members are.
type testArchive struct {
	name    string
	data    []byte
	layout  []zipLayout
	dataLen []int // each member's data before padding or descriptor
}

// The kinds of archive the walker knows, for archiveOf.
const (
	fmtZip = iota
	fmtZipStreamed
	fmtZipUnsigned
	fmtUSTAR
	fmtPAX
	fmtGNU
	numFormats
)

// archiveOf writes entries as the given kind of archive.
func archiveOf(t testing.TB, es []zipEntry, format int) testArchive {
	t.Helper()
	lens := make([]int, len(es))
	for i, e := range es {
		lens[i] = len(e.data)
	}
	if format >= fmtUSTAR {
		f := []tar.Format{tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU}[format-fmtUSTAR]
		b, l := tarOf(t, f, time.Unix(1700000000, 0), es)
		return testArchive{"tar-" + f.String(), b, l, lens}
	}
	zs := append([]zipEntry(nil), es...)
	for i := range zs {
		zs[i].desc = []descStyle{descNone, descSigned, descUnsigned}[format]
	}
	b, l := buildZip(zs)
	return testArchive{[]string{"zip", "zip-streamed", "zip-unsigned-descriptors"}[format], b, l, lens}
}

// archiveFormats writes entries as every kind of archive the walker knows.
func archiveFormats(t testing.TB, es []zipEntry) []testArchive {
	var out []testArchive
	for f := range numFormats {
		out = append(out, archiveOf(t, es, f))
	}
	return out
}

// damageEdits returns n edits of kind d to a, one in each of n equal slots
// of the archive, so they do not overlap.
func damageEdits(r *rand.Rand, a testArchive, d damage, n int) []edit {
	return mixedEdits(r, a, n, func() damage { return d })
}

// mixedEdits returns n edits to a, one in each of n equal slots of the
// archive, each of the kind pick says.
func mixedEdits(r *rand.Rand, a testArchive, n int, pick func() damage) []edit {
	slot := len(a.data) / n
	var es []edit
	for i := range n {
		lo, hi := i*slot, (i+1)*slot
		d := pick()
		// The first member that starts in the slot, for the kinds that
		// aim at one.
		m := sort.Search(len(a.layout), func(j int) bool { return a.layout[j].header >= int64(lo) })
		switch d {
		case insertBytes:
			es = append(es, edit{off: lo + r.IntN(slot), ins: randBytes(r, 1+r.IntN(6000))})
		case insertBlocks:
			es = append(es, edit{off: lo + r.IntN(slot), ins: randBytes(r, tarBlock*(1+r.IntN(8)))})
		case overwriteHdr:
			if m == len(a.layout) {
				continue
			}
			n := 100 + r.IntN(20000)
			off := max(lo, int(a.layout[m].header)-r.IntN(n))
			n = min(n, hi-off, len(a.data)-off)
			if n > 0 {
				es = append(es, edit{off: off, del: n, ins: randBytes(r, n)})
			}
		case damagedHdr:
			if m == len(a.layout) {
				continue
			}
			l := a.layout[m]
			off := int(l.header) + r.IntN(int(l.data-l.header))
			if off < hi {
				es = append(es, edit{off: off, del: 1, ins: []byte{a.data[off] ^ byte(1+r.IntN(255))}})
			}
		case memberCutShort:
			for ; m < len(a.layout) && a.layout[m].header < int64(hi); m++ {
				if a.dataLen[m] > 1 {
					end := int(a.layout[m].data) + a.dataLen[m]
					n := 1 + r.IntN(min(a.dataLen[m]-1, 4096))
					es = append(es, edit{off: end - n, del: n})
					break
				}
			}
		}
	}
	return es
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// firstVersion is what a first version stored, under either method.
type firstVersion struct {
	archive, cdc map[[32]byte]bool
}

func storeFirst(t testing.TB, v1 []byte) firstVersion {
	t.Helper()
	return firstVersion{chunkHashes(t, v1, NewArchiveChunkerFunc), chunkHashes(t, v1, NewChunkerFunc)}
}

func chunkHashes(t testing.TB, data []byte, mk chunkerFunc) map[[32]byte]bool {
	t.Helper()
	have := map[[32]byte]bool{}
	c := mk(bytes.NewReader(data), DefaultChunkParams)
	for {
		chunk, err := c.Next()
		if errors.Is(err, io.EOF) {
			return have
		}
		if err != nil {
			t.Fatal(err)
		}
		have[sha256.Sum256(chunk)] = true
	}
}

// newBytes returns the bytes v2 stores anew after the first version under
// archive-aware and plain chunking, checking that v2 is chunked soundly:
// its chunks join to it, each at most Max, cut the same however it is read.
func (v1 firstVersion) newBytes(t testing.TB, v2 []byte) (archive, cdc int64) {
	t.Helper()
	checkJaggedReads(t, v2, DefaultChunkParams)
	count := func(have map[[32]byte]bool, mk chunkerFunc) (n int64) {
		c := mk(bytes.NewReader(v2), DefaultChunkParams)
		for {
			chunk, err := c.Next()
			if errors.Is(err, io.EOF) {
				return n
			}
			if err != nil {
				t.Fatal(err)
			}
			if !have[sha256.Sum256(chunk)] {
				n += int64(len(chunk))
			}
		}
	}
	return count(v1.archive, NewArchiveChunkerFunc), count(v1.cdc, NewChunkerFunc)
}

// newVsCDC is newBytes for a single pair.
func newVsCDC(t testing.TB, v1, v2 []byte) (archive, cdc int64) {
	t.Helper()
	return storeFirst(t, v1).newBytes(t, v2)
}

// jaggedReader delivers its bytes in reads of pseudo-random sizes from 1
// to 5,000 bytes.
type jaggedReader struct {
	r   io.Reader
	rng *rand.Rand
}

func (j *jaggedReader) Read(p []byte) (int, error) {
	if n := 1 + j.rng.IntN(5000); len(p) > n {
		p = p[:n]
	}
	return j.r.Read(p)
}

// checkJaggedReads is checkRoundTrip for inputs too large to read a byte at
// a time: the chunks of jagged reads join to data and are cut where whole
// reads cut.
func checkJaggedReads(t testing.TB, data []byte, p ChunkParams) {
	t.Helper()
	whole, _ := archiveChunks(t, bytes.NewReader(data), p)
	var joined []byte
	var sizes []int
	c := NewArchiveChunker(&jaggedReader{r: bytes.NewReader(data), rng: rand.New(rand.NewPCG(uint64(len(data)), 54))}, p)
	for {
		chunk, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		joined = append(joined, chunk...)
		sizes = append(sizes, len(chunk))
	}
	if !bytes.Equal(joined, data) {
		t.Fatalf("chunks join to %d bytes that differ from the %d-byte input", len(joined), len(data))
	}
	if fmt.Sprint(sizes) != fmt.Sprint(whole) {
		t.Fatalf("jagged reads cut %d chunks, whole reads %d", len(sizes), len(whole))
	}
}

// resyncSlack is how much more than plain FastCDC the archive method may
// store anew for a pair (the bound).
const resyncSlack = 1.05

// TestArchiveChunkerResyncsAfterDamage: every way of damaging every kind of
// archive costs at most 1.05 × what plain FastCDC stores anew for the same
// pair, each pair carrying enough edits that the luck of where chunks fall
// inside large members evens out.
func TestArchiveChunkerResyncsAfterDamage(t *testing.T) {
	members, edits := 220, 24
	if raceEnabled || testing.Short() {
		members, edits = 80, 12
	}
	for _, a := range archiveFormats(t, treeEntries("1.0.0", members, nil, descNone)) {
		for d := range numDamages {
			t.Run(a.name+"/"+d.String(), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(d), 50))
				v2 := applyEdits(a.data, damageEdits(r, a, d, edits))
				archive, cdc := newVsCDC(t, a.data, v2)
				t.Logf("new bytes %d, plain FastCDC %d: %.3f", archive, cdc, float64(archive)/float64(cdc))
				if float64(archive) > resyncSlack*float64(cdc) {
					t.Errorf("stores %d bytes anew, plain FastCDC %d: want at most %.2f ×", archive, cdc, resyncSlack)
				}
			})
		}
	}
}

// TestArchiveChunkerEndsOfArchives: data appended to an archive costs only
// itself, as the central directory or the tar's end blocks are chunks of
// their own; a truncated archive costs a part of its last chunk under either
// method, so truncation is judged over many cut points.
func TestArchiveChunkerEndsOfArchives(t *testing.T) {
	members, cuts := 160, 16
	if raceEnabled || testing.Short() {
		members, cuts = 80, 6
	}
	for _, a := range archiveFormats(t, treeEntries("1.0.0", members, nil, descNone)) {
		t.Run(a.name+"/appended", func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 51))
			tail := randBytes(r, 1+r.IntN(100_000))
			archive, cdc := newVsCDC(t, a.data, append(append([]byte(nil), a.data...), tail...))
			if archive != int64(len(tail)) || archive > cdc {
				t.Errorf("appending %d bytes stores %d anew, plain FastCDC %d: want just the %d", len(tail), archive, cdc, len(tail))
			}
		})
		t.Run(a.name+"/truncated", func(t *testing.T) {
			r := rand.New(rand.NewPCG(2, 51))
			v1 := storeFirst(t, a.data)
			var archive, cdc int64
			for range cuts {
				v2 := a.data[:len(a.data)/4+r.IntN(len(a.data)*3/4)]
				na, nc := v1.newBytes(t, v2)
				archive += na
				cdc += nc
			}
			t.Logf("%d truncations: new bytes %d, plain FastCDC %d", cuts, archive, cdc)
			if float64(archive) > resyncSlack*float64(cdc) {
				t.Errorf("%d truncations store %d bytes anew, plain FastCDC %d: want at most %.2f ×", cuts, archive, cdc, resyncSlack)
			}
		})
	}
}

// randomEntries is an archive's members at random: mostly small files,
// some of tens of KiB and a few large ones, stored or compressed.
func randomEntries(r *rand.Rand, n int) []zipEntry {
	es := []zipEntry{{name: "pack/"}}
	for i := range n {
		size := 100 + r.IntN(8000)
		switch p := r.IntN(100); {
		case p < 3:
			size = 200<<10 + r.IntN(800<<10)
		case p < 15:
			size = 8<<10 + r.IntN(56<<10)
		}
		es = append(es, zipEntry{
			name:   fmt.Sprintf("pack/dir%02d/file%04d.bin", r.IntN(20), i),
			data:   randBytes(r, size),
			method: uint16(8 * r.IntN(2)),
		})
	}
	return es
}

// TestArchiveChunkerNeverWorseThanCDC: random archives of every kind,
// damaged at random in 16 to 32 places by a mix of every kind of damage,
// some also truncated or appended to: each pair stores at most 1.05 × what
// plain FastCDC stores anew. The seeds are fixed, so a failure reproduces.
func TestArchiveChunkerNeverWorseThanCDC(t *testing.T) {
	seeds := 24
	if raceEnabled || testing.Short() {
		seeds = 4
	}
	var sumArchive, sumCDC int64
	for seed := range uint64(seeds) {
		r := rand.New(rand.NewPCG(seed, 52))
		a := archiveOf(t, randomEntries(r, 100+r.IntN(200)), r.IntN(numFormats))
		es := mixedEdits(r, a, 16+r.IntN(17), func() damage { return damage(r.IntN(int(numDamages))) })
		v2 := applyEdits(a.data, es)
		switch r.IntN(4) {
		case 0:
			v2 = v2[:len(v2)-r.IntN(len(v2)/8)]
		case 1:
			v2 = append(v2, randBytes(r, r.IntN(50_000))...)
		}
		archive, cdc := newVsCDC(t, a.data, v2)
		sumArchive += archive
		sumCDC += cdc
		t.Logf("seed %d, %s, %d edits: new bytes %d, plain FastCDC %d: %.3f", seed, a.name, len(es), archive, cdc, float64(archive)/float64(cdc))
		if float64(archive) > resyncSlack*float64(cdc) {
			t.Errorf("seed %d (%s): stores %d bytes anew, plain FastCDC %d: want at most %.2f ×", seed, a.name, archive, cdc, resyncSlack)
		}
	}
	t.Logf("all seeds: new bytes %d, plain FastCDC %d: %.3f", sumArchive, sumCDC, float64(sumArchive)/float64(sumCDC))
}

// TestArchiveChunkerLargeMembersAsCDC: where every member is larger than a
// chunk, both methods cut the same data by the same FastCDC, only starting
// at different places, and which stores less for one pair is chance; over
// many pairs the archive method stores no more.
func TestArchiveChunkerLargeMembersAsCDC(t *testing.T) {
	seeds := 16
	if raceEnabled || testing.Short() {
		seeds = 3
	}
	var es []zipEntry
	for i := range 12 {
		es = append(es, zipEntry{name: fmt.Sprintf("big/%02d", i), data: prngBytes(uint64(i), 300<<10+i*37000), method: uint16(8 * (i % 2))})
	}
	for _, format := range []int{fmtZipStreamed, fmtPAX} {
		a := archiveOf(t, es, format)
		t.Run(a.name, func(t *testing.T) {
			v1 := storeFirst(t, a.data)
			var archive, cdc int64
			for seed := range uint64(seeds) {
				r := rand.New(rand.NewPCG(seed, 53))
				na, nc := v1.newBytes(t, applyEdits(a.data, damageEdits(r, a, insertBytes, 16)))
				archive += na
				cdc += nc
			}
			t.Logf("%d pairs: new bytes %d, plain FastCDC %d: %.3f", seeds, archive, cdc, float64(archive)/float64(cdc))
			if float64(archive) > resyncSlack*float64(cdc) {
				t.Errorf("%d pairs store %d bytes anew, plain FastCDC %d: want at most %.2f ×", seeds, archive, cdc, resyncSlack)
			}
		})
	}
}

// TestArchiveChunkerResumesAtNextHeader pins how the walk resumes: after a
// damaged header, an insertion that shifts every later header off its
// 512-byte grid, or a member shorter than its header says, every later
// member's header and data are cut exactly where they are.
func TestArchiveChunkerResumesAtNextHeader(t *testing.T) {
	es := treeEntries("1.0.0", 60, nil, descNone)
	for _, a := range archiveFormats(t, es) {
		victim := a.layout[20]
		cases := map[string]edit{
			"damaged header":   {off: int(victim.header) + 3, del: 1, ins: []byte{a.data[victim.header+3] ^ 0x55}},
			"inserted 333":     {off: int(victim.data) + 10, ins: bytes.Repeat([]byte{'x'}, 333)},
			"inserted in head": {off: int(victim.header) + 1, ins: []byte("shift")},
			"member cut short": {off: int(victim.data) + a.dataLen[20] - 7, del: 7},
		}
		for name, e := range cases {
			t.Run(a.name+"/"+name, func(t *testing.T) {
				v2 := applyEdits(a.data, []edit{e})
				sizes, _ := checkRoundTrip(t, v2, DefaultChunkParams)
				cuts := cutSet(sizes)
				shift := int64(len(e.ins) - e.del)
				for i, l := range a.layout[21:] {
					for _, off := range []int64{l.header, l.data} {
						if !cuts[off+shift] {
							t.Fatalf("member %d: no cut at %d, where its original at %d moved", 21+i, off+shift, off)
						}
					}
				}
			})
		}
	}
}

// TestResyncTarHeaderFindsShiftedHeaders: the search finds a header at any
// byte offset, and not a block whose checksum or fields are wrong.
func TestResyncTarHeaderFindsShiftedHeaders(t *testing.T) {
	one, _ := tarOf(t, tar.FormatUSTAR, time.Unix(1700000000, 0), []zipEntry{{name: "a/b", data: []byte("hello")}})
	hdr := one[:tarBlock]
	for _, shift := range []int{0, 1, 7, 255, 511, 513, 4000} {
		b := append(append(prngBytes(uint64(shift), shift), hdr...), make([]byte, 600)...)
		if q := findTarHeader(b, 0, len(b)); q != shift {
			t.Errorf("header after %d bytes found at %d", shift, q)
		}
	}
	bad := map[string][]byte{
		"checksum": append([]byte(nil), hdr...),
		"type":     fixTarChecksum(append([]byte(nil), hdr...), 0),
		"no name":  fixTarChecksum(append([]byte(nil), hdr...), 0),
		"mode":     fixTarChecksum(append([]byte(nil), hdr...), 0),
	}
	bad["checksum"][0] ^= 1
	bad["type"][156] = 'q'
	bad["type"] = fixTarChecksum(bad["type"], 0)
	bad["no name"][0] = 0
	bad["no name"] = fixTarChecksum(bad["no name"], 0)
	copy(bad["mode"][100:], "9999999\x00")
	bad["mode"] = fixTarChecksum(bad["mode"], 0)
	for name, h := range bad {
		b := append(append(prngBytes(9, 100), h...), make([]byte, 600)...)
		if q := findTarHeader(b, 0, len(b)); q >= 0 {
			t.Errorf("%s: a header was found at %d", name, q)
		}
	}
}

// TestArchiveChunkerResumesAfterShortMembers: members one after another
// shorter than their headers say, compressed ones among them, still leave
// the walk at the archive's level: every later member is cut where it is,
// and named as a member of the archive, not of an archive nested in the
// data of the member before it.
func TestArchiveChunkerResumesAfterShortMembers(t *testing.T) {
	es := treeEntries("1.0.0", 60, nil, descNone)
	for _, a := range archiveFormats(t, es) {
		t.Run(a.name, func(t *testing.T) {
			var edits []edit
			for m := 20; m < 28; m++ {
				edits = append(edits, edit{off: int(a.layout[m].data) + a.dataLen[m] - 7, del: 7})
			}
			v2 := applyEdits(a.data, edits)
			sizes, infos := checkRoundTrip(t, v2, DefaultChunkParams)
			cuts := cutSet(sizes)
			names := map[int64]string{}
			var off int64
			for i, n := range sizes {
				names[off] = infos[i].Name
				off += int64(n)
			}
			for m, l := range a.layout[21:] {
				m += 21
				shift := -7 * int64(min(m, 28)-20)
				for _, at := range []int64{l.header + shift, l.data + shift} {
					if !cuts[at] {
						t.Fatalf("member %d: no cut at %d, where its original at %d moved", m, at, at-shift)
					}
				}
				if names[l.header+shift] != es[m].name {
					t.Fatalf("member %d is named %q, want %q", m, names[l.header+shift], es[m].name)
				}
			}
		})
	}
}
