package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

// follower is how a proxy or a node follows the index of its upstreams: it
// polls them, and takes their announcements of a newer one.
type follower struct {
	c   *core
	ids []peer.ID // the upstreams, the first preferred
	is  map[peer.ID]bool

	mu        sync.Mutex
	announcer peer.ID // the upstream that announced a newer index, asked first
	warned    bool    // the last poll failed and said so
	refused   string  // why the last index refused was, said once
}

func newFollower(c *core, upstreams []peer.AddrInfo) *follower {
	f := &follower{c: c, is: map[peer.ID]bool{}}
	ps := c.peer.Host.Peerstore()
	for _, info := range upstreams {
		ps.AddAddrs(info.ID, info.Addrs, peerstore.PermanentAddrTTL)
		f.ids = append(f.ids, info.ID)
		f.is[info.ID] = true
	}
	return f
}

// Announced takes an announcement: a newer index is pulled from its sender
// at once. Only upstreams are heard, so that no peer can make this agent
// fetch at its bidding.
func (f *follower) Announced(from peer.ID, version uint64) {
	if !f.is[from] {
		return
	}
	if ix := f.c.current(); ix != nil && version <= ix.Version {
		return
	}
	f.mu.Lock()
	f.announcer = from
	f.mu.Unlock()
	f.c.pollNow()
}

// pullRoots follows the trust roots p holds newer than this agent's.
func (f *follower) pullRoots(ctx context.Context, p peer.ID) error {
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	roots, err := f.c.peer.client.GetRoots(rctx, p, f.c.trust.current().Version)
	if err != nil || len(roots) == 0 {
		return err
	}
	version, moved, err := f.c.trust.take(roots, f.c.clock.Now())
	if moved {
		f.c.log.Info("agent: trust root rotated", "version", version, "from", p)
		f.c.rootRotated()
	}
	if err != nil {
		if f.firstRefusal(err) {
			f.c.log.Warn("agent: trust root refused", "upstream", p, "err", err)
		}
	}
	return nil
}

// Nudged takes a nudge: an upstream has something for this agent in the
// answer to its report, which it sends now. Only upstreams are heard.
func (f *follower) Nudged(from peer.ID) {
	if f.is[from] {
		f.c.pollNow()
		f.c.changed()
	}
}

// pull gets a newer index from the upstreams, the announcer of one first,
// and adopts it. It reports whether an upstream answered, and the index
// adopted, if any.
func (f *follower) pull(ctx context.Context) (bool, *manifest.Index) {
	f.mu.Lock()
	order := f.ids
	if f.announcer != "" {
		order = append([]peer.ID{f.announcer}, f.ids...)
		f.announcer = ""
	}
	f.mu.Unlock()
	var errs []error
	for _, p := range order {
		answered, ix, err := f.pullFrom(ctx, p)
		if answered {
			f.mu.Lock()
			if f.warned {
				f.c.log.Info("agent: upstream answers again", "upstream", p)
				f.warned = false
			}
			f.mu.Unlock()
			return true, ix
		}
		errs = append(errs, err)
	}
	if ctx.Err() == nil {
		f.mu.Lock()
		// Said once per outage: the loop tries again soon, then less often.
		if !f.warned {
			f.c.log.Warn("agent: no upstream answered; retrying with backoff", "upstreams", f.ids, "err", errors.Join(errs...))
			f.warned = true
		}
		f.mu.Unlock()
	}
	return false, nil
}

// pullFrom asks p for newer trust roots and takes them, then for a newer
// index and adopts it: the roots first, since the index may be signed by
// keys only a newer root holds.
func (f *follower) pullFrom(ctx context.Context, p peer.ID) (bool, *manifest.Index, error) {
	if err := f.pullRoots(ctx, p); err != nil {
		return false, nil, err
	}
	var held uint64
	if ix := f.c.current(); ix != nil {
		held = ix.Version
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	env, err := f.c.peer.client.GetIndex(ctx, p, held)
	if errors.Is(err, p2p.ErrNotFound) {
		return true, nil, nil
	}
	if err != nil {
		return false, nil, err
	}
	ix, adopted, err := f.c.adopt(env)
	if err != nil {
		if f.firstRefusal(err) {
			f.c.log.Warn("agent: index refused", "upstream", p, "err", err)
		}
		// The upstream answered; asking again soon would get the same.
		return true, nil, err
	}
	if !adopted {
		return true, nil, nil
	}
	return true, ix, nil
}

// firstRefusal records err as the last refusal of what an upstream sent,
// and reports whether it differs from the one before: a refusal repeated
// every poll is logged once.
func (f *follower) firstRefusal(err error) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	again := f.refused == err.Error()
	f.refused = err.Error()
	return !again
}
