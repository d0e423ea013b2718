package p2p

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	sizes := []int{0, 1, 127, 128, smallFrame, smallFrame + 1, growStep - 1, growStep, 3*growStep + 7}
	var b bytes.Buffer
	for _, n := range sizes {
		if err := WriteFrame(&b, bytes.Repeat([]byte{byte(n)}, n)); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(&b)
	var buf []byte
	for i, n := range sizes {
		var p []byte
		var err error
		// Alternate fresh and reused buffers.
		if i%2 == 0 {
			p, err = ReadFrame(r, n)
		} else {
			buf, err = readFrameInto(buf, r, n)
			p = buf
		}
		if err != nil {
			t.Fatalf("frame %d (%d bytes): %v", i, n, err)
		}
		if !bytes.Equal(p, bytes.Repeat([]byte{byte(n)}, n)) {
			t.Fatalf("frame %d: got %d bytes, want %d", i, len(p), n)
		}
	}
	if _, err := ReadFrame(r, 10); err != io.EOF {
		t.Fatalf("ReadFrame at the end = %v, want io.EOF", err)
	}
}

func TestReadFrameRejects(t *testing.T) {
	uv := func(x uint64) []byte { return binary.AppendUvarint(nil, x) }
	cases := []struct {
		name  string
		in    []byte
		limit int
		want  error
	}{
		{"over the limit", append(uv(11), make([]byte, 11)...), 10, ErrFrameTooLarge},
		{"huge length, no payload", uv(1 << 62), 1 << 20, ErrFrameTooLarge},
		{"negative limit", uv(1), -1, ErrFrameTooLarge},
		{"length overflows", bytes.Repeat([]byte{0xff}, 10), 10, ErrMalformed},
		{"length too long", append(bytes.Repeat([]byte{0x80}, 10), 1), 10, ErrMalformed},
		{"padded length", []byte{0x85, 0x00}, 10, ErrMalformed},
		{"truncated length", []byte{0x85}, 10, io.ErrUnexpectedEOF},
		{"truncated payload", append(uv(5), 1, 2), 10, io.ErrUnexpectedEOF},
		{"truncated large payload", append(uv(growStep*2), make([]byte, growStep+1)...), growStep * 4, io.ErrUnexpectedEOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadFrame(bufio.NewReader(bytes.NewReader(tc.in)), tc.limit)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ReadFrame = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestReadFrameAllocatesWhatArrives checks that a peer announcing a large
// frame and sending little cannot make the reader allocate the announced
// size.
func TestReadFrameAllocatesWhatArrives(t *testing.T) {
	in := append(binary.AppendUvarint(nil, 64<<20), make([]byte, 100)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadFrame(bufio.NewReader(bytes.NewReader(in)), 96<<20)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadFrame = %v, want io.ErrUnexpectedEOF", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 8<<20 {
		t.Fatalf("reading 100 bytes of a frame announced as 64 MiB allocated %d bytes", got)
	}
}

func TestExpectEOF(t *testing.T) {
	if err := expectEOF(bufio.NewReader(strings.NewReader(""))); err != nil {
		t.Fatalf("expectEOF at the end = %v", err)
	}
	if err := expectEOF(bufio.NewReader(strings.NewReader("x"))); !errors.Is(err, ErrMalformed) {
		t.Fatalf("expectEOF before data = %v, want ErrMalformed", err)
	}
}
