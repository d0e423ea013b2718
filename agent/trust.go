package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

// ErrTrustMismatch means an agent was started with a trust root that does
// not belong to the chain of roots its data dir already follows.
var ErrTrustMismatch = errors.New("the trust root given is not one this data dir follows")

// trustChain is the agent's trust root and the chain of roots that led to
// it, kept in the state database: each root signed by its predecessor's
// threshold and its own (manifest.Root.Rotate). A node that missed
// rotations catches up along the chain, and a root older than the newest
// held is never taken again.
type trustChain struct {
	db *stateDB

	mu    sync.Mutex
	envs  [][]byte // oldest first
	roots []*manifest.Root
}

// loadTrust returns the chain of the data dir, started from given (the
// --trust file) on first use. The data dir's chain must hold given, or given
// must follow its newest root; anything else is ErrTrustMismatch, unless
// reset, which starts the chain anew from given.
func loadTrust(db *stateDB, given []byte, reset bool, now time.Time) (*trustChain, error) {
	root, err := manifest.LoadRoot(given)
	if err != nil {
		return nil, fmt.Errorf("trust root: %w", err)
	}
	t := &trustChain{db: db}
	if reset {
		if err := db.clear(bucketRoots); err != nil {
			return nil, err
		}
	}
	err = db.each(bucketRoots, func(_ string, v []byte) error {
		r, err := manifest.LoadRoot(v)
		if err != nil {
			return fmt.Errorf("a trust root kept in the state: %w", err)
		}
		t.envs, t.roots = append(t.envs, bytes.Clone(v)), append(t.roots, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(t.roots) == 0 {
		return t, t.keep(given, root)
	}
	for i, r := range t.roots {
		if r.Version == root.Version {
			same, err := samePayload(t.envs[i], given)
			if err != nil {
				return nil, err
			}
			if !same {
				break
			}
			return t, nil
		}
	}
	newest := t.roots[len(t.roots)-1]
	if root.Version > newest.Version {
		if _, err := newest.Rotate(given, now); err == nil {
			return t, t.keep(given, root)
		}
	}
	return nil, fmt.Errorf("the data dir follows trust root version %d (keys %v), and the trust root given, version %d (keys %v), is neither in its chain nor its successor; start with the current root, or reset to follow the one given from now on: %w",
		newest.Version, newest.KeyIDs(), root.Version, root.KeyIDs(), ErrTrustMismatch)
}

func samePayload(a, b []byte) (bool, error) {
	ea, err := manifest.ParseEnvelope(a)
	if err != nil {
		return false, err
	}
	eb, err := manifest.ParseEnvelope(b)
	if err != nil {
		return false, err
	}
	return bytes.Equal(ea.Payload, eb.Payload), nil
}

// keep appends a root to the chain and to the state database; t.mu is held
// or t is not shared yet.
func (t *trustChain) keep(env []byte, r *manifest.Root) error {
	if err := t.db.putRaw(bucketRoots, versionKey(r.Version), env); err != nil {
		return fmt.Errorf("keep trust root version %d: %w", r.Version, err)
	}
	t.envs, t.roots = append(t.envs, bytes.Clone(env)), append(t.roots, r)
	return nil
}

func versionKey(v uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return string(b[:])
}

// current returns the newest root.
func (t *trustChain) current() *manifest.Root {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.roots[len(t.roots)-1]
}

// Roots serves the root protocol: the roots newer than held, oldest first.
func (t *trustChain) Roots(_ context.Context, held uint64) ([][]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out [][]byte
	for i, r := range t.roots {
		if r.Version > held {
			out = append(out, t.envs[i])
		}
	}
	return out[:min(len(out), p2p.MaxRootChain)], nil
}

// take follows envs, newer roots oldest first, each verified against the
// root before it, and keeps the ones it takes. It reports the version it
// ends at and whether it moved; a root that does not follow is an error,
// and the chain stays where it got.
func (t *trustChain) take(envs [][]byte, now time.Time) (uint64, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	moved := false
	for _, env := range envs {
		cur := t.roots[len(t.roots)-1]
		next, err := cur.Rotate(env, now)
		if err != nil {
			return cur.Version, moved, err
		}
		if next == cur {
			continue // the same root again
		}
		if err := t.keep(env, next); err != nil {
			return cur.Version, moved, err
		}
		moved = true
	}
	return t.roots[len(t.roots)-1].Version, moved, nil
}
