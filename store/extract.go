package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
)

// ExtractOptions tune Extract. The zero value is valid.
type ExtractOptions struct {
	// Progress, if set, is called after every chunk written with the
	// number of bytes written so far, for a progress bar. It is called
	// from one goroutine at a time.
	Progress func(written int64)
	// Assembly, if set, holds files of this release staged while its
	// chunks arrived (NewAssembly with the same manifest, beside dir):
	// Extract builds the release in the assembly's directory and reads the
	// chunks it placed from there rather than from g. Every file's digest
	// is checked all the same. The assembly is used up, whatever the
	// outcome; after a failure, Extract without it starts afresh.
	Assembly *Assembly
}

// Extract assembles the files of a release from their chunks into dir,
// which must not exist or be an empty directory. It builds the release in a
// staging directory beside dir (".<base>.staging-*") and renames it to dir
// only when every file is complete, has its digest and mode, and is synced:
// dir either does not change or holds the whole release. On failure the
// staging directory is removed, and a bad or missing chunk fails with an
// error naming the file and the chunk that wraps ErrCorrupt or ErrNotFound.
//
// Chunks are fetched a few at a time ahead of the writer, so g must be safe
// for concurrent use; memory does not grow with file size.
func Extract(ctx context.Context, g Getter, m *manifest.Manifest, dir string, opts ExtractOptions) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("extract %s: %w", m.Name, err)
		}
	}()
	defer opts.Assembly.Discard() // after a failure before take
	dir = filepath.Clean(dir)
	existed, err := checkTarget(dir)
	if err != nil {
		return err
	}
	parent, base := filepath.Dir(dir), filepath.Base(dir)
	var st staged
	if opts.Assembly != nil {
		if st, err = opts.Assembly.take(m); err != nil {
			return err
		}
	} else {
		st.dir, err = os.MkdirTemp(parent, "."+base+".staging-*")
		if err != nil {
			return err
		}
		// A Root confines every file operation to the staging directory,
		// even if something swapped a directory inside it for a symlink.
		if st.root, err = os.OpenRoot(st.dir); err != nil {
			os.RemoveAll(st.dir)
			return err
		}
	}
	staging, root := st.dir, st.root
	defer func() {
		if err != nil {
			os.RemoveAll(staging)
		}
	}()
	defer root.Close()

	fetchCtx, cancel := context.WithCancel(ctx)
	eg, fetchCtx := errgroup.WithContext(fetchCtx)
	chunks := fetchInOrder(fetchCtx, eg, g, m, st.placed, max(4, 2*runtime.GOMAXPROCS(0)))
	w := extractor{root: root, chunks: chunks, placed: st.placed, progress: opts.Progress, dirs: map[string]bool{".": true}}
	for i := range m.Files {
		created := st.created != nil && st.created[i]
		if err = w.writeFile(fetchCtx, &m.Files[i], created); err != nil {
			break
		}
	}
	// Stop the fetchers and wait for them: no goroutine outlives Extract.
	cancel()
	if werr := eg.Wait(); err == nil {
		err = werr
	}
	if err == nil {
		err = ctx.Err() // cancelled after the last chunk was written
	}
	if err != nil {
		return err
	}
	// MkdirTemp made the staging directory private; the release directory
	// gets the mode of the directories inside it.
	if err := os.Chmod(staging, 0o755); err != nil {
		return err
	}
	for d := range w.dirs {
		if err := syncRootDir(root, d); err != nil {
			return err
		}
	}
	// os.Rename refuses to replace even an empty directory (rename(2)
	// would not), so an empty dir is removed first; Remove fails if
	// something appeared in it meanwhile.
	if existed {
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("replace empty %s: %w", dir, err)
		}
	}
	if err := os.Rename(staging, dir); err != nil {
		return fmt.Errorf("move the release into place: %w", err)
	}
	return syncDir(parent)
}

// checkTarget accepts a dir that does not exist or is an empty directory
// (not a symlink to one), and reports whether it exists.
func checkTarget(dir string) (bool, error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("%s exists and is not a directory: %w", dir, fs.ErrExist)
	}
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err == nil {
		return false, fmt.Errorf("%s is not empty: %w", dir, fs.ErrExist)
	} else if err != io.EOF {
		return false, err
	}
	return true, nil
}

// fetched is a chunk being fetched: data and err are set before done closes.
// data may live in buf, a pooled buffer the writer returns once it wrote
// data.
type fetched struct {
	done chan struct{}
	buf  *[]byte
	data []byte
	err  error
}

