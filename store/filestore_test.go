package store

// The file-per-chunk store that packs replaced (docs/decisions/0040), kept
// for tests: it writes data dirs of the old layout for the conversion test,
// and it is the baseline the benchmarks measure packs against in the same
// run. It flushes with syncfs(2), as it did.

import (
	"context"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/patchctl/patchctl/manifest"
)

// fileStore is a Store in a directory:
//
//	<dir>/chunks/<shard>/<cid>.zst   one frame per chunk (see EncodeFrame)
//	<dir>/pins/<release name>        the chunk IDs a release pins, one a line
//
// The shard is the last two characters of the CID string, which spread
// chunks over 256 directories (the leading characters of a CIDv1 are the same
// for every chunk). Files are written to a temporary name in the same
// directory (".tmp-*", never a valid chunk name), made durable, and renamed, so a
// chunk file under its name is never torn, whatever happens to the writer.
//
// A fileStore is safe for concurrent use, and concurrency is how Put gets fast:
// the writes of concurrent Puts are made durable together (see fileCommit).
type fileStore struct {
	chunks string // directory
	pinDir

	// locks serialize, per chunk, Put's check-and-refresh of a present
	// chunk with GC's check-and-delete, so a chunk GC has judged stale
	// cannot be refreshed by Put and deleted right after.
	locks [256]sync.Mutex

	commit fileCommit

	mu    sync.Mutex
	dirty map[string]struct{} // directories with renames not yet fsynced
}

var (
	_ Store  = (*fileStore)(nil)
	_ Syncer = (*fileStore)(nil)
)

// openFileStore opens the store in dir, creating its directories if needed.
func openFileStore(dir string) (*fileStore, error) {
	d := &fileStore{
		chunks: filepath.Join(dir, "chunks"),
		pinDir: pinDir{filepath.Join(dir, "pins")},
		dirty:  make(map[string]struct{}),
	}
	for _, p := range []string{d.chunks, d.pinDir.dir} {
		if err := os.MkdirAll(p, dirPerm); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	d.commit.volatile = inMemory(d.chunks)
	// The directories themselves must survive a crash before any chunk
	// renamed into them can.
	for _, p := range []string{dir, d.chunks, d.pinDir.dir} {
		if err := syncDir(p); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	return d, nil
}

func (d *fileStore) shardDir(name string) string {
	return filepath.Join(d.chunks, name[len(name)-2:])
}

// chunkNames is the multibase base32 of CIDv1 strings: path spells a
// chunk's name as id.String() does, without its allocations, because the
// have service asks after every chunk of a release for each subscriber.
var chunkNames = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func (d *fileStore) path(id cid.Cid) string {
	var key [64]byte
	k := id.KeyString()
	if len(k) > len(key) || id.Version() != 1 {
		name := id.String()
		return filepath.Join(d.shardDir(name), name+chunkExt)
	}
	var nameBuf [128]byte
	name := chunkNames.AppendEncode(append(nameBuf[:0], 'b'), key[:copy(key[:], k)])
	var pathBuf [256]byte
	p := append(pathBuf[:0], d.chunks...)
	p = append(p, filepath.Separator)
	p = append(p, name[len(name)-2:]...)
	p = append(p, filepath.Separator)
	p = append(p, name...)
	p = append(p, chunkExt...)
	return string(p)
}

func (d *fileStore) lock(id cid.Cid) *sync.Mutex {
	k := id.KeyString()
	return &d.locks[k[len(k)-1]]
}

// Put stores data under id. Once it returns nil the chunk file is complete
// under its name (never torn); after the next Sync its name survives a crash
// too. Putting a chunk that is present only refreshes its modification time,
// without checking the stored bytes: after Get reports ErrCorrupt, Delete the
// chunk and Put it again.
func (d *fileStore) Put(ctx context.Context, id cid.Cid, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := verify(id, data); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	p := d.path(id)
	if ok, err := d.refresh(id, p); ok || err != nil {
		return err
	}
	buf := getBuf(MaxFrameSize(len(data)))
	defer putBuf(buf)
	*buf = EncodeFrame((*buf)[:0], data)
	return d.write(id, p, *buf)
}

// PutFrame stores frame under id after checking that it decodes, within
// manifest.MaxChunkSize, to id's content. It stores the frame as received.
func (d *fileStore) PutFrame(ctx context.Context, id cid.Cid, frame []byte) error {
	return d.PutFrameContent(ctx, id, frame, nil)
}

// PutFrameContent is PutFrame that hands the content it verified to use, if
// set, once the chunk is stored.
func (d *fileStore) PutFrameContent(ctx context.Context, id cid.Cid, frame []byte, use func(cid.Cid, []byte)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	buf := getBuf(0)
	defer putBuf(buf)
	content, err := checkFrame(buf, id, frame)
	if err != nil {
		return fmt.Errorf("put: %w", err)
	}
	p := d.path(id)
	if ok, err := d.refresh(id, p); err != nil {
		return err
	} else if !ok {
		if err := d.write(id, p, frame); err != nil {
			return err
		}
	}
	if use != nil {
		use(id, content)
	}
	return nil
}

// refresh sets the modification time of a present chunk to now, so that a
// concurrent GC keeps it. It reports whether the chunk is present.
func (d *fileStore) refresh(id cid.Cid, p string) (bool, error) {
	mu := d.lock(id)
	mu.Lock()
	defer mu.Unlock()
	now := time.Now()
	err := os.Chtimes(p, now, now)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("put %s: %w", id, err)
	}
}

// write stores frame under p atomically: it writes a temporary file in the
// same directory and has the group commit make it durable and rename it into
// place. Two writers of the same chunk both rename complete files with the
// same content, so the last rename winning is harmless.
func (d *fileStore) write(id cid.Cid, p string, frame []byte) error {
	tmp, err := d.writeTemp(id, p, frame)
	if err != nil {
		return err
	}
	if err := d.commit.commitNow(d.chunks, tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", id, err)
	}
	d.markDirty(filepath.Dir(p))
	return nil
}

// writeTemp writes frame to a new temporary file in p's directory, without
// making it durable, and returns its path.
func (d *fileStore) writeTemp(id cid.Cid, p string, frame []byte) (string, error) {
	dir := filepath.Dir(p)
	f, err := os.CreateTemp(dir, tempPrefix+"*")
	if errors.Is(err, fs.ErrNotExist) {
		// First chunk of this shard: create the shard lazily, and remember
		// that the chunks directory now has an entry to make durable.
		if err = os.Mkdir(dir, dirPerm); err == nil || errors.Is(err, fs.ErrExist) {
			d.markDirty(d.chunks)
			f, err = os.CreateTemp(dir, tempPrefix+"*")
		}
	}
	if err != nil {
		return "", fmt.Errorf("put %s: %w", id, err)
	}
	tmp := f.Name()
	_, err = f.Write(frame)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("put %s: %w", id, err)
	}
	return tmp, nil
}

