package manifest

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// zipEntry is one member for buildZip, which writes ZIPs byte by byte so
// that tests know every offset and can write what real writers write as well
// as what they never would.
type zipEntry struct {
	name   string
	data   []byte // written as is; method only says what it is
	method uint16
	desc   descStyle
	zip64  bool   // sizes 0xFFFFFFFF in the local header, the real ones in a ZIP64 extra field
	time   uint16 // MS-DOS time, so versions can differ in it
	extra  []byte // more extra fields for the local header
}

type descStyle int

const (
	descNone     descStyle = iota
	descSigned             // flag bit 3, zero sizes in the header, descriptor with signature (Java, Go)
	descUnsigned           // the same without the signature (old writers)
	descKnown              // flag bit 3, real sizes in the header too, descriptor with signature
)

// zipLayout is where buildZip put one member.
type zipLayout struct {
	header, data, end int64 // header start, data start, end of data and descriptor
}

func le16(b []byte, v uint16) []byte { return binary.LittleEndian.AppendUint16(b, v) }
func le32(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }
func le64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }

func buildZip(entries []zipEntry) ([]byte, []zipLayout) {
	var out, cd []byte
	var layout []zipLayout
	for _, e := range entries {
		var l zipLayout
		l.header = int64(len(out))
		crc := crc32.ChecksumIEEE(e.data)
		size := uint32(len(e.data))
		flags := uint16(0x800)
		hcrc, hsize := crc, size
		if e.desc != descNone {
			flags |= 8
			if e.desc != descKnown {
				hcrc, hsize = 0, 0
			}
		}
		extra := append([]byte(nil), e.extra...)
		version := uint16(20)
		if e.zip64 {
			version = 45
			hsize = 0xFFFFFFFF
			extra = le16(le16(extra, 1), 16)
			extra = le64(le64(extra, uint64(len(e.data))), uint64(len(e.data)))
		}
		out = le32(out, 0x04034b50)
		out = le16(le16(le16(out, version), flags), e.method)
		out = le16(le16(out, e.time), 0x5a21)
		out = le32(le32(le32(out, hcrc), hsize), hsize)
		out = le16(le16(out, uint16(len(e.name))), uint16(len(extra)))
		out = append(append(out, e.name...), extra...)
		l.data = int64(len(out))
		out = append(out, e.data...)
		switch e.desc {
		case descSigned, descKnown:
			out = le32(out, 0x08074b50)
			fallthrough
		case descUnsigned:
			out = le32(out, crc)
			if e.zip64 {
				out = le64(le64(out, uint64(size)), uint64(size))
			} else {
				out = le32(le32(out, size), size)
			}
		}
		l.end = int64(len(out))
		layout = append(layout, l)

		// Central directory entry, with a ZIP64 field of its own.
		csize, offset := size, uint32(l.header)
		var cx []byte
		if e.zip64 {
			csize, offset = 0xFFFFFFFF, 0xFFFFFFFF
			cx = le16(le16(cx, 1), 24)
			cx = le64(le64(le64(cx, uint64(size)), uint64(size)), uint64(l.header))
		}
		cd = le32(cd, 0x02014b50)
		cd = le16(le16(le16(le16(cd, 0x031e), version), flags), e.method)
		cd = le16(le16(cd, e.time), 0x5a21)
		cd = le32(le32(le32(cd, crc), csize), csize)
		cd = le16(le16(le16(cd, uint16(len(e.name))), uint16(len(cx))), 0)
		cd = le16(le16(cd, 0), 0)
		cd = le32(le32(cd, 0o100644<<16), offset)
		cd = append(append(cd, e.name...), cx...)
	}
	cdStart := len(out)
	out = append(out, cd...)
	out = le32(out, 0x06054b50)
	out = le16(le16(out, 0), 0)
	out = le16(le16(out, uint16(len(entries))), uint16(len(entries)))
	out = le32(le32(out, uint32(len(cd))), uint32(cdStart))
	out = le16(out, 0)
	return out, layout
}

// deflated compresses data as a ZIP member's data.
func deflated(data []byte) []byte {
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestSpeed)
	w.Write(data)
	w.Close()
	return b.Bytes()
}

