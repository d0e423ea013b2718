package packgen

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"sort"
	"time"
)

// Tree describes a software distribution shipped as an archive, in two
// consecutive versions: the top folder carries the version, every time stamp
// differs, and Changed members have new content. The zero value of each
// field takes the shape of a real pair of releases (71 MB ZIPs of 11,518
// entries, 23 changed, the changed ones about half the compressed bytes).
type Tree struct {
	Seed    uint64
	Files   int   // members that are files; default 11,518 with directories
	Size    int64 // uncompressed bytes of all files, roughly; default 180 MiB
	Changed int   // files with new content in version 2; default 23
	// ChangeLargest picks the changed files among the largest, as in a
	// release where a few big binaries were rebuilt; otherwise they are
	// picked at random, as in a source tree.
	ChangeLargest bool
	// Streamed writes ZIP members with data descriptors (sizes after the
	// data, as jar and Go's zip.Writer do) instead of sizes in the header
	// (as Info-ZIP does).
	Streamed bool
}

// ArchiveStats says what went into an archive: what dedupe could save and
// what it could not.
type ArchiveStats struct {
	Size    int64 // bytes of the archive
	Members int   // entries, directories included
	// DataBytes is the member data as stored (compressed for ZIP, padded
	// to whole blocks for tar); ChangedBytes the part of it that belongs
	// to changed files. Everything else (headers, data descriptors, the
	// central directory, the tar end) is Size - DataBytes.
	DataBytes, ChangedBytes int64
}

// Floor is the bytes the second version of a pair must store at least: its
// changed members and everything that is not member data.
func (s ArchiveStats) Floor() int64 { return s.Size - s.DataBytes + s.ChangedBytes }

type treeFile struct {
	dir     bool
	path    string // below the top folder
	size    int
	changed bool
}

func (t Tree) withDefaults() Tree {
	if t.Files <= 0 {
		t.Files = 11518 - 11518/12 // about one entry in twelve is a directory
	}
	if t.Size <= 0 {
		t.Size = 180 << 20
	}
	if t.Changed <= 0 {
		t.Changed = 23
	}
	return t
}

// files lays out the tree: directories of 5 to 20 files, sizes drawn from a
// heavy-tailed distribution (most files a few KiB, a few of several MiB)
// and scaled to Size.
func (t Tree) files() []treeFile {
	rng := rand.New(rand.NewPCG(t.Seed, 0x7a1f))
	sizes := make([]float64, t.Files)
	var sum float64
	for i := range sizes {
		// Pareto with shape 0.9 from 1 KiB, capped at 24 MiB.
		s := math.Min(1024/math.Pow(1-rng.Float64(), 1/0.9), 24<<20)
		sizes[i] = s
		sum += s
	}
	scale := float64(t.Size) / sum
	changed := map[int]bool{}
	if t.ChangeLargest {
		order := make([]int, len(sizes))
		for i := range order {
			order[i] = i
		}
		sort.Slice(order, func(a, b int) bool { return sizes[order[a]] > sizes[order[b]] })
		for _, i := range order[:min(t.Changed, len(order))] {
			changed[i] = true
		}
	} else {
		for _, i := range rng.Perm(len(sizes))[:min(t.Changed, len(sizes))] {
			changed[i] = true
		}
	}
	exts := []string{".java", ".class", ".xml", ".properties", ".html", ".png", ".jar", ".so"}
	var out []treeFile
	dir, left := "", 0
	for i, s := range sizes {
		if left == 0 {
			dir = fmt.Sprintf("plugins/bundle%04d/src/", len(out))
			out = append(out, treeFile{dir: true, path: dir})
			left = 5 + rng.IntN(16)
		}
		left--
		out = append(out, treeFile{path: fmt.Sprintf("%sfile%05d%s", dir, i, exts[rng.IntN(len(exts))]), size: max(1, int(s*scale)), changed: changed[i]})
	}
	return out
}

// contents yields the files' bytes for a version: every file is cut from one
// stream of software-like bytes, so both versions read the same bytes for an
// unchanged file, and a changed file in version 2 takes its bytes from
// another stream instead.
type contents struct {
	base, next *Reader
	buf        []byte
}

