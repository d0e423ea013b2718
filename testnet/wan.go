// Package testnet builds networks of patchctl nodes for tests, benchmarks and
// the demo, with links shaped like the WAN and LAN links of real sites. It is
// never used in production paths.
package testnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Pipe is one direction of a shaped path: a bandwidth every byte through it
// shares, and a latency each byte is delayed by. One Pipe stands for a whole
// site's WAN link in one direction, so every flow into (or out of) the site,
// whichever peers it runs between, shares the same bandwidth; that is what
// go-libp2p's mocknet cannot do, since it shapes each link on its own.
type Pipe struct {
	name    string
	limiter *rate.Limiter // nil: unlimited
	latency time.Duration
	piece   int // the most a shaped conn moves through it at once
	bytes   atomic.Int64
}

// NewPipe returns a pipe of bytesPerSecond (0: unlimited) with the given
// one-way latency. Its burst is the most one write is cut into for it, so
// that an idle pipe does not burst far beyond its rate: 16 KiB, or 64 KiB
// (half a millisecond at 1 Gbit/s) for a pipe of at least fastPipe.
func NewPipe(name string, bytesPerSecond int64, latency time.Duration) *Pipe {
	p := &Pipe{name: name, latency: latency, piece: pieceSize}
	if bytesPerSecond == 0 || bytesPerSecond >= fastPipe {
		p.piece = bigPieceSize
	}
	if bytesPerSecond > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(bytesPerSecond), p.piece)
	}
	return p
}

// Bytes returns how many bytes went through the pipe.
func (p *Pipe) Bytes() int64 { return p.bytes.Load() }

// Name returns the pipe's name.
func (p *Pipe) Name() string { return p.name }

// pieceSize is the most a shaped conn moves through its pipes at once, and
// bigPieceSize that on a path of fast pipes only (fastPipe bytes/s or more,
// or unlimited). Every piece costs a socket write and two goroutine
// hand-offs, so on fast links small pieces spend much of the CPU on the
// shaping itself (docs/decisions/0033).
const (
	pieceSize    = 16 << 10
	bigPieceSize = 64 << 10
	fastPipe     = 100e6 / 8
)

// Path is the pipes a direction of a connection crosses, in order, such as a
// node's own link, its site's WAN uplink, and the other site's WAN downlink.
type Path []*Pipe

// waitUntil takes n bytes from every pipe's bucket and counts them, giving
// up when ctx ends or expired closes.
func (path Path) waitUntil(ctx context.Context, expired <-chan struct{}, n int) error {
	for _, p := range path {
		if p.limiter != nil {
			if err := waitN(ctx, expired, p.limiter, n); err != nil {
				return err
			}
		}
		p.bytes.Add(int64(n))
	}
	return nil
}

// waitN is rate.Limiter.WaitN that also gives up when expired closes.
func waitN(ctx context.Context, expired <-chan struct{}, l *rate.Limiter, n int) error {
	r := l.ReserveN(time.Now(), n)
	if !r.OK() {
		return fmt.Errorf("testnet: %d bytes exceed the pipe's burst", n)
	}
	d := r.Delay()
	if d == 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.Cancel()
		return ctx.Err()
	case <-expired:
		r.Cancel()
		return os.ErrDeadlineExceeded
	}
}

// piece returns the most a shaped conn moves through path at once.
func (path Path) piece() int {
	n := bigPieceSize
	for _, p := range path {
		n = min(n, p.piece)
	}
	return n
}

func (path Path) latency() time.Duration {
	var d time.Duration
	for _, p := range path {
		d += p.latency
	}
	return d
}

