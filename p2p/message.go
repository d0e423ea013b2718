package p2p

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/ipfs/go-cid"
)

// Status is the first byte of every response message.
type Status byte

const (
	// StatusOK means the response carries what was asked for.
	StatusOK Status = 0
	// StatusNotFound means the peer does not have it.
	StatusNotFound Status = 1
	// StatusUnavailable means the peer has it, or may have it, but failed
	// to serve it (a storage error, too many subscribers).
	StatusUnavailable Status = 2
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusNotFound:
		return "not found"
	case StatusUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("status %d", byte(s))
}

// err returns the error a client reports for a status other than OK.
func (s Status) err() error {
	switch s {
	case StatusOK:
		return nil
	case StatusNotFound:
		return ErrNotFound
	case StatusUnavailable:
		return ErrUnavailable
	}
	return fmt.Errorf("unknown %v: %w", s, ErrMalformed)
}

// decodeStatus reads the status byte at the front of a response.
func decodeStatus(p []byte) (Status, error) {
	if len(p) == 0 {
		return 0, fmt.Errorf("empty response: %w", ErrMalformed)
	}
	st := Status(p[0])
	if st > StatusUnavailable {
		return 0, fmt.Errorf("unknown %v: %w", st, ErrMalformed)
	}
	return st, nil
}

// maxCIDLen bounds the encoded CIDs a decoder accepts before it parses them.
// Chunk and manifest IDs are 36 bytes (version, codec, multihash code and
// length, 32-byte digest); the slack admits nothing that CheckChunkID or
// CheckManifestID would not then refuse.
const maxCIDLen = 64

// appendCID appends id as a uvarint length and its binary bytes.
func appendCID(dst []byte, id cid.Cid) []byte {
	b := id.KeyString() // the binary CID, without Bytes' copy
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// decodeCID reads a CID written by appendCID from the front of p and returns
// it with the number of bytes it took. The CID must use all of its bytes.
func decodeCID(p []byte) (cid.Cid, int, error) {
	l, n, err := uvarint(p)
	if err != nil {
		return cid.Undef, 0, fmt.Errorf("CID length: %w", err)
	}
	if l == 0 || l > maxCIDLen {
		return cid.Undef, 0, fmt.Errorf("CID of %d bytes, want 1 to %d: %w", l, maxCIDLen, ErrMalformed)
	}
	if uint64(len(p)-n) < l {
		return cid.Undef, 0, fmt.Errorf("CID of %d bytes truncated to %d: %w", l, len(p)-n, ErrMalformed)
	}
	b := p[n : n+int(l)]
	used, id, err := cid.CidFromBytes(b)
	if err != nil {
		return cid.Undef, 0, fmt.Errorf("CID: %v: %w", err, ErrMalformed)
	}
	if used != len(b) {
		return cid.Undef, 0, fmt.Errorf("CID takes %d of its %d bytes: %w", used, len(b), ErrMalformed)
	}
	return id, n + int(l), nil
}

// Bitmap is a set of chunk indexes of one release, in the order of
// Manifest.ChunkIDs: bit i is byte i/8, mask 0x80>>(i%8), so the first
// chunk is the high bit of the first byte. Its length is ceil(n/8) for n
// chunks and the spare bits of the last byte are zero.
type Bitmap []byte

// NewBitmap returns an empty bitmap for n chunks.
func NewBitmap(n int) Bitmap { return make(Bitmap, bitmapLen(n)) }

func bitmapLen(n int) int { return (n + 7) / 8 }

// Has reports whether index i is set. Indexes beyond the bitmap are not.
func (b Bitmap) Has(i int) bool {
	return i >= 0 && i/8 < len(b) && b[i/8]&(0x80>>(i%8)) != 0
}

// Set sets index i, which must be within the bitmap.
func (b Bitmap) Set(i int) { b[i/8] |= 0x80 >> (i % 8) }

// Count returns how many indexes are set.
func (b Bitmap) Count() int {
	n := 0
	for _, c := range b {
		n += bits.OnesCount8(c)
	}
	return n
}
