package p2p

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// A frame is a uvarint payload length followed by that many payload bytes.
// Every message of every protocol is one frame. The length is the only thing a
// reader trusts before it has read the payload, so each call site passes the
// largest payload it will accept.

// smallFrame is the payload size up to which WriteFrame copies header and
// payload into one buffer so the stream muxer sends one data frame rather than
// two.
const smallFrame = 4 << 10

// growStep is the first allocation for a frame larger than the caller's
// buffer. Larger frames are read in steps that at most double what has
// arrived, so a peer that announces a large frame and then sends nothing
// costs us growStep bytes, not the announced size.
const growStep = 64 << 10

// WriteFrame writes p as one frame. Callers writing several frames should
// pass a *bufio.Writer and flush it.
func WriteFrame(w io.Writer, p []byte) error {
	return writeFrameParts(w, nil, p)
}

// writeFrameParts writes head and body as the payload of one frame, so a
// status byte can precede a large body without copying the body.
func writeFrameParts(w io.Writer, head, body []byte) error {
	n := len(head) + len(body)
	var hdr [binary.MaxVarintLen64]byte
	h := binary.PutUvarint(hdr[:], uint64(n))
	if n <= smallFrame {
		buf := make([]byte, 0, h+n)
		buf = append(append(append(buf, hdr[:h]...), head...), body...)
		_, err := w.Write(buf)
		return err
	}
	for _, p := range [][]byte{append(hdr[:h:h], head...), body} {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// ReadFrame reads one frame whose payload is at most limit bytes. It returns
// io.EOF if r ends before the frame starts, an error wrapping
// io.ErrUnexpectedEOF if it ends inside the frame, one wrapping
// ErrFrameTooLarge, without reading the payload, if the frame is longer than
// limit, and one wrapping ErrMalformed if the length is not a minimal uvarint.
func ReadFrame(r *bufio.Reader, limit int) ([]byte, error) {
	return readFrameInto(nil, r, limit)
}

// readFrameInto is ReadFrame reusing buf's storage. The returned slice may
// alias buf.
func readFrameInto(buf []byte, r *bufio.Reader, limit int) ([]byte, error) {
	length, err := readUvarint(r)
	if err == io.EOF {
		return buf[:0], io.EOF
	}
	if err != nil {
		return buf[:0], fmt.Errorf("frame length: %w", err)
	}
	if length > uint64(max(limit, 0)) {
		return buf[:0], fmt.Errorf("frame of %d bytes, at most %d expected: %w", length, limit, ErrFrameTooLarge)
	}
	n := int(length)
	if n <= cap(buf) {
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return buf[:0], fmt.Errorf("read frame of %d bytes: %w", n, unexpected(err))
		}
		return buf, nil
	}
	buf = buf[:0]
	for len(buf) < n {
		step := min(n-len(buf), max(growStep, len(buf)))
		buf = slices.Grow(buf, step)
		m := len(buf)
		buf = buf[:m+step]
		if _, err := io.ReadFull(r, buf[m:]); err != nil {
			return buf[:0], fmt.Errorf("read frame of %d bytes: %w", n, unexpected(err))
		}
	}
	return buf, nil
}

// readUvarint reads a minimally encoded uvarint. Unlike binary.ReadUvarint it
// refuses padded encodings (a last byte of zero), so every value has one
// encoding and a frame re-encodes to the bytes it was read from. It returns
// io.EOF only if r ends before the first byte.
func readUvarint(r io.ByteReader) (uint64, error) {
	var x uint64
	for i := range binary.MaxVarintLen64 {
		b, err := r.ReadByte()
		if err != nil {
			if i > 0 {
				err = unexpected(err)
			}
			return 0, err
		}
		if i == binary.MaxVarintLen64-1 && b > 1 {
			return 0, fmt.Errorf("uvarint overflows 64 bits: %w", ErrMalformed)
		}
		if b < 0x80 {
			if b == 0 && i > 0 {
				return 0, fmt.Errorf("uvarint is not minimally encoded: %w", ErrMalformed)
			}
			return x | uint64(b)<<(7*i), nil
		}
		x |= uint64(b&0x7f) << (7 * i)
	}
	return 0, fmt.Errorf("uvarint overflows 64 bits: %w", ErrMalformed)
}

// expectEOF reads the end of a request stream: the client closes its write
// side after its one request, so anything more breaks the protocol. Waiting
// for the end costs no round trip, since the client's close follows its
// request at once.
func expectEOF(r *bufio.Reader) error {
	_, err := r.ReadByte()
	switch err {
	case io.EOF:
		return nil
	case nil:
		return fmt.Errorf("data after the request: %w", ErrMalformed)
	}
	return err
}

// uvarint decodes a minimally encoded uvarint from the front of p and
// returns it with the number of bytes it took.
func uvarint(p []byte) (uint64, int, error) {
	x, n := binary.Uvarint(p)
	switch {
	case n == 0:
		return 0, 0, fmt.Errorf("truncated uvarint: %w", ErrMalformed)
	case n < 0:
		return 0, 0, fmt.Errorf("uvarint overflows 64 bits: %w", ErrMalformed)
	case n > 1 && p[n-1] == 0:
		return 0, 0, fmt.Errorf("uvarint is not minimally encoded: %w", ErrMalformed)
	}
	return x, n, nil
}

// unexpected turns an EOF inside a frame into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// deadlineStream sets a fresh deadline before every Read and Write on a
// stream: a peer that stops making progress for idle is cut off, while a
// slow but steady one is not. hard, if set, is a deadline no operation may
// pass however much progress it makes. With neither set it clears the
// deadline.
//
// Setting a deadline costs the muxer a new timer, so a deadline stands
// until it is an eighth of idle old: a peer is cut off after between 7/8 of
// idle and idle without progress. A chunk stream reads in pieces of a few
// KiB, and a new timer for each read would allocate at that pace
// (docs/decisions/0016).
type deadlineStream struct {
	s    network.Stream
	idle time.Duration
	hard time.Time

	readBy, writeBy   time.Time // deadlines last set
	readSet, writeSet bool
}

// deadline returns the deadline for the next operation; zero means none.
func (d *deadlineStream) deadline() time.Time {
	var t time.Time
	if d.idle > 0 {
		t = time.Now().Add(d.idle)
	}
	if !d.hard.IsZero() && (t.IsZero() || d.hard.Before(t)) {
		t = d.hard
	}
	return t
}

// refresh returns whether the deadline last set, by, must give way to t,
// the deadline for an operation starting now.
func (d *deadlineStream) refresh(set bool, by, t time.Time) bool {
	switch {
	case !set || t.IsZero() != by.IsZero():
		return true
	case t.IsZero():
		return false
	}
	return t.Before(by) || t.Sub(by) >= d.idle/8
}

func (d *deadlineStream) Read(p []byte) (int, error) {
	if t := d.deadline(); d.refresh(d.readSet, d.readBy, t) {
		if err := d.s.SetReadDeadline(t); err != nil {
			return 0, err
		}
		d.readBy, d.readSet = t, true
	}
	return d.s.Read(p)
}

// Write gives every deadlineWritePiece of p a fresh deadline: one Write of
// a whole chunk frame can take far longer than idle on a slow link (a 4 MiB
// frame at 1 Mbit/s takes 34 s) while the peer reads steadily.
func (d *deadlineStream) Write(p []byte) (int, error) {
	var done int
	for done < len(p) {
		if t := d.deadline(); d.refresh(d.writeSet, d.writeBy, t) {
			if err := d.s.SetWriteDeadline(t); err != nil {
				return done, err
			}
			d.writeBy, d.writeSet = t, true
		}
		n, err := d.s.Write(p[done:min(len(p), done+deadlineWritePiece)])
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// deadlineWritePiece is the most of a Write that must make it out within one
// idle deadline: 64 KiB is 10 s at 50 kbit/s, a 1 Mbit/s link shared by 20.
const deadlineWritePiece = 64 << 10
