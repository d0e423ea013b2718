package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// seedTree is a release's files on this node's disk, as installed, and the
// manifest they were installed from: where each chunk of each file lies.
type seedTree struct {
	Dir      string
	Manifest *manifest.Manifest
}

// seedStore is what seeding needs of a chunk store.
type seedStore interface {
	store.Haser
	store.Putter
}

// seedResult counts what seed did.
type seedResult struct {
	Chunks int   // chunks taken from the trees into the store
	Bytes  int64 // their content bytes
	// Rejected counts byte ranges read that did not hash to their chunk,
	// or could not be read whole: files changed or cut since the install.
	Rejected int
}

// seedRange is one place in a tree that should hold a chunk m needs.
type seedRange struct {
	id   cid.Cid
	off  int64
	size int64
}

// seed puts into s every chunk of m that s lacks and that a file of one of
// trees holds, as casync's seeds do: for each such chunk, it reads the file's
// byte range that the tree's manifest gives, checks it against the chunk's
// CID and stores it. Files are what the node installed and may since have
// been changed by a hook or an operator: a range that does not hash to its
// CID, or that the file no longer has, is skipped (and tried at the chunk's
// next place, if any), never stored. Paths are checked as extract checks
// them, and read through an os.Root of the tree, so neither a manifest path
// nor a symlink in the tree reaches outside it; only regular files are
// read. placed, if set, is handed each chunk stored, as a fetch hands the
// chunks it stores to an Assembly. seed fails only when ctx ends or the
// store fails.
func seed(ctx context.Context, s seedStore, m *manifest.Manifest, trees []seedTree, placed func(cid.Cid, []byte)) (seedResult, error) {
	var res seedResult
	need := map[cid.Cid]bool{}
	for _, id := range m.ChunkIDs() {
		ok, err := s.Has(ctx, id)
		if err != nil {
			return res, err
		}
		if !ok {
			need[id] = true
		}
	}
	var buf []byte
	for _, t := range trees {
		if len(need) == 0 {
			break
		}
		if err := seedFromTree(ctx, s, t, need, &buf, placed, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// seedFromTree seeds from one tree what need lists, removing from need each
// chunk it stores.
func seedFromTree(ctx context.Context, s seedStore, t seedTree, need map[cid.Cid]bool, buf *[]byte, placed func(cid.Cid, []byte), res *seedResult) error {
	// The tree itself must be a directory, not a symlink to one.
	if fi, err := os.Lstat(t.Dir); err != nil || !fi.IsDir() {
		return nil
	}
	root, err := os.OpenRoot(t.Dir)
	if err != nil {
		return nil
	}
	defer root.Close()
	for _, f := range t.Manifest.Files {
		ranges := neededRanges(f, need)
		if len(ranges) == 0 {
			continue
		}
		if err := seedFromFile(ctx, s, root, f.Path, ranges, need, buf, placed, res); err != nil {
			return err
		}
		if len(need) == 0 {
			return nil
		}
	}
	return nil
}

// neededRanges returns the places in file f of the chunks need lists, in
// file order.
func neededRanges(f manifest.File, need map[cid.Cid]bool) []seedRange {
	var out []seedRange
	var off int64
	for _, c := range f.Chunks {
		if need[c.CID] && c.Size > 0 && c.Size <= manifest.MaxChunkSize {
			out = append(out, seedRange{id: c.CID, off: off, size: int64(c.Size)})
		}
		off += int64(c.Size)
	}
	return out
}

// seedFromFile reads ranges of the file at path p of root and stores each
// that hashes to its chunk and is still needed.
func seedFromFile(ctx context.Context, s seedStore, root *os.Root, p string, ranges []seedRange, need map[cid.Cid]bool, buf *[]byte, placed func(cid.Cid, []byte), res *seedResult) error {
	rel, err := store.LocalPath(p)
	if err != nil {
		return nil // a manifest the catalog holds was validated; skip what is not
	}
	f, err := openRegular(root, rel)
	if err != nil {
		res.Rejected += len(ranges)
		return nil
	}
	defer f.Close()
	for _, r := range ranges {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !need[r.id] {
			continue // stored from an earlier place
		}
		if int64(cap(*buf)) < r.size {
			*buf = make([]byte, r.size)
		}
		data := (*buf)[:r.size]
		if _, err := f.ReadAt(data, r.off); err != nil {
			res.Rejected++
			if errors.Is(err, io.EOF) {
				continue // the file was cut: a later range may still be whole
			}
			return nil // an unreadable file: the peers have the rest
		}
		// Put hashes data and refuses it if it is not the chunk: a
		// range the file no longer holds as installed.
		if err := s.Put(ctx, r.id, data); err != nil {
			if errors.Is(err, store.ErrMismatch) {
				res.Rejected++
				continue
			}
			return fmt.Errorf("seed chunk %s from %s: %w", r.id, p, err)
		}
		delete(need, r.id)
		res.Chunks++
		res.Bytes += r.size
		if placed != nil {
			placed(r.id, data)
		}
	}
	return nil
}

// openRegular opens rel under root for reading if it is a regular file: not
// a symlink (even one that stays inside the tree), a directory, a device or
// a FIFO, which could block the read. The root keeps the path, and any
// directory symlink on it, inside the tree.
func openRegular(root *os.Root, rel string) (*os.File, error) {
	fi, err := root.Lstat(rel)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file: %w", rel, fs.ErrInvalid)
	}
	// O_NONBLOCK: a FIFO put in its place since the Lstat must not block
	// the open; the Stat below refuses it.
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file: %w", rel, fs.ErrInvalid)
	}
	return f, nil
}

// seedFromInstalled stores the chunks of m that the store lacks and that
// the files of the releases installed here hold, and of the retired ones
// whose files the node keeps (see seed). Each chunk stored is handed to the
// download's assembly, if any, and to stored. Seeding only saves fetching:
// what fails is logged, and the fetch gets the rest from peers.
func (n *node) seedFromInstalled(ctx context.Context, m *manifest.Manifest, asm *store.Assembly, stored func(cid.Cid)) seedResult {
	trees := n.installedTrees()
	if len(trees) == 0 {
		return seedResult{}
	}
	res, err := seed(ctx, n.peer.Store, m, trees, func(id cid.Cid, content []byte) {
		if asm != nil {
			asm.Place(id, content)
		}
		stored(id)
	})
	if err != nil && ctx.Err() == nil {
		n.log.Warn("agent: taking chunks from installed files failed; the peers send the rest", "release", m.Name, "err", err)
	}
	if res.Rejected > 0 {
		n.log.Info("agent: installed files changed since their install were not taken as seeds", "release", m.Name, "ranges", res.Rejected)
	}
	return res
}

// installedTrees returns the files of the releases installed here, and of
// the retired ones not uninstalled, newest first, each with the manifest
// it was installed from. A release whose envelope is now of another version
// (fetched, not yet installed) is left out: its manifest does not describe
// its files.
func (n *node) installedTrees() []seedTree {
	var recs []InstallRecord
	for _, b := range [][]byte{bucketInstalled, bucketRetired} {
		rs, err := n.db.records(b)
		if err != nil {
			n.log.Warn("agent: read install records", "err", err)
			return nil
		}
		recs = append(recs, rs...)
	}
	slices.SortFunc(recs, func(a, b InstallRecord) int { return cmp.Compare(b.InstalledAt.UnixNano(), a.InstalledAt.UnixNano()) })
	var trees []seedTree
	for _, rec := range recs {
		if !rec.UninstalledAt.IsZero() {
			continue
		}
		r, err := n.peer.Catalog.Get(rec.Name)
		if err != nil || r.CID.String() != rec.CID {
			continue
		}
		trees = append(trees, seedTree{Dir: filepath.Join(n.cfg.DataDir, installedDir, r.Name), Manifest: r.Manifest})
	}
	return trees
}
