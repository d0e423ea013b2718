// Package testnet builds networks of patchctl nodes for tests, benchmarks and
// the demo, with links shaped like the WAN and LAN links of real sites. It is
// never used in production paths.
package testnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
	bytes   atomic.Int64
}

// NewPipe returns a pipe of bytesPerSecond (0: unlimited) with the given
// one-way latency. Its burst is 16 KiB, the most one write is cut into, so
// that an idle pipe does not burst far beyond its rate.
func NewPipe(name string, bytesPerSecond int64, latency time.Duration) *Pipe {
	p := &Pipe{name: name, latency: latency}
	if bytesPerSecond > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(bytesPerSecond), pieceSize)
	}
	return p
}

// Bytes returns how many bytes went through the pipe.
func (p *Pipe) Bytes() int64 { return p.bytes.Load() }

// Name returns the pipe's name.
func (p *Pipe) Name() string { return p.name }

// pieceSize is the most a forwarder moves through its pipes at once.
const pieceSize = 16 << 10

// Path is the pipes a direction of a connection crosses, in order, such as a
// node's own link, its site's WAN uplink, and the other site's WAN downlink.
type Path []*Pipe

// wait takes n bytes from every pipe's bucket and counts them.
func (path Path) wait(ctx context.Context, n int) error {
	for _, p := range path {
		if p.limiter != nil {
			if err := p.limiter.WaitN(ctx, n); err != nil {
				return err
			}
		}
		p.bytes.Add(int64(n))
	}
	return nil
}

func (path Path) latency() time.Duration {
	var d time.Duration
	for _, p := range path {
		d += p.latency
	}
	return d
}

// Forwarder accepts connections on a loopback address and relays each to a
// target address, shaping what flows towards the target through Up and what
// flows back through Down. Latency delays data without making the relay wait
// for it (a delay line, not stop-and-wait), so a long path still fills its
// bandwidth.
type Forwarder struct {
	ln       net.Listener
	target   string
	up, down Path

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

// NewForwarder listens on a free loopback port and relays to target.
func NewForwarder(target string, up, down Path) (*Forwarder, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Forwarder{ln: ln, target: target, up: up, down: down, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.accept()
	return f, nil
}

// Addr is where to dial to be relayed.
func (f *Forwarder) Addr() *net.TCPAddr { return f.ln.Addr().(*net.TCPAddr) }

// Close stops accepting, cuts every relayed connection and waits for the
// relay goroutines to end.
func (f *Forwarder) Close() error {
	f.cancel()
	err := f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	return err
}

func (f *Forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

func (f *Forwarder) accept() {
	defer f.wg.Done()
	for {
		in, err := f.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", f.target)
		if err != nil {
			in.Close()
			continue
		}
		if !f.track(in) || !f.track(out) {
			in.Close()
			out.Close()
			return
		}
		f.wg.Add(1)
		go f.pair(in, out)
	}
}

// pair relays both directions of one connection and closes both ends when
// both directions are done.
func (f *Forwarder) pair(in, out net.Conn) {
	defer f.wg.Done()
	var both sync.WaitGroup
	both.Add(2)
	go func() { defer both.Done(); f.relay(in, out, f.up) }()
	go func() { defer both.Done(); f.relay(out, in, f.down) }()
	both.Wait()
	f.untrack(in)
	f.untrack(out)
}

// relay copies src to dst through path. A reader takes pieces off src as the
// pipes allow and queues them with the time they are due; a writer delivers
// them when due. The queue holds at most a second of the path's data (or
// 4 MiB), as a real link holds its bandwidth-delay product.
func (f *Forwarder) relay(src, dst net.Conn, path Path) {
	type piece struct {
		data []byte
		due  time.Time
	}
	queue := make(chan piece, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for p := range queue {
			if d := time.Until(p.due); d > 0 {
				select {
				case <-time.After(d):
				case <-f.ctx.Done():
					return
				}
			}
			if _, err := dst.Write(p.data); err != nil {
				return
			}
		}
		// The source ended: pass the end on, keeping the other
		// direction open.
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	latency := path.latency()
	for {
		buf := make([]byte, pieceSize)
		n, err := src.Read(buf)
		if n > 0 {
			if werr := path.wait(f.ctx, n); werr != nil {
				break
			}
			select {
			case queue <- piece{data: buf[:n], due: time.Now().Add(latency)}:
			case <-done:
				err = io.ErrClosedPipe
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				src.Close()
			}
			break
		}
	}
	close(queue)
	<-done
}

// String describes the forwarder, for test logs.
func (f *Forwarder) String() string {
	return fmt.Sprintf("forwarder %s -> %s", f.Addr(), f.target)
}
