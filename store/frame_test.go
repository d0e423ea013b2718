package store

import (
	"bytes"
	"compress/flate"
	"errors"
	"os/exec"
	"strconv"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/patchctl/patchctl/manifest"
)

// frameSizes cover every width of the content size field of a raw frame and
// the block boundaries.
var frameSizes = []int{0, 1, 255, 256, 1000, 65535, 65536 + 255, 65536 + 256, 128 << 10, 128<<10 + 1, 300 << 10, 1 << 20}

func TestRawFrameRoundTrip(t *testing.T) {
	ref, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	for _, n := range frameSizes {
		data := random(uint64(n), n)
		frame := appendRawFrame([]byte("prefix"), data)[len("prefix"):]
		got, err := DecodeFrame(nil, frame, manifest.MaxChunkSize)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: DecodeFrame = %d bytes, %v", n, len(got), err)
		}
		// The reference decoder must agree: the frame is standard zstd.
		got, err = ref.DecodeAll(frame, nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: klauspost DecodeAll = %d bytes, %v", n, len(got), err)
		}
		var h zstd.Header
		if err := h.Decode(frame); err != nil || !h.HasFCS || h.FrameContentSize != uint64(n) || !h.SingleSegment || h.HasCheckSum {
			t.Fatalf("%d bytes: header %+v, %v", n, h, err)
		}
		blocks := max(1, (n+maxBlockSize-1)/maxBlockSize)
		if want := h.HeaderSize + 3*blocks + n; len(frame) != want {
			t.Errorf("%d bytes: raw frame of %d bytes, want %d", n, len(frame), want)
		}
	}
}

func TestEncodeFrame(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		wantRaw bool
	}{
		{"empty", nil, true},
		{"random", random(1, 64<<10), true},
		{"random large", random(2, 1<<20), true},
		{"deflated text", deflate(t, text(3, 1<<20)), true},
		{"text", text(4, 64<<10), false},
		{"zeros", make([]byte, 64<<10), false},
		{"text large", text(5, 3<<20), false},
		// High byte entropy but long repeats: the estimate calls it
		// incompressible and the estimate is what decides; it is
		// stored raw and still round-trips.
		{"repeated random", bytes.Repeat(random(6, 4096), 16), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frame := EncodeFrame(nil, tt.data)
			got, err := DecodeFrame(nil, frame, manifest.MaxChunkSize)
			if err != nil || !bytes.Equal(got, tt.data) {
				t.Fatalf("DecodeFrame = %d bytes, %v", len(got), err)
			}
			var h zstd.Header
			if err := h.Decode(frame); err != nil {
				t.Fatal(err)
			}
			raw, err := scanBlocks(frame[h.HeaderSize:], h.HasCheckSum)
			if err != nil {
				t.Fatal(err)
			}
			if raw != tt.wantRaw {
				t.Errorf("raw frame = %v, want %v (%d bytes for %d)", raw, tt.wantRaw, len(frame), len(tt.data))
			}
			if !raw && len(frame) > len(tt.data)-len(tt.data)/minSaving {
				t.Errorf("kept a compressed frame of %d bytes for %d bytes", len(frame), len(tt.data))
			}
			if len(frame) > MaxFrameSize(len(tt.data)) {
				t.Errorf("frame of %d bytes is over MaxFrameSize(%d) = %d", len(frame), len(tt.data), MaxFrameSize(len(tt.data)))
			}
		})
	}
}

