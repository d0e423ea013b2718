package manifest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"lukechampine.com/blake3"
)

// BenchmarkChunker measures boundary finding alone (no hashing) over 64 MiB
// of pseudo-random data, the worst case: no early boundaries from runs.
func BenchmarkChunker(b *testing.B) {
	data := prngBytes(21, 64<<20)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		c := NewChunker(bytes.NewReader(data), DefaultChunkParams)
		for {
			_, err := c.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkHash documents why chunk IDs use SHA-256 (see cid.go): at the
// chunk sizes DefaultChunkParams produces, SHA-256 with the SHA-NI
// instructions is compared with BLAKE3.
func BenchmarkHash(b *testing.B) {
	for _, size := range []int{64 << 10, 256 << 10} {
		data := prngBytes(22, size)
		b.Run(fmt.Sprintf("SHA-256/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				sha256.Sum256(data)
			}
		})
		b.Run(fmt.Sprintf("BLAKE3/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				blake3.Sum256(data)
			}
		})
	}
}

// BenchmarkChunkerScan measures boundary finding over data already in memory,
// without the copy from the reader that BenchmarkChunker includes: the
// unrolled loop the chunker uses against the one-byte reference loop, so the
// gain of the unrolling can be seen on any machine.
func BenchmarkChunkerScan(b *testing.B) {
	data := prngBytes(21, 64<<20)
	p := DefaultChunkParams
	c := NewChunker(nil, p)
	loops := []struct {
		name     string
		boundary func([]byte) int
	}{
		{"unrolled", c.boundary},
		{"one-byte", func(d []byte) int { return referenceBoundary(d, p, c.maskSmall, c.maskLarge) }},
	}
	for _, loop := range loops {
		b.Run(loop.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				for rest := data; len(rest) > 0; {
					rest = rest[loop.boundary(rest):]
				}
			}
		})
	}
}

// BenchmarkVerifyManifest measures what an agent pays per manifest: parsing
// the envelope, two of three signatures and the canonical manifest, for a
// manifest of a 1 GiB pack (16,384 chunks of 64 KiB).
func BenchmarkVerifyManifest(b *testing.B) {
	k1, k2, k3 := testKey(1), testKey(2), testKey(3)
	root := testRoot(b, 2, k1, k2, k3)
	m := fixtureManifest()
	var chunks []ChunkRef
	for i := range 16384 {
		chunks = append(chunks, ChunkRef{CID: ChunkID(fmt.Appendf(nil, "chunk %d", i)), Size: 64 << 10})
	}
	m.Files = append(m.Files, File{Path: "pack.zip", Mode: 0o644, Size: 16384 * 64 << 10, SHA256: m.Files[0].SHA256, Chunks: chunks})
	env := signManifest(b, m, k1, k2)
	now := fixtureNow()
	b.SetBytes(int64(len(env)))
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := root.VerifyManifest(env, now); err != nil {
			b.Fatal(err)
		}
	}
}

// benchArchiveEntries is a software distribution's shape: 64 MiB in about
// 9,000 members, most of them a few KiB, one in 250 between 256 KiB and
// 1.5 MiB, under a versioned top folder.
func benchArchiveEntries() []zipEntry {
	es := []zipEntry{{name: "product-4.31.0/"}}
	total := 0
	for i := 0; total < 64<<20; i++ {
		size := 100 + (i*7919)%8000
		if i%250 == 7 {
			size = 256<<10 + (i*104729)%(1280<<10)
		}
		es = append(es, zipEntry{
			name:   fmt.Sprintf("product-4.31.0/plugins/bundle%03d/src/file%05d.class", i%300, i),
			data:   prngBytes(uint64(i), size),
			method: 8,
			desc:   descStyle(i % 2), // half streamed with data descriptors
		})
		total += size
	}
	return es
}