// treeEntries is a source-tree-like list of members: mostly small files of
// prng content under a versioned top folder, a few large ones, a directory
// entry.
func treeEntries(version string, n int, changed map[int]bool, style descStyle) []zipEntry {
	var es []zipEntry
	es = append(es, zipEntry{name: "product-" + version + "/", desc: descNone, time: uint16(len(version))})
	for i := range n {
		size := 200 + (i*7919)%6000
		if i%50 == 7 {
			size = 300<<10 + i*100 // large: cut by FastCDC inside
		}
		seed := uint64(1000 + i)
		if changed[i] {
			seed += 1 << 20
		}
		e := zipEntry{
			name:   fmt.Sprintf("product-%s/src/pkg%02d/file%04d.go", version, i%17, i),
			data:   prngBytes(seed, size),
			method: 0,
			desc:   style,
			time:   uint16(len(version)*31 + 7),
		}
		if i%3 == 0 {
			e.method = 8
			e.data = deflated(bytes.Repeat(e.data[:size/4], 4))
		}
		es = append(es, e)
	}
	return es
}

// archiveChunks chunks data with the archive chunker and returns the chunk
// sizes and infos, checking what every chunking must satisfy: the chunks are
// the input, in order, each 1 to Max bytes.
func archiveChunks(t testing.TB, r io.Reader, p ChunkParams) ([]int, []ChunkInfo) {
	t.Helper()
	var sizes []int
	var infos []ChunkInfo
	c := NewArchiveChunker(r, p)
	for {
		chunk, err := c.Next()
		if errors.Is(err, io.EOF) {
			return sizes, infos
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if len(chunk) == 0 || len(chunk) > p.Max {
			t.Fatalf("chunk %d has %d bytes, want 1 to %d", len(sizes), len(chunk), p.Max)
		}
		sizes = append(sizes, len(chunk))
		infos = append(infos, c.Info())
	}
}

// checkRoundTrip chunks data and checks that the chunks join to it, and that
// one-byte reads cut exactly where whole reads do.
func checkRoundTrip(t testing.TB, data []byte, p ChunkParams) ([]int, []ChunkInfo) {
	t.Helper()
	var joined []byte
	c := NewArchiveChunker(bytes.NewReader(data), p)
	for {
		chunk, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		joined = append(joined, chunk...)
	}
	if !bytes.Equal(joined, data) {
		t.Fatalf("chunks join to %d bytes that differ from the %d-byte input", len(joined), len(data))
	}
	sizes, infos := archiveChunks(t, bytes.NewReader(data), p)
	if len(data) < 4<<20 {
		one, _ := archiveChunks(t, iotest.OneByteReader(bytes.NewReader(data)), p)
		if fmt.Sprint(one) != fmt.Sprint(sizes) {
			t.Fatalf("one-byte reads cut %d chunks, whole reads %d", len(one), len(sizes))
		}
	}
	return sizes, infos
}

func cutSet(sizes []int) map[int64]bool {
	cuts := map[int64]bool{0: true}
	var off int64
	for _, n := range sizes {
		off += int64(n)
		cuts[off] = true
	}
	return cuts
}

func TestArchiveChunkerCutsAtZipMembers(t *testing.T) {
	styles := []struct {
		name  string
		style descStyle
		zip64 bool
	}{
		{"sizes in header", descNone, false},
		{"signed descriptor", descSigned, false},
		{"unsigned descriptor", descUnsigned, false},
		{"descriptor and sizes", descKnown, false},
		{"zip64", descNone, true},
		{"zip64 signed descriptor", descSigned, true},
	}
	for _, s := range styles {
		t.Run(s.name, func(t *testing.T) {
			es := treeEntries("1.0.0", 120, nil, s.style)
			for i := range es {
				es[i].zip64 = s.zip64
			}
			data, layout := buildZip(es)
			if r, err := zip.NewReader(bytes.NewReader(data), int64(len(data))); err != nil || len(r.File) != len(es) {
				t.Fatalf("the test's ZIP does not read back: %v", err)
			}
			sizes, infos := checkRoundTrip(t, data, DefaultChunkParams)
			cuts := cutSet(sizes)
			for i, l := range layout {
				for _, off := range []int64{l.header, l.data, l.end} {
					if !cuts[off] {
						t.Fatalf("member %d (%s): no cut at %d (header %d, data %d, end %d)", i, es[i].name, off, l.header, l.data, l.end)
					}
				}
			}
			// Every chunk is labelled with its member.
			var off int64
			for i, n := range sizes {
				info := infos[i]
				switch {
				case off >= layout[len(layout)-1].end:
					if info.Kind != ChunkOther {
						t.Fatalf("chunk at %d in the central directory is %v", off, info.Kind)
					}
				default:
					m := info.Member - 1
					if m < 0 || m >= len(es) || es[m].name != info.Name {
						t.Fatalf("chunk at %d: member %d %q", off, info.Member, info.Name)
					}
					want := ChunkData
					if off < layout[m].data {
						want = ChunkHeader
					}
					if info.Kind != want || off < layout[m].header || off+int64(n) > layout[m].end {
						t.Fatalf("chunk at %d+%d is %v of member %d at %+v", off, n, info.Kind, m, layout[m])
					}
				}
				off += int64(n)
			}
		})
	}
}

// TestArchiveChunkerDedupesUnchangedZipMembers is the point of it all: the
// next version renames the top folder, changes every time stamp and a few
// members; what it stores anew is those members, the headers and the
// central directory.
func TestArchiveChunkerDedupesUnchangedZipMembers(t *testing.T) {
	for _, style := range []descStyle{descNone, descSigned} {
		t.Run(fmt.Sprint("desc style ", style), func(t *testing.T) {
			changed := map[int]bool{3: true, 7: true, 150: true}
			v1, _ := buildZip(treeEntries("1.0.0", 300, nil, style))
			es2 := treeEntries("1.0.1", 300, changed, style)
			v2, layout := buildZip(es2)
			ideal := idealNewBytes(v2, layout, changed)
			newBytes, _ := newBytesBetween(t, v1, v2, NewArchiveChunkerFunc)
			cdcNew, _ := newBytesBetween(t, v1, v2, NewChunkerFunc)
			t.Logf("new bytes %d (plain CDC %d) of %d; ideal %d", newBytes, cdcNew, len(v2), ideal)
			if newBytes > ideal*11/10 {
				t.Errorf("second version stores %d new bytes, want at most 1.1 × %d (changed members, headers, central directory)", newBytes, ideal)
			}
		})
	}
}

// chunkerFunc makes a chunker: the plain one or the archive-aware one.
type chunkerFunc func(io.Reader, ChunkParams) interface{ Next() ([]byte, error) }

var (
	NewChunkerFunc        chunkerFunc = func(r io.Reader, p ChunkParams) interface{ Next() ([]byte, error) } { return NewChunker(r, p) }
	NewArchiveChunkerFunc chunkerFunc = func(r io.Reader, p ChunkParams) interface{ Next() ([]byte, error) } { return NewArchiveChunker(r, p) }
)

// newBytesBetween returns the bytes of v2's chunks that v1 does not have,
// and v2's chunk count.
func newBytesBetween(t testing.TB, v1, v2 []byte, mk chunkerFunc) (int64, int) {
	t.Helper()
	have := map[[32]byte]bool{}
	c := mk(bytes.NewReader(v1), DefaultChunkParams)
	for {
		chunk, err := c.Next()
		if err != nil {
			break
		}
		have[sha256.Sum256(chunk)] = true
	}
	var n int64
	count := 0
	c = mk(bytes.NewReader(v2), DefaultChunkParams)
	for {
		chunk, err := c.Next()
		if err != nil {
			break
		}
		count++
		if !have[sha256.Sum256(chunk)] {
			n += int64(len(chunk))
		}
	}
	return n, count
}

// idealNewBytes is what a second version must store at the least: the whole
// archive but the data of the members it did not change. The members are
// those of treeEntries: a directory first, then file i at layout[i+1].
func idealNewBytes(archive []byte, layout []zipLayout, changed map[int]bool) int64 {
	ideal := int64(len(archive))
	for i, l := range layout {
		if i == 0 || !changed[i-1] {
			ideal -= l.end - l.data
		}
	}
	return ideal
}

// tarOf writes files with archive/tar in the given format, all stamped t0.
func tarOf(t testing.TB, format tar.Format, t0 time.Time, files []zipEntry) ([]byte, []zipLayout) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var layout []zipLayout
	for _, f := range files {
		start := int64(buf.Len())
		hdr := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: t0, Format: format, Typeflag: tar.TypeReg}
		if strings.HasSuffix(f.name, "/") {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
		}
		if format == tar.FormatPAX {
			hdr.PAXRecords = map[string]string{"mtime": fmt.Sprintf("%d.%09d", t0.Unix(), 123456789)}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		data := int64(buf.Len()) // tar.Writer writes headers through
		if hdr.Size > 0 {
			tw.Write(f.data)
		}
		if err := tw.Flush(); err != nil {
			t.Fatal(err)
		}
		layout = append(layout, zipLayout{header: start, data: data, end: int64(buf.Len())})
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), layout
}

