package store

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
)

// A pack is a file of records, and a valid zstd stream: every record is a
// skippable frame (which zstd -d passes over), and a chunk record is followed
// by the chunk's frame exactly as EncodeFrame made it or a peer sent it, so
// `zstd -d pack` prints the chunks one after another (docs/decisions/0040).
//
//	pack    = header record, { record [chunk frame] }, [index]
//	record  = skippable frame: magic, payload size, payload
//	payload = type, CID length, seq, time, a, b, CID, header checksum
//
// The first record names the file a pack. Chunk records ('C') carry the
// frame's length (a) and xxhash64 (b); tombstones ('D') delete every record
// of their CID with a smaller seq and name the pack (a) whose record they
// killed, so that they are kept exactly as long as that pack is; touches
// ('T') refresh a chunk's modification time. A sealed pack ends with an
// index frame ('I') listing its records, found through a footer in the last
// footerSize bytes, so opening a store reads indexes, not packs.

const (
	// skippableMagic is the zstd skippable-frame magic of every record;
	// RFC 8878 reserves 0x184D2A50 to 0x184D2A5F for such frames.
	skippableMagic = 0x184D2A5E

	recPack  = 'P' // the first record of every pack
	recChunk = 'C'
	recTomb  = 'D'
	recTouch = 'T'
	recIndex = 'I'

	packVersion = 1
	packExt     = ".pack"
	packTemp    = ".pack.tmp" // a repack's output until it is sealed

	// fixedHeader is the payload of a record before its CID: type, CID
	// length, seq, time, a, b.
	fixedHeader = 1 + 1 + 8 + 8 + 8 + 8
	// maxCIDLen bounds the CID bytes a record may carry; chunk CIDs are 36.
	maxCIDLen = 128
	// frameHeader is a skippable frame's magic and size.
	frameHeader = 8

	footerMagic = "PCHIDX01"
	// footerSize is the end of an index frame: its length, its xxhash64 and
	// footerMagic.
	footerSize = 4 + 8 + 8 // = 4 + 8 + len(footerMagic)
	packMagic  = "PCHPACK1"
)

// rec is one record of a pack, as read from the pack or from its index.
type rec struct {
	typ  byte
	id   cid.Cid
	seq  uint64
	time int64 // unix nanoseconds: a chunk's modification time
	a, b uint64
	// off is where the record's frame starts (a chunk record) or where the
	// record starts (any other).
	off int64
}

// frameLen and frameSum are a chunk record's frame length and checksum.
func (r *rec) frameLen() int64  { return int64(r.a) }
func (r *rec) frameSum() uint64 { return r.b }

// recordSize is the bytes a record of a CID of n bytes takes in a pack,
// without a chunk's frame.
func recordSize(n int) int64 { return int64(frameHeader + fixedHeader + n + 4) }

// appendPayload appends r's payload: its fields, its CID and a checksum of
// both, so that a torn or altered header is never trusted for a length.
func appendPayload(dst []byte, r *rec) []byte {
	start := len(dst)
	k := r.id.KeyString()
	dst = append(dst, r.typ, byte(len(k)))
	dst = binary.LittleEndian.AppendUint64(dst, r.seq)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(r.time))
	dst = binary.LittleEndian.AppendUint64(dst, r.a)
	dst = binary.LittleEndian.AppendUint64(dst, r.b)
	dst = append(dst, k...)
	return binary.LittleEndian.AppendUint32(dst, uint32(xxhash.Sum64(dst[start:])))
}

// appendRecord appends r as a skippable frame.
func appendRecord(dst []byte, r *rec) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, skippableMagic)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(fixedHeader+len(r.id.KeyString())+4))
	return appendPayload(dst, r)
}

// parsePayload parses a record payload and returns the bytes after it.
func parsePayload(p []byte) (rec, []byte, error) { return parsePayloadSum(p, true) }

