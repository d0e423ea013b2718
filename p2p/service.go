package p2p

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// DefaultIdleTimeout is how long a handler or client waits for a peer to make
// any progress, reading or writing, before it resets the stream.
const DefaultIdleTimeout = 30 * time.Second

// ReadRequest reads the one request frame of a stream (at most limit bytes),
// after which the client has closed its write side. Reading it may take idle
// at most, however steadily it trickles; the returned stream keeps the idle
// timeout for the response. Protocols of other packages (the fleet's) serve
// their one-request, one-answer exchanges with it.
func ReadRequest(s network.Stream, idle time.Duration, limit int) (io.Writer, []byte, error) {
	return readRequest(s, idle, limit)
}

// readRequest is ReadRequest for this package's handlers, which clear hard
// once the response may take longer.
func readRequest(s network.Stream, idle time.Duration, limit int) (*deadlineStream, []byte, error) {
	ds := &deadlineStream{s: s, idle: idle, hard: time.Now().Add(idle)}
	br := smallReaders.get(ds)
	p, err := ReadFrame(br, limit)
	if err == nil {
		err = expectEOF(br)
	}
	smallReaders.put(br)
	return ds, p, err
}

// WriteJSONAnswer writes the one response frame of a JSON protocol: StatusOK
// and v, which must fit in limit bytes with its status byte.
func WriteJSONAnswer(w io.Writer, what string, v any, limit int) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(body) > limit-1 {
		return fmt.Errorf("%s of %d bytes: %w", what, len(body), ErrFrameTooLarge)
	}
	bw := smallWriters.get(w)
	defer smallWriters.put(bw)
	if err := writeFrameParts(bw, []byte{byte(StatusOK)}, body); err != nil {
		return err
	}
	return bw.Flush()
}

// CallJSON sends req as JSON (at most limit bytes) on a stream of pid to p
// and returns the body of a StatusOK answer, for the caller to decode.
func (c *Client) CallJSON(ctx context.Context, p peer.ID, pid protocol.ID, what string, req any, limit int) ([]byte, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%s of %d bytes: %w", what, len(b), ErrFrameTooLarge)
	}
	st, body, err := c.call(ctx, p, pid, b, limit, true)
	if err != nil {
		return nil, err
	}
	if err := st.err(); err != nil {
		return nil, fmt.Errorf("%s to %s: %w", what, p, err)
	}
	return body, nil
}

// CallStatus sends req on a stream of pid to p and returns the status of an
// answer that carries nothing after it, as a protocol of other packages
// that only asks something to be done (the fleet's nudge) reads it.
func (c *Client) CallStatus(ctx context.Context, p peer.ID, pid protocol.ID, req []byte) (Status, error) {
	st, body, err := c.call(ctx, p, pid, req, 0, true)
	if err != nil {
		return 0, err
	}
	if len(body) != 0 {
		return 0, fmt.Errorf("%s answer of %d bytes after the status: %w", pid, len(body), ErrMalformed)
	}
	return st, nil
}

// DecodeJSON decodes exactly one JSON value of p into v; anything else is
// ErrMalformed.
func DecodeJSON(p []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(p))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%v: %w", err, ErrMalformed)
	}
	if dec.More() {
		return fmt.Errorf("data after the JSON value: %w", ErrMalformed)
	}
	return nil
}

// Handlers runs the stream handlers of one service, so that Close can end
// every handler the service is running and wait for it: libp2p starts the
// handler goroutines, but the service owns them.
type Handlers struct {
	ctx    context.Context // ended by close; the parent of every handler's ctx
	cancel context.CancelFunc
	log    *slog.Logger

	mu      sync.Mutex
	streams map[network.Stream]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// NewHandlers returns the handlers of a service that logs to log (nil
// discards).
func NewHandlers(log *slog.Logger) *Handlers {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Handlers{ctx: ctx, cancel: cancel, log: log, streams: make(map[network.Stream]struct{})}
}

// Serve runs fn on s. If fn fails the stream is reset, telling the peer the
// exchange did not complete; otherwise it is closed. A panic in fn, which
// fuzzed decoders should make impossible, resets the stream instead of
// killing the node.
func (g *Handlers) Serve(s network.Stream, fn func(ctx context.Context, s network.Stream) error) {
	if !g.add(s) {
		_ = s.Reset()
		return
	}
	defer g.remove(s)
	defer func() {
		if r := recover(); r != nil {
			g.log.Error("p2p: handler panicked", "protocol", s.Protocol(), "peer", s.Conn().RemotePeer(), "panic", r, "stack", string(debug.Stack()))
			_ = s.Reset()
		}
	}()
	if err := fn(g.ctx, s); err != nil {
		g.log.Debug("p2p: stream reset", "protocol", s.Protocol(), "peer", s.Conn().RemotePeer(), "err", err)
		_ = s.Reset()
		// A peer that breaks the protocol is cut off, not just its
		// stream: whatever else it sends is not worth reading. It may
		// connect again; a well-behaved peer never gets here.
		if errors.Is(err, ErrMalformed) || errors.Is(err, ErrFrameTooLarge) {
			_ = s.Conn().Close()
		}
		return
	}
	_ = s.Close()
}

func (g *Handlers) add(s network.Stream) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.streams[s] = struct{}{}
	g.wg.Add(1)
	return true
}

func (g *Handlers) remove(s network.Stream) {
	g.mu.Lock()
	delete(g.streams, s)
	g.mu.Unlock()
	g.wg.Done()
}

// Close refuses new streams, resets the running ones, which interrupts any
// read or write their handlers are blocked in, and waits for the handlers to
// return.
func (g *Handlers) Close() {
	g.mu.Lock()
	g.closed = true
	streams := make([]network.Stream, 0, len(g.streams))
	for s := range g.streams {
		streams = append(streams, s)
	}
	g.mu.Unlock()
	g.cancel()
	for _, s := range streams {
		_ = s.Reset()
	}
	g.wg.Wait()
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
