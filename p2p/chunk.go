package p2p

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// ChunkProtocol sends chunks in their stored form.
//
// Request, one frame, after which the client closes its write side: a count
// k (uvarint, 1 to MaxChunkBatch) and k chunk CIDs (each a uvarint length and
// the binary CID; CIDv1 raw SHA-256).
// Response, k frames in request order: a status byte, then for StatusOK the
// chunk's stored zstd frame (at most store.MaxFrameSize(manifest.MaxChunkSize)
// bytes), otherwise nothing. The server then closes the stream.
//
// One request per stream keeps the protocol simple; a client pipelines by
// opening several streams at once, which yamux and QUIC make cheap.
const ChunkProtocol protocol.ID = "/patchctl/chunk/1.0.0"

// MaxChunkBatch bounds the chunks of one request.
const MaxChunkBatch = 64

// maxStreamsPerPeer bounds the request streams a fetch keeps open to one
// peer. libp2p's default resource limits let a peer open 64 inbound streams
// of one protocol to another; a fetch that opened more had the rest reset,
// and gave up on a fast seed (a 4 GiB fetch over loopback opened up to 64,
// its window of 1,024 chunks in batches of 16). Half that leaves room for a
// second fetch from the same process.
const maxStreamsPerPeer = 32

const maxChunkRequest = 1 + MaxChunkBatch*(1+maxCIDLen)

// maxChunkFrame is the largest stored frame of a chunk. These are variables
// only because MaxFrameSize is a function; nothing changes them.
var (
	maxChunkFrame    = store.MaxFrameSize(manifest.MaxChunkSize)
	maxChunkResponse = 1 + maxChunkFrame
)

// chunkWriteBuffer sizes the server's write buffer: small frames of a batch
// share muxer frames, large ones bypass it.
const chunkWriteBuffer = 32 << 10

// chunkReadBuffer sizes the client's read buffer.
const chunkReadBuffer = 64 << 10

// ChunkConfig configures a ChunkService. The zero value is valid.
type ChunkConfig struct {
	// IdleTimeout is how long a handler waits for the request (default
	// 30 s).
	IdleTimeout time.Duration
	// WriteTimeout is how long a handler waits for the peer to accept each
	// part of a response (default 2 min). A peer reading steadily at the
	// end of a thin, shared link lets the server send more only once it
	// has read half a muxer stream window, 128 KiB, which at a few KB/s
	// takes tens of seconds (docs/decisions/0017). Time spent waiting for
	// the rate limiter does not count.
	WriteTimeout time.Duration
	// Limiter paces what the service sends; share one limiter among
	// everything that should count against the node's upload rate. Nil is
	// unlimited.
	Limiter *RateLimiter
	// Logger receives a debug line for every stream reset; nil discards.
	Logger *slog.Logger
}

// ChunkService serves ChunkProtocol from a store's frames.
type ChunkService struct {
	h      host.Host
	frames store.FrameGetter
	cfg    ChunkConfig
	g      *Handlers
}

// NewChunkService registers the chunk handler on h.
func NewChunkService(h host.Host, frames store.FrameGetter, cfg ChunkConfig) *ChunkService {
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, DefaultIdleTimeout)
	cfg.WriteTimeout = orDefault(cfg.WriteTimeout, defaultChunkTimeout)
	cs := &ChunkService{h: h, frames: frames, cfg: cfg, g: NewHandlers(cfg.Logger)}
	h.SetStreamHandler(ChunkProtocol, func(s network.Stream) { cs.g.Serve(s, cs.handle) })
	return cs
}

// Close removes the handler and ends the handlers running.
func (cs *ChunkService) Close() error {
	cs.h.RemoveStreamHandler(ChunkProtocol)
	cs.g.Close()
	return nil
}

