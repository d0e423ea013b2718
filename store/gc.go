package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"
)

// DefaultGCGrace is the grace period the CLI and agent give unpinned chunks:
// long enough for a download in progress, whose chunks are stored before its
// release is pinned, to finish.
const DefaultGCGrace = time.Hour

// GCOptions tune GC. The zero value deletes every unpinned chunk.
type GCOptions struct {
	// Grace keeps unpinned chunks whose last Put is more recent than this;
	// zero keeps none. See DefaultGCGrace.
	Grace time.Duration
	// Now is the time GC measures ages from; zero means time.Now().
	Now time.Time
	// DryRun counts what GC would delete without deleting it.
	DryRun bool
}

// GCResult counts what GC did.
type GCResult struct {
	Pinned     int   // chunks kept because a pin references them
	Fresh      int   // unpinned chunks kept because they are within the grace period
	Deleted    int   // unpinned chunks deleted (or, with DryRun, to delete)
	BytesFreed int64 // stored bytes of the deleted chunks
	// TempsRemoved counts leftover temporary files of crashed writers
	// removed: repack outputs a kill left unsealed, stale pin files (Disk
	// only; what opening the store removed is in Disk.Recovered).
	TempsRemoved int
	// PacksRemoved counts pack files removed, PacksWritten those written
	// by repacking the live part of mostly dead ones, and SpaceReclaimed
	// the bytes of the first less those of the second (Disk only).
	PacksRemoved, PacksWritten int
	SpaceReclaimed             int64
}

// staleDeleter is implemented by stores that can check a chunk's age and
// delete it atomically with respect to Put, which closes the window in which
// GC could delete a chunk that a concurrent Put had just refreshed.
type staleDeleter interface {
	deleteStale(ctx context.Context, id cid.Cid, cutoff time.Time) (freed int64, deleted bool, err error)
}

// compactor is implemented by stores whose deletes leave dead bytes to
// reclaim (Disk: packs).
type compactor interface {
	compact(ctx context.Context) (compactResult, error)
}

// tempRemover is implemented by stores that leave temporary files behind
// when a writer crashes.
type tempRemover interface {
	removeStaleTemps(ctx context.Context, now time.Time) (int, error)
}

// GC deletes every chunk that no pin references and whose last Put is older
// than opts.Grace and, for a Disk, reclaims their space (removing packs with
// nothing live, repacking mostly dead ones) and removes what crashed writers
// left. It reads the pins first and fails if they cannot all
// be read, so it never deletes on a partial view of them. On a read-only
// Disk only a DryRun runs; any other fails with ErrReadOnly.
func GC(ctx context.Context, s Store, opts GCOptions) (GCResult, error) {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	cutoff := now.Add(-opts.Grace)
	if ro, ok := s.(interface{ ReadOnly() bool }); ok && ro.ReadOnly() && !opts.DryRun {
		return GCResult{}, fmt.Errorf("gc: %w", ErrReadOnly)
	}
	pins, err := s.Pins(ctx)
	if err != nil {
		return GCResult{}, fmt.Errorf("gc: %w", err)
	}
	pinned := make(map[cid.Cid]struct{})
	for _, ids := range pins {
		for _, id := range ids {
			pinned[id] = struct{}{}
		}
	}
	var res GCResult
	sd, atomic := s.(staleDeleter)
	err = s.List(ctx, func(id cid.Cid) error {
		if _, ok := pinned[id]; ok {
			res.Pinned++
			return nil
		}
		if atomic && !opts.DryRun {
			freed, deleted, err := sd.deleteStale(ctx, id, cutoff)
			if err != nil {
				return err
			}
			if deleted {
				res.Deleted++
				res.BytesFreed += freed
			} else {
				res.Fresh++
			}
			return nil
		}
		info, err := s.Stat(ctx, id)
		if errors.Is(err, ErrNotFound) {
			return nil // deleted since List saw it
		}
		if err != nil {
			return err
		}
		if info.Modified.After(cutoff) {
			res.Fresh++
			return nil
		}
		if !opts.DryRun {
			if err := s.Delete(ctx, id); err != nil {
				return err
			}
		}
		res.Deleted++
		res.BytesFreed += info.StoredSize
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	if c, ok := s.(compactor); ok && !opts.DryRun {
		cr, err := c.compact(ctx)
		res.PacksRemoved, res.PacksWritten = cr.PacksRemoved, cr.PacksWritten
		res.SpaceReclaimed = cr.BytesRemoved - cr.BytesWritten
		if err != nil {
			return res, fmt.Errorf("gc: %w", err)
		}
	}
	if tr, ok := s.(tempRemover); ok && !opts.DryRun {
		n, err := tr.removeStaleTemps(ctx, now)
		res.TempsRemoved = n
		if err != nil {
			return res, fmt.Errorf("gc: %w", err)
		}
	}
	if sy, ok := s.(Syncer); ok && !opts.DryRun {
		if err := sy.Sync(ctx); err != nil {
			return res, fmt.Errorf("gc: %w", err)
		}
	}
	return res, nil
}
