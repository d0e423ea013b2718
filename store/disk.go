package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/patchctl/patchctl/manifest"
)

// Disk is a Store in a directory:
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
// A Disk is safe for concurrent use, and concurrency is how Put gets fast:
// the writes of concurrent Puts are made durable together (see groupCommit).
type Disk struct {
	chunks, pins string // directories

	// locks serialize, per chunk, Put's check-and-refresh of a present
	// chunk with GC's check-and-delete, so a chunk GC has judged stale
	// cannot be refreshed by Put and deleted right after.
	locks [256]sync.Mutex

	commit groupCommit

	mu    sync.Mutex
	dirty map[string]struct{} // directories with renames not yet fsynced
}

var (
	_ Store  = (*Disk)(nil)
	_ Syncer = (*Disk)(nil)
)

const (
	chunkExt   = ".zst"
	tempPrefix = ".tmp-"
	dirPerm    = 0o750

	// staleTempAge is how old a temporary file must be before GC takes it
	// for a leftover of a crashed writer rather than a write in progress.
	staleTempAge = time.Hour
)

// OpenDisk opens the store in dir, creating its directories if needed.
func OpenDisk(dir string) (*Disk, error) {
	d := &Disk{
		chunks: filepath.Join(dir, "chunks"),
		pins:   filepath.Join(dir, "pins"),
		dirty:  make(map[string]struct{}),
	}
	for _, p := range []string{d.chunks, d.pins} {
		if err := os.MkdirAll(p, dirPerm); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	d.commit.volatile = inMemory(d.chunks)
	// The directories themselves must survive a crash before any chunk
	// renamed into them can.
	for _, p := range []string{dir, d.chunks, d.pins} {
		if err := syncDir(p); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	return d, nil
}

func (d *Disk) shardDir(name string) string {
	return filepath.Join(d.chunks, name[len(name)-2:])
}

// chunkNames is the multibase base32 of CIDv1 strings: path spells a
// chunk's name as id.String() does, without its allocations, because the
// have service asks after every chunk of a release for each subscriber.
var chunkNames = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func (d *Disk) path(id cid.Cid) string {
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

func (d *Disk) lock(id cid.Cid) *sync.Mutex {
	k := id.KeyString()
	return &d.locks[k[len(k)-1]]
}

// Put stores data under id. Once it returns nil the chunk file is complete
// under its name (never torn); after the next Sync its name survives a crash
// too. Putting a chunk that is present only refreshes its modification time,
// without checking the stored bytes: after Get reports ErrCorrupt, Delete the
// chunk and Put it again.
func (d *Disk) Put(ctx context.Context, id cid.Cid, data []byte) error {
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
func (d *Disk) PutFrame(ctx context.Context, id cid.Cid, frame []byte) error {
	return d.PutFrameContent(ctx, id, frame, nil)
}

// PutFrameContent is PutFrame that hands the content it verified to use, if
// set, once the chunk is stored.
func (d *Disk) PutFrameContent(ctx context.Context, id cid.Cid, frame []byte, use func(cid.Cid, []byte)) error {
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

// verify checks that data can be a chunk and hashes to id, translating
// manifest's errors into this package's.
func verify(id cid.Cid, data []byte) error {
	if err := manifest.CheckChunkID(id); err != nil {
		return err
	}
	// Get would refuse to decode it.
	if len(data) > manifest.MaxChunkSize {
		return fmt.Errorf("chunk %s is %d bytes, more than %d: %w", id, len(data), manifest.MaxChunkSize, manifest.ErrTooLarge)
	}
	if manifest.VerifyChunk(id, data) != nil {
		return fmt.Errorf("chunk %s: %w", id, ErrMismatch)
	}
	return nil
}

// checkFrame decodes frame into *buf, a pooled buffer it may grow, and
// checks that the content is id's. The content it returns lives in *buf.
func checkFrame(buf *[]byte, id cid.Cid, frame []byte) ([]byte, error) {
	if err := manifest.CheckChunkID(id); err != nil {
		return nil, err
	}
	data, err := DecodeFrame((*buf)[:0], frame, manifest.MaxChunkSize)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	*buf = data // keep a buffer DecodeFrame grew
	return data, verify(id, data)
}

// refresh sets the modification time of a present chunk to now, so that a
// concurrent GC keeps it. It reports whether the chunk is present.
func (d *Disk) refresh(id cid.Cid, p string) (bool, error) {
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
func (d *Disk) write(id cid.Cid, p string, frame []byte) error {
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
func (d *Disk) writeTemp(id cid.Cid, p string, frame []byte) (string, error) {
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

func (d *Disk) markDirty(dir string) {
	d.mu.Lock()
	d.dirty[dir] = struct{}{}
	d.mu.Unlock()
}

// Sync makes the names of every chunk Put, PutFrame or Delete wrote before it
// durable, by fsyncing the directories they changed. Callers batch: many
// concurrent Puts, then one Sync (before, say, recording a download as
// complete), instead of a directory fsync per chunk.
func (d *Disk) Sync(ctx context.Context) error {
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
func (d *Disk) remark(dirs map[string]struct{}) {
	d.mu.Lock()
	for dir := range dirs {
		d.dirty[dir] = struct{}{}
	}
	d.mu.Unlock()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	return syncFile(f)
}

// syncFile fsyncs and closes f, returning the first error.
func syncFile(f *os.File) error {
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Get returns the verified content of a chunk.
func (d *Disk) Get(ctx context.Context, id cid.Cid) ([]byte, error) {
	return d.appendChunk(ctx, id, nil)
}

// appendChunk appends the verified content of a chunk to dst.
func (d *Disk) appendChunk(ctx context.Context, id cid.Cid, dst []byte) ([]byte, error) {
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

// decodeChunk appends the content of a stored frame to dst and verifies it.
func decodeChunk(dst []byte, id cid.Cid, frame []byte) ([]byte, error) {
	out, err := DecodeFrame(dst, frame, manifest.MaxChunkSize)
	if err != nil {
		return dst, fmt.Errorf("chunk %s: %w", id, err)
	}
	if manifest.VerifyChunk(id, out[len(dst):]) != nil {
		return dst, fmt.Errorf("chunk %s: stored content does not hash to its ID: %w", id, ErrCorrupt)
	}
	return out, nil
}

// GetFrame returns the stored frame of a chunk, unverified.
func (d *Disk) GetFrame(ctx context.Context, id cid.Cid) ([]byte, error) {
	return d.AppendFrame(ctx, id, nil)
}

// AppendFrame appends the stored frame of a chunk to dst, unverified.
func (d *Disk) AppendFrame(ctx context.Context, id cid.Cid, dst []byte) ([]byte, error) {
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
func (d *Disk) readFrame(id cid.Cid) (*[]byte, error) {
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
func (d *Disk) Has(ctx context.Context, id cid.Cid) (bool, error) {
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
func (d *Disk) Stat(ctx context.Context, id cid.Cid) (Info, error) {
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
func (d *Disk) Delete(ctx context.Context, id cid.Cid) error {
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
func (d *Disk) deleteStale(ctx context.Context, id cid.Cid, cutoff time.Time) (freed int64, deleted bool, err error) {
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
func (d *Disk) List(ctx context.Context, fn func(cid.Cid) error) error {
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

// chunkName parses a directory entry of a shard as a chunk file: a regular
// file named by the canonical string of a chunk ID, in the right shard.
func chunkName(shard string, e fs.DirEntry) (cid.Cid, bool) {
	name, ok := strings.CutSuffix(e.Name(), chunkExt)
	if !ok || !e.Type().IsRegular() || !strings.HasSuffix(name, shard) {
		return cid.Undef, false
	}
	id, err := manifest.ParseChunkID(name)
	if err != nil || id.String() != name {
		return cid.Undef, false
	}
	return id, true
}

// removeStaleTemps removes temporary files older than staleTempAge before
// now: the leftovers of writers that crashed between create and rename.
func (d *Disk) removeStaleTemps(ctx context.Context, now time.Time) (int, error) {
	dirs := []string{d.pins}
	shards, err := os.ReadDir(d.chunks)
	if err != nil {
		return 0, fmt.Errorf("remove stale temporary files: %w", err)
	}
	for _, s := range shards {
		if s.IsDir() {
			dirs = append(dirs, filepath.Join(d.chunks, s.Name()))
		}
	}
	cutoff := now.Add(-staleTempAge)
	removed := 0
	for _, dir := range dirs {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return removed, fmt.Errorf("remove stale temporary files: %w", err)
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), tempPrefix) || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if err != nil || fi.ModTime().After(cutoff) {
				continue // gone already, or possibly a write in progress
			}
			if err := os.Remove(filepath.Join(dir, e.Name())); err == nil {
				removed++
			} else if !errors.Is(err, fs.ErrNotExist) {
				return removed, fmt.Errorf("remove stale temporary files: %w", err)
			}
		}
	}
	return removed, nil
}

// Pin records ids under name, atomically replacing name's previous pin.
// The pin is durable when Pin returns.
func (d *Disk) Pin(ctx context.Context, name string, ids []cid.Cid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkPinName(name); err != nil {
		return err
	}
	var b bytes.Buffer
	for _, id := range ids {
		if err := manifest.CheckChunkID(id); err != nil {
			return fmt.Errorf("pin %s: %w", name, err)
		}
		b.WriteString(id.String())
		b.WriteByte('\n')
	}
	f, err := os.CreateTemp(d.pins, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("pin %s: %w", name, err)
	}
	tmp := f.Name()
	_, err = f.Write(b.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(d.pins, name))
	}
	if err == nil {
		err = syncDir(d.pins)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pin %s: %w", name, err)
	}
	return nil
}

// Unpin removes name's pin, durably.
func (d *Disk) Unpin(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkPinName(name); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(d.pins, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = syncDir(d.pins)
	}
	if err != nil {
		return fmt.Errorf("unpin %s: %w", name, err)
	}
	return nil
}

// Pins reads every pin. A pin file that cannot be parsed fails the whole
// call with ErrCorrupt: GC must never run on a partial view of the pins.
func (d *Disk) Pins(ctx context.Context) (map[string][]cid.Cid, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(d.pins)
	if err != nil {
		return nil, fmt.Errorf("read pins: %w", err)
	}
	pins := make(map[string][]cid.Cid, len(entries))
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue // temporary files
		}
		if checkPinName(name) != nil || !e.Type().IsRegular() {
			return nil, fmt.Errorf("pins: %q is not a pin file: %w", name, ErrCorrupt)
		}
		ids, err := readPin(filepath.Join(d.pins, name))
		if err != nil {
			return nil, fmt.Errorf("pin %s: %w", name, err)
		}
		pins[name] = ids
	}
	return pins, nil
}

func readPin(p string) ([]cid.Cid, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ids := []cid.Cid{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, err := manifest.ParseChunkID(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("line %d: %v: %w", len(ids)+1, err, ErrCorrupt)
		}
		ids = append(ids, id)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return ids, nil
}

// checkPinName accepts release names (see manifest.ParsePackName), which are
// safe as file names: no separators, no leading dot.
func checkPinName(name string) error {
	if _, err := manifest.ParsePackName(name); err != nil {
		return fmt.Errorf("pin name: %w", err)
	}
	return nil
}
