package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"
	"testing/iotest"
)

// The storage format is frozen by these constants: a change to the gear
// table, the masks or the boundary rule moves chunk boundaries, and then no
// chunk of a new publisher matches a chunk already stored anywhere in the
// fleet. If one of these tests fails, the change is a format change.
const (
	// goldenGearSHA256 is the SHA-256 of the 256 gear entries as
	// little-endian uint64s.
	goldenGearSHA256 = "dd348582baa8a2d1afe3d1632c3d712decbccb772749a351aa7c2468385dd9c2"
	// goldenStreamSeed, goldenStreamSize: the stream TestChunkBoundariesGolden
	// chunks with DefaultChunkParams.
	goldenStreamSeed = 1
	goldenStreamSize = 8 << 20
	// goldenChunkCount and goldenChunkSizesSHA256 pin its chunking: the number
	// of chunks and the SHA-256 of their sizes in decimal, one per line.
	goldenChunkCount       = 118
	goldenChunkSizesSHA256 = "26842301d577e73477ff8323f1a9593f9245307f32d57c596dfa5e78949baf06"
)

func TestGearTableGolden(t *testing.T) {
	h := sha256.New()
	for _, g := range gear {
		h.Write(binary.LittleEndian.AppendUint64(nil, g))
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != goldenGearSHA256 {
		t.Errorf("gear table SHA-256 = %s, want %s: the chunk format changed", got, goldenGearSHA256)
	}
}

func TestChunkBoundariesGolden(t *testing.T) {
	sizes := chunkSizes(t, newPRNGReader(goldenStreamSeed, goldenStreamSize), DefaultChunkParams)
	h := sha256.New()
	for _, n := range sizes {
		fmt.Fprintf(h, "%d\n", n)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if len(sizes) != goldenChunkCount || got != goldenChunkSizesSHA256 {
		t.Errorf("8 MiB golden stream: %d chunks with sizes SHA-256 %s, want %d and %s: the chunk format changed",
			len(sizes), got, goldenChunkCount, goldenChunkSizesSHA256)
	}
}

// chunkSizes chunks r and returns the chunk sizes.
func chunkSizes(t testing.TB, r io.Reader, p ChunkParams) []int {
	t.Helper()
	var sizes []int
	c := NewChunker(r, p)
	for {
		chunk, err := c.Next()
		if errors.Is(err, io.EOF) {
			return sizes
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		sizes = append(sizes, len(chunk))
	}
}

// chunkIDs chunks data and returns the chunk IDs as strings.
func chunkIDs(t testing.TB, data []byte, p ChunkParams) []string {
	t.Helper()
	var ids []string
	c := NewChunker(bytes.NewReader(data), p)
	for {
		chunk, err := c.Next()
		if errors.Is(err, io.EOF) {
			return ids
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		ids = append(ids, ChunkID(chunk).String())
	}
}

func TestChunkerSizesAndContent(t *testing.T) {
	small := ChunkParams{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10}
	tests := []struct {
		name string
		size int
		p    ChunkParams
	}{
		{"empty", 0, DefaultChunkParams},
		{"one byte", 1, DefaultChunkParams},
		{"exactly min", DefaultChunkParams.Min, DefaultChunkParams},
		{"min plus one", DefaultChunkParams.Min + 1, DefaultChunkParams},
		{"exactly max", DefaultChunkParams.Max, DefaultChunkParams},
		{"4 MiB default", 4 << 20, DefaultChunkParams},
		{"1 MiB small params", 1 << 20, small},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := prngBytes(7, tt.size)
			c := NewChunker(bytes.NewReader(data), tt.p)
			var joined []byte
			var sizes []int
			for {
				chunk, err := c.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				joined = append(joined, chunk...)
				sizes = append(sizes, len(chunk))
			}
			if !bytes.Equal(joined, data) {
				t.Fatalf("chunks joined are %d bytes and differ from the %d-byte input", len(joined), len(data))
			}
			for i, n := range sizes {
				last := i == len(sizes)-1
				if n > tt.p.Max || n == 0 || (!last && n < tt.p.Min) {
					t.Errorf("chunk %d of %d has size %d, want [%d, %d]", i, len(sizes), n, tt.p.Min, tt.p.Max)
				}
			}
		})
	}
}

func TestChunkerAverageNearTarget(t *testing.T) {
	const size = 8 << 20
	sizes := chunkSizes(t, newPRNGReader(3, size), DefaultChunkParams)
	avg := size / len(sizes)
	// Normalized chunking with a cut-off at Min lands near, not at, Avg.
	if avg < DefaultChunkParams.Avg/2 || avg > DefaultChunkParams.Avg*2 {
		t.Errorf("average chunk size %d, want within a factor 2 of %d", avg, DefaultChunkParams.Avg)
	}
}

func TestChunkerOneByteReads(t *testing.T) {
	data := prngBytes(11, 1<<20)
	want := chunkSizes(t, bytes.NewReader(data), DefaultChunkParams)
	got := chunkSizes(t, iotest.OneByteReader(bytes.NewReader(data)), DefaultChunkParams)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("one-byte reads give chunk sizes %v, want %v", got, want)
	}
	got = chunkSizes(t, iotest.DataErrReader(bytes.NewReader(data)), DefaultChunkParams)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("reads returning data with io.EOF give chunk sizes %v, want %v", got, want)
	}
}

