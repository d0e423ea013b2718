package p2p

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// RootProtocol gets the trust roots a node holds that are newer than the
// asker's, in order: the chain a node that missed rotations follows, each
// root signed by its predecessor's threshold and its own.
//
// Request, one frame, after which the client closes its write side: the
// version of the root the client holds (uvarint).
// Response, one frame: a status byte, then for StatusOK a uvarint count of
// 1 to MaxRootChain envelopes, each a uvarint length of 1 to
// MaxRootEnvelope and its bytes. StatusNotFound means the server holds no
// newer root. The client verifies every link; the server is not trusted.
const RootProtocol protocol.ID = "/patchctl/root/1.0.0"

const (
	// MaxRootChain bounds the roots of one answer: a node that missed more
	// rotations asks again from the newest it took.
	MaxRootChain = 64
	// MaxRootEnvelope bounds one root envelope: a few hundred keys.
	MaxRootEnvelope = 256 << 10
	maxRootAnswer   = 1 + binary.MaxVarintLen64*(MaxRootChain+1) + MaxRootChain*MaxRootEnvelope
)

// RootSource is the chain of trust roots a node serves.
type RootSource interface {
	// Roots returns the root envelopes newer than version held, oldest
	// first (at most MaxRootChain), or none.
	Roots(ctx context.Context, held uint64) ([][]byte, error)
}

// RootService serves RootProtocol.
type RootService struct {
	h    host.Host
	src  RootSource
	idle time.Duration
	g    *Handlers
	log  *slog.Logger
}

// NewRootService registers the root handler on h.
func NewRootService(h host.Host, src RootSource, log *slog.Logger) *RootService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rs := &RootService{h: h, src: src, idle: DefaultIdleTimeout, g: NewHandlers(log), log: log}
	h.SetStreamHandler(RootProtocol, func(s network.Stream) { rs.g.Serve(s, rs.handle) })
	return rs
}

// Close removes the handler and ends the handlers running.
func (rs *RootService) Close() error {
	rs.h.RemoveStreamHandler(RootProtocol)
	rs.g.Close()
	return nil
}

func (rs *RootService) handle(ctx context.Context, s network.Stream) error {
	ds, held, err := readVersion(s, rs.idle)
	if err != nil {
		return fmt.Errorf("read root request: %w", err)
	}
	roots, err := rs.src.Roots(ctx, held)
	var answer []byte
	switch {
	case err != nil:
		rs.log.Warn("p2p: root lookup failed", "err", err)
		answer = []byte{byte(StatusUnavailable)}
	case len(roots) == 0:
		answer = []byte{byte(StatusNotFound)}
	default:
		if answer, err = EncodeRoots(roots); err != nil {
			rs.log.Warn("p2p: roots of unservable size", "err", err)
			answer = []byte{byte(StatusUnavailable)}
		}
	}
	return WriteFrame(ds, answer)
}

// EncodeRoots returns the StatusOK answer of RootProtocol carrying roots.
func EncodeRoots(roots [][]byte) ([]byte, error) {
	if len(roots) == 0 || len(roots) > MaxRootChain {
		return nil, fmt.Errorf("%d roots, want 1 to %d: %w", len(roots), MaxRootChain, ErrMalformed)
	}
	p := binary.AppendUvarint([]byte{byte(StatusOK)}, uint64(len(roots)))
	for _, r := range roots {
		if len(r) == 0 || len(r) > MaxRootEnvelope {
			return nil, fmt.Errorf("root envelope of %d bytes, want 1 to %d: %w", len(r), MaxRootEnvelope, ErrFrameTooLarge)
		}
		p = binary.AppendUvarint(p, uint64(len(r)))
		p = append(p, r...)
	}
	return p, nil
}

// DecodeRoots decodes the body of a StatusOK answer of RootProtocol (after
// the status byte). The envelopes alias p.
func DecodeRoots(p []byte) ([][]byte, error) {
	n, k, err := uvarint(p)
	if err != nil {
		return nil, fmt.Errorf("root count: %w", err)
	}
	if n == 0 || n > MaxRootChain {
		return nil, fmt.Errorf("%d roots, want 1 to %d: %w", n, MaxRootChain, ErrMalformed)
	}
	p = p[k:]
	roots := make([][]byte, 0, n)
	for range n {
		l, k, err := uvarint(p)
		if err != nil {
			return nil, fmt.Errorf("root length: %w", err)
		}
		if l == 0 || l > MaxRootEnvelope || uint64(len(p)-k) < l {
			return nil, fmt.Errorf("root envelope of %d bytes, %d left: %w", l, len(p)-k, ErrMalformed)
		}
		roots = append(roots, p[k:k+int(l)])
		p = p[k+int(l):]
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%d bytes after the roots: %w", len(p), ErrMalformed)
	}
	return roots, nil
}

// GetRoots asks p for the trust roots it holds newer than version held,
// oldest first; none if p holds no newer one. The caller verifies them.
func (c *Client) GetRoots(ctx context.Context, p peer.ID, held uint64) ([][]byte, error) {
	st, body, err := c.call(ctx, p, RootProtocol, EncodeVersion(held), maxRootAnswer, true)
	if err != nil {
		return nil, err
	}
	switch st {
	case StatusNotFound:
		return nil, nil
	case StatusOK:
		roots, err := DecodeRoots(body)
		if err != nil {
			return nil, fmt.Errorf("roots from %s: %w", p, err)
		}
		return roots, nil
	}
	return nil, fmt.Errorf("roots from %s: %w", p, st.err())
}