// ShapedConn is one end of a TCP connection whose traffic both ways crosses
// shaped paths: what is written to it waits for Up's bandwidth and then
// travels Up's latency before it reaches the socket; what arrives from the
// socket waits for Down's bandwidth and latency before Read returns it.
// Latency is a delay line, not stop-and-wait: many pieces are in flight at
// once, as on a real link, so a long path still fills its bandwidth.
//
// Shaping at one end of the connection, the dialer's, keeps a shaped
// connection at the two descriptors of a plain one, so that a testnet of
// hundreds of agents fits its open-file limit (docs/decisions/0032).
type ShapedConn struct {
	raw                net.Conn
	up, down           Path
	upPiece, downPiece int

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	once   sync.Once

	wmu      sync.Mutex // orders the pieces of concurrent writes
	outgoing chan piece
	wdl      deadline
	werr     atomic.Pointer[error] // the socket's write error, once seen

	incoming chan piece // closed when the socket's read side ends
	rerr     error      // why incoming closed; read after it closes
	rmu      sync.Mutex
	pending  *piece // taken off incoming, not yet due
	// readTimer waits for pending to be due; one per conn rather than one
	// per piece (Go's timers since 1.23 need no draining before Reset).
	readTimer *time.Timer
	current   piece // due, its data not yet read
	rdl       deadline
}

// piece is up to a path's piece size in flight, due at the far end at due; nil
// data with eof set passes on the end of the writer's stream. data lies in
// buf, which goes back to piecePool once data is passed on.
type piece struct {
	data []byte
	buf  *[]byte
	due  time.Time
	eof  bool
}

// piecePool recycles the buffers of pieces: every byte a testnet moves
// crosses one (docs/decisions/0015).
var piecePool = sync.Pool{New: func() any { b := make([]byte, bigPieceSize); return &b }}

func freePiece(p *piece) {
	if p.buf != nil {
		piecePool.Put(p.buf)
		p.buf, p.data = nil, nil
	}
}

// Shape wraps raw so that its traffic crosses up (what is written) and down
// (what is read). Close the returned conn, not raw.
func Shape(raw net.Conn, up, down Path) *ShapedConn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &ShapedConn{
		raw: raw, up: up, down: down, upPiece: up.piece(), downPiece: down.piece(), ctx: ctx, cancel: cancel,
		outgoing: make(chan piece, 256),
		incoming: make(chan piece, 256),
	}
	c.wdl.init()
	c.rdl.init()
	go c.deliver()
	go c.receive()
	return c
}

// Write queues b for delivery once the up path's bandwidth allows, and
// returns then, as a socket returns once the kernel holds the bytes.
func (c *ShapedConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	latency := c.up.latency()
	written := 0
	for written < len(b) {
		if err := c.writeErr(); err != nil {
			return written, err
		}
		if isClosed(c.wdl.done()) {
			return written, os.ErrDeadlineExceeded
		}
		n := min(len(b)-written, c.upPiece)
		if err := c.up.waitUntil(c.ctx, c.wdl.done(), n); err != nil {
			return written, c.deadlineOr(err)
		}
		buf := piecePool.Get().(*[]byte)
		p := piece{data: (*buf)[:copy(*buf, b[written:written+n])], buf: buf, due: time.Now().Add(latency)}
		select {
		case c.outgoing <- p:
		case <-c.ctx.Done():
			return written, net.ErrClosed
		case <-c.wdl.done():
			return written, os.ErrDeadlineExceeded
		}
		written += n
	}
	return written, nil
}

// CloseWrite ends the stream towards the peer once every queued byte has
// reached it, keeping the other direction open.
func (c *ShapedConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	select {
	case c.outgoing <- piece{eof: true, due: time.Now().Add(c.up.latency())}:
		return nil
	case <-c.ctx.Done():
		return net.ErrClosed
	}
}

func (c *ShapedConn) writeErr() error {
	if e := c.werr.Load(); e != nil {
		return *e
	}
	if c.ctx.Err() != nil {
		return net.ErrClosed
	}
	return nil
}

// deadlineOr returns the error a wait ended with as a net.Conn reports it.
func (c *ShapedConn) deadlineOr(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return err
	case c.ctx.Err() != nil:
		return net.ErrClosed
	}
	return err
}

