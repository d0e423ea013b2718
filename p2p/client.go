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
}

func (c *Client) idle() time.Duration  { return orDefault(c.IdleTimeout, defaultIdleTimeout) }
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

// fail resets s and returns err, or ctx's error if ctx ended: a stream reset
// because ctx ended says less than why it ended.
func fail(ctx context.Context, s network.Stream, err error) error {
	_ = s.Reset()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
