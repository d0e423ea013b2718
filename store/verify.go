package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"

	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
)

// VerifyOptions tune VerifyRelease. The zero value is valid.
type VerifyOptions struct {
	// Progress, if set, is called with the bytes checked so far.
	Progress func(checked int64)
	// Problem, if set, is called for every bad chunk (once per chunk) and
	// for every file whose assembled digest differs from the manifest's
	// (with an undefined CID). Calls come from one goroutine at a time.
	Problem func(Problem)
}

// VerifyResult sums up a release check.
type VerifyResult struct {
	Chunks   int   // distinct chunks checked good
	Bytes    int64 // file bytes checked
	Problems int
}

// VerifyRelease checks that every chunk of m is stored and hashes to its ID,
// and that every file assembled from its chunks has the manifest's size and
// SHA-256, without writing anything. It goes on past problems so that one run
// reports all of them; the error is for failures to check at all.
func VerifyRelease(ctx context.Context, g Getter, m *manifest.Manifest, opts VerifyOptions) (VerifyResult, error) {
	var res VerifyResult
	report := func(p Problem) {
		res.Problems++
		if opts.Problem != nil {
			opts.Problem(p)
		}
	}
	fetchCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	eg, fetchCtx := errgroup.WithContext(fetchCtx)
	chunks := fetchInOrder(fetchCtx, eg, g, m, nil, max(4, 2*runtime.GOMAXPROCS(0)))
	good := make(map[cid.Cid]bool)
	bad := make(map[cid.Cid]bool)
	var checked int64
	for _, f := range m.Files {
		h := sha256.New()
		complete := true
		for _, c := range f.Chunks {
			p, ok := <-chunks
			if !ok {
				return res, ctx.Err()
			}
			select {
			case <-p.done:
			case <-ctx.Done():
				return res, ctx.Err()
			}
			err := p.err
			if err == nil && len(p.data) != int(c.Size) {
				err = fmt.Errorf("chunk %s has %d bytes, the manifest says %d: %w", c.CID, len(p.data), c.Size, ErrCorrupt)
			}
			if err != nil {
				if ctx.Err() != nil {
					return res, ctx.Err()
				}
				complete = false
				if !bad[c.CID] {
					bad[c.CID] = true
					kind := Corrupt
					if errors.Is(err, ErrNotFound) {
						kind = Missing
					}
					report(Problem{CID: c.CID, Kind: kind, Pins: []string{m.Name}, Err: fmt.Errorf("file %s: %w", f.Path, err)})
				}
				continue
			}
			h.Write(p.data)
			if !good[c.CID] {
				good[c.CID] = true
				res.Chunks++
			}
			checked += int64(len(p.data))
			if opts.Progress != nil {
				opts.Progress(checked)
			}
		}
		if complete {
			if sum := hex.EncodeToString(h.Sum(nil)); sum != f.SHA256 {
				report(Problem{Kind: Corrupt, Pins: []string{m.Name}, Err: fmt.Errorf("file %s: assembled SHA-256 %s, the manifest says %s: %w", f.Path, sum, f.SHA256, ErrCorrupt)})
			}
		}
	}
	res.Bytes = checked
	cancel()
	if err := eg.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return res, err
	}
	return res, ctx.Err()
}
