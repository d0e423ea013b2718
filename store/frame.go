package store

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/patchctl/patchctl/manifest"
)

// A frame is the stored and wire form of a chunk: always exactly one standard
// zstd frame (RFC 8878) that carries its content size, so `zstd -d` reads every
// chunk file and a receiver knows the decompressed size before it decompresses
// anything. Chunks that compress are zstd-compressed at SpeedDefault; chunks
// that do not are stored as raw blocks inside a frame.

const (
	zstdMagic    = 0xFD2FB528
	maxBlockSize = 128 << 10 // RFC 8878 Block_Maximum_Size

	// Block types of the 3-byte block header.
	blockRaw        = 0
	blockRLE        = 1
	blockCompressed = 2
	blockReserved   = 3
)

// minSaving is the share of a chunk that compression must save for the
// compressed frame to be kept (1/32, about 3%). Below that the raw frame
// costs a few more WAN bytes but decodes as a plain copy on every receiver.
const minSaving = 32

// SpeedDefault rather than SpeedFastest: the publisher compresses once, and
// every site pays the WAN bytes (docs/decisions/0008).
var encoders = sync.Pool{New: func() any {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		// One goroutine per encoder; the pool supplies the parallelism.
		zstd.WithEncoderConcurrency(1),
		// Chunks are verified by their SHA-256 CID; an xxhash checksum would
		// add 4 bytes and a pass over the data for nothing.
		zstd.WithEncoderCRC(false),
		// Single segment makes every frame carry its content size, which
		// DecodeFrame requires, and bounds the window to the chunk.
		zstd.WithSingleSegment(true),
		zstd.WithWindowSize(manifest.MaxChunkSize),
	)
	if err != nil {
		panic(err) // unreachable: the options are constant and valid
	}
	return enc
}}

// encodeSlots bounds the encoders in use to one per CPU. Writers may be many
// more (they mostly wait for their files to become durable), and each encoder
// holds megabytes of tables: without the bound, memory would follow the
// number of writers rather than the number of cores.
var encodeSlots = make(chan struct{}, runtime.GOMAXPROCS(0))

var decoders = sync.Pool{New: func() any {
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		// Defence in depth: DecodeFrame already refused frames whose
		// declared size exceeds the cap, and the decoder stops at the
		// declared size.
		zstd.WithDecoderMaxMemory(manifest.MaxChunkSize),
	)
	if err != nil {
		panic(err) // unreachable: the options are constant and valid
	}
	return dec
}}

// EncodeFrame appends the frame of data to dst and returns the extended
// slice. It is safe for concurrent use.
//
// Data that looks incompressible (see incompressible) is framed raw without
// trying to compress it; data whose compression saves less than about 3% is
// framed raw too.
func EncodeFrame(dst, data []byte) []byte {
	if len(data) == 0 || incompressible(data) {
		return appendRawFrame(dst, data)
	}
	start := len(dst)
	encodeSlots <- struct{}{}
	enc := encoders.Get().(*zstd.Encoder)
	out := enc.EncodeAll(data, dst)
	encoders.Put(enc)
	<-encodeSlots
	if len(out)-start > len(data)-len(data)/minSaving {
		return appendRawFrame(out[:start], data)
	}
	return out
}

// MaxFrameSize is the largest frame DecodeFrame accepts for content of at most
// n bytes: zstd's worst-case expansion (ZSTD_COMPRESSBOUND) plus room for a
// frame header and checksum. Receivers use it to cap chunk messages.
func MaxFrameSize(n int) int {
	n = max(n, 0)
	return n + n>>8 + maxBlockSize>>11 + 32
}

