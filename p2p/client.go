package p2p

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// defaultChunkTimeout bounds the receipt of one chunk however steadily it
// trickles in: a 4 MiB frame at 1 Mbit/s takes about 34 s.
const defaultChunkTimeout = 2 * time.Minute

// Client speaks the client side of the protocols over Host. A Client with
// only Host set is ready to use; it is safe for concurrent use.
//
// Every call also ends when its ctx does: the stream is reset and the call
// returns ctx's error.
type Client struct {
	Host host.Host
	// IdleTimeout is how long a call waits for the peer to make any
	// progress before it resets the stream (default 30 s).
	IdleTimeout time.Duration
	// ChunkTimeout bounds the time to receive any one chunk of a GetChunks
	// batch (default 2 min).
	ChunkTimeout time.Duration
	// Limiter, if set, paces the chunks GetChunks receives; share one
	// limiter among everything that should count against one download
	// rate, such as a proxy's WAN link.
	Limiter *RateLimiter
	// OnRead, if set, is called with the peer and the byte count after
	// every read of a GetChunks stream that returns bytes, from the
	// goroutine reading, such as a fetch watching for stalled peers. It
	// must be cheap and safe for concurrent use.
	OnRead func(p peer.ID, n int)
}

func (c *Client) idle() time.Duration  { return orDefault(c.IdleTimeout, DefaultIdleTimeout) }
func (c *Client) chunk() time.Duration { return orDefault(c.ChunkTimeout, defaultChunkTimeout) }

// open opens a stream to p for pid and arranges for it to be reset when ctx
// ends. The caller must call the returned stop function once it is done with
// the stream.
func (c *Client) open(ctx context.Context, p peer.ID, pid protocol.ID) (network.Stream, func() bool, error) {
	s, err := c.Host.NewStream(ctx, p, pid)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, nil, fmt.Errorf("open %s to %s: %w", pid, p, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	return s, stop, nil
}

// call sends req to p on pid as one frame, closes its write side and reads
// the one response frame: a status byte and at most limit bytes after it,
// which it returns. Bytes after a status other than StatusOK are malformed;
// what a StatusOK body must hold is the caller's to check. With bounded, the
// whole exchange may take the idle timeout at most, as suits a small answer;
// otherwise only a peer that makes no progress for that long is cut off.
func (c *Client) call(ctx context.Context, p peer.ID, pid protocol.ID, req []byte, limit int, bounded bool) (Status, []byte, error) {
	s, stop, err := c.open(ctx, p, pid)
	if err != nil {
		return 0, nil, err
	}
	defer stop()
	ds := &deadlineStream{s: s, idle: c.idle()}
	if bounded {
		ds.hard = time.Now().Add(c.idle())
	}
	if err := WriteFrame(ds, req); err != nil {
		return 0, nil, fail(ctx, s, fmt.Errorf("send %s request to %s: %w", pid, p, err))
	}
	_ = s.CloseWrite()
	br := smallReaders.get(ds)
	resp, err := ReadFrame(br, 1+limit)
	smallReaders.put(br)
	if err != nil {
		return 0, nil, fail(ctx, s, fmt.Errorf("read %s response from %s: %w", pid, p, err))
	}
	st, err := decodeStatus(resp)
	if err == nil && st != StatusOK && len(resp) > 1 {
		err = fmt.Errorf("%d bytes after status %v: %w", len(resp)-1, st, ErrMalformed)
	}
	if err != nil {
		return 0, nil, fail(ctx, s, fmt.Errorf("%s response from %s: %w", pid, p, err))
	}
	_ = s.Close()
	return st, resp[1:], nil
}

// fail resets s and returns err, or ctx's error if ctx ended: a stream reset
// because ctx ended says less than why it ended.
func fail(ctx context.Context, s network.Stream, err error) error {
	_ = s.Reset()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