func TestArchiveChunkerCutsAtTarMembers(t *testing.T) {
	long := strings.Repeat("very-long-directory-name/", 8)
	for _, format := range []tar.Format{tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU} {
		t.Run(format.String(), func(t *testing.T) {
			files := treeEntries("2.0.0", 100, nil, descNone)
			if format != tar.FormatUSTAR {
				// Names past 100 bytes: pax path records or GNU
				// long-name blocks.
				files[5].name = "product-2.0.0/" + long + "file.txt"
			}
			data, layout := tarOf(t, format, time.Unix(1700000000, 0), files)
			sizes, infos := checkRoundTrip(t, data, DefaultChunkParams)
			cuts := cutSet(sizes)
			for i, l := range layout {
				for _, off := range []int64{l.header, l.data, l.end} {
					if !cuts[off] {
						t.Fatalf("member %d (%s): no cut at %d (layout %+v)", i, files[i].name, off, l)
					}
				}
			}
			var off int64
			for i, n := range sizes {
				if off < layout[len(layout)-1].end {
					m := infos[i].Member - 1
					if m < 0 || m >= len(files) || infos[i].Name != files[m].name {
						t.Fatalf("chunk at %d: member %d %q, want %q", off, infos[i].Member, infos[i].Name, files[max(0, m)].name)
					}
				}
				off += int64(n)
			}
		})
	}
}

