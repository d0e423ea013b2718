package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// PublishStore is what publishing needs of a chunk store.
type PublishStore interface {
	ChunkAdder
	Pin(ctx context.Context, name string, ids []cid.Cid) error
}

// syncer is implemented by stores whose writes need a final flush to be
// durable (the disk store's directory entries).
type syncer interface {
	Sync(ctx context.Context) error
}

// PublishOptions describe the release; zero values get defaults.
type PublishOptions struct {
	Name     string // default: the base name of the single source, without extension
	Channel  string // default "stable"
	Sequence uint64 // default: one more than the release of that name held, or 1
	// Lifetime is how long the signed manifest stays valid; default one year.
	Lifetime   time.Duration
	Install    manifest.Install
	Supersedes []string
	Requires   []string
	Labels     map[string]string
	Ingest     IngestOptions
	Now        func() time.Time // default time.Now
}

// PublishResult is what a publish did.
type PublishResult struct {
	Name     string
	CID      cid.Cid
	Sequence uint64
	IngestStats
	Envelope []byte
}

// Publish ingests sources into s, signs a manifest of them with every key of
// signers, pins the release's chunks and saves the envelope in the catalog.
// A re-published name must carry a higher sequence than the release of that
// name already held. Keys held elsewhere sign the envelope afterwards
// (manifest.AddSignatures).
func Publish(ctx context.Context, s PublishStore, cat *Catalog, signers []ed25519.PrivateKey, sources []Source, opts PublishOptions) (*PublishResult, error) {
	if len(signers) == 0 {
		return nil, errors.New("publish: a signing key is required")
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	if opts.Channel == "" {
		opts.Channel = "stable"
	}
	if opts.Lifetime <= 0 {
		opts.Lifetime = 365 * 24 * time.Hour
	}
	if opts.Name == "" {
		return nil, errors.New("publish: a release name is required")
	}
	if _, err := manifest.ParsePackName(opts.Name); err != nil {
		return nil, err
	}
	held, err := cat.Get(opts.Name)
	if err != nil && !errors.Is(err, ErrReleaseNotFound) {
		return nil, err
	}
	if opts.Sequence == 0 {
		opts.Sequence = 1
		if held != nil {
			opts.Sequence = held.Manifest.Sequence + 1
		}
	}
	params := opts.Ingest.Chunking
	if params == (manifest.ChunkParams{}) {
		params = manifest.DefaultArchiveChunkParams
		opts.Ingest.Chunking = params
	}

	// A disk store takes the chunks as one write batch: their durability is
	// settled in large groups while compression goes on, then once more
	// before the pin.
	var adder ChunkAdder = s
	batcher, batched := s.(interface{ NewBatch() *store.Batch })
	var batch *store.Batch
	if batched {
		batch = batcher.NewBatch()
		adder = batch
	}
	files, stats, err := Ingest(ctx, adder, sources, opts.Ingest)
	if batched {
		if cerr := batch.Commit(ctx); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return nil, err
	}
	created := now().UTC().Truncate(time.Second)
	m := &manifest.Manifest{
		Schema:     manifest.SchemaVersion,
		Name:       opts.Name,
		Channel:    opts.Channel,
		Sequence:   opts.Sequence,
		Created:    created,
		Expires:    created.Add(opts.Lifetime),
		Chunking:   params,
		Files:      files,
		Install:    opts.Install,
		Supersedes: opts.Supersedes,
		Requires:   opts.Requires,
		Labels:     opts.Labels,
	}
	if held != nil {
		if err := manifest.CheckSequence(held.Manifest, m); err != nil {
			return nil, fmt.Errorf("publish %s: %w (pass a sequence above %d)", opts.Name, err, held.Manifest.Sequence)
		}
	}
	envelope, id, err := manifest.SignManifest(m, signers...)
	if err != nil {
		return nil, err
	}
	// Chunks first, then the pin, then the envelope: a crash in between
	// leaves unpinned chunks for GC, never a release with missing chunks.
	if sy, ok := s.(syncer); ok {
		if err := sy.Sync(ctx); err != nil {
			return nil, err
		}
	}
	if err := s.Pin(ctx, m.Name, m.ChunkIDs()); err != nil {
		return nil, err
	}
	if err := cat.Save(m.Name, envelope); err != nil {
		return nil, err
	}
	return &PublishResult{Name: m.Name, CID: id, Sequence: m.Sequence, IngestStats: stats, Envelope: envelope}, nil
}