// parsePayloadSum is parsePayload that checks the header checksum only if
// sum: an index frame's own checksum covers the headers it lists.
func parsePayloadSum(p []byte, sum bool) (rec, []byte, error) {
	if len(p) < fixedHeader {
		return rec{}, nil, errors.New("record header is truncated")
	}
	n := int(p[1])
	if n == 0 || n > maxCIDLen || len(p) < fixedHeader+n+4 {
		return rec{}, nil, errors.New("record header is truncated or names no CID")
	}
	body := p[:fixedHeader+n]
	if sum && uint32(xxhash.Sum64(body)) != binary.LittleEndian.Uint32(p[fixedHeader+n:]) {
		return rec{}, nil, errors.New("record header checksum mismatch")
	}
	r := rec{
		typ:  p[0],
		seq:  binary.LittleEndian.Uint64(p[2:]),
		time: int64(binary.LittleEndian.Uint64(p[10:])),
		a:    binary.LittleEndian.Uint64(p[18:]),
		b:    binary.LittleEndian.Uint64(p[26:]),
	}
	id, err := cid.Cast(p[fixedHeader : fixedHeader+n])
	if err == nil {
		// A CID of another kind would be listed but never read.
		err = manifest.CheckChunkID(id)
	}
	if err != nil {
		return rec{}, nil, fmt.Errorf("record CID: %v", err)
	}
	r.id = id
	switch r.typ {
	case recChunk, recTomb, recTouch:
	default:
		return rec{}, nil, fmt.Errorf("record of unknown type %q", r.typ)
	}
	if r.typ == recChunk && (r.a == 0 || r.a > uint64(MaxFrameSize(manifest.MaxChunkSize))) {
		return rec{}, nil, fmt.Errorf("chunk record of a %d-byte frame", r.a)
	}
	return r, p[fixedHeader+n+4:], nil
}

// appendPackHeader appends the first record of pack id.
func appendPackHeader(dst []byte, id uint64) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, skippableMagic)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(1+len(packMagic)+1+8))
	dst = append(dst, recPack)
	dst = append(dst, packMagic...)
	dst = append(dst, packVersion)
	return binary.LittleEndian.AppendUint64(dst, id)
}

// packHeaderSize is the first record's size: frame header, type,
// packMagic, version, pack ID.
const packHeaderSize = frameHeader + 1 + 8 + 1 + 8

func parsePackHeader(p []byte) (uint64, error) {
	if len(p) < packHeaderSize ||
		binary.LittleEndian.Uint32(p) != skippableMagic ||
		binary.LittleEndian.Uint32(p[4:]) != packHeaderSize-frameHeader ||
		p[8] != recPack || string(p[9:9+len(packMagic)]) != packMagic {
		return 0, errors.New("not a pack: no pack header")
	}
	if v := p[9+len(packMagic)]; v != packVersion {
		return 0, fmt.Errorf("pack of version %d, this store reads %d", v, packVersion)
	}
	return binary.LittleEndian.Uint64(p[packHeaderSize-8:]), nil
}

// appendIndex appends the index frame of a pack holding recs, which replaces
// the packs in replaces (a repack's output), ending in the footer.
func appendIndex(dst []byte, recs []rec, replaces []uint64) []byte {
	start := len(dst)
	dst = binary.LittleEndian.AppendUint32(dst, skippableMagic)
	dst = binary.LittleEndian.AppendUint32(dst, 0) // size, set below
	dst = append(dst, recIndex, packVersion)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(replaces)))
	for _, p := range replaces {
		dst = binary.LittleEndian.AppendUint64(dst, p)
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(recs)))
	for i := range recs {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(recs[i].off))
		dst = appendPayload(dst, &recs[i])
	}
	total := len(dst) - start + footerSize
	binary.LittleEndian.PutUint32(dst[start+4:], uint32(total-frameHeader))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(total))
	dst = binary.LittleEndian.AppendUint64(dst, xxhash.Sum64(dst[start:]))
	return append(dst, footerMagic...)
}

// packIndex is what a sealed pack's index says.
type packIndex struct {
	recs     []rec
	replaces []uint64
	start    int64 // offset of the index frame: the end of the records
}