func TestArchiveChunkerDedupesUnchangedTarMembers(t *testing.T) {
	changed := map[int]bool{3: true, 7: true, 150: true}
	for _, format := range []tar.Format{tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU} {
		t.Run(format.String(), func(t *testing.T) {
			v1, _ := tarOf(t, format, time.Unix(1700000000, 0), treeEntries("1.0.0", 300, nil, descNone))
			v2, layout := tarOf(t, format, time.Unix(1700090000, 0), treeEntries("1.0.1", 300, changed, descNone))
			ideal := idealNewBytes(v2, layout, changed)
			newBytes, _ := newBytesBetween(t, v1, v2, NewArchiveChunkerFunc)
			cdcNew, _ := newBytesBetween(t, v1, v2, NewChunkerFunc)
			t.Logf("new bytes %d (plain CDC %d) of %d; ideal %d", newBytes, cdcNew, len(v2), ideal)
			if newBytes > ideal*11/10 {
				t.Errorf("second version stores %d new bytes, want at most 1.1 × %d", newBytes, ideal)
			}
		})
	}
}

// TestArchiveChunkerPlainDataAsChunker: a stream that is no archive is cut
// exactly as Chunker cuts it, so archive-aware publishing dedupes with
// everything stored before it.
func TestArchiveChunkerPlainDataAsChunker(t *testing.T) {
	inputs := map[string][]byte{
		"random":   prngBytes(goldenStreamSeed, 8<<20),
		"zeros":    make([]byte, 1<<20),
		"repeated": bytes.Repeat([]byte("PK patchctl HF-S041000005-012 "), 1<<15),
		"empty":    nil,
		"tiny":     []byte("PK\x03"),
	}
	for name, data := range inputs {
		t.Run(name, func(t *testing.T) {
			for _, p := range []ChunkParams{DefaultChunkParams, {Min: 64, Avg: 256, Max: 1024}} {
				want := chunkSizes(t, bytes.NewReader(data), p)
				got, _ := checkRoundTrip(t, data, p)
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("archive chunker cuts %d chunks, Chunker %d", len(got), len(want))
				}
			}
		})
	}
}

