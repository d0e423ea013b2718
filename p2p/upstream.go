package p2p

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/store"
)

// Upstream gets single chunks from a list of peers in order of preference, as
// a proxy gets what its cache lacks from its parent proxy or the origin: it
// is the store.FrameGetter a store.Cache is built over. A peer that fails is
// skipped for the next; the frame is not verified here (the cache verifies
// it before storing or serving it).
type Upstream struct {
	client *Client

	mu    sync.Mutex
	peers []peer.ID
}

// NewUpstream returns an upstream over peers, the first preferred.
func NewUpstream(client *Client, peers ...peer.ID) *Upstream {
	return &Upstream{client: client, peers: peers}
}

// GetFrame asks each peer in turn for id until one sends it.
func (u *Upstream) GetFrame(ctx context.Context, id cid.Cid) ([]byte, error) {
	u.mu.Lock()
	peers := append([]peer.ID(nil), u.peers...)
	u.mu.Unlock()
	if len(peers) == 0 {
		return nil, fmt.Errorf("upstream: no peers: %w", ErrNoSource)
	}
	var errs []error
	for _, p := range peers {
		var frame []byte
		err := u.client.GetChunks(ctx, p, []cid.Cid{id}, func(_ cid.Cid, f []byte) error {
			if f != nil {
				frame = append([]byte(nil), f...)
			}
			return nil
		})
		if err == nil && frame != nil {
			return frame, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err == nil {
			err = fmt.Errorf("%s does not have chunk %s: %w", p, id, ErrNotFound)
		}
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	if allNotFound(errs) {
		// Callers tell a chunk no upstream has from one they failed to
		// reach by store.ErrNotFound.
		return nil, fmt.Errorf("upstream: chunk %s: %w: %w", id, store.ErrNotFound, err)
	}
	return nil, fmt.Errorf("upstream: chunk %s: %w", id, err)
}

func allNotFound(errs []error) bool {
	for _, err := range errs {
		if !errors.Is(err, ErrNotFound) {
			return false
		}
	}
	return len(errs) > 0
}
