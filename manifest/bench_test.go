package manifest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"

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
