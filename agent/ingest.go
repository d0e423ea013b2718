package agent

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
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// ChunkAdder is what publishing needs of a chunk store: Add hashes the bytes
// itself, so the publisher hashes each chunk once, not once to name it and
// again to have Put check the name.
type ChunkAdder interface {
	Add(ctx context.Context, data []byte) (store.Added, error)
}

// Source is one file to publish: where it is on disk and the path it gets
// in the release.
type Source struct {
	Local string      // path on this machine
	Path  string      // path in the release, slash-separated
	Mode  fs.FileMode // permission bits
	Size  int64       // size when collected, for progress
	// Cleared are permission bits the file had that the release does not
	// carry: write for everyone, which an installed file must not keep.
	Cleared fs.FileMode
	// seen is the file as it was collected, to tell a file that changes
	// while it is published.
	seen fileState
}

// fileState is what tells whether a file changed: its size, modification
// and status change times.
type fileState struct {
	size         int64
	mtime, ctime time.Time
}

func stateOf(fi fs.FileInfo) fileState {
	st := fileState{size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ctime = time.Unix(sys.Ctim.Sec, sys.Ctim.Nsec)
	}
	return st
}

// ErrFileChanged means a file changed while it was being published: what
// was read may be a state that never existed on disk.
var ErrFileChanged = errors.New("file changed while publishing; publish again once it is written")

