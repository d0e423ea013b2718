package p2p

import (
	"bufio"
	"bytes"
	"errors"
	"slices"
	"testing"
)

// The fuzz targets check that no input makes a decoder panic or accept
// something out of bounds, and that whatever a decoder accepts re-encodes to
// the same bytes: every message has exactly one encoding. Seeds live in
// testdata/fuzz/<Name>.

func FuzzReadFrame(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, limit uint16) {
		p, err := ReadFrame(bufio.NewReader(bytes.NewReader(data)), int(limit))
		if err != nil {
			return
		}
		if len(p) > int(limit) {
			t.Fatalf("frame of %d bytes over the limit of %d", len(p), limit)
		}
		var b bytes.Buffer
		if err := WriteFrame(&b, p); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(data, b.Bytes()) {
			t.Fatalf("frame re-encodes to %x, read from %x", b.Bytes(), data)
		}
	})
}

func FuzzDecodeManifestRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		ref, err := DecodeManifestRequest(p)
		if err != nil {
			return
		}
		q, err := EncodeManifestRequest(ref)
		if err != nil || !bytes.Equal(p, q) {
			t.Fatalf("ref %q re-encodes to %x, %v", ref, q, err)
		}
	})
}

func FuzzDecodeManifestResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		st, env, err := DecodeManifestResponse(p)
		if err != nil {
			return
		}
		if (st == StatusOK) != (len(env) > 0) {
			t.Fatalf("status %v with %d envelope bytes", st, len(env))
		}
		if q := EncodeManifestResponse(st, env); !bytes.Equal(p, q) {
			t.Fatalf("response re-encodes to %x", q)
		}
	})
}

func FuzzDecodeHaveRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		id, err := DecodeHaveRequest(p)
		if err != nil {
			return
		}
		q, err := EncodeHaveRequest(id)
		if err != nil || !bytes.Equal(p, q) {
			t.Fatalf("request for %s re-encodes to %x, %v", id, q, err)
		}
	})
}

func FuzzDecodeHaveResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		st, n, have, err := DecodeHaveResponse(p)
		if err != nil {
			return
		}
		if n < 0 || n > MaxReleaseChunks || len(have) != bitmapLen(n) {
			t.Fatalf("%d chunks with a bitmap of %d bytes", n, len(have))
		}
		for i := n; i < 8*len(have); i++ {
			if have.Has(i) {
				t.Fatalf("spare bit %d set for %d chunks", i, n)
			}
		}
		if q := EncodeHaveResponse(st, have, n); !bytes.Equal(p, q) {
			t.Fatalf("response re-encodes to %x", q)
		}
	})
}

func FuzzDecodeHaveUpdate(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte, n int) {
		idx, err := DecodeHaveUpdate(p, n)
		if err != nil {
			return
		}
		if len(idx) == 0 || len(idx) > MaxHaveUpdate {
			t.Fatalf("update of %d indexes", len(idx))
		}
		for _, i := range idx {
			if i < 0 || i >= n {
				t.Fatalf("index %d of %d chunks", i, n)
			}
		}
		if q := AppendHaveUpdate(nil, idx); !bytes.Equal(p, q) {
			t.Fatalf("update re-encodes to %x", q)
		}
	})
}

func FuzzDecodeChunkRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		ids, err := DecodeChunkRequest(p)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if len(ids) == 0 || len(ids) > MaxChunkBatch {
			t.Fatalf("request of %d chunks", len(ids))
		}
		q, err := EncodeChunkRequest(ids)
		if err != nil || !bytes.Equal(p, q) {
			t.Fatalf("request re-encodes to %x, %v", q, err)
		}
		if again, _ := DecodeChunkRequest(q); !slices.Equal(ids, again) {
			t.Fatal("request decodes differently the second time")
		}
	})
}

func FuzzDecodeChunkResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		st, frame, err := DecodeChunkResponse(p)
		if err != nil {
			return
		}
		if (st == StatusOK) != (len(frame) > 0) || len(frame) > maxChunkFrame {
			t.Fatalf("status %v with a frame of %d bytes", st, len(frame))
		}
		if q := EncodeChunkResponse(st, frame); !bytes.Equal(p, q) {
			t.Fatalf("response re-encodes to %x", q)
		}
	})
}

func FuzzDecodeVersion(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		v, err := DecodeVersion(p)
		if err != nil {
			return
		}
		if q := EncodeVersion(v); !bytes.Equal(p, q) {
			t.Fatalf("version %d re-encodes to %x, read from %x", v, q, p)
		}
	})
}
