package p2p

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/patchctl/patchctl/store"
)

// ManifestProtocol gets a signed release envelope by release name or
// manifest CID.
//
// Request, one frame, after which the client closes its write side: the
// ref, 1 to MaxRefLen bytes of UTF-8 without control characters.
// Response, one frame: a status byte, then for StatusOK the envelope bytes
// (at most MaxEnvelopeSize), otherwise nothing.
// The client verifies the envelope against its trust root; the server is
// not trusted.
const ManifestProtocol protocol.ID = "/patchctl/manifest/1.0.0"

const (
	// MaxRefLen bounds a manifest request.
	MaxRefLen = 256
	// MaxEnvelopeSize bounds a signed envelope: a manifest of at most
	// manifest.MaxManifestSize (64 MiB) plus signatures and encoding.
	MaxEnvelopeSize = 96 << 20
)

// EnvelopeSource finds signed envelopes for the manifest service.
type EnvelopeSource interface {
	// Envelope returns the signed envelope of the release named ref or of
	// the manifest whose CID string is ref, as stored (the service does not
	// verify it). It returns an error wrapping ErrNotFound or
	// store.ErrNotFound if there is none.
	Envelope(ctx context.Context, ref string) ([]byte, error)
}

// ManifestConfig configures a ManifestService. The zero value is valid.
type ManifestConfig struct {
	// IdleTimeout is how long a handler waits for a peer to make progress
	// (default 30 s).
	IdleTimeout time.Duration
	// Logger receives a debug line for every stream reset; nil discards.
	Logger *slog.Logger
}

// ManifestService serves ManifestProtocol from an EnvelopeSource.
type ManifestService struct {
	h   host.Host
	src EnvelopeSource
	cfg ManifestConfig
	g   *Handlers
}

// NewManifestService registers the manifest handler on h.
func NewManifestService(h host.Host, src EnvelopeSource, cfg ManifestConfig) *ManifestService {
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, DefaultIdleTimeout)
	m := &ManifestService{h: h, src: src, cfg: cfg, g: NewHandlers(cfg.Logger)}
	h.SetStreamHandler(ManifestProtocol, func(s network.Stream) { m.g.Serve(s, m.handle) })
	return m
}

// Close removes the handler and ends the handlers running.
func (m *ManifestService) Close() error {
	m.h.RemoveStreamHandler(ManifestProtocol)
	m.g.Close()
	return nil
}

func (m *ManifestService) handle(ctx context.Context, s network.Stream) error {
	ds, p, err := readRequest(s, m.cfg.IdleTimeout, MaxRefLen)
	if err != nil {
		return fmt.Errorf("read manifest request: %w", err)
	}
	ref, err := DecodeManifestRequest(p)
	if err != nil {
		return err
	}
	env, err := m.src.Envelope(ctx, ref)
	st := StatusOK
	switch {
	case errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrNotFound):
		st, env = StatusNotFound, nil
	case err != nil:
		m.g.log.Warn("p2p: envelope lookup failed", "ref", ref, "err", err)
		st, env = StatusUnavailable, nil
	case len(env) == 0 || len(env) > MaxEnvelopeSize:
		m.g.log.Warn("p2p: envelope of unservable size", "ref", ref, "size", len(env))
		st, env = StatusUnavailable, nil
	}
	// The response may be large and the peer slow: only the idle timeout
	// applies from here.
	ds.hard = time.Time{}
	bw := smallWriters.get(ds)
	defer smallWriters.put(bw)
	if err := writeFrameParts(bw, []byte{byte(st)}, env); err != nil {
		return fmt.Errorf("write manifest response: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write manifest response: %w", err)
	}
	return nil
}

// GetEnvelope asks p for the signed envelope of ref (a release name or a
// manifest CID string) and returns its bytes unverified. It returns an error
// wrapping ErrNotFound if p does not have it.
func (c *Client) GetEnvelope(ctx context.Context, p peer.ID, ref string) ([]byte, error) {
	req, err := EncodeManifestRequest(ref)
	if err != nil {
		return nil, err
	}
	// Not bounded: an envelope may be tens of MiB on a thin link; a
	// stalled peer is caught by the idle timeout, a slow one by ctx.
	st, env, err := c.call(ctx, p, ManifestProtocol, req, MaxEnvelopeSize, false)
	if err != nil {
		return nil, err
	}
	if err := st.err(); err != nil {
		return nil, fmt.Errorf("envelope %q from %s: %w", ref, p, err)
	}
	if len(env) == 0 {
		return nil, fmt.Errorf("envelope %q from %s: empty envelope: %w", ref, p, ErrMalformed)
	}
	return env, nil
}

// GetEnvelope is (&Client{Host: h}).GetEnvelope.
func GetEnvelope(ctx context.Context, h host.Host, p peer.ID, ref string) ([]byte, error) {
	return (&Client{Host: h}).GetEnvelope(ctx, p, ref)
}

// EncodeManifestRequest returns the manifest request for ref.
func EncodeManifestRequest(ref string) ([]byte, error) {
	if err := checkRef(ref); err != nil {
		return nil, err
	}
	return []byte(ref), nil
}

// DecodeManifestRequest returns the ref of a manifest request.
func DecodeManifestRequest(p []byte) (string, error) {
	ref := string(p)
	if err := checkRef(ref); err != nil {
		return "", err
	}
	return ref, nil
}

// checkRef refuses refs that could not name a release or manifest: empty,
// oversized, invalid UTF-8, or holding control characters, which would let a
// peer forge lines in our logs.
func checkRef(ref string) error {
	if len(ref) == 0 || len(ref) > MaxRefLen {
		return fmt.Errorf("ref of %d bytes, want 1 to %d: %w", len(ref), MaxRefLen, ErrMalformed)
	}
	if !utf8.ValidString(ref) {
		return fmt.Errorf("ref is not UTF-8: %w", ErrMalformed)
	}
	for _, r := range ref {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("ref holds control character %U: %w", r, ErrMalformed)
		}
	}
	return nil
}

// EncodeManifestResponse returns the manifest response of status st and, if
// st is StatusOK, envelope.
func EncodeManifestResponse(st Status, envelope []byte) []byte {
	if st != StatusOK {
		return []byte{byte(st)}
	}
	return append([]byte{byte(st)}, envelope...)
}

// DecodeManifestResponse splits a manifest response into its status and
// envelope, which aliases p. Only StatusOK carries an envelope, and it is not
// empty.
func DecodeManifestResponse(p []byte) (Status, []byte, error) {
	st, err := decodeStatus(p)
	if err != nil {
		return 0, nil, err
	}
	env := p[1:]
	switch {
	case st == StatusOK && len(env) == 0:
		return 0, nil, fmt.Errorf("empty envelope: %w", ErrMalformed)
	case st != StatusOK && len(env) != 0:
		return 0, nil, fmt.Errorf("%d bytes after status %v: %w", len(env), st, ErrMalformed)
	case len(env) > MaxEnvelopeSize:
		return 0, nil, fmt.Errorf("envelope of %d bytes, at most %d: %w", len(env), MaxEnvelopeSize, ErrFrameTooLarge)
	}
	return st, env, nil
}