func TestChunkerLocalEdit(t *testing.T) {
	size := 32 << 20
	if raceEnabled {
		size = 8 << 20 // The race detector slows the loop tenfold.
	}
	data := prngBytes(5, size)
	insert := prngBytes(6, 4<<10)
	edited := make([]byte, 0, len(data)+len(insert))
	edited = append(edited, data[:len(data)/2]...)
	edited = append(edited, insert...)
	edited = append(edited, data[len(data)/2:]...)

	before := chunkIDs(t, data, DefaultChunkParams)
	after := chunkIDs(t, edited, DefaultChunkParams)
	have := make(map[string]bool, len(before))
	for _, id := range before {
		have[id] = true
	}
	shared := 0
	for _, id := range after {
		if have[id] {
			shared++
		}
	}
	if shared*100 < len(after)*95 {
		t.Errorf("after a 4 KiB insert %d of %d chunks are shared, want at least 95%%", shared, len(after))
	}
	if len(after)-shared > 3 {
		t.Errorf("a 4 KiB insert changed %d chunks, want at most 3 around the edit", len(after)-shared)
	}
}

func TestChunkerStreamsInBoundedMemory(t *testing.T) {
	// The stream is many times the limit, so a chunker that kept what it
	// read would fail.
	size := int64(512 << 20)
	if raceEnabled || testing.Short() {
		size = 24 << 20
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse

	c := NewChunker(newPRNGReader(9, size), DefaultChunkParams)
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
		if i%256 == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}
	if total != size {
		t.Fatalf("chunked %d bytes, want %d", total, size)
	}
	const limit = 8 << 20
	if peak > base+limit {
		t.Errorf("heap in use grew from %d to %d bytes while chunking %d MiB, want growth under %d", base, peak, size>>20, limit)
	}
}

