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

// IndexProtocol gets a node's signed release index if it is newer than the
// asker's.
//
// Request, one frame, after which the client closes its write side: the
// version of the index the client holds (uvarint; 0 for none).
// Response, one frame: a status byte, then for StatusOK the signed index
// envelope (at most MaxIndexEnvelopeSize). StatusNotFound means the server
// holds no newer index. The client verifies the envelope against its trust
// root; the server is not trusted.
const IndexProtocol protocol.ID = "/patchctl/index/1.0.0"

// AnnounceProtocol tells a peer that a newer index is available here, the
// push half of announcements (IndexProtocol is the pull half).
//
// Request, one frame, after which the client closes its write side: the
// version of the index the announcer holds (uvarint, at least 1).
// Response, one frame: a status byte. The peer gets the index itself with
// IndexProtocol when it wants it, so an announcement is a few bytes however
// large the index, and a peer that already has that version does nothing.
const AnnounceProtocol protocol.ID = "/patchctl/announce/1.0.0"

// MaxIndexEnvelopeSize bounds a signed index envelope: MaxIndexEntries
// entries of about 250 bytes, base64 and signatures.
const MaxIndexEnvelopeSize = 48 << 20

// maxVersionRequest bounds a request holding one uvarint.
const maxVersionRequest = binary.MaxVarintLen64

// IndexSource is the signed index a node serves.
type IndexSource interface {
	// Index returns the version and envelope of the index held, or version
	// 0 and no envelope if none. from is the asking peer, which a node
	// may remember to push announcements to.
	Index(ctx context.Context, from peer.ID) (version uint64, envelope []byte, err error)
}

// Announcements receives announcements.
type Announcements interface {
	// Announced is told that from holds an index of version. It must
	// return quickly; getting the index is the receiver's own work.
	Announced(from peer.ID, version uint64)
}

// IndexConfig configures an IndexService. The zero value is valid.
type IndexConfig struct {
	// IdleTimeout is how long a handler waits for a peer to make progress
	// (default 30 s).
	IdleTimeout time.Duration
	// Logger receives a debug line for every stream reset; nil discards.
	Logger *slog.Logger
}

// IndexService serves IndexProtocol from an IndexSource, and
// AnnounceProtocol to Announcements if that is not nil.
type IndexService struct {
	h   host.Host
	src IndexSource
	ann Announcements
	cfg IndexConfig
	g   *Handlers
}

// NewIndexService registers the index and announce handlers on h; ann may be
// nil for a node that takes no announcements (the origin).
func NewIndexService(h host.Host, src IndexSource, ann Announcements, cfg IndexConfig) *IndexService {
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, DefaultIdleTimeout)
	is := &IndexService{h: h, src: src, ann: ann, cfg: cfg, g: NewHandlers(cfg.Logger)}
	h.SetStreamHandler(IndexProtocol, func(s network.Stream) { is.g.Serve(s, is.handleIndex) })
	if ann != nil {
		h.SetStreamHandler(AnnounceProtocol, func(s network.Stream) { is.g.Serve(s, is.handleAnnounce) })
	}
	return is
}

// Close removes the handlers and ends the handlers running.
func (is *IndexService) Close() error {
	is.h.RemoveStreamHandler(IndexProtocol)
	is.h.RemoveStreamHandler(AnnounceProtocol)
	is.g.Close()
	return nil
}

// readVersion reads a request holding one version.
func readVersion(s network.Stream, idle time.Duration) (*deadlineStream, uint64, error) {
	ds, p, err := readRequest(s, idle, maxVersionRequest)
	if err != nil {
		return nil, 0, err
	}
	v, err := DecodeVersion(p)
	return ds, v, err
}

func (is *IndexService) handleIndex(ctx context.Context, s network.Stream) error {
	ds, held, err := readVersion(s, is.cfg.IdleTimeout)
	if err != nil {
		return fmt.Errorf("read index request: %w", err)
	}
	version, env, err := is.src.Index(ctx, s.Conn().RemotePeer())
	st := StatusOK
	switch {
	case err != nil:
		is.g.log.Warn("p2p: index lookup failed", "err", err)
		st, env = StatusUnavailable, nil
	case version == 0 || version <= held:
		st, env = StatusNotFound, nil
	case len(env) == 0 || len(env) > MaxIndexEnvelopeSize:
		is.g.log.Warn("p2p: index of unservable size", "size", len(env))
		st, env = StatusUnavailable, nil
	}
	ds.hard = time.Time{}
	bw := smallWriters.get(ds)
	defer smallWriters.put(bw)
	if err := writeFrameParts(bw, []byte{byte(st)}, env); err != nil {
		return fmt.Errorf("write index response: %w", err)
	}
	return bw.Flush()
}

func (is *IndexService) handleAnnounce(ctx context.Context, s network.Stream) error {
	ds, version, err := readVersion(s, is.cfg.IdleTimeout)
	if err != nil {
		return fmt.Errorf("read announcement: %w", err)
	}
	if version == 0 {
		return fmt.Errorf("announcement of version 0: %w", ErrMalformed)
	}
	is.ann.Announced(s.Conn().RemotePeer(), version)
	return WriteFrame(ds, []byte{byte(StatusOK)})
}

// GetIndex asks p for its signed index if it is newer than version held. It
// returns an error wrapping ErrNotFound if p holds no newer one.
func (c *Client) GetIndex(ctx context.Context, p peer.ID, held uint64) ([]byte, error) {
	// Not bounded: an index may be tens of MiB on a thin link.
	st, env, err := c.call(ctx, p, IndexProtocol, EncodeVersion(held), MaxIndexEnvelopeSize, false)
	if err != nil {
		return nil, err
	}
	if err := st.err(); err != nil {
		return nil, fmt.Errorf("index from %s: %w", p, err)
	}
	if len(env) == 0 {
		return nil, fmt.Errorf("index from %s: empty envelope: %w", p, ErrMalformed)
	}
	return env, nil
}

// Announce tells p that this node holds an index of version.
func (c *Client) Announce(ctx context.Context, p peer.ID, version uint64) error {
	if version == 0 {
		return fmt.Errorf("announce version 0: %w", ErrMalformed)
	}
	st, body, err := c.call(ctx, p, AnnounceProtocol, EncodeVersion(version), 0, true)
	if err != nil {
		return err
	}
	if len(body) != 0 {
		return fmt.Errorf("announce to %s: %d bytes after status: %w", p, len(body), ErrMalformed)
	}
	return st.err()
}

// EncodeVersion returns the request of IndexProtocol and AnnounceProtocol.
func EncodeVersion(v uint64) []byte {
	return binary.AppendUvarint(nil, v)
}

// DecodeVersion decodes a request of IndexProtocol or AnnounceProtocol.
func DecodeVersion(p []byte) (uint64, error) {
	v, n, err := uvarint(p)
	if err != nil {
		return 0, err
	}
	if n != len(p) {
		return 0, fmt.Errorf("%d bytes after version: %w", len(p)-n, ErrMalformed)
	}
	return v, nil
}
