package main

import (
	"crypto/ed25519"
	"fmt"
	"slices"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// handover is what handing a release to the origin did.
type handover struct {
	ChunksSent   int    `json:"chunks_sent"`
	BytesSent    int64  `json:"bytes_sent"`
	IndexVersion uint64 `json:"index_version"`
}

// handToOrigin hands a release published here to the origin: the signed
// envelope, then the stored chunk frames it lacks (sent as stored, and
// verified there against their CIDs), then the origin's next index with the
// release in it, signed with the same key. Run again, it sends only what is
// still missing.
func handToOrigin(c *cli.Context, g globals, key ed25519.PrivateKey, s *store.Disk, res *agent.PublishResult) (*handover, error) {
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return nil, err
	}
	ctx := c.Context
	h := &handover{}
	ing, err := ac.PostRelease(ctx, res.Envelope)
	if err != nil {
		return nil, err
	}
	for _, ref := range ing.Missing {
		id, err := manifest.ParseChunkID(ref)
		if err != nil {
			return nil, fmt.Errorf("the origin asked for %q: %w", ref, err)
		}
		frame, err := s.GetFrame(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("the origin asked for chunk %s, not held here: %w", id, err)
		}
		if err := ac.PutChunk(ctx, id, frame); err != nil {
			return nil, err
		}
		h.ChunksSent++
		h.BytesSent += int64(len(frame))
	}
	if len(ing.Missing) > 0 {
		if ing, err = ac.PostRelease(ctx, res.Envelope); err != nil {
			return nil, err
		}
		if !ing.Stored {
			return nil, fmt.Errorf("the origin still lacks %d chunks of %s", len(ing.Missing), res.Name)
		}
	}
	keys := []ed25519.PrivateKey{key}
	root, err := signingRoot(c, keys)
	if err != nil {
		return nil, err
	}
	entry := manifest.IndexEntry{Name: res.Name, CID: res.CID.String(), Sequence: res.Sequence}
	ix, _, err := editOriginIndex(ctx, ac, root, keys, 30*24*time.Hour, func(held, next *manifest.Index) (bool, error) {
		if held != nil {
			if e, ok := held.Lookup(res.Name); ok && e.CID == entry.CID {
				return false, nil
			}
		}
		next.Releases = slices.DeleteFunc(next.Releases, func(e manifest.IndexEntry) bool { return e.Name == entry.Name })
		next.Releases = append(next.Releases, entry)
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	h.IndexVersion = ix.Version
	return h, nil
}