// readIndex reads the index of a pack of size bytes. It returns
// errUnsealed if the pack has no whole index (it is being written, or its
// writer died), and another error if the index is there but damaged.
func readIndex(f io.ReaderAt, size int64) (packIndex, error) {
	if size < packHeaderSize+footerSize {
		return packIndex{}, errUnsealed
	}
	var foot [footerSize]byte
	if _, err := f.ReadAt(foot[:], size-footerSize); err != nil {
		return packIndex{}, err
	}
	if string(foot[12:]) != footerMagic {
		return packIndex{}, errUnsealed
	}
	n := int64(binary.LittleEndian.Uint32(foot[:]))
	if n < frameHeader+2+8+footerSize || n > size-packHeaderSize {
		return packIndex{}, errUnsealed
	}
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil {
		return packIndex{}, err
	}
	if xxhash.Sum64(buf[:n-footerSize+4]) != binary.LittleEndian.Uint64(foot[4:]) {
		return packIndex{}, errUnsealed
	}
	p := buf[frameHeader : n-footerSize]
	if binary.LittleEndian.Uint32(buf) != skippableMagic || p[0] != recIndex || p[1] != packVersion {
		return packIndex{}, errors.New("index frame of another kind or version")
	}
	p = p[2:]
	idx := packIndex{start: size - n}
	nrep := int(binary.LittleEndian.Uint32(p))
	p = p[4:]
	if nrep > len(p)/8 {
		return packIndex{}, errors.New("index is truncated")
	}
	for range nrep {
		idx.replaces = append(idx.replaces, binary.LittleEndian.Uint64(p))
		p = p[8:]
	}
	if len(p) < 4 {
		return packIndex{}, errors.New("index is truncated")
	}
	nrec := int(binary.LittleEndian.Uint32(p))
	p = p[4:]
	if nrec > len(p)/(8+fixedHeader+4) {
		return packIndex{}, errors.New("index is truncated")
	}
	idx.recs = make([]rec, 0, nrec)
	for range nrec {
		if len(p) < 8 {
			return packIndex{}, errors.New("index is truncated")
		}
		off := int64(binary.LittleEndian.Uint64(p))
		r, rest, err := parsePayloadSum(p[8:], false)
		if err != nil {
			return packIndex{}, fmt.Errorf("index: %w", err)
		}
		r.off = off
		if r.typ == recChunk && (off < packHeaderSize || off+r.frameLen() > idx.start) {
			return packIndex{}, errors.New("index points outside the pack")
		}
		idx.recs = append(idx.recs, r)
		p = rest
	}
	if len(p) != 0 {
		return packIndex{}, errors.New("index has trailing bytes")
	}
	return idx, nil
}

var errUnsealed = errors.New("pack has no index")

// scanResult is what reading an unsealed pack record by record found.
type scanResult struct {
	recs []rec
	// end is where the last whole record ends: anything after it is a
	// record a writer did not finish (or an index it did not finish), cut
	// off when the pack is adopted.
	end int64
	// torn counts chunk records whose frame does not match its checksum:
	// written but never made durable before a power loss.
	torn int
}

// scanPack reads the records of an unsealed pack of size bytes from the
// start, checking every header and every frame's checksum.
func scanPack(f io.ReaderAt, size int64) (scanResult, error) {
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, size), 1<<20)
	var head [packHeaderSize]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return scanResult{}, fmt.Errorf("pack header: %w", err)
	}
	if _, err := parsePackHeader(head[:]); err != nil {
		return scanResult{}, err
	}
	res := scanResult{end: packHeaderSize}
	var payload []byte
	frame := make([]byte, 0, 256<<10)
	for {
		var fh [frameHeader]byte
		if _, err := io.ReadFull(r, fh[:]); err != nil {
			return res, nil // the end, or a torn frame header
		}
		n := int(binary.LittleEndian.Uint32(fh[4:]))
		if binary.LittleEndian.Uint32(fh[:]) != skippableMagic || n < fixedHeader || n > fixedHeader+maxCIDLen+4 {
			return res, nil // an index (too long for a record) or garbage
		}
		if cap(payload) < n {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(r, payload); err != nil {
			return res, nil
		}
		rc, rest, err := parsePayload(payload)
		if err != nil || len(rest) != 0 {
			return res, nil
		}
		off := res.end + frameHeader + int64(n)
		if rc.typ != recChunk {
			rc.off = res.end
			res.recs = append(res.recs, rc)
			res.end = off
			continue
		}
		fl := int(rc.frameLen())
		if off+int64(fl) > size {
			return res, nil // a frame cut short: never read past the end
		}
		if cap(frame) < fl {
			frame = make([]byte, fl)
		}
		frame = frame[:fl]
		if _, err := io.ReadFull(r, frame); err != nil {
			return res, nil
		}
		rc.off = off
		res.end = off + int64(fl)
		if xxhash.Sum64(frame) != rc.frameSum() {
			res.torn++
			continue
		}
		res.recs = append(res.recs, rc)
	}
}
