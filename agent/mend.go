package agent

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/p2p"
)

// mender fetches back the chunks the agent's store quarantined (a read
// found their bytes damaged), from the peers around it that may hold them:
// for the origin, which has no upstream, the proxies below it; for the
// others, their upstreams and neighbours too. Every chunk is verified
// against its CID as it is stored, so a peer cannot mend with other bytes.
type mender struct {
	mu   sync.Mutex
	lost map[cid.Cid]int // the chunks to fetch back, with the attempts made
	wake chan struct{}
}

// mendAttempts bounds the rounds a lost chunk is asked for; a chunk no peer
// holds is left to the fetches of the releases that need it, and to the
// publisher, who sends it again with publish --origin.
const mendAttempts = 10

func newMender() *mender {
	return &mender{lost: map[cid.Cid]int{}, wake: make(chan struct{}, 1)}
}

// lose queues chunks to fetch back.
func (m *mender) lose(ids ...cid.Cid) {
	m.mu.Lock()
	for _, id := range ids {
		if _, ok := m.lost[id]; !ok {
			m.lost[id] = 0
		}
	}
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// pending returns the chunks still to fetch back.
func (m *mender) pending() []cid.Cid {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Collect(maps.Keys(m.lost))
}

// mend fetches back lost chunks until ctx ends: at once when one is lost,
// then every poll interval while some are still lost.
func (c *core) mend(ctx context.Context, peersOf func() []peer.ID) {
	t := c.clock.Timer(c.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.mender.wake:
		case <-t.C:
		}
		if lost := c.mender.pending(); len(lost) > 0 {
			c.mendOnce(ctx, lost, peersOf())
		}
		t.Reset(c.cfg.PollInterval)
	}
}

// mendOnce asks each peer in turn for the lost chunks not yet mended.
func (c *core) mendOnce(ctx context.Context, lost []cid.Cid, peers []peer.ID) {
	client := c.peer.client
	for _, p := range peers {
		var want []cid.Cid
		for _, id := range lost {
			if ok, err := c.peer.Store.Has(ctx, id); err == nil && !ok {
				want = append(want, id)
			}
		}
		if len(want) == 0 {
			break
		}
		if len(want) > p2p.MaxChunkBatch {
			want = want[:p2p.MaxChunkBatch]
		}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := client.GetChunks(rctx, p, want, func(id cid.Cid, frame []byte) error {
			if frame == nil {
				return nil
			}
			if err := c.peer.Store.PutFrame(rctx, id, frame); err != nil {
				c.log.Warn("agent: a peer sent a damaged copy of a quarantined chunk", "peer", p, "chunk", id, "err", err)
				return err // the stream ends; the next peer is asked
			}
			// Peers fetching from this agent hear it has the chunk again.
			c.peer.notifier.Stored(id)
			c.log.Info("agent: a quarantined chunk was fetched again", "peer", p, "chunk", id)
			return nil
		})
		cancel()
		if err != nil && ctx.Err() == nil {
			c.log.Debug("agent: asking a peer for quarantined chunks failed", "peer", p, "err", err)
		}
	}
	c.mender.mu.Lock()
	defer c.mender.mu.Unlock()
	for _, id := range lost {
		if ok, err := c.peer.Store.Has(ctx, id); err == nil && ok {
			delete(c.mender.lost, id)
			continue
		}
		if c.mender.lost[id]++; c.mender.lost[id] >= mendAttempts {
			c.log.Warn("agent: no peer holds a quarantined chunk; it stays missing until a fetch or a publisher brings it", "chunk", id, "attempts", mendAttempts)
			delete(c.mender.lost, id)
		}
	}
}