func deflate(t testing.TB, data []byte) []byte {
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func TestDecodeFrameCap(t *testing.T) {
	for _, data := range [][]byte{random(1, 1000), text(2, 1000)} {
		frame := EncodeFrame(nil, data)
		if _, err := DecodeFrame(nil, frame, 1000); err != nil {
			t.Errorf("DecodeFrame at the cap: %v", err)
		}
		if _, err := DecodeFrame(nil, frame, 999); !errors.Is(err, ErrCorrupt) {
			t.Errorf("DecodeFrame over the cap: %v, want ErrCorrupt", err)
		}
	}
	// The cap never exceeds manifest.MaxChunkSize.
	big := appendRawFrame(nil, make([]byte, manifest.MaxChunkSize+1))
	if _, err := DecodeFrame(nil, big, 1<<30); !errors.Is(err, ErrCorrupt) {
		t.Errorf("DecodeFrame of more than MaxChunkSize: %v, want ErrCorrupt", err)
	}
}

func TestDecodeFrameAppends(t *testing.T) {
	data := text(1, 5000)
	for _, frame := range [][]byte{EncodeFrame(nil, data), appendRawFrame(nil, data)} {
		got, err := DecodeFrame([]byte("head"), frame, len(data))
		if err != nil || !bytes.Equal(got, append([]byte("head"), data...)) {
			t.Errorf("DecodeFrame with a prefix = %q..., %v", got[:min(10, len(got))], err)
		}
	}
}

// TestFramesDecodeWithZstdCLI checks the promise that `zstd -d` reads every
// chunk file, raw or compressed, and that frames the CLI writes (with a
// checksum) decode here.
func TestFramesDecodeWithZstdCLI(t *testing.T) {
	zstdCLI, err := exec.LookPath("zstd")
	if err != nil {
		t.Skip("zstd CLI not installed")
	}
	inputs := map[string][]byte{
		"empty":        nil,
		"one byte":     {7},
		"random":       random(1, 64<<10),
		"random large": random(2, 300<<10),
		"text":         text(3, 200<<10),
	}
	for name, data := range inputs {
		t.Run(name, func(t *testing.T) {
			for kind, frame := range map[string][]byte{"encoded": EncodeFrame(nil, data), "raw": appendRawFrame(nil, data)} {
				cmd := exec.Command(zstdCLI, "-d", "-c", "-q")
				cmd.Stdin = bytes.NewReader(frame)
				got, err := cmd.Output()
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("%s frame: zstd -d = %d bytes, %v", kind, len(got), err)
				}
			}
			cmd := exec.Command(zstdCLI, "-c", "-q", "--content-size", "--stream-size="+strconv.Itoa(len(data)))
			cmd.Stdin = bytes.NewReader(data)
			frame, err := cmd.Output()
			if err != nil {
				t.Fatalf("zstd -c: %v", err)
			}
			got, err := DecodeFrame(nil, frame, manifest.MaxChunkSize)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("DecodeFrame of a zstd CLI frame = %d bytes, %v", len(got), err)
			}
		})
	}
}

func TestIncompressible(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want bool
	}{
		{"random", random(1, 64<<10), true},
		{"random small", random(2, 3000), true},
		{"deflated", deflate(t, text(3, 1<<20))[:64<<10], true},
		{"text", text(4, 64<<10), false},
		{"zeros", make([]byte, 64<<10), false},
		{"one byte", []byte{1}, true}, // nothing to gain
	}
	for _, tt := range tests {
		if got := incompressible(tt.data); got != tt.want {
			t.Errorf("incompressible(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// FuzzDecodeFrame checks that no input makes DecodeFrame panic, allocate past
// its cap, or accept what the reference decoder decodes differently. Seeds
// are in testdata/fuzz/FuzzDecodeFrame.
func FuzzDecodeFrame(f *testing.F) {
	const maxSize = 64 << 10
	ref, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(ref.Close)
	f.Fuzz(func(t *testing.T, frame []byte) {
		got, err := DecodeFrame(nil, frame, maxSize)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if len(got) > maxSize {
			t.Fatalf("decoded %d bytes, cap %d", len(got), maxSize)
		}
		want, err := ref.DecodeAll(frame, nil)
		if err != nil {
			t.Fatalf("DecodeFrame accepted a frame the reference decoder refuses: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("DecodeFrame and the reference decoder disagree: %d and %d bytes", len(got), len(want))
		}
		again, err := DecodeFrame(nil, EncodeFrame(nil, got), maxSize)
		if err != nil || !bytes.Equal(again, got) {
			t.Fatalf("re-encoded content does not round-trip: %v", err)
		}
	})
}