func (d *fileStore) markDirty(dir string) {
	d.mu.Lock()
	d.dirty[dir] = struct{}{}
	d.mu.Unlock()
}

// Sync makes the names of every chunk Put, PutFrame or Delete wrote before it
// durable, by fsyncing the directories they changed. Callers batch: many
// concurrent Puts, then one Sync (before, say, recording a download as
// complete), instead of a directory fsync per chunk.
func (d *fileStore) Sync(ctx context.Context) error {
	d.mu.Lock()
	dirty := d.dirty
	d.dirty = make(map[string]struct{})
	d.mu.Unlock()
	if d.commit.volatile {
		return nil
	}
	// One syncfs makes every directory entry durable at once: with more
	// than a few directories it beats an fsync each, and a publish dirties
	// all 256 shards (docs/decisions/0011).
	if len(dirty) > 8 {
		if err := syncfs(d.chunks); err != nil {
			d.remark(dirty)
			return fmt.Errorf("sync store: %w", err)
		}
		return nil
	}
	// The chunks directory last: it lists new shards, whose own entries
	// are synced first.
	var chunksDir bool
	for dir := range dirty {
		if dir == d.chunks {
			chunksDir = true
			continue
		}
		if err := ctx.Err(); err != nil {
			d.remark(dirty)
			return err
		}
		if err := syncDir(dir); err != nil {
			d.remark(dirty)
			return fmt.Errorf("sync store: %w", err)
		}
	}
	if chunksDir {
		if err := syncDir(d.chunks); err != nil {
			d.remark(dirty)
			return fmt.Errorf("sync store: %w", err)
		}
	}
	return nil
}

