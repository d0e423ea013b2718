package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// RemoveRelease forgets the release ref names (its name or manifest CID)
// from a data dir's store and catalog: its pin, then its envelope; GC then
// frees the chunks no other release uses. listed is the index an origin
// serves (nil elsewhere): a release it lists and has not withdrawn stays,
// since nodes may still fetch it. An entry whose envelope does not read is
// removed by its name.
//
// The CLI calls it on a data dir no agent runs on, and an agent for its
// admin API: one process at a time has a store open.
func RemoveRelease(ctx context.Context, s *store.Disk, cat *Catalog, ref string, listed *manifest.Index) (adminapi.Removal, error) {
	r, err := cat.Get(ref)
	name := ref
	if err == nil {
		name = r.Name
	}
	if listed != nil {
		if e, ok := listed.Lookup(name); ok && !e.Withdrawn {
			return adminapi.Removal{}, fmt.Errorf("%s is listed in the origin's index version %d, and nodes may still fetch it; withdraw it first (patchctl withdraw): %w", name, listed.Version, adminapi.ErrConflict)
		}
	}
	if err != nil {
		if errors.Is(err, ErrReleaseNotFound) || !cat.Has(ref) {
			return adminapi.Removal{}, err
		}
		if err := s.Unpin(ctx, ref); err != nil {
			return adminapi.Removal{}, err
		}
		if err := cat.Remove(ref); err != nil {
			return adminapi.Removal{}, err
		}
		return adminapi.Removal{Name: ref, Unreadable: err.Error()}, nil
	}
	// Unpin first: a crash between the two leaves a listed release whose
	// chunks GC may take, which verify reports, rather than pinned chunks
	// nothing lists.
	if err := s.Unpin(ctx, r.Name); err != nil {
		return adminapi.Removal{}, err
	}
	if err := cat.Remove(r.Name); err != nil {
		return adminapi.Removal{}, err
	}
	return adminapi.Removal{Name: r.Name, CID: r.CID.String()}, nil
}

// CollectGarbage deletes the chunks of a data dir's store no release pins,
// keeping those written within grace. listed is the index an origin serves
// (nil elsewhere): each release it lists and has not withdrawn whose pin is
// gone is pinned again first, so that GC never takes chunks nodes may still
// fetch.
func CollectGarbage(ctx context.Context, s *store.Disk, cat *Catalog, listed *manifest.Index, grace time.Duration) (adminapi.GCReport, error) {
	var rep adminapi.GCReport
	if listed != nil {
		pins, err := s.Pins(ctx)
		if err != nil {
			return rep, err
		}
		for _, e := range listed.Releases {
			if _, ok := pins[e.Name]; ok || e.Withdrawn {
				continue
			}
			r, err := cat.Get(e.Name)
			if err != nil {
				continue // not held here: nothing to keep
			}
			if err := s.Pin(ctx, r.Name, r.Manifest.ChunkIDs()); err != nil {
				return rep, err
			}
			rep.Repinned = append(rep.Repinned, r.Name)
		}
	}
	res, err := store.GC(ctx, s, store.GCOptions{Grace: grace})
	if err != nil {
		return rep, err
	}
	rep.RemovedChunks, rep.RemovedBytes = res.Deleted, res.BytesFreed
	rep.PinnedChunks, rep.FreshChunks, rep.TempsRemoved = res.Pinned, res.Fresh, res.TempsRemoved
	rep.PacksRemoved, rep.PacksWritten, rep.SpaceReclaimed = res.PacksRemoved, res.PacksWritten, res.SpaceReclaimed
	return rep, nil
}

// RemoveRelease forgets a release of this agent's data dir.
func (c *core) RemoveRelease(ctx context.Context, ref string) (adminapi.Removal, error) {
	return RemoveRelease(ctx, c.peer.Store, c.peer.Catalog, ref, nil)
}

// CollectGarbage collects this agent's chunk store's garbage.
func (c *core) CollectGarbage(ctx context.Context, grace time.Duration) (adminapi.GCReport, error) {
	return CollectGarbage(ctx, c.peer.Store, c.peer.Catalog, nil, grace)
}

// RemoveRelease forgets a release the origin holds, unless its index lists
// it: nodes may still fetch it.
func (o *origin) RemoveRelease(ctx context.Context, ref string) (adminapi.Removal, error) {
	return RemoveRelease(ctx, o.peer.Store, o.peer.Catalog, ref, o.current())
}

// CollectGarbage collects the origin's garbage, keeping every release its
// index lists whole.
func (o *origin) CollectGarbage(ctx context.Context, grace time.Duration) (adminapi.GCReport, error) {
	return CollectGarbage(ctx, o.peer.Store, o.peer.Catalog, o.current(), grace)
}

// CheckStore reads and verifies every chunk of the agent's store, and finds
// the missing chunks of the releases it pins. A corrupt chunk is
// quarantined by the read and fetched again from the agent's peers; with
// repair, so is every missing one.
func (c *core) CheckStore(ctx context.Context, repair bool) (adminapi.FsckReport, error) {
	rep := adminapi.FsckReport{Problems: []adminapi.FsckProblem{}}
	var mend []cid.Cid
	res, err := store.Fsck(ctx, c.peer.Store, func(p store.Problem) {
		rep.Problems = append(rep.Problems, adminapi.FsckProblem{CID: p.CID.String(), Kind: p.Kind.String(), Pins: p.Pins})
		if p.Kind == store.Corrupt || repair {
			mend = append(mend, p.CID)
		}
	})
	if err != nil {
		return rep, err
	}
	c.mender.lose(mend...)
	rep.Chunks, rep.OK, rep.Mending = res.Chunks, len(rep.Problems) == 0, len(mend)
	return rep, nil
}
