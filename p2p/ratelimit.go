package p2p

import (
	"context"
	"io"

	"golang.org/x/time/rate"
)

// maxPiece is the most a rate-limited writer sends at once. Pacing a 4 MiB
// frame in 16 KiB pieces keeps the token bucket's burst small (a second's
// worth of bytes suffices for any frame) and lets the streams that share the
// bucket interleave instead of waiting behind whole frames.
const maxPiece = 16 << 10

// RateLimiter paces a node's uploads with a token bucket of bytes shared by
// every stream it wraps. A nil *RateLimiter is unlimited. It is safe for
// concurrent use.
type RateLimiter struct {
	lim   *rate.Limiter
	piece int
}

// NewRateLimiter returns a limiter of bytesPerSecond, or nil (unlimited) if
// bytesPerSecond is zero or negative. The bucket holds one second's worth of
// bytes, so an idle node may send that much at once before pacing starts.
func NewRateLimiter(bytesPerSecond int) *RateLimiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return &RateLimiter{
		lim: rate.NewLimiter(rate.Limit(bytesPerSecond), bytesPerSecond),
		// A piece never exceeds the burst, so WaitN can always succeed
		// and a frame of any size passes piece by piece.
		piece: min(maxPiece, bytesPerSecond),
	}
}

// Limit returns the rate in bytes per second, or 0 if l is unlimited.
func (l *RateLimiter) Limit() int {
	if l == nil {
		return 0
	}
	return int(l.lim.Limit())
}

// Writer returns w paced by l. A Write waits for tokens piece by piece and
// returns ctx's error if ctx ends first. If l is nil it returns w.
func (l *RateLimiter) Writer(ctx context.Context, w io.Writer) io.Writer {
	if l == nil {
		return w
	}
	return &limitedWriter{ctx: ctx, l: l, w: w}
}

type limitedWriter struct {
	// ctx is a field, against the house rule, because io.Writer has no
	// place for it; it is the lifetime of the one stream w belongs to.
	ctx context.Context
	l   *RateLimiter
	w   io.Writer
}

func (lw *limitedWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		piece := p[:min(len(p), lw.l.piece)]
		if err := lw.l.lim.WaitN(lw.ctx, len(piece)); err != nil {
			return n, err
		}
		m, err := lw.w.Write(piece)
		n += m
		if err != nil {
			return n, err
		}
		p = p[len(piece):]
	}
	return n, nil
}

// Reader returns r paced by l: a Read returns at most a piece and waits for
// tokens for what it returns. Pacing what a node reads paces the sender too,
// through the stream's flow control, so a proxy can hold its downloads under
// its WAN share. If l is nil it returns r.
func (l *RateLimiter) Reader(ctx context.Context, r io.Reader) io.Reader {
	if l == nil {
		return r
	}
	return &limitedReader{ctx: ctx, l: l, r: r}
}

type limitedReader struct {
	ctx context.Context // as limitedWriter's
	l   *RateLimiter
	r   io.Reader
}

func (lr *limitedReader) Read(p []byte) (int, error) {
	if len(p) > lr.l.piece {
		p = p[:lr.l.piece]
	}
	n, err := lr.r.Read(p)
	if n > 0 {
		if werr := lr.l.lim.WaitN(lr.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}