func TestChunkParamsValidate(t *testing.T) {
	tests := []struct {
		name string
		p    ChunkParams
		ok   bool
	}{
		{"default", DefaultChunkParams, true},
		{"small", ChunkParams{Min: 64, Avg: 128, Max: 256}, true},
		{"zero", ChunkParams{}, false},
		{"min below 64", ChunkParams{Min: 32, Avg: 128, Max: 256}, false},
		{"avg not a power of two", ChunkParams{Min: 1 << 10, Avg: 3 << 10, Max: 16 << 10}, false},
		{"min equals avg", ChunkParams{Min: 4 << 10, Avg: 4 << 10, Max: 16 << 10}, false},
		{"avg equals max", ChunkParams{Min: 1 << 10, Avg: 4 << 10, Max: 4 << 10}, false},
		{"max below min", ChunkParams{Min: 8 << 10, Avg: 4 << 10, Max: 2 << 10}, false},
		{"max above cap", ChunkParams{Min: 1 << 20, Avg: 2 << 20, Max: MaxChunkSize + 1}, false},
		{"negative", ChunkParams{Min: -1, Avg: -2, Max: -3}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate(%+v) = %v, want ok=%v", tt.p, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("Validate error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestNewChunkerPanicsOnBadParams(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewChunker with invalid params did not panic")
		}
	}()
	NewChunker(bytes.NewReader(nil), ChunkParams{})
}

// errAfterReader returns its data, then err instead of io.EOF.
type errAfterReader struct {
	r   io.Reader
	err error
}

func (e *errAfterReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if errors.Is(err, io.EOF) {
		err = e.err
	}
	return n, err
}

func TestChunkerReportsReadErrors(t *testing.T) {
	boom := errors.New("disk on fire")
	data := prngBytes(13, 1<<20)
	c := NewChunker(&errAfterReader{r: bytes.NewReader(data), err: boom}, DefaultChunkParams)
	var got int
	for {
		chunk, err := c.Next()
		if err != nil {
			if !errors.Is(err, boom) {
				t.Fatalf("Next = %v, want the reader's error", err)
			}
			break
		}
		got += len(chunk)
	}
	// Chunks before the error are only those whose boundary is certain; the
	// tail that an error cut short is never handed out as if it were a chunk.
	if got >= len(data) {
		t.Errorf("chunker returned all %d bytes although the read failed", got)
	}
}

// zeroReader never makes progress.
type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestChunkerNoProgress(t *testing.T) {
	_, err := NewChunker(zeroReader{}, DefaultChunkParams).Next()
	if !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("Next on a reader that never returns data = %v, want io.ErrNoProgress", err)
	}
}

func TestPRNGReaderIndependentOfReadSizes(t *testing.T) {
	want := prngBytes(1, 1000)
	var got []byte
	r := newPRNGReader(1, 1000)
	for i := 1; ; i++ {
		buf := make([]byte, i%13)
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if !bytes.Equal(got, want) {
		t.Error("prngReader output depends on read sizes")
	}
}

// referenceBoundary is the boundary rule written as plainly as possible: the
// one-byte loop the chunker had before scan was unrolled. The optimised
// chunker must cut exactly where it does.
func referenceBoundary(data []byte, p ChunkParams, maskSmall, maskLarge uint64) int {
	n := len(data)
	if n <= p.Min {
		return n
	}
	if n > p.Max {
		n = p.Max
	}
	normal := min(p.Avg, n)
	var h uint64
	i := p.Min
	for ; i < normal; i++ {
		h = (h << 1) + gear[data[i]]
		if h&maskSmall == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		h = (h << 1) + gear[data[i]]
		if h&maskLarge == 0 {
			return i + 1
		}
	}
	return n
}

func TestScanMatchesReference(t *testing.T) {
	params := []ChunkParams{
		DefaultChunkParams,
		{Min: 64, Avg: 128, Max: 256},
		{Min: 101, Avg: 256, Max: 1001}, // odd sizes: the unrolled loop's tails
		{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10},
		{Min: 2<<10 + 3, Avg: 8 << 10, Max: 64<<10 - 1},
	}
	size := 1 << 20
	if raceEnabled {
		size = 256 << 10
	}
	inputs := map[string][]byte{
		"random":   prngBytes(17, size+5),
		"zeros":    make([]byte, size+3),
		"repeated": bytes.Repeat([]byte("patchctl HF-S041000005-012 "), size/27),
	}
	for _, p := range params {
		c := NewChunker(nil, p)
		for name, data := range inputs {
			t.Run(fmt.Sprintf("%s/%d-%d-%d", name, p.Min, p.Avg, p.Max), func(t *testing.T) {
				var want []int
				for rest := data; len(rest) > 0; {
					n := referenceBoundary(rest, p, c.maskSmall, c.maskLarge)
					want = append(want, n)
					rest = rest[n:]
				}
				got := chunkSizes(t, bytes.NewReader(data), p)
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("chunker cuts %d chunks, the reference %d; first sizes %v vs %v",
						len(got), len(want), got[:min(8, len(got))], want[:min(8, len(want))])
				}
			})
		}
	}
}