func (cs *ChunkService) handle(ctx context.Context, s network.Stream) error {
	ds, p, err := readRequest(s, cs.cfg.IdleTimeout, maxChunkRequest)
	if err != nil {
		return fmt.Errorf("read chunk request: %w", err)
	}
	ids, err := DecodeChunkRequest(p)
	if err != nil {
		return err
	}
	ds.idle, ds.hard = cs.cfg.WriteTimeout, time.Time{}
	w := chunkWriters.get(cs.cfg.Limiter.Writer(ctx, ds))
	bufp := frameBufs.Get().(*[]byte)
	defer func() {
		chunkWriters.put(w)
		frameBufs.Put(bufp)
	}()
	appender, _ := cs.frames.(store.FrameAppender)
	for _, id := range ids {
		var frame []byte
		if appender != nil {
			frame, err = appender.AppendFrame(ctx, id, (*bufp)[:0])
			*bufp = frame[:0]
		} else {
			frame, err = cs.frames.GetFrame(ctx, id)
		}
		st := StatusOK
		switch {
		case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrCorrupt):
			// A stored chunk found damaged is quarantined by the read
			// that found it (the store says so): not held any more.
			st, frame = StatusNotFound, nil
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			cs.g.log.Warn("p2p: get frame failed", "chunk", id, "err", err)
			st, frame = StatusUnavailable, nil
		case len(frame) == 0 || len(frame) > maxChunkFrame:
			cs.g.log.Warn("p2p: stored frame of unservable size", "chunk", id, "size", len(frame))
			st, frame = StatusUnavailable, nil
		}
		if err := writeFrameParts(w, []byte{byte(st)}, frame); err != nil {
			return fmt.Errorf("send chunk %s: %w", id, err)
		}
		// Flush each chunk so the client can verify and store it while
		// the rest of the batch is read from disk.
		if err := w.Flush(); err != nil {
			return fmt.Errorf("send chunk %s: %w", id, err)
		}
	}
	return nil
}

// GetChunks asks p for the chunks ids (1 to MaxChunkBatch) and calls fn for
// each, in order, as it arrives: with the chunk's stored frame, or with a nil
// frame if p does not have it or could not read it. The frame is only valid
// until fn returns, since its buffer is reused for the next chunk; fn
// verifies it, typically with store.FramePutter.PutFrame. An error from fn
// resets the stream and is returned as it is. Each chunk must arrive within
// ChunkTimeout, and a frame larger than any frame of a chunk of at most
// manifest.MaxChunkSize resets the stream with an error wrapping
// ErrFrameTooLarge.
func (c *Client) GetChunks(ctx context.Context, p peer.ID, ids []cid.Cid, fn func(id cid.Cid, frame []byte) error) error {
	req, err := EncodeChunkRequest(ids)
	if err != nil {
		return err
	}
	s, stop, err := c.open(ctx, p, ChunkProtocol)
	if err != nil {
		return err
	}
	defer stop()
	ds := &chunkStream{deadlineStream: deadlineStream{s: s, idle: c.idle(), hard: time.Now().Add(c.idle())}, peer: p, onRead: c.OnRead}
	if err := WriteFrame(ds, req); err != nil {
		return fail(ctx, s, fmt.Errorf("send chunk request to %s: %w", p, err))
	}
	_ = s.CloseWrite()
	br := chunkReaders.get(c.Limiter.Reader(ctx, ds))
	bufp := frameBufs.Get().(*[]byte)
	buf := (*bufp)[:0]
	defer func() {
		chunkReaders.put(br)
		*bufp = buf[:0]
		frameBufs.Put(bufp)
	}()
	for _, id := range ids {
		ds.hard = time.Now().Add(c.chunk())
		buf, err = readFrameInto(buf, br, maxChunkResponse)
		if err != nil {
			return fail(ctx, s, fmt.Errorf("read chunk %s from %s: %w", id, p, err))
		}
		st, frame, err := DecodeChunkResponse(buf)
		if err != nil {
			return fail(ctx, s, fmt.Errorf("chunk %s from %s: %w", id, p, err))
		}
		if st != StatusOK {
			frame = nil
		}
		if err := fn(id, frame); err != nil {
			_ = s.Reset()
			return err
		}
	}
	_ = s.Close()
	return nil
}