// BenchmarkArchiveChunker measures boundary finding alone (no hashing) on a
// 64 MiB ZIP and tar of ~10,000 members, and on 64 MiB that is no archive,
// against the plain chunker on the same bytes.
func BenchmarkArchiveChunker(b *testing.B) {
	es := benchArchiveEntries()
	zipData, _ := buildZip(es)
	tarData, _ := tarOf(b, tar.FormatPAX, time.Unix(1700000000, 0), es)
	inputs := []struct {
		name string
		data []byte
	}{{"zip", zipData}, {"tar", tarData}, {"random", prngBytes(21, 64<<20)}}
	chunkers := []struct {
		name string
		mk   chunkerFunc
	}{{"archive", NewArchiveChunkerFunc}, {"cdc", NewChunkerFunc}}
	for _, in := range inputs {
		for _, ck := range chunkers {
			b.Run(in.name+"/"+ck.name, func(b *testing.B) {
				b.SetBytes(int64(len(in.data)))
				chunks := 0
				for b.Loop() {
					chunks = 0
					c := ck.mk(bytes.NewReader(in.data), DefaultChunkParams)
					for {
						_, err := c.Next()
						if errors.Is(err, io.EOF) {
							break
						}
						if err != nil {
							b.Fatal(err)
						}
						chunks++
					}
				}
				b.ReportMetric(float64(chunks), "chunks")
			})
		}
	}
}

// benchTarPair is BenchmarkArchiveResync's pair: a 128 MiB tar of a source
// tree (about 17,000 members, most of a few KiB, one in 200 between 64 KiB
// and 1 MiB), and a second version with 64 overwrites of 160 KiB at places
// spread over it, across members' headers as they fall, and three runs of
// 4 KiB inserted (issue 16's GOROOT pair, generated). Each insertion moves
// every later header off the 512-byte grid, and each overwritten header
// costs the walk its place.
func benchTarPair(b *testing.B) (v1, v2 []byte) {
	b.Helper()
	var es []zipEntry
	for i, total := 0, 0; total < 128<<20; i++ {
		size := 100 + (i*7919)%9000
		if i%200 == 11 {
			size = 64<<10 + (i*104729)%(960<<10)
		}
		es = append(es, zipEntry{name: fmt.Sprintf("go/src/pkg%03d/file%05d.go", i%400, i), data: prngBytes(uint64(i), size)})
		total += size + tarBlock
	}
	v1, _ = tarOf(b, tar.FormatPAX, time.Unix(1700000000, 0), es)
	r := rand.New(rand.NewPCG(16, 50))
	var edits []edit
	slot := len(v1) / 64
	for i := range 64 {
		// One overwrite in each 64th of the tar; in three of them an
		// insertion before it, in the first half.
		lo := i * slot
		if i == 10 || i == 30 || i == 50 {
			edits = append(edits, edit{off: lo + r.IntN(slot/2), ins: randBytes(r, 4<<10)})
			lo += slot / 2
		}
		edits = append(edits, edit{off: lo + r.IntN(i*slot+slot-lo-160<<10), del: 160 << 10, ins: randBytes(r, 160<<10)})
	}
	return v1, applyEdits(v1, edits)
}

// BenchmarkArchiveResync chunks both versions of benchTarPair with the
// archive method and with plain FastCDC and reports, side by side, the
// bytes of the second version's chunks that the first did not have: what a
// publisher stores anew. Target: archive_new_MB at most 1.05 × cdc_new_MB
// (docs/decisions/0050). Time is for both methods, hashing included.
func BenchmarkArchiveResync(b *testing.B) {
	v1, v2 := benchTarPair(b)
	b.SetBytes(2 * int64(len(v1)+len(v2))) // both versions, by both methods
	var archive, cdc int64
	for b.Loop() {
		archive = benchNewBytes(b, v1, v2, NewArchiveChunkerFunc)
		cdc = benchNewBytes(b, v1, v2, NewChunkerFunc)
	}
	b.ReportMetric(float64(archive)/1e6, "archive_new_MB")
	b.ReportMetric(float64(cdc)/1e6, "cdc_new_MB")
	b.ReportMetric(float64(archive)/float64(cdc), "archive_vs_cdc")
}

// benchNewBytes is what chunking v2 with mk stores after v1.
func benchNewBytes(b *testing.B, v1, v2 []byte, mk chunkerFunc) int64 {
	have := map[[32]byte]bool{}
	var n int64
	for i, data := range [][]byte{v1, v2} {
		c := mk(bytes.NewReader(data), DefaultChunkParams)
		for {
			chunk, err := c.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			id := sha256.Sum256(chunk)
			if i == 1 && !have[id] {
				n += int64(len(chunk))
			}
			have[id] = true
		}
	}
	return n
}
