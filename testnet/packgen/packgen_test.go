package packgen

import (
	"bytes"
	"crypto/sha256"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestDeterministicAndSized(t *testing.T) {
	for _, k := range []Kind{Software, Incompressible} {
		a, _ := io.ReadAll(New(1, 3<<20+17, k))
		b, _ := io.ReadAll(New(1, 3<<20+17, k))
		c, _ := io.ReadAll(New(2, 3<<20+17, k))
		if len(a) != 3<<20+17 {
			t.Fatalf("kind %d: got %d bytes", k, len(a))
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("kind %d: same seed, different bytes", k)
		}
		if bytes.Equal(a, c) {
			t.Fatalf("kind %d: different seeds, same bytes", k)
		}
	}
}

// TestSoftwareCompressesLikeSoftware keeps the generator honest: software
// tarballs compress 2.5-4x at zstd's default level in 64 KiB pieces (a Go
// distribution ~4x), and ZIP members not at all.
func TestSoftwareCompressesLikeSoftware(t *testing.T) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		kind     Kind
		min, max float64
	}{
		{Software, 2.2, 5},
		{Incompressible, 0.9, 1.01},
	} {
		data, _ := io.ReadAll(New(3, 16<<20, tc.kind))
		var packed int
		seen := map[[32]byte]bool{}
		for off := 0; off < len(data); off += 64 << 10 {
			piece := data[off:min(off+64<<10, len(data))]
			packed += len(enc.EncodeAll(piece, nil))
			sum := sha256.Sum256(piece)
			if seen[sum] {
				t.Fatalf("kind %d: a 64 KiB piece repeats", tc.kind)
			}
			seen[sum] = true
		}
		ratio := float64(len(data)) / float64(packed)
		t.Logf("kind %d: ratio %.2f", tc.kind, ratio)
		if ratio < tc.min || ratio > tc.max {
			t.Errorf("kind %d: compression ratio %.2f, want %.1f to %.1f", tc.kind, ratio, tc.min, tc.max)
		}
	}
}

func BenchmarkGenerate(b *testing.B) {
	buf := make([]byte, 1<<20)
	r := New(1, 1<<62, Software)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		io.ReadFull(r, buf)
	}
}