// remark puts directories back in the dirty set after a failed Sync, so the
// next Sync tries them again.
func (d *fileStore) remark(dirs map[string]struct{}) {
	d.mu.Lock()
	for dir := range dirs {
		d.dirty[dir] = struct{}{}
	}
	d.mu.Unlock()
}

// Get returns the verified content of a chunk.
func (d *fileStore) Get(ctx context.Context, id cid.Cid) ([]byte, error) {
	return d.appendChunk(ctx, id, nil)
}

// appendChunk appends the verified content of a chunk to dst.
func (d *fileStore) appendChunk(ctx context.Context, id cid.Cid, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return dst, fmt.Errorf("get: %w", err)
	}
	buf, err := d.readFrame(id)
	if err != nil {
		return dst, err
	}
	defer putBuf(buf)
	return decodeChunk(dst, id, *buf)
}

// GetFrame returns the stored frame of a chunk, unverified.
func (d *fileStore) GetFrame(ctx context.Context, id cid.Cid) ([]byte, error) {
	return d.AppendFrame(ctx, id, nil)
}

// AppendFrame appends the stored frame of a chunk to dst, unverified.
func (d *fileStore) AppendFrame(ctx context.Context, id cid.Cid, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return dst, fmt.Errorf("get: %w", err)
	}
	buf, err := d.readFrame(id)
	if err != nil {
		return dst, err
	}
	dst = append(dst, *buf...)
	putBuf(buf)
	return dst, nil
}

// readFrame reads a chunk file into a pooled buffer the caller returns with
// putBuf. A file larger than any frame of a chunk is refused before it is
// read.
func (d *fileStore) readFrame(id cid.Cid) (*[]byte, error) {
	f, err := os.Open(d.path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("chunk %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	limit := MaxFrameSize(manifest.MaxChunkSize)
	if fi.Size() > int64(limit) {
		return nil, fmt.Errorf("chunk %s: file of %d bytes is larger than any chunk frame: %w", id, fi.Size(), ErrCorrupt)
	}
	buf := getBuf(int(fi.Size()))
	if _, err := io.ReadFull(f, *buf); err != nil {
		putBuf(buf)
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	return buf, nil
}

// Has reports whether a chunk file exists.
func (d *fileStore) Has(ctx context.Context, id cid.Cid) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return false, fmt.Errorf("has: %w", err)
	}
	// unix.Stat rather than Stat: no FileInfo, no wrapped error for an
	// absent chunk, on a path the have service takes for every chunk of a
	// release for each subscriber.
	var st unix.Stat_t
	for {
		err := unix.Stat(d.path(id), &st)
		switch {
		case err == nil:
			return true, nil
		case err == unix.ENOENT:
			return false, nil
		case err != unix.EINTR:
			return false, fmt.Errorf("chunk %s: %w", id, &fs.PathError{Op: "stat", Path: d.path(id), Err: err})
		}
	}
}

// Stat returns the size and modification time of a chunk file.
func (d *fileStore) Stat(ctx context.Context, id cid.Cid) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return Info{}, fmt.Errorf("stat: %w", err)
	}
	fi, err := os.Stat(d.path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("chunk %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Info{}, fmt.Errorf("chunk %s: %w", id, err)
	}
	return Info{StoredSize: fi.Size(), Modified: fi.ModTime()}, nil
}

// Delete removes a chunk file. The removal is durable after the next Sync.
func (d *fileStore) Delete(ctx context.Context, id cid.Cid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	p := d.path(id)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete chunk %s: %w", id, err)
	}
	d.markDirty(filepath.Dir(p))
	return nil
}

// deleteStale removes a chunk unless it was modified after cutoff, holding
// the chunk's lock so that a concurrent Put of the chunk either refreshes it
// before the check or writes it anew after the removal.
func (d *fileStore) deleteStale(ctx context.Context, id cid.Cid, cutoff time.Time) (freed int64, deleted bool, err error) {
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	mu := d.lock(id)
	mu.Lock()
	defer mu.Unlock()
	p := d.path(id)
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("chunk %s: %w", id, err)
	}
	if fi.ModTime().After(cutoff) {
		return 0, false, nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, false, fmt.Errorf("delete chunk %s: %w", id, err)
	}
	d.markDirty(filepath.Dir(p))
	return fi.Size(), true, nil
}