// chunkStream is the deadlineStream of a GetChunks call, which tells onRead,
// if set, of every read that returns bytes.
type chunkStream struct {
	deadlineStream
	peer   peer.ID
	onRead func(peer.ID, int)
}

func (cs *chunkStream) Read(p []byte) (int, error) {
	n, err := cs.deadlineStream.Read(p)
	if n > 0 && cs.onRead != nil {
		cs.onRead(cs.peer, n)
	}
	return n, err
}

// GetChunks is (&Client{Host: h}).GetChunks.
func GetChunks(ctx context.Context, h host.Host, p peer.ID, ids []cid.Cid, fn func(id cid.Cid, frame []byte) error) error {
	return (&Client{Host: h}).GetChunks(ctx, p, ids, fn)
}

// EncodeChunkRequest returns the chunk request for ids.
func EncodeChunkRequest(ids []cid.Cid) ([]byte, error) {
	if len(ids) == 0 || len(ids) > MaxChunkBatch {
		return nil, fmt.Errorf("chunk request of %d chunks, want 1 to %d: %w", len(ids), MaxChunkBatch, ErrMalformed)
	}
	p := binary.AppendUvarint(make([]byte, 0, 1+len(ids)*(1+maxCIDLen)), uint64(len(ids)))
	for _, id := range ids {
		if err := manifest.CheckChunkID(id); err != nil {
			return nil, fmt.Errorf("chunk request: %w", err)
		}
		p = appendCID(p, id)
	}
	return p, nil
}

// DecodeChunkRequest returns the chunk IDs of a chunk request: 1 to
// MaxChunkBatch of them, each a valid chunk ID.
func DecodeChunkRequest(p []byte) ([]cid.Cid, error) {
	k, n, err := uvarint(p)
	if err != nil {
		return nil, fmt.Errorf("chunk request count: %w", err)
	}
	if k == 0 || k > MaxChunkBatch {
		return nil, fmt.Errorf("chunk request of %d chunks, want 1 to %d: %w", k, MaxChunkBatch, ErrMalformed)
	}
	p = p[n:]
	ids := make([]cid.Cid, 0, k)
	for range k {
		id, n, err := decodeCID(p)
		if err != nil {
			return nil, fmt.Errorf("chunk request: %w", err)
		}
		if err := manifest.CheckChunkID(id); err != nil {
			return nil, fmt.Errorf("chunk request: %v: %w", err, ErrMalformed)
		}
		ids = append(ids, id)
		p = p[n:]
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("chunk request: %d bytes after the CIDs: %w", len(p), ErrMalformed)
	}
	return ids, nil
}

// EncodeChunkResponse returns the response for one chunk: status st and,
// for StatusOK, its stored frame.
func EncodeChunkResponse(st Status, frame []byte) []byte {
	if st != StatusOK {
		return []byte{byte(st)}
	}
	return append([]byte{byte(st)}, frame...)
}

// DecodeChunkResponse splits the response for one chunk into its status
// and frame, which aliases p. Only StatusOK carries a frame, of 1 to
// store.MaxFrameSize(manifest.MaxChunkSize) bytes. The frame is not decoded:
// that is the job of whoever stores it.
func DecodeChunkResponse(p []byte) (Status, []byte, error) {
	st, err := decodeStatus(p)
	if err != nil {
		return 0, nil, fmt.Errorf("chunk response: %w", err)
	}
	frame := p[1:]
	switch {
	case st == StatusOK && len(frame) == 0:
		return 0, nil, fmt.Errorf("chunk response: empty frame: %w", ErrMalformed)
	case st != StatusOK && len(frame) != 0:
		return 0, nil, fmt.Errorf("chunk response: %d bytes after status %v: %w", len(frame), st, ErrMalformed)
	case len(frame) > maxChunkFrame:
		return 0, nil, fmt.Errorf("chunk response: frame of %d bytes, at most %d: %w", len(frame), maxChunkFrame, ErrFrameTooLarge)
	}
	return st, frame, nil
}