// deliver writes each queued piece to the socket when it is due.
func (c *ShapedConn) deliver() {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		var p piece
		select {
		case p = <-c.outgoing:
		case <-c.ctx.Done():
			return
		}
		if !wait(c.ctx, timer, p.due) {
			return
		}
		var err error
		if p.eof {
			if tc, ok := c.raw.(interface{ CloseWrite() error }); ok {
				err = tc.CloseWrite()
			}
		} else {
			_, err = c.raw.Write(p.data)
			freePiece(&p)
		}
		if err != nil {
			c.werr.Store(&err)
			c.raw.Close()
			return
		}
	}
}

// receive takes what arrives from the socket as fast as the down path's
// bandwidth allows and queues it with the time it is due to the reader.
func (c *ShapedConn) receive() {
	defer close(c.incoming)
	latency := c.down.latency()
	for {
		buf := piecePool.Get().(*[]byte)
		n, err := c.raw.Read((*buf)[:c.downPiece])
		if n == 0 {
			piecePool.Put(buf)
		} else {
			if werr := c.down.waitUntil(c.ctx, nil, n); werr != nil {
				c.rerr = net.ErrClosed
				return
			}
			select {
			case c.incoming <- piece{data: (*buf)[:n], buf: buf, due: time.Now().Add(latency)}:
			case <-c.ctx.Done():
				c.rerr = net.ErrClosed
				return
			}
		}
		if err != nil {
			if c.ctx.Err() != nil {
				err = net.ErrClosed
			}
			c.rerr = err
			return
		}
	}
}

// Read returns bytes that have crossed the down path.
func (c *ShapedConn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.current.data) == 0 {
		if c.pending == nil {
			select {
			case p, ok := <-c.incoming:
				if !ok {
					return 0, c.rerr
				}
				c.pending = &p
			case <-c.rdl.done():
				return 0, os.ErrDeadlineExceeded
			case <-c.ctx.Done():
				return 0, net.ErrClosed
			}
		}
		if d := time.Until(c.pending.due); d > 0 {
			if c.readTimer == nil {
				c.readTimer = time.NewTimer(d)
			} else {
				c.readTimer.Reset(d)
			}
			select {
			case <-c.readTimer.C:
			case <-c.rdl.done():
				c.readTimer.Stop()
				return 0, os.ErrDeadlineExceeded
			case <-c.ctx.Done():
				c.readTimer.Stop()
				return 0, net.ErrClosed
			}
		}
		c.current, c.pending = *c.pending, nil
	}
	n := copy(b, c.current.data)
	if c.current.data = c.current.data[n:]; len(c.current.data) == 0 {
		freePiece(&c.current)
	}
	return n, nil
}

// Close cuts the connection at once, as a crash would: bytes still in
// flight are lost.
func (c *ShapedConn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() {
		c.cancel()
		err = c.raw.Close()
	})
	return err
}

func (c *ShapedConn) LocalAddr() net.Addr  { return c.raw.LocalAddr() }
func (c *ShapedConn) RemoteAddr() net.Addr { return c.raw.RemoteAddr() }

func (c *ShapedConn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

func (c *ShapedConn) SetReadDeadline(t time.Time) error  { c.rdl.set(t); return nil }
func (c *ShapedConn) SetWriteDeadline(t time.Time) error { c.wdl.set(t); return nil }

// wait waits until due, and reports false if ctx ended first.
func wait(ctx context.Context, timer *time.Timer, due time.Time) bool {
	d := time.Until(due)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer.Reset(d)
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		if !timer.Stop() {
			<-timer.C
		}
		return false
	}
}

// deadline is a settable deadline as a channel that closes when it passes,
// as net.Pipe keeps its deadlines.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	passed chan struct{}
}

func (d *deadline) init() { d.passed = make(chan struct{}) }

// set moves the deadline to t; the zero time means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.passed // the timer fired: wait for it to close the channel
	}
	d.timer = nil
	closed := isClosed(d.passed)
	if t.IsZero() {
		if closed {
			d.passed = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.passed = make(chan struct{})
		}
		ch := d.passed
		d.timer = time.AfterFunc(dur, func() { close(ch) })
		return
	}
	if !closed {
		close(d.passed)
	}
}

// done returns a channel that closes when the deadline passes.
func (d *deadline) done() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.passed
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
