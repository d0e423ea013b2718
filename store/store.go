// Package store owns chunks at rest: a content-addressed store keyed by chunk
// CID (on disk, zstd frames appended to pack files with an index in memory,
// opened by one writer per data dir and by any number of read-only readers
// beside it; or in memory), a cache over an upstream with a byte quota (a
// site proxy's), the frame format chunks are stored and sent in, pins per
// release and garbage collection of unpinned chunks (repacking mostly dead
// packs), quarantine of chunks that fail their checksums, fsck, and
// assembling a release's files from its chunks.
// It knows nothing of peers; the signed release envelopes are package
// agent's catalog.
package store

import (
	"context"
	"time"

	"github.com/ipfs/go-cid"
)

// Getter reads chunks.
type Getter interface {
	// Get returns the uncompressed bytes of a chunk, verified against id.
	// It returns an error wrapping ErrNotFound if the chunk is absent and
	// ErrCorrupt if the stored bytes do not decode or do not hash to id.
	Get(ctx context.Context, id cid.Cid) ([]byte, error)
}

// Haser tells which chunks are present.
type Haser interface {
	// Has reports whether a chunk is stored. It does not verify it.
	Has(ctx context.Context, id cid.Cid) (bool, error)
}

// Putter writes chunks.
type Putter interface {
	// Put stores uncompressed chunk bytes under id after checking that they
	// hash to id (ErrMismatch otherwise). Putting a chunk that is already
	// present refreshes its modification time and writes nothing else.
	// Once Put returns nil the chunk is whole under its ID: a crash never
	// leaves a torn chunk. That its ID survives a crash may need a Sync
	// (see Syncer).
	Put(ctx context.Context, id cid.Cid, data []byte) error
}

// Syncer is implemented by stores that make the names of written chunks
// durable in batches, as a directory fsync after many concurrent Puts.
type Syncer interface {
	// Sync makes every Put, PutFrame and Delete that returned before it
	// survive a crash.
	Sync(ctx context.Context) error
}

// FrameGetter reads chunks in their stored form, to send them to peers
// exactly as stored.
type FrameGetter interface {
	// GetFrame returns the stored frame of a chunk (see EncodeFrame) without
	// decoding it; the receiver verifies. ErrNotFound if absent.
	GetFrame(ctx context.Context, id cid.Cid) ([]byte, error)
}

// FrameAppender is a FrameGetter that can append the frame to a buffer the
// caller provides (Disk, Mem, Cache): a server sending chunk after chunk
// then reuses one buffer instead of allocating a frame for each.
type FrameAppender interface {
	// AppendFrame appends the stored frame of a chunk to dst, as GetFrame
	// returns it. On error it returns dst unchanged.
	AppendFrame(ctx context.Context, id cid.Cid, dst []byte) ([]byte, error)
}

// FramePutter writes chunks received in their stored form.
type FramePutter interface {
	// PutFrame decodes frame with the chunk size cap, checks that the
	// content hashes to id, and stores frame as it is. ErrCorrupt if it
	// does not decode, ErrMismatch if the content is not id's.
	PutFrame(ctx context.Context, id cid.Cid, frame []byte) error
}

// ContentFramePutter is a FramePutter that lends the content it decoded and
// verified to use before PutFrameContent returns (Disk, Mem), so that a
// caller that needs the content, such as an Assembly, does not decode the
// frame a second time. content is valid only during the call.
type ContentFramePutter interface {
	PutFrameContent(ctx context.Context, id cid.Cid, frame []byte, use func(id cid.Cid, content []byte)) error
}

// Deleter removes chunks.
type Deleter interface {
	// Delete removes a chunk; deleting an absent chunk is not an error.
	Delete(ctx context.Context, id cid.Cid) error
}

// Lister enumerates chunks.
type Lister interface {
	// List calls fn for every stored chunk in no set order; an error from
	// fn stops the walk and is returned. fn may delete the chunk it is
	// given.
	List(ctx context.Context, fn func(cid.Cid) error) error
	// Stat returns what the store knows of a chunk without reading it.
	Stat(ctx context.Context, id cid.Cid) (Info, error)
}

// Info describes a stored chunk.
type Info struct {
	StoredSize int64     // bytes of the stored frame
	Modified   time.Time // last Put
}

// Pinner records which chunks each release needs, so GC keeps them.
type Pinner interface {
	// Pin records ids under name, replacing what name pinned before.
	Pin(ctx context.Context, name string, ids []cid.Cid) error
	// Unpin removes name's pin; unpinning an absent name is not an error.
	Unpin(ctx context.Context, name string) error
	// Pins returns every pin name with its chunk IDs.
	Pins(ctx context.Context) (map[string][]cid.Cid, error)
}

// Store is everything a chunk store does.
type Store interface {
	Getter
	Haser
	Putter
	FrameGetter
	FramePutter
	Deleter
	Lister
	Pinner
}