// List calls fn for every chunk file whose name is a valid chunk ID in its
// own shard; temporary files and anything else are skipped. It reads a
// whole shard directory before calling fn for its chunks, so fn may delete
// them.
func (d *fileStore) List(ctx context.Context, fn func(cid.Cid) error) error {
	shards, err := os.ReadDir(d.chunks)
	if err != nil {
		return fmt.Errorf("list chunks: %w", err)
	}
	for _, shard := range shards {
		if !shard.IsDir() || len(shard.Name()) != 2 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		entries, err := os.ReadDir(filepath.Join(d.chunks, shard.Name()))
		if err != nil {
			return fmt.Errorf("list chunks: %w", err)
		}
		for _, e := range entries {
			id, ok := chunkName(shard.Name(), e)
			if !ok {
				continue
			}
			if err := fn(id); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeStaleTemps removes temporary files older than staleTempAge before
// now: the leftovers of writers that crashed between create and rename.
func (d *fileStore) removeStaleTemps(ctx context.Context, now time.Time) (int, error) {
	dirs := []string{d.pinDir.dir}
	shards, err := os.ReadDir(d.chunks)
	if err != nil {
		return 0, fmt.Errorf("remove stale temporary files: %w", err)
	}
	for _, s := range shards {
		if s.IsDir() {
			dirs = append(dirs, filepath.Join(d.chunks, s.Name()))
		}
	}
	removed := 0
	for _, dir := range dirs {
		n, err := removeStaleTempsIn(ctx, dir, now)
		removed += n
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// fileCommit makes new chunk files durable in groups before they get their
// names. A writer writes its temporary file without fsync and queues it; a
// leader takes everything queued, flushes it all with one syncfs(2), renames
// each file into place and tells its writer. Put leads at once if no flush is
// running (the files of writers that arrive meanwhile go in the next flush);
// a fileBatch queues without waiting and leads only once a group's worth of bytes
// is queued, so publishing overlaps compression with write-back.
//
// One syncfs per group costs far less than an fsync per file, each of which
// forces a journal commit (docs/decisions/0010). syncfs also flushes other
// dirty data of the file system, which is fine for a machine that mostly
// moves packs; the guarantee is fsync's: no chunk is renamed to its name
// before its bytes are on disk.
type fileCommit struct {
	mu      sync.Mutex
	queue   []*fileCommitEntry
	queued  int64 // bytes in queue
	waiting int   // entries in queue whose writer waits for them
	forced  bool  // a flush of everything queued was requested
	leading bool
	// volatile skips the flush on a memory file system, where it makes
	// nothing durable: tmpfs loses every file at power-off however often
	// it is synced. On a shared tmpfs, such as a testnet's hundreds of
	// stores, each syncfs also walks every other store's inodes.
	volatile bool
}

// fileGroupBytes is how much a fileBatch lets queue before one of its writers
// flushes it: large enough that a flush is mostly sequential write-back,
// small enough that write-back overlaps the work of producing the next group.
const fileGroupBytes = 32 << 20

type fileCommitEntry struct {
	tmp, final, dir string
	size            int64
	waiter          bool
	done            chan error // buffered: the leader never blocks on it
}

func (g *fileCommit) enqueue(e *fileCommitEntry) {
	g.mu.Lock()
	g.queue = append(g.queue, e)
	g.queued += e.size
	if e.waiter {
		g.waiting++
	}
	g.mu.Unlock()
}

// lead flushes the queue unless another leader is at it, and goes on while
// what has queued meanwhile should be flushed now: a group's worth, a writer
// waiting for its file, or a flush requested with force. A request made while
// another leader flushes is kept for that leader's next round. fsDir is any
// directory of the file system.
func (g *fileCommit) lead(fsDir string, force bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if force {
		g.forced = true
	}
	if g.leading {
		return
	}
	g.leading = true
	for len(g.queue) > 0 && (g.forced || g.waiting > 0 || g.queued >= fileGroupBytes) {
		batch := g.queue
		g.queue, g.queued, g.waiting, g.forced = nil, 0, 0, false
		g.mu.Unlock()
		var err error
		if !g.volatile {
			err = syncfs(fsDir)
		}
		for _, e := range batch {
			if err != nil {
				e.done <- err
				continue
			}
			e.done <- os.Rename(e.tmp, e.final)
		}
		g.mu.Lock()
	}
	g.leading = false
}

// commitNow makes tmp durable and renames it to final, sharing the flush with
// every other file queued meanwhile. Either this call leads, or the running
// leader sees a waiting writer when its flush ends and takes tmp next.
func (g *fileCommit) commitNow(fsDir, tmp, final string) error {
	e := &fileCommitEntry{tmp: tmp, final: final, waiter: true, done: make(chan error, 1)}
	g.enqueue(e)
	g.lead(fsDir, false)
	return <-e.done
}

func syncfs(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

// fileBatch adds many chunks to a fileStore and settles their durability together:
// Add writes each chunk and returns without waiting for the disk, and Commit
// returns once every chunk added is durable under its name. Chunks added but
// not committed when a process dies are never visible under their names;
// GC removes their temporary files. A fileBatch is safe for concurrent use.
type fileBatch struct {
	d       *fileStore
	mu      sync.Mutex
	entries []*fileCommitEntry
	added   map[cid.Cid]Added
}

// NewBatch starts a batch of writes.
func (d *fileStore) NewBatch() *fileBatch {
	return &fileBatch{d: d, added: make(map[cid.Cid]Added)}
}

var _ Adder = (*fileBatch)(nil)

// Add stores data under its chunk ID, durably once Commit returns. A chunk
// already stored is only refreshed, as by Put.
func (b *fileBatch) Add(ctx context.Context, data []byte) (Added, error) {
	if err := ctx.Err(); err != nil {
		return Added{}, err
	}
	if len(data) > manifest.MaxChunkSize {
		return Added{}, fmt.Errorf("add: chunk of %d bytes: %w", len(data), manifest.ErrTooLarge)
	}
	id := manifest.ChunkID(data)
	b.mu.Lock()
	prev, ok := b.added[id]
	b.mu.Unlock()
	if ok {
		prev.New = false
		return prev, nil
	}
	p := b.d.path(id)
	if added, present, err := b.d.addPresent(id, p); present || err != nil {
		return added, err
	}
	buf := getBuf(MaxFrameSize(len(data)))
	*buf = EncodeFrame((*buf)[:0], data)
	tmp, err := b.d.writeTemp(id, p, *buf)
	size := int64(len(*buf))
	putBuf(buf)
	if err != nil {
		return Added{}, err
	}
	e := &fileCommitEntry{tmp: tmp, final: p, dir: filepath.Dir(p), size: size, done: make(chan error, 1)}
	added := Added{ID: id, StoredSize: size, New: true}
	b.mu.Lock()
	b.entries = append(b.entries, e)
	b.added[id] = added
	b.mu.Unlock()
	b.d.commit.enqueue(e)
	b.d.commit.lead(b.d.chunks, false)
	return added, nil
}

// Commit waits until every chunk added is durable under its name, and
// returns the first error any of them met.
func (b *fileBatch) Commit(ctx context.Context) error {
	b.d.commit.lead(b.d.chunks, true)
	b.mu.Lock()
	entries := b.entries
	b.entries = nil
	b.mu.Unlock()
	var first error
	for _, e := range entries {
		var err error
		select {
		case err = <-e.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err != nil {
			os.Remove(e.tmp)
			if first == nil {
				first = fmt.Errorf("commit %s: %w", e.final, err)
			}
			continue
		}
		b.d.markDirty(e.dir)
	}
	return first
}

// Add stores data under its chunk ID, with Put's guarantees.
func (d *fileStore) Add(ctx context.Context, data []byte) (Added, error) {
	if err := ctx.Err(); err != nil {
		return Added{}, err
	}
	id := manifest.ChunkID(data)
	p := d.path(id)
	if added, present, err := d.addPresent(id, p); present || err != nil {
		return added, err
	}
	buf := getBuf(MaxFrameSize(len(data)))
	defer putBuf(buf)
	*buf = EncodeFrame((*buf)[:0], data)
	if err := d.write(id, p, *buf); err != nil {
		return Added{}, err
	}
	return Added{ID: id, StoredSize: int64(len(*buf)), New: true}, nil
}

// addPresent refreshes the chunk id stored at p, if it is, and reports what
// adding it again did.
func (d *fileStore) addPresent(id cid.Cid, p string) (Added, bool, error) {
	present, err := d.refresh(id, p)
	if !present || err != nil {
		return Added{}, false, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return Added{}, false, fmt.Errorf("add %s: %w", id, err)
	}
	return Added{ID: id, StoredSize: fi.Size()}, true, nil
}