func (t Tree) contents() *contents {
	return &contents{base: New(t.Seed+1, math.MaxInt64, Software), next: New(t.Seed+2, math.MaxInt64, Software)}
}

func (c *contents) of(f treeFile, version int) []byte {
	if cap(c.buf) < f.size {
		c.buf = make([]byte, f.size)
	}
	b := c.buf[:f.size]
	io.ReadFull(c.base, b)
	if f.changed && version > 1 {
		io.ReadFull(c.next, b)
	}
	return b
}

// topFolder and mtime are what a version changes in every header.
func topFolder(version int) string { return fmt.Sprintf("product-4.%d.0/", 30+version) }

func mtime(version int) time.Time {
	return time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(version) * 41 * 24 * time.Hour)
}

// countingWriter counts bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// WriteZip writes version (1 or 2) of the tree as a ZIP, members deflated,
// and says what went into it. Equal trees and versions give equal bytes.
func (t Tree) WriteZip(w io.Writer, version int) (ArchiveStats, error) {
	t = t.withDefaults()
	cw := &countingWriter{w: w}
	zw := zip.NewWriter(cw)
	var st ArchiveStats
	var comp bytes.Buffer
	fw, _ := flate.NewWriter(&comp, flate.DefaultCompression)
	c := t.contents()
	for _, f := range t.files() {
		st.Members++
		h := &zip.FileHeader{Name: topFolder(version) + f.path, Modified: mtime(version)}
		if f.dir {
			if _, err := zw.CreateHeader(h); err != nil {
				return st, err
			}
			continue
		}
		// CreateRaw leaves time stamps to the caller: MS-DOS fields and
		// the extended timestamp field Info-ZIP writes.
		mt := mtime(version)
		h.ModifiedDate = uint16((mt.Year()-1980)<<9 | int(mt.Month())<<5 | mt.Day())
		h.ModifiedTime = uint16(mt.Hour()<<11 | mt.Minute()<<5 | mt.Second()/2)
		h.Extra = binary.LittleEndian.AppendUint32([]byte{0x55, 0x54, 5, 0, 1}, uint32(mt.Unix()))
		data := c.of(f, version)
		comp.Reset()
		fw.Reset(&comp)
		fw.Write(data)
		fw.Close()
		h.Method = zip.Deflate
		h.CRC32 = crc32.ChecksumIEEE(data)
		h.CompressedSize64, h.UncompressedSize64 = uint64(comp.Len()), uint64(len(data))
		// CreateRaw keeps the sizes in the local header, as a writer
		// that seeks back does, unless told a data descriptor follows.
		if t.Streamed {
			h.Flags |= 0x8
		}
		mw, err := zw.CreateRaw(h)
		if err != nil {
			return st, err
		}
		if _, err := mw.Write(comp.Bytes()); err != nil {
			return st, err
		}
		st.DataBytes += int64(comp.Len())
		if f.changed {
			st.ChangedBytes += int64(comp.Len())
		}
	}
	if err := zw.Close(); err != nil {
		return st, err
	}
	st.Size = cw.n
	return st, nil
}

// WriteTar writes version (1 or 2) of the tree as a pax tar (the format of
// git archive and of GNU tar's --format=posix), and says what went into it.
func (t Tree) WriteTar(w io.Writer, version int) (ArchiveStats, error) {
	t = t.withDefaults()
	cw := &countingWriter{w: w}
	tw := tar.NewWriter(cw)
	var st ArchiveStats
	c := t.contents()
	// Sub-second times make archive/tar write pax records.
	mt := mtime(version).Add(time.Duration(version) * 123456789)
	for _, f := range t.files() {
		st.Members++
		h := &tar.Header{Name: topFolder(version) + f.path, ModTime: mt, Format: tar.FormatPAX, Uname: "build", Gname: "build"}
		if f.dir {
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
			if err := tw.WriteHeader(h); err != nil {
				return st, err
			}
			continue
		}
		data := c.of(f, version)
		h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o644, int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return st, err
		}
		if _, err := tw.Write(data); err != nil {
			return st, err
		}
		padded := (int64(len(data)) + 511) &^ 511
		st.DataBytes += padded
		if f.changed {
			st.ChangedBytes += padded
		}
	}
	if err := tw.Close(); err != nil {
		return st, err
	}
	st.Size = cw.n
	return st, nil
}