// appendRawFrame writes data as a zstd frame of raw blocks. It is hand-written
// because klauspost/compress offers no way to emit raw blocks without first
// trying to compress them, which costs more than the estimate and this copy
// together (docs/decisions/0007).
func appendRawFrame(dst, data []byte) []byte {
	n := len(data)
	dst = slices.Grow(dst, n+3*(n/maxBlockSize+1)+14)
	dst = binary.LittleEndian.AppendUint32(dst, zstdMagic)
	// Frame_Header_Descriptor: Single_Segment_flag (bit 5), no checksum, no
	// dictionary, and Frame_Content_Size_flag (bits 6-7) choosing the size
	// field's width; with Single_Segment there is no Window_Descriptor.
	const single = 1 << 5
	switch {
	case n < 256:
		dst = append(dst, single, byte(n))
	case n < 65536+256:
		dst = append(dst, 1<<6|single)
		dst = binary.LittleEndian.AppendUint16(dst, uint16(n-256))
	case uint64(n) < 0xFFFFFFFF:
		dst = append(dst, 2<<6|single)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	default:
		dst = append(dst, 3<<6|single)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(n))
	}
	// Blocks: a 3-byte little-endian header of Last_Block (bit 0),
	// Block_Type (bits 1-2, 0 = raw) and Block_Size (bits 3-23), then the
	// bytes. Empty content is a single empty last block.
	for {
		b := data[:min(len(data), maxBlockSize)]
		data = data[len(b):]
		h := uint32(len(b))<<3 | blockRaw<<1
		if len(data) == 0 {
			h |= 1
		}
		dst = append(dst, byte(h), byte(h>>8), byte(h>>16))
		dst = append(dst, b...)
		if len(data) == 0 {
			return dst
		}
	}
}

// incompressible guesses from the byte histogram of four 1 KiB samples
// whether data would not compress. It computes the sum of squared byte
// counts, which for uniformly random bytes is n + n(n-1)/256, and calls data
// incompressible if its sum is within 8% of that (a collision entropy of
// about 7.8 bits per byte on 4 KiB).
//
// It costs far less than giving up on a compression, and calls fewer
// compressible chunks incompressible than a trial compression of samples
// did; what it misses, minSaving catches after a real compression
// (docs/decisions/0009).
func incompressible(data []byte) bool {
	const samples, sampleSize = 4, 1 << 10
	// Four interleaved tables let consecutive increments of the same byte
	// value proceed without waiting on each other.
	var h [4][256]uint32
	count := func(p []byte) {
		for len(p) >= 4 {
			h[0][p[0]]++
			h[1][p[1]]++
			h[2][p[2]]++
			h[3][p[3]]++
			p = p[4:]
		}
		for _, c := range p {
			h[0][c]++
		}
	}
	n := len(data)
	if n <= samples*sampleSize {
		count(data)
	} else {
		step := (n - sampleSize) / (samples - 1)
		for i := range samples {
			count(data[i*step : i*step+sampleSize])
		}
		n = samples * sampleSize
	}
	var sq uint64
	for i := range 256 {
		c := uint64(h[0][i] + h[1][i] + h[2][i] + h[3][i])
		sq += c * c
	}
	uniform := float64(n) + float64(n)*float64(n-1)/256
	return float64(sq) <= 1.08*uniform
}

