package p2p

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/ipfs/go-cid"
)

func TestChunkRequestCodec(t *testing.T) {
	_, ids := testChunks(MaxChunkBatch+1, 8, 21)
	for _, n := range []int{1, 2, MaxChunkBatch} {
		p, err := EncodeChunkRequest(ids[:n])
		if err != nil {
			t.Fatal(err)
		}
		if len(p) > maxChunkRequest {
			t.Fatalf("request of %d chunks is %d bytes, over the cap of %d", n, len(p), maxChunkRequest)
		}
		got, err := DecodeChunkRequest(p)
		if err != nil || !slices.Equal(got, ids[:n]) {
			t.Fatalf("round trip of %d IDs: %v, %v", n, got, err)
		}
	}
	for _, bad := range [][]cid.Cid{nil, ids, {testManifestID("m")}, {cid.Undef}} {
		if _, err := EncodeChunkRequest(bad); err == nil {
			t.Errorf("EncodeChunkRequest(%d IDs starting %v) succeeded", len(bad), bad)
		}
	}
}

func TestHaveCodecs(t *testing.T) {
	mid := testManifestID("m")
	p, err := EncodeHaveRequest(mid)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeHaveRequest(p); err != nil || got != mid {
		t.Fatalf("have request round trip: %v, %v", got, err)
	}
	_, chunk := testChunks(1, 8, 22)
	if _, err := EncodeHaveRequest(chunk[0]); err == nil {
		t.Fatal("EncodeHaveRequest accepted a chunk ID")
	}

	for _, n := range []int{0, 1, 7, 8, 9, MaxReleaseChunks} {
		b := NewBitmap(n)
		for i := 0; i < n; i += 3 {
			b.Set(i)
		}
		p := EncodeHaveResponse(StatusOK, b, n)
		if len(p) > maxHaveResponse {
			t.Fatalf("response for %d chunks is %d bytes, over the cap of %d", n, len(p), maxHaveResponse)
		}
		st, gotN, got, err := DecodeHaveResponse(p)
		if err != nil || st != StatusOK || gotN != n || !bytes.Equal(got, b) {
			t.Fatalf("have response for %d chunks: %v %d %v", n, st, gotN, err)
		}
		if want := (n + 2) / 3; got.Count() != want {
			t.Fatalf("bitmap of %d chunks counts %d, want %d", n, got.Count(), want)
		}
	}
	if st, _, _, err := DecodeHaveResponse(EncodeHaveResponse(StatusNotFound, nil, 0)); err != nil || st != StatusNotFound {
		t.Fatalf("not-found response: %v, %v", st, err)
	}

	idx := []int{0, 127, 128, 99_999}
	got, err := DecodeHaveUpdate(AppendHaveUpdate(nil, idx), 100_000)
	if err != nil || !slices.Equal(got, idx) {
		t.Fatalf("update round trip: %v, %v", got, err)
	}
	full := make([]int, MaxHaveUpdate)
	for i := range full {
		full[i] = MaxReleaseChunks - 1 - i
	}
	if p := AppendHaveUpdate(nil, full); len(p) > maxHaveUpdate {
		t.Fatalf("largest update is %d bytes, over the cap of %d", len(p), maxHaveUpdate)
	}
}

func TestDecodersReject(t *testing.T) {
	uv := func(x uint64) []byte { return binary.AppendUvarint(nil, x) }
	_, ids := testChunks(1, 8, 23)
	cases := []struct {
		name   string
		decode func([]byte) error
		in     []byte
	}{
		{"chunk request: empty", decodeChunkRequest, nil},
		{"chunk request: padded count", decodeChunkRequest, append([]byte{0x81, 0x00}, appendCID(nil, ids[0])...)},
		{"chunk request: CID length zero", decodeChunkRequest, []byte{1, 0}},
		{"chunk request: CID too long", decodeChunkRequest, append([]byte{1}, uv(maxCIDLen+1)...)},
		{"chunk request: CID shorter than it says", decodeChunkRequest, append([]byte{1, 37}, ids[0].Bytes()...)},
		{"chunk request: CID longer than it says", decodeChunkRequest, append([]byte{1, 35}, ids[0].Bytes()...)},
		{"chunk response: empty", decodeChunkResponse, nil},
		{"chunk response: unknown status", decodeChunkResponse, []byte{3}},
		{"manifest response: OK without envelope", decodeManifestResponse, []byte{0}},
		{"manifest response: not found with bytes", decodeManifestResponse, []byte{1, 'x'}},
		{"have response: not found with bytes", decodeHaveResponse, []byte{1, 0}},
		{"have response: no count", decodeHaveResponse, []byte{0}},
		{"have response: too many chunks", decodeHaveResponse, append([]byte{0}, uv(MaxReleaseChunks+1)...)},
		{"have response: long bitmap", decodeHaveResponse, []byte{0, 8, 0, 0}},
		{"have update: empty", decodeHaveUpdate10, nil},
		{"have update: zero count", decodeHaveUpdate10, []byte{0}},
		{"have update: count over max", decodeHaveUpdate10, append(uv(MaxHaveUpdate+1), make([]byte, MaxHaveUpdate+1)...)},
		{"have update: fewer indexes than count", decodeHaveUpdate10, []byte{2, 1}},
		{"have update: index out of range", decodeHaveUpdate10, []byte{1, 10}},
		{"have update: trailing byte", decodeHaveUpdate10, []byte{1, 1, 1}},
		{"have update: padded index", decodeHaveUpdate10, []byte{1, 0x81, 0x00}},
	}
	for _, tc := range cases {
		if err := tc.decode(tc.in); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrFrameTooLarge) {
			t.Errorf("%s: %v, want ErrMalformed", tc.name, err)
		}
	}
}

func decodeChunkRequest(p []byte) error { _, err := DecodeChunkRequest(p); return err }
func decodeChunkResponse(p []byte) error {
	_, _, err := DecodeChunkResponse(p)
	return err
}
func decodeManifestResponse(p []byte) error {
	_, _, err := DecodeManifestResponse(p)
	return err
}
func decodeHaveResponse(p []byte) error {
	_, _, _, err := DecodeHaveResponse(p)
	return err
}
func decodeHaveUpdate10(p []byte) error { _, err := DecodeHaveUpdate(p, 10); return err }

func TestBitmap(t *testing.T) {
	b := NewBitmap(10)
	if len(b) != 2 {
		t.Fatalf("bitmap for 10 chunks is %d bytes", len(b))
	}
	b.Set(0)
	b.Set(9)
	if !b.Has(0) || !b.Has(9) || b.Has(1) || b.Has(-1) || b.Has(16) || b.Count() != 2 {
		t.Fatalf("bitmap %08b", b)
	}
	if b[0] != 0x80 || b[1] != 0x40 {
		t.Fatalf("bit order: %08b, want the first chunk in the high bit", b)
	}
}
