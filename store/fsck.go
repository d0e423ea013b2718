package store

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"
)

// ProblemKind tells what is wrong with a chunk.
type ProblemKind int

const (
	// Corrupt: the stored chunk does not decode or does not hash to its ID.
	Corrupt ProblemKind = iota + 1
	// Missing: a pin references the chunk but it is not stored.
	Missing
)

func (k ProblemKind) String() string {
	switch k {
	case Corrupt:
		return "corrupt"
	case Missing:
		return "missing"
	default:
		return fmt.Sprintf("ProblemKind(%d)", int(k))
	}
}

// Problem is one bad chunk found by Fsck.
type Problem struct {
	CID  cid.Cid
	Kind ProblemKind
	// Pins names the releases that need the chunk, sorted; empty if none.
	Pins []string
	// Err is what Get returned, for corrupt chunks.
	Err error
}

func (p Problem) String() string {
	s := fmt.Sprintf("chunk %s: %s", p.CID, p.Kind)
	if len(p.Pins) > 0 {
		s += fmt.Sprintf(" (needed by %v)", p.Pins)
	}
	if p.Err != nil {
		s += ": " + p.Err.Error()
	}
	return s
}

// FsckResult sums up a check.
type FsckResult struct {
	Chunks  int   // chunks verified good
	Bytes   int64 // content bytes of the good chunks
	Corrupt int
	Missing int
}

// Fsck reads and verifies every stored chunk, GOMAXPROCS at a time, and
// checks that every pinned chunk is stored. It calls fn, one call at a time,
// for each problem it finds. An error other than a corrupt chunk (an
// unreadable directory, a cancelled ctx) stops it and is returned.
func Fsck(ctx context.Context, s Store, fn func(Problem)) (FsckResult, error) {
	pins, err := s.Pins(ctx)
	if err != nil {
		return FsckResult{}, fmt.Errorf("fsck: %w", err)
	}
	// needed maps each pinned chunk to the pins that reference it; seen
	// marks the pinned chunks that List found.
	needed := make(map[cid.Cid][]string)
	for name, ids := range pins {
		for _, id := range ids {
			if names := needed[id]; len(names) == 0 || names[len(names)-1] != name {
				needed[id] = append(names, name)
			}
		}
	}
	for _, names := range needed {
		slices.Sort(names)
	}

	var (
		mu   sync.Mutex
		res  FsckResult
		seen = make(map[cid.Cid]bool, len(needed))
	)
	// report is called with mu held, or after every worker ended, so fn
	// sees one problem at a time.
	report := func(p Problem) {
		if fn != nil {
			fn(p)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	listErr := s.List(gctx, func(id cid.Cid) error {
		g.Go(func() error {
			buf := getBuf(0)
			defer putBuf(buf)
			data, err := getInto(gctx, s, id, buf)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				res.Chunks++
				res.Bytes += int64(len(data))
			case errors.Is(err, ErrCorrupt):
				res.Corrupt++
				report(Problem{CID: id, Kind: Corrupt, Pins: needed[id], Err: err})
			case errors.Is(err, ErrNotFound):
				// Deleted since List saw it; if a pin needs it, the
				// missing check below reports it.
				return nil
			default:
				return err
			}
			if _, ok := needed[id]; ok {
				seen[id] = true
			}
			return nil
		})
		return nil
	})
	if err := g.Wait(); err != nil {
		return res, fmt.Errorf("fsck: %w", err)
	}
	if listErr != nil {
		return res, fmt.Errorf("fsck: %w", listErr)
	}
	var unseen []cid.Cid
	for id := range needed {
		if !seen[id] {
			unseen = append(unseen, id)
		}
	}
	slices.SortFunc(unseen, func(a, b cid.Cid) int { return strings.Compare(a.KeyString(), b.KeyString()) })
	for _, id := range unseen {
		// A chunk stored after List passed its shard is not missing.
		ok, err := s.Has(ctx, id)
		if err != nil {
			return res, fmt.Errorf("fsck: %w", err)
		}
		if !ok {
			res.Missing++
			report(Problem{CID: id, Kind: Missing, Pins: needed[id]})
		}
	}
	return res, nil
}