// TestArchiveChunkerHostile: broken and hostile archives are cut somehow,
// never with an error, a chunk over Max, or a wrong byte.
func TestArchiveChunkerHostile(t *testing.T) {
	good, layout := buildZip(treeEntries("1.0.0", 40, nil, descSigned))
	goodTar, _ := tarOf(t, tar.FormatPAX, time.Unix(1700000000, 0), treeEntries("1.0.0", 40, nil, descNone))
	patch := func(b []byte, off int, v []byte) []byte {
		b = append([]byte(nil), b...)
		copy(b[off:], v)
		return b
	}
	// A local header at h whose compressed size is v.
	withSize := func(h int64, v uint32) []byte {
		b := patch(good, int(h)+6, []byte{0, 0}) // no descriptor flag: the size counts
		return patch(b, int(h)+18, le32(nil, v))
	}
	second := layout[2].header
	huge64 := func() []byte {
		es := treeEntries("1.0.0", 10, nil, descNone)
		es[3].zip64 = true
		b, l := buildZip(es)
		// The ZIP64 field's compressed size: far past the end.
		return patch(b, int(l[3].data)-8, le64(nil, 1<<62))
	}()
	nested := func() []byte {
		inner, _ := buildZip(treeEntries("inner", 30, nil, descNone))
		outer := treeEntries("outer", 10, nil, descSigned)
		// Stored jars inside wars and fat jars carry their sizes.
		outer[4].data, outer[4].name, outer[4].desc, outer[4].method = inner, "lib/inner.jar", descNone, 0
		b, _ := buildZip(outer)
		return b
	}()
	zipInTar := func() []byte {
		files := treeEntries("outer", 10, nil, descNone)
		files[2].data, files[2].name = good, "lib/pack.zip"
		b, _ := tarOf(t, tar.FormatPAX, time.Unix(1700000000, 0), files)
		return b
	}()
	tooDeep := good
	for range 6 {
		tooDeep, _ = buildZip([]zipEntry{{name: "x.zip", data: tooDeep}, {name: "y", data: []byte("y")}})
	}
	manyMembers := func() []byte {
		var b []byte
		h, _ := buildZip([]zipEntry{{name: "a", data: []byte("x")}})
		for range maxArchiveMembers + 100 {
			b = append(b, h[:32]...) // header and one byte of data, no central directory
		}
		return b
	}()
	sprinkled := prngBytes(3, 1<<20)
	for off := 1000; off+64 < len(sprinkled); off += 4093 {
		copy(sprinkled[off:], good[second:second+64]) // headers whose data is garbage
	}
	tarBadSum := patch(goodTar, 512*9+148, []byte("0000000\x00"))
	tarHugeSize := patch(goodTar, 124, []byte{0x80, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	tarHugeSize = fixTarChecksum(tarHugeSize, 0)
	tarNegative := fixTarChecksum(patch(goodTar, 124, []byte{0xff, 0xff}), 0)
	paxHuge := fixTarChecksum(patch(goodTar, 124, []byte("77777777777\x00")), 0)

	cases := map[string][]byte{
		"truncated in a header":       good[:second+10],
		"truncated in data":           good[:layout[5].data+100],
		"truncated in descriptor":     good[:layout[5].end-3],
		"no central directory":        good[:layout[len(layout)-1].end],
		"size past the end":           withSize(second, 0xFFFFFFF0),
		"size overlapping next":       withSize(second, uint32(layout[2].end-layout[2].data+40)),
		"size short of next":          withSize(second, 10),
		"zip64 size past the end":     huge64,
		"garbage before":              append(prngBytes(4, 100_000), good...),
		"garbage between":             append(append(append([]byte(nil), good[:second]...), prngBytes(5, 70_000)...), good[second:]...),
		"central directory lies":      patch(good, len(good)-6, le32(nil, 12345)),
		"nested jar":                  nested,
		"zip in tar":                  zipInTar,
		"nested too deep":             tooDeep,
		"more members than allowed":   manyMembers,
		"headers sprinkled in random": sprinkled,
		"tar bad checksum mid-way":    tarBadSum,
		"tar base-256 huge size":      tarHugeSize,
		"tar negative size":           tarNegative,
		"tar pax size past the end":   paxHuge,
		"tar truncated":               goodTar[:len(goodTar)/2+100],
		"tar header only":             goodTar[:512],
		"descriptor never found": func() []byte {
			es := []zipEntry{{name: "a", data: prngBytes(6, 600<<10), desc: descSigned}}
			b, l := buildZip(es)
			return patch(b, int(l[0].end)-8, le32(nil, 1)) // the size it states is wrong
		}(),
	}
	small := ChunkParams{Min: 64, Avg: 256, Max: 1024}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			for _, p := range []ChunkParams{DefaultChunkParams, small} {
				if name == "more members than allowed" && p == small {
					continue // one pass is enough for 3 MiB of headers
				}
				checkRoundTrip(t, data, p)
			}
		})
	}
	// Where the structure survives, the walk finds it again.
	for name, want := range map[string]int{"garbage before": 41, "garbage between": 41, "no central directory": 41, "central directory lies": 41, "size short of next": 40} {
		c := NewArchiveChunker(bytes.NewReader(cases[name]), DefaultChunkParams)
		for {
			if _, err := c.Next(); err != nil {
				break
			}
		}
		if c.Members() < want {
			t.Errorf("%s: walked %d members, want at least %d", name, c.Members(), want)
		}
	}
	// The nested jar's members are found and named.
	_, infos := archiveChunks(t, bytes.NewReader(nested), DefaultChunkParams)
	if !hasMember(infos, "lib/inner.jar!/product-inner/src/pkg03/file0003.go") {
		t.Error("members of the jar inside the zip were not walked")
	}
	_, infos = archiveChunks(t, bytes.NewReader(zipInTar), DefaultChunkParams)
	if !hasMember(infos, "lib/pack.zip!/product-1.0.0/src/pkg03/file0003.go") {
		t.Error("members of the zip inside the tar were not walked")
	}
	c := NewArchiveChunker(bytes.NewReader(manyMembers), DefaultChunkParams)
	for {
		if _, err := c.Next(); err != nil {
			break
		}
	}
	if c.Members() != maxArchiveMembers {
		t.Errorf("walked %d members, want the cap %d", c.Members(), maxArchiveMembers)
	}
}