// fetchInOrder gets the chunks of every file of m in order, but those in
// placed, up to window ahead of the reader of the returned channel, each in
// its own goroutine of eg. The channel is closed after the last chunk, or
// early when ctx ends.
func fetchInOrder(ctx context.Context, eg *errgroup.Group, g Getter, m *manifest.Manifest, placed map[cid.Cid]bool, window int) <-chan *fetched {
	out := make(chan *fetched, window)
	eg.Go(func() error {
		defer close(out)
		for _, f := range m.Files {
			for _, c := range f.Chunks {
				if placed[c.CID] {
					continue
				}
				p := &fetched{done: make(chan struct{})}
				select {
				case out <- p:
				case <-ctx.Done():
					return nil
				}
				eg.Go(func() error {
					p.buf = getBuf(0)
					p.data, p.err = getInto(ctx, g, c.CID, p.buf)
					close(p.done)
					return nil // the writer reports errors, naming the file
				})
			}
		}
		return nil
	})
	return out
}

type extractor struct {
	root     *os.Root
	chunks   <-chan *fetched
	placed   map[cid.Cid]bool // chunks already in the staged files
	progress func(int64)
	written  int64
	dirs     map[string]bool // directories created, to fsync
}

// writeFile writes f, or completes it if an Assembly created it, and
// checks its digest.
func (w *extractor) writeFile(ctx context.Context, f *manifest.File, created bool) (err error) {
	rel, err := LocalPath(f.Path)
	if err != nil {
		return err
	}
	for d := filepath.Dir(rel); !w.dirs[d]; d = filepath.Dir(d) {
		w.dirs[d] = true
	}
	if d := filepath.Dir(rel); d != "." {
		if err := w.root.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
	}
	// O_EXCL: never write through anything already at the path, such as a
	// symlink, nor twice to one file. A file an Assembly created is this
	// release's own, in a directory only this process writes.
	flag := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if created {
		flag = os.O_RDWR
	}
	out, err := w.root.OpenFile(rel, flag, 0o600)
	if err != nil {
		return fmt.Errorf("file %s: %w", f.Path, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("file %s: %w", f.Path, cerr)
		}
	}()
	h := sha256.New()
	var size int64
	for i, c := range f.Chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		if w.placed[c.CID] {
			err = readPlaced(out, size, int(c.Size), h)
		} else {
			err = w.writeFetched(ctx, out, size, int(c.Size), h)
		}
		if err != nil {
			return fmt.Errorf("file %s: chunk %d of %d (%s): %w", f.Path, i+1, len(f.Chunks), c.CID, err)
		}
		size += int64(c.Size)
		w.written += int64(c.Size)
		if w.progress != nil {
			w.progress(w.written)
		}
	}
	if sum := hex.EncodeToString(h.Sum(nil)); size != f.Size || sum != f.SHA256 {
		return fmt.Errorf("file %s: assembled %d bytes with SHA-256 %s, the manifest says %d bytes with %s: %w", f.Path, size, sum, f.Size, f.SHA256, ErrCorrupt)
	}
	// Chmod rather than the create mode, which the umask would narrow.
	if err := out.Chmod(fs.FileMode(f.Mode) & fs.ModePerm); err != nil {
		return fmt.Errorf("file %s: %w", f.Path, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("file %s: %w", f.Path, err)
	}
	return nil
}

// writeFetched writes the next fetched chunk, of n bytes, at off of f and
// hashes it into h.
func (w *extractor) writeFetched(ctx context.Context, f *os.File, off int64, n int, h hash.Hash) error {
	var p *fetched
	select {
	case p = <-w.chunks:
	case <-ctx.Done():
		return ctx.Err()
	}
	if p == nil {
		return ctx.Err() // the fetcher stopped: ctx ended
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if p.err != nil {
		return p.err
	}
	defer putBuf(p.buf)
	if len(p.data) != n {
		return fmt.Errorf("%d bytes, the manifest says %d", len(p.data), n)
	}
	if _, err := f.WriteAt(p.data, off); err != nil {
		return err
	}
	h.Write(p.data)
	return nil
}

// readPlaced hashes into h the n bytes at off of a file an Assembly staged.
// The file's digest, checked after its last chunk, is what vouches for them.
func readPlaced(f *os.File, off int64, n int, h hash.Hash) error {
	buf := getBuf(n)
	defer putBuf(buf)
	if _, err := f.ReadAt(*buf, off); err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("the staged file ends early: %w", ErrCorrupt)
		}
		return err
	}
	h.Write(*buf)
	return nil
}

// LocalPath turns a manifest path into a relative OS path that stays inside
// its root. manifest.Validate has checked it already; checking again here is
// cheap defence in depth against a caller that skipped validation.
func LocalPath(p string) (string, error) {
	if err := manifest.ValidatePath(p); err != nil {
		return "", err
	}
	rel := filepath.FromSlash(p)
	if !filepath.IsLocal(rel) {
		return "", fmt.Errorf("path %q leaves the release directory: %w", p, manifest.ErrInvalid)
	}
	return rel, nil
}

func syncRootDir(root *os.Root, dir string) error {
	f, err := root.Open(dir)
	if err != nil {
		return err
	}
	return syncFile(f)
}