// DecodeFrame appends the content of frame to dst and returns the extended
// slice. It refuses, with an error wrapping ErrCorrupt, anything but exactly
// one zstd frame that declares its content size, declares at most maxSize
// bytes (capped at manifest.MaxChunkSize, which bounds every chunk) and
// decodes to exactly that size. The size is checked before anything is
// decompressed, so a hostile frame cannot make it allocate more than maxSize.
// It is safe for concurrent use.
func DecodeFrame(dst, frame []byte, maxSize int) ([]byte, error) {
	maxSize = min(max(maxSize, 0), manifest.MaxChunkSize)
	if len(frame) > MaxFrameSize(maxSize) {
		return dst, fmt.Errorf("frame of %d bytes is larger than any frame of at most %d bytes: %w", len(frame), maxSize, ErrCorrupt)
	}
	var h zstd.Header
	if err := h.Decode(frame); err != nil {
		return dst, fmt.Errorf("frame header: %v: %w", err, ErrCorrupt)
	}
	switch {
	case h.Skippable:
		return dst, fmt.Errorf("skippable frame instead of a chunk frame: %w", ErrCorrupt)
	case !h.HasFCS:
		return dst, fmt.Errorf("frame does not declare its content size: %w", ErrCorrupt)
	case h.DictionaryID != 0:
		return dst, fmt.Errorf("frame needs dictionary %d: %w", h.DictionaryID, ErrCorrupt)
	case h.FrameContentSize > uint64(maxSize):
		return dst, fmt.Errorf("frame declares %d bytes of content, more than the cap of %d: %w", h.FrameContentSize, maxSize, ErrCorrupt)
	}
	size := int(h.FrameContentSize)
	allRaw, err := scanBlocks(frame[h.HeaderSize:], h.HasCheckSum)
	if err != nil {
		return dst, err
	}
	// Raw blocks need no decoder, only a copy. Single segment makes the
	// window the content size, so a raw block can never exceed the window
	// without exceeding the content size too, which appendRawContent
	// refuses; a checksum is left to the decoder to verify.
	if allRaw && h.SingleSegment && !h.HasCheckSum {
		return appendRawContent(dst, frame[h.HeaderSize:], size)
	}
	dec := decoders.Get().(*zstd.Decoder)
	out, err := dec.DecodeAll(frame, dst)
	decoders.Put(dec)
	if err != nil {
		return dst, fmt.Errorf("decode frame: %v: %w", err, ErrCorrupt)
	}
	if len(out)-len(dst) != size {
		return dst, fmt.Errorf("frame decoded to %d bytes, declared %d: %w", len(out)-len(dst), size, ErrCorrupt)
	}
	return out, nil
}

// scanBlocks walks the block headers of a frame's blocks without decoding
// them, so that truncated frames, reserved block types, oversize blocks and
// bytes after the frame (a second frame, a skippable frame, garbage) are
// refused before any decoding. It reports whether every block is raw.
func scanBlocks(p []byte, checksum bool) (allRaw bool, err error) {
	allRaw = true
	for {
		if len(p) < 3 {
			return false, fmt.Errorf("frame is truncated in a block header: %w", ErrCorrupt)
		}
		bh := uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16
		p = p[3:]
		size := int(bh >> 3)
		if size > maxBlockSize {
			return false, fmt.Errorf("frame has a block of %d bytes, more than %d: %w", size, maxBlockSize, ErrCorrupt)
		}
		n := size
		switch (bh >> 1) & 3 {
		case blockRaw:
		case blockRLE:
			n = 1
			allRaw = false
		case blockCompressed:
			allRaw = false
		case blockReserved:
			return false, fmt.Errorf("frame has a block of reserved type: %w", ErrCorrupt)
		}
		if len(p) < n {
			return false, fmt.Errorf("frame is truncated in a block: %w", ErrCorrupt)
		}
		p = p[n:]
		if bh&1 != 0 {
			break
		}
	}
	if checksum {
		if len(p) < 4 {
			return false, fmt.Errorf("frame is truncated in its checksum: %w", ErrCorrupt)
		}
		p = p[4:]
	}
	if len(p) != 0 {
		return false, fmt.Errorf("%d bytes follow the frame: %w", len(p), ErrCorrupt)
	}
	return allRaw, nil
}

// appendRawContent copies the content of raw blocks, already checked by
// scanBlocks, to dst: the decoder is not needed for a copy.
func appendRawContent(dst, p []byte, size int) ([]byte, error) {
	start := len(dst)
	dst = slices.Grow(dst, size)
	for {
		bh := uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16
		n := int(bh >> 3)
		if len(dst)-start+n > size {
			return dst[:start], fmt.Errorf("frame holds more than the %d bytes it declares: %w", size, ErrCorrupt)
		}
		dst = append(dst, p[3:3+n]...)
		p = p[3+n:]
		if bh&1 != 0 {
			break
		}
	}
	if len(dst)-start != size {
		return dst[:start], fmt.Errorf("frame holds %d bytes, declares %d: %w", len(dst)-start, size, ErrCorrupt)
	}
	return dst, nil
}
