package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/patchctl/patchctl/p2p"
)

// NudgeProtocol asks a peer below to report now, because its upstream has
// something for it in the answer: a retry an operator ordered. Without it
// the order would wait for the peer's next poll, a minute by default, at
// every tier.
//
// Request, one frame, after which the client closes its write side: empty.
// Response, one frame: a status byte. What the receiver does is report as
// it always does; a nudge from a peer that is not its upstream is ignored.
const NudgeProtocol protocol.ID = "/patchctl/nudge/1.0.0"

// NudgeService serves NudgeProtocol.
type NudgeService struct {
	h      host.Host
	nudged func(from peer.ID)
	idle   time.Duration
	g      *p2p.Handlers
}

// NewNudgeService registers the nudge handler on h; nudged is told of each
// nudge and must return quickly.
func NewNudgeService(h host.Host, nudged func(from peer.ID), log *slog.Logger) *NudgeService {
	ns := &NudgeService{h: h, nudged: nudged, idle: p2p.DefaultIdleTimeout, g: p2p.NewHandlers(log)}
	h.SetStreamHandler(NudgeProtocol, func(s network.Stream) { ns.g.Serve(s, ns.handle) })
	return ns
}

// Close removes the handler and ends the handlers running.
func (ns *NudgeService) Close() error {
	ns.h.RemoveStreamHandler(NudgeProtocol)
	ns.g.Close()
	return nil
}

func (ns *NudgeService) handle(_ context.Context, s network.Stream) error {
	w, p, err := p2p.ReadRequest(s, ns.idle, 0)
	if err != nil {
		return fmt.Errorf("read nudge: %w", err)
	}
	if len(p) != 0 {
		return fmt.Errorf("nudge of %d bytes: %w", len(p), p2p.ErrMalformed)
	}
	ns.nudged(s.Conn().RemotePeer())
	return p2p.WriteFrame(w, []byte{byte(p2p.StatusOK)})
}

// Nudge asks p to report now.
func (c *Client) Nudge(ctx context.Context, p peer.ID) error {
	st, err := c.c.CallStatus(ctx, p, NudgeProtocol, nil)
	if err != nil {
		return err
	}
	if st != p2p.StatusOK {
		return fmt.Errorf("nudge %s: %v", p, st)
	}
	return nil
}