// CollectSources turns command-line paths into sources: a file is recorded
// under its base name, a directory's regular files under their paths inside
// it. A release carries regular files only: a symbolic link, which could
// point outside the install directory, a special file and an empty
// directory are refused with what to do instead. Write permission for
// everyone is cleared (see Source.Cleared).
func CollectSources(paths []string) ([]Source, error) {
	var out []Source
	source := func(local, path string, fi fs.FileInfo) Source {
		mode := fi.Mode().Perm()
		return Source{Local: local, Path: path, Mode: mode &^ 0o002, Size: fi.Size(), Cleared: mode & 0o002, seen: stateOf(fi)}
	}
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		switch {
		case fi.Mode().IsRegular():
			out = append(out, source(p, filepath.Base(p), fi))
		case fi.IsDir():
			err := filepath.WalkDir(p, func(local string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				info, err := d.Info()
				if err != nil {
					return err
				}
				if d.IsDir() {
					entries, err := os.ReadDir(local)
					if err == nil && len(entries) == 0 {
						return fmt.Errorf("%s is an empty directory: a release carries files only; put a file in it (such as .keep) or remove it: %w", local, manifest.ErrInvalid)
					}
					return err
				}
				if err := unpublishable(local, info); err != nil {
					return err
				}
				rel, err := filepath.Rel(p, local)
				if err != nil {
					return err
				}
				out = append(out, source(local, filepath.ToSlash(rel), info))
				return nil
			})
			if err != nil {
				return nil, err
			}
		default:
			if err := unpublishable(p, fi); err != nil {
				return nil, err
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("nothing to publish: no regular files in the given paths")
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	for _, s := range out {
		if err := manifest.ValidatePath(s.Path); err != nil {
			return nil, fmt.Errorf("%s: %w", s.Local, err)
		}
	}
	return out, nil
}

// unpublishable says why a file that is not regular cannot be published.
func unpublishable(local string, fi fs.FileInfo) error {
	switch {
	case fi.Mode().IsRegular():
		return nil
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link: a release carries regular files only, and a link could point outside the install directory; copy its target in or remove it: %w", local, manifest.ErrInvalid)
	}
	return fmt.Errorf("%s is a %s: only regular files and directories can be published: %w", local, fi.Mode().Type(), manifest.ErrInvalid)
}

// IngestStats counts what ingesting stored.
type IngestStats struct {
	TotalBytes  int64 // bytes of all files
	Chunks      int   // distinct chunks
	StoredBytes int64 // stored (compressed) bytes of the distinct chunks
	NewBytes    int64 // stored bytes written by this ingest: what dedupe did not save
	// NewFileBytes are the file bytes in chunks this ingest stored first;
	// ReusedBytes those in chunks already stored, by an earlier publish or
	// earlier in this one. They add up to TotalBytes.
	NewFileBytes, ReusedBytes int64
	// Archives counts the files in which archive-aware chunking found
	// members; Members the members, MembersChanged those whose data was
	// (at least in part) new. HeaderBytes are the bytes of all member
	// headers, NewHeaderBytes those of headers stored anew.
	Archives, Members, MembersChanged int
	HeaderBytes, NewHeaderBytes       int64
	// MemberStats lists every member with what it cost, in order, when
	// IngestOptions.Explain asked for it (at most maxExplainMembers).
	MemberStats []MemberStat
}

// MemberStat is what one archive member cost a publish.
type MemberStat struct {
	File                 string // the file's path in the release
	Name                 string // the member's path in the archive
	HeaderBytes, NewHead int64  // bytes of its header(s), and of those stored anew
	DataBytes, NewData   int64  // bytes of its data, and of those stored anew
}

// maxExplainMembers bounds IngestStats.MemberStats, and the members whose
// cost is tracked at all.
const maxExplainMembers = 1 << 20

// IngestOptions tune Ingest; the zero value is ready to use.
type IngestOptions struct {
	// Chunking says how files are cut; default
	// manifest.DefaultArchiveChunkParams.
	Chunking manifest.ChunkParams
	// Workers is how many chunks are on their way into the store at once;
	// default 16 per CPU. Creating a file blocks while the file system
	// commits its journal (which a flush of the store's write batch
	// forces), and the cores should go on compressing meanwhile
	// (docs/decisions/0013).
	Workers  int
	Progress func(bytes int64) // called with bytes read so far
	// Explain fills IngestStats.MemberStats.
	Explain bool
}

// ingestJob is one chunk on its way through the pipeline. Its buffer goes back
// to the pool when both the worker and the file hasher are done with it.
type ingestJob struct {
	file, index int
	member      int // index in the member list, or -1
	kind        manifest.ChunkKind
	data        []byte
	buf         *[]byte
	users       atomic.Int32
}

// chunker is what Ingest needs of Chunker and ArchiveChunker.
type chunker interface {
	Next() ([]byte, error)
}

// newChunker returns the chunker for p.Method, and a function describing
// its last chunk (nil if it knows nothing of archives).
func newChunker(r io.Reader, p manifest.ChunkParams) (chunker, func() manifest.ChunkInfo, error) {
	switch p.Method {
	case manifest.ChunkingCDC:
		return manifest.NewChunker(r, p), nil, nil
	case manifest.ChunkingArchive:
		c := manifest.NewArchiveChunker(r, p)
		return c, c.Info, nil
	}
	return nil, nil, fmt.Errorf("chunking method %q: this build chunks with %q or %q only: %w", p.Method, manifest.ChunkingCDC, manifest.ChunkingArchive, manifest.ErrInvalid)
}

// Ingest chunks, hashes, compresses and stores sources, and returns their
// manifest entries. One goroutine reads and chunks, one computes whole-file
// digests, and Workers add chunks to the store in parallel; memory is bounded
// by the number of chunks in flight, whatever the file sizes.
func Ingest(ctx context.Context, s ChunkAdder, sources []Source, opts IngestOptions) ([]manifest.File, IngestStats, error) {
	params := opts.Chunking
	if params == (manifest.ChunkParams{}) {
		params = manifest.DefaultArchiveChunkParams
	}
	if err := params.Validate(); err != nil {
		return nil, IngestStats{}, err
	}
	if _, _, err := newChunker(nil, params); err != nil {
		return nil, IngestStats{}, err
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = 16 * runtime.GOMAXPROCS(0)
	}
	pool := sync.Pool{New: func() any { b := make([]byte, params.Max); return &b }}
	release := func(j *ingestJob) {
		if j.users.Add(-1) == 0 {
			pool.Put(j.buf)
		}
	}

	files := make([]manifest.File, len(sources))
	refs := make([][]manifest.ChunkRef, len(sources))
	var refsMu sync.Mutex
	// seen[id] is true once id's new bytes were counted: two workers may
	// add the same chunk at once, and either may be the one that wrote it.
	seen := make(map[cid.Cid]bool)
	var stats IngestStats
	// members lists the archive members found, guarded by refsMu: the
	// reader appends, the workers add up what each member cost.
	var members []MemberStat

	g, ctx := errgroup.WithContext(ctx)
	jobs := make(chan *ingestJob, workers)
	hashJobs := make(chan *ingestJob, workers)

	// Reader: chunk every file in order.
	g.Go(func() error {
		defer close(jobs)
		defer close(hashJobs)
		var read int64
		for fi, src := range sources {
			f, err := os.Open(src.Local)
			if err != nil {
				return err
			}
			files[fi] = manifest.File{Path: src.Path, Mode: uint32(src.Mode.Perm())}
			c, info, _ := newChunker(f, params)
			lastMember, member := 0, -1
			for idx := 0; ; idx++ {
				chunk, err := c.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					f.Close()
					return fmt.Errorf("read %s: %w", src.Local, err)
				}
				buf := pool.Get().(*[]byte)
				j := &ingestJob{file: fi, index: idx, member: -1, data: (*buf)[:copy(*buf, chunk)], buf: buf}
				if info != nil {
					if in := info(); in.Kind != manifest.ChunkOther {
						if in.Member != lastMember {
							lastMember, member = in.Member, -1
							refsMu.Lock()
							if len(members) < maxExplainMembers {
								members = append(members, MemberStat{File: src.Path, Name: in.Name})
								member = len(members) - 1
							}
							refsMu.Unlock()
						}
						j.member, j.kind = member, in.Kind
					}
				}
				j.users.Store(2)
				select {
				case jobs <- j:
				case <-ctx.Done():
					f.Close()
					return ctx.Err()
				}
				select {
				case hashJobs <- j:
				case <-ctx.Done():
					f.Close()
					return ctx.Err()
				}
				files[fi].Size += int64(len(j.data))
				read += int64(len(j.data))
				if opts.Progress != nil {
					opts.Progress(read)
				}
			}
			// Files are read once, and must not have changed meanwhile:
			// the manifest would sign a state that never was on disk.
			after, err := f.Stat()
			f.Close()
			if err != nil {
				return err
			}
			if now := stateOf(after); !src.seen.mtime.IsZero() && (now != src.seen || files[fi].Size != now.size) {
				return fmt.Errorf("%s: %w", src.Local, ErrFileChanged)
			}
			hashJobs <- &ingestJob{file: fi, index: -1}
		}
		return nil
	})

	// File hasher: whole-file SHA-256 in chunk order, beside the workers.
	g.Go(func() error {
		var h hash.Hash = sha256.New()
		for j := range hashJobs {
			if j.index < 0 {
				files[j.file].SHA256 = hex.EncodeToString(h.Sum(nil))
				h.Reset()
				continue
			}
			h.Write(j.data)
			release(j)
		}
		return nil
	})

	// Workers: hash, compress, store.
	for range workers {
		g.Go(func() error {
			for j := range jobs {
				added, err := s.Add(ctx, j.data)
				size := len(j.data)
				release(j)
				if err != nil {
					return fmt.Errorf("store chunk of %s: %w", sources[j.file].Local, err)
				}
				refsMu.Lock()
				r := refs[j.file]
				for len(r) <= j.index {
					r = append(r, manifest.ChunkRef{})
				}
				r[j.index] = manifest.ChunkRef{CID: added.ID, Size: uint32(size)}
				refs[j.file] = r
				counted, ok := seen[added.ID]
				if !ok {
					stats.Chunks++
					stats.StoredBytes += added.StoredSize
				}
				first := added.New && !counted
				var fresh int64
				if first {
					stats.NewBytes += added.StoredSize
					stats.NewFileBytes += int64(size)
					fresh = int64(size)
				} else {
					stats.ReusedBytes += int64(size)
				}
				seen[added.ID] = counted || added.New
				if j.member >= 0 {
					m := &members[j.member]
					if j.kind == manifest.ChunkHeader {
						m.HeaderBytes += int64(size)
						m.NewHead += fresh
					} else {
						m.DataBytes += int64(size)
						m.NewData += fresh
					}
				}
				refsMu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, IngestStats{}, err
	}
	for i := range files {
		files[i].Chunks = refs[i]
		if files[i].Chunks == nil {
			files[i].Chunks = []manifest.ChunkRef{}
		}
		stats.TotalBytes += files[i].Size
	}
	stats.Members = len(members)
	for i, m := range members {
		if i == 0 || m.File != members[i-1].File {
			stats.Archives++
		}
		if m.NewData > 0 {
			stats.MembersChanged++
		}
		stats.HeaderBytes += m.HeaderBytes
		stats.NewHeaderBytes += m.NewHead
	}
	if opts.Explain {
		stats.MemberStats = members
	}
	return files, stats, nil
}