func hasMember(infos []ChunkInfo, name string) bool {
	for _, in := range infos {
		if in.Name == name && in.Kind == ChunkData {
			return true
		}
	}
	return false
}

// fixTarChecksum rewrites the checksum of the header block at off.
func fixTarChecksum(b []byte, off int) []byte {
	h := b[off : off+512]
	copy(h[148:156], "        ")
	var sum int
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func TestArchiveChunkerReportsReadErrors(t *testing.T) {
	boom := errors.New("disk on fire")
	data, _ := buildZip(treeEntries("1.0.0", 200, nil, descSigned))
	c := NewArchiveChunker(&errAfterReader{r: bytes.NewReader(data), err: boom}, DefaultChunkParams)
	for {
		_, err := c.Next()
		if err != nil {
			if !errors.Is(err, boom) {
				t.Fatalf("Next = %v, want the reader's error", err)
			}
			return
		}
	}
}

// The archive walker's boundaries are part of the storage format under
// ChunkingArchive, as the gear table is under both methods: publishers only
// dedupe with chunks cut the same way. If these fail, the walker changed and
// ChunkingArchive needs a new version.
const (
	goldenZipChunks      = 1041
	goldenZipSizesSHA256 = "15bd62799ccfe68f0f65f3353332349273c3b6c463bcbb39885d6f0fe0ec4268"
	goldenTarChunks      = 1041
	goldenTarSizesSHA256 = "e547d99b14a6191749dd3bd8a360a3e22ea2c7fea656125ce53ad001efad24c9"
)

func goldenArchives(t testing.TB) (zipData, tarData []byte) {
	// No deflate here: its output may change with Go. The walker does not
	// look at member data, so any bytes labelled as deflate do.
	es := []zipEntry{{name: "product-9.8.7/"}}
	for i := range 500 {
		size := 100 + (i*7919)%6000
		if i%50 == 7 {
			size = 300<<10 + i*100
		}
		e := zipEntry{name: fmt.Sprintf("product-9.8.7/pkg%02d/file%04d", i%17, i), data: prngBytes(uint64(i), size), method: uint16(8 * (i % 2))}
		switch i % 5 {
		case 1:
			e.desc = descSigned
		case 2:
			e.zip64 = true
		}
		es = append(es, e)
	}
	zipData, _ = buildZip(es)
	tarData, _ = tarOf(t, tar.FormatPAX, time.Unix(1700000000, 0), es)
	return zipData, tarData
}

func sizesDigest(sizes []int) string {
	h := sha256.New()
	for _, n := range sizes {
		fmt.Fprintf(h, "%d\n", n)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestArchiveBoundariesGolden(t *testing.T) {
	zipData, tarData := goldenArchives(t)
	for _, g := range []struct {
		name   string
		data   []byte
		count  int
		digest string
	}{
		{"zip", zipData, goldenZipChunks, goldenZipSizesSHA256},
		{"tar", tarData, goldenTarChunks, goldenTarSizesSHA256},
	} {
		sizes, _ := archiveChunks(t, bytes.NewReader(g.data), DefaultChunkParams)
		if got := sizesDigest(sizes); len(sizes) != g.count || got != g.digest {
			t.Errorf("golden %s: %d chunks with sizes SHA-256 %s, want %d and %s: the archive chunking changed",
				g.name, len(sizes), got, g.count, g.digest)
		}
	}
}

// TestChunkingMethodInManifest: a manifest records the method, an old
// manifest without one still parses to plain CDC, and a receiver accepts
// methods it cannot chunk with (it never re-chunks) but not malformed ones.
func TestChunkingMethodInManifest(t *testing.T) {
	for _, tt := range []struct {
		method string
		ok     bool
	}{
		{ChunkingCDC, true},
		{ChunkingArchive, true},
		{"archive/2", true},
		{"Archive/1", false},
		{"archive 1", false},
		{strings.Repeat("a", maxMethodLen+1), false},
	} {
		m := fixtureManifest()
		m.Chunking.Method = tt.method
		b, err := Marshal(m)
		if (err == nil) != tt.ok {
			t.Fatalf("Marshal with method %q: %v, want ok=%v", tt.method, err, tt.ok)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("method %q: error %v does not wrap ErrInvalid", tt.method, err)
			}
			continue
		}
		if strings.Contains(string(b), `"method"`) != (tt.method != "") {
			t.Errorf("method %q encodes as %s", tt.method, b)
		}
		got, err := Parse(b)
		if err != nil || got.Chunking.Method != tt.method {
			t.Errorf("Parse of method %q: %v, %q", tt.method, err, got.Chunking.Method)
		}
	}
}

// repeatReader repeats b forever.
type repeatReader struct {
	b   []byte
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}

func TestArchiveChunkerStreamsInBoundedMemory(t *testing.T) {
	size := int64(256 << 20)
	if raceEnabled || testing.Short() {
		size = 24 << 20
	}
	// One streamed member, over and over: a ZIP with no end.
	one, l := buildZip([]zipEntry{{name: "dir/member.bin", data: prngBytes(8, 8<<10), method: 8, desc: descSigned}})
	r := io.LimitReader(&repeatReader{b: one[:l[0].end]}, size)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	c := NewArchiveChunker(r, DefaultChunkParams)
	var total int64
	var peak uint64
	for i := 0; ; i++ {
		chunk, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		total += int64(len(chunk))
		if i%1024 == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}
	if total != size || c.Members() < int(size/int64(len(one))) {
		t.Fatalf("chunked %d bytes in %d members, want %d bytes", total, c.Members(), size)
	}
	const limit = 8 << 20
	if peak > base+limit {
		t.Errorf("heap in use grew from %d to %d bytes while chunking %d MiB, want growth under %d", base, peak, size>>20, limit)
	}
}
