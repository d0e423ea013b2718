package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/patchctl/patchctl/manifest"
)

// Disk is a Store in a directory:
//
//	<dir>/packs/<16 hex digits>.pack   chunk frames appended to pack files (pack.go)
//	<dir>/packs/lock                   flock(2)ed by the process that has the store open
//	<dir>/pins/<release name>          the chunk IDs a release pins, one a line
//
// Chunks are appended to one active pack at a time; at PackSize it is sealed
// with an index of its records, and the next begins. Small chunks share disk
// blocks, and making chunks durable is one fdatasync(2) of the active pack,
// shared by every writer waiting (Sync): never a flush of the file system
// (docs/decisions/0040, 0041). An index of every chunk lives in memory,
// rebuilt at open from the sealed packs' indexes and a scan of the packs
// that were being written.
//
// Every read checks the frame against its xxhash64, and Get checks the
// content against the CID: a chunk that fails either is quarantined, removed
// from the store so that it is fetched again, and reported (OnCorrupt,
// Quarantined). Deletes append tombstones; GC repacks packs that are mostly
// dead, the active one included (compact.go). A data dir of the
// file-per-chunk layout, <dir>/chunks/<xy>/<cid>.zst, is converted when it
// is opened (convert.go).
//
// A Disk is safe for concurrent use. One process at a time may have a data
// dir's store open for writing (ErrLocked); opening it again in the same
// process returns the same Disk. OpenDiskReadOnly opens a Disk of its own
// beside the writer, in any process, that takes no lock, writes nothing and
// quarantines nothing (readonly.go).
type Disk struct {
	dir, packsDir string
	pinDir
	opts     DiskOptions
	volatile bool // on tmpfs: no flush (docs/decisions/0012)
	lockFile *os.File
	key      string // in openDisks
	refs     int    // opens not yet closed; guarded by openDisks.mu

	// locks serialize, per chunk, every change of its record: a put, a
	// refresh, a delete, a quarantine and a repack's copy.
	locks [256]sync.Mutex

	mu    sync.RWMutex // guards index, packs, and the packs' sealed, size and live
	index map[cid.Cid]entry
	packs map[uint64]*pack

	amu       sync.Mutex // appends to the active pack
	active    *pack
	nextPack  uint64
	dirty     map[*pack]struct{} // packs written since the last flush
	dirDirty  bool               // a pack was created since the last flush
	unflushed int64
	writeGen  uint64

	seq   atomic.Uint64 // the last seq given to a record
	flush flusher

	gcMu       sync.Mutex // one compaction at a time
	bg         sync.WaitGroup
	bgFlushing atomic.Bool
	compacting atomic.Bool
	closed     atomic.Bool

	quarantined atomic.Int64
	recovery    Recovery

	// A read-only Disk (readonly.go) loads its index again when a read
	// finds its record bad; loadGen counts the loads (guarded by mu), and
	// stamps are the pack files as the last load found them (guarded by
	// reloadMu, which serializes reloads and Close).
	readOnly bool
	reloadMu sync.Mutex
	loadGen  uint64
	stamps   map[string]fileStamp
}

// DiskOptions tune a Disk. The zero value is valid.
type DiskOptions struct {
	// PackSize is the size at which the active pack is sealed and the next
	// started; zero means DefaultPackSize.
	PackSize int64
	// OnCorrupt, if set, is called for every chunk quarantined: a read
	// found that its stored bytes do not match their checksum or CID, and
	// removed the chunk, which Has then reports absent so that it is
	// fetched again. err wraps ErrCorrupt and names the chunk.
	OnCorrupt func(id cid.Cid, err error)
}

// DefaultPackSize: large enough that a store of a few GiB is a few dozen
// files, small enough that repacking a mostly dead pack copies little
// (docs/decisions/0040).
const DefaultPackSize = 64 << 20

const (
	// flushBytes is how much may be written before a background flush
	// starts, so that write-back overlaps the work of producing the next
	// chunks and Sync finds little left to do.
	flushBytes = 32 << 20
	// touchEvery is how stale a chunk's modification time must be before a
	// Put of the present chunk records the refresh in the pack; GC's grace
	// is an hour by default.
	touchEvery = time.Minute
)

// Recovery is what opening a store found and repaired.
type Recovery struct {
	// TempsRemoved counts repack outputs a killed GC left unfinished.
	TempsRemoved int
	// PacksReplaced counts packs a finished repack had replaced but a kill
	// kept from being removed.
	PacksReplaced int
	// BytesCut counts bytes after the last whole record of packs being
	// written when their writer died: records never acknowledged.
	BytesCut int64
	// TornRecords counts records whose frames do not match their
	// checksums, left by a power loss before the writer's Sync.
	TornRecords int
	// Converted counts chunk files of the file-per-chunk layout moved into
	// packs; CorruptFiles, those found corrupt and removed.
	Converted, CorruptFiles int
}

// entry is where a live chunk is and what it is.
type entry struct {
	pack  uint64
	off   int64  // of the frame in the pack
	size  uint32 // of the frame
	sum   uint64 // xxhash64 of the frame
	seq   uint64
	mtime int64 // unix nanoseconds
}

// pack is one pack file.
type pack struct {
	id   uint64
	path string
	f    *os.File
	// size is the bytes written: guarded by Disk.amu while the pack is
	// active and by Disk.mu once it is sealed.
	size   int64
	sealed bool
	live   int64 // bytes of the records the index points to, frames included
	// recs are the records of a pack not sealed yet, for its index;
	// guarded by Disk.amu.
	recs    []rec
	removed atomic.Bool // by compaction: its file is closed
}

var (
	_ Store              = (*Disk)(nil)
	_ Syncer             = (*Disk)(nil)
	_ FrameAppender      = (*Disk)(nil)
	_ ContentFramePutter = (*Disk)(nil)
	_ Adder              = (*Disk)(nil)
)

// openDisks are the stores open in this process, by the real path of their
// directory, so that a second open shares the first's state instead of
// failing on the lock or writing the same pack behind its back.
var openDisks = struct {
	sync.Mutex
	m map[string]*Disk
}{m: make(map[string]*Disk)}

// OpenDisk opens the store in dir with default options, creating it if
// needed.
func OpenDisk(dir string) (*Disk, error) {
	return OpenDiskWith(dir, DiskOptions{})
}

// OpenDiskWith opens the store in dir, creating it if needed, converting a
// store of the file-per-chunk layout, and repairing what a killed writer
// left (see Recovery). If this process has the store open already, it
// returns that Disk, whose options stay those of its first open; each open
// needs its Close.
func OpenDiskWith(dir string, opts DiskOptions) (*Disk, error) {
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	key, err := filepath.EvalSymlinks(dir)
	if err == nil {
		key, err = filepath.Abs(key)
	}
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	openDisks.Lock()
	defer openDisks.Unlock()
	if d, ok := openDisks.m[key]; ok {
		d.refs++
		return d, nil
	}
	d, err := openDisk(dir, opts)
	if err != nil {
		return nil, err
	}
	d.key, d.refs = key, 1
	openDisks.m[key] = d
	return d, nil
}

func openDisk(dir string, opts DiskOptions) (*Disk, error) {
	if opts.PackSize <= 0 {
		opts.PackSize = DefaultPackSize
	}
	d := &Disk{
		dir:      dir,
		packsDir: filepath.Join(dir, "packs"),
		pinDir:   pinDir{filepath.Join(dir, "pins")},
		opts:     opts,
		index:    make(map[cid.Cid]entry),
		packs:    make(map[uint64]*pack),
		dirty:    make(map[*pack]struct{}),
		nextPack: 1,
	}
	created := false
	for _, p := range []string{d.packsDir, d.pinDir.dir} {
		if _, err := os.Stat(p); err == nil {
			continue
		}
		if err := os.MkdirAll(p, dirPerm); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		created = true
	}
	lock, err := os.OpenFile(filepath.Join(d.packsDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("open store %s: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("open store: lock: %w", err)
	}
	d.lockFile = lock
	d.volatile = inMemory(d.packsDir)
	// The directories themselves must survive a crash before any pack
	// created in them can. Only new ones: an fsync waits for the journal,
	// which may be flushing other writes.
	for _, p := range []string{dir, d.packsDir, d.pinDir.dir} {
		if !created {
			break
		}
		if err := syncDir(p); err != nil {
			d.closeFiles()
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	if err := d.load(); err != nil {
		d.closeFiles()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	if err := d.convertFiles(context.Background()); err != nil {
		d.closeFiles()
		return nil, fmt.Errorf("open store %s: convert chunk files: %w", dir, err)
	}
	return d, nil
}

// Recovered tells what opening the store found and repaired; a read-only
// Disk repairs nothing.
func (d *Disk) Recovered() Recovery { return d.recovery }

// Quarantined counts the chunks quarantined since the store was opened.
func (d *Disk) Quarantined() int64 { return d.quarantined.Load() }

// Close makes every write durable and releases the store, once every open
// of it in this process is closed; a read-only Disk's Close releases its
// files. A closed Disk must not be used.
func (d *Disk) Close() error {
	if d.readOnly {
		d.reloadMu.Lock()
		defer d.reloadMu.Unlock()
		if !d.closed.Swap(true) {
			d.closeFiles()
		}
		return nil
	}
	openDisks.Lock()
	defer openDisks.Unlock()
	if d.refs == 0 {
		return nil // closed already
	}
	if d.refs--; d.refs > 0 {
		return nil
	}
	if openDisks.m[d.key] == d {
		delete(openDisks.m, d.key)
	}
	d.closed.Store(true)
	d.bg.Wait()
	err := d.Sync(context.Background())
	d.closeFiles()
	return err
}

func (d *Disk) closeFiles() {
	d.mu.Lock()
	for _, p := range d.packs {
		p.f.Close()
	}
	d.mu.Unlock()
	if d.lockFile != nil {
		d.lockFile.Close() // releases the flock
	}
}

func packName(id uint64) string { return fmt.Sprintf("%016x", id) }

// load reads every pack's index, or scans the packs that have none, and
// builds the index of chunks.
func (d *Disk) load() error {
	entries, err := os.ReadDir(d.packsDir)
	if err != nil {
		return err
	}
	recs := make(map[uint64][]rec)
	replaced := make(map[uint64]bool)
	var unsealed []*pack
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, packTemp) {
			// Unsealed repack output: the packs it copied are whole.
			if err := os.Remove(filepath.Join(d.packsDir, name)); err != nil {
				return err
			}
			d.recovery.TempsRemoved++
			continue
		}
		id, ok := packID(e)
		if !ok {
			continue
		}
		d.nextPack = max(d.nextPack, id+1)
		p := &pack{id: id, path: filepath.Join(d.packsDir, name)}
		if p.f, err = os.OpenFile(p.path, os.O_RDWR, 0); err != nil {
			return err
		}
		d.packs[id] = p
		fi, err := p.f.Stat()
		if err != nil {
			return err
		}
		p.size = fi.Size()
		idx, err := readIndex(p.f, p.size)
		if err == nil {
			p.sealed = true
			recs[id] = idx.recs
			for _, r := range idx.replaces {
				replaced[r] = true
			}
		} else {
			// No index, or a damaged one: the records themselves say
			// what the pack holds.
			unsealed = append(unsealed, p)
		}
	}
	for id := range replaced {
		if p, ok := d.packs[id]; ok {
			if err := d.removePackFile(p); err != nil {
				return err
			}
			delete(d.packs, id)
			delete(recs, id)
			d.recovery.PacksReplaced++
		}
	}
	slices.SortFunc(unsealed, func(a, b *pack) int { return compareUint(a.id, b.id) })
	for i, p := range unsealed {
		if replaced[p.id] {
			continue
		}
		res, err := scanPack(p.f, p.size)
		if err != nil {
			// Not even a pack header: a pack its creator never wrote.
			d.recovery.BytesCut += p.size
			res = scanResult{end: 0}
		}
		d.recovery.TornRecords += res.torn
		if res.end < p.size {
			d.recovery.BytesCut += p.size - res.end
			if err := p.f.Truncate(res.end); err != nil {
				return err
			}
			p.size = res.end
		}
		if res.end == 0 {
			if err := d.removePackFile(p); err != nil {
				return err
			}
			delete(d.packs, p.id)
			continue
		}
		recs[p.id] = res.recs
		p.recs = res.recs
		if i == len(unsealed)-1 {
			d.active = p // the newest goes on being written
			d.dirty[p] = struct{}{}
			continue
		}
		if err := d.seal(p); err != nil {
			return err
		}
	}
	return d.rebuild(recs)
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// rebuild builds the index from every pack's records (indexOf), then gives
// every dead chunk record a tombstone that names its pack, so that no
// tombstone that other packs' copies depend on is dropped while the record
// it killed is still on disk.
func (d *Disk) rebuild(recs map[uint64][]rec) error {
	index, maxSeq, tombs := indexOf(recs, d.packs)
	d.index = index
	d.seq.Store(maxSeq)
	for id, rs := range recs {
		for _, r := range rs {
			if r.typ != recChunk {
				continue
			}
			if e, ok := d.index[r.id]; ok && e.pack == id && e.seq == r.seq {
				continue
			}
			covered := false
			for _, t := range tombs[r.id] {
				if t.a == id && t.seq > r.seq {
					covered = true
					break
				}
			}
			if covered {
				continue
			}
			// seq+1 kills this record and no later one.
			t := rec{typ: recTomb, id: r.id, seq: r.seq + 1, time: time.Now().UnixNano(), a: id}
			if err := d.append(&t, nil, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// indexOf builds the index of chunks from the records of every pack in
// packs: a chunk is live in the record of its highest seq, unless a
// tombstone of a higher seq deleted it. It sets the packs' live bytes, and
// returns the highest seq and the tombstones by CID.
func indexOf(recs map[uint64][]rec, packs map[uint64]*pack) (map[cid.Cid]entry, uint64, map[cid.Cid][]rec) {
	n := 0
	for _, rs := range recs {
		n += len(rs)
	}
	index := make(map[cid.Cid]entry, n)
	var maxSeq uint64
	tombs := make(map[cid.Cid][]rec)
	touched := make(map[cid.Cid]int64)
	for id, rs := range recs {
		for _, r := range rs {
			maxSeq = max(maxSeq, r.seq)
			switch r.typ {
			case recChunk:
				if e, ok := index[r.id]; ok && e.seq >= r.seq {
					continue
				}
				index[r.id] = entry{pack: id, off: r.off, size: uint32(r.frameLen()), sum: r.frameSum(), seq: r.seq, mtime: r.time}
			case recTomb:
				tombs[r.id] = append(tombs[r.id], r)
			case recTouch:
				touched[r.id] = max(touched[r.id], r.time)
			}
		}
	}
	for id, ts := range tombs {
		e, ok := index[id]
		if !ok {
			continue
		}
		for _, t := range ts {
			if t.seq > e.seq {
				delete(index, id)
				break
			}
		}
	}
	for id, t := range touched {
		if e, ok := index[id]; ok && t > e.mtime {
			e.mtime = t
			index[id] = e
		}
	}
	for id, e := range index {
		packs[e.pack].live += recordSize(len(id.KeyString())) + int64(e.size)
	}
	return index, maxSeq, tombs
}

// lock returns the lock of id's records.
func (d *Disk) lock(id cid.Cid) *sync.Mutex {
	k := id.KeyString()
	return &d.locks[k[len(k)-1]]
}

func (d *Disk) lookup(id cid.Cid) (entry, bool) {
	d.mu.RLock()
	e, ok := d.index[id]
	d.mu.RUnlock()
	return e, ok
}

// activeLocked returns the pack being written, starting one if there is
// none. The caller holds amu.
func (d *Disk) activeLocked() (*pack, error) {
	if d.active != nil {
		return d.active, nil
	}
	id := d.nextPack
	p := &pack{id: id, path: filepath.Join(d.packsDir, packName(id)+packExt)}
	f, err := os.OpenFile(p.path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return nil, err
	}
	p.f = f
	hdr := appendPackHeader(nil, id)
	if _, err := f.WriteAt(hdr, 0); err != nil {
		f.Close()
		os.Remove(p.path)
		return nil, err
	}
	d.nextPack++
	p.size = int64(len(hdr))
	d.mu.Lock()
	d.packs[id] = p
	d.mu.Unlock()
	d.active = p
	d.dirty[p] = struct{}{}
	d.dirDirty = true
	d.writeGen++
	return p, nil
}

// append writes record r, followed by frame for a chunk record, at the end
// of the active pack, and calls then, if set, with the pack and where r's
// frame (a chunk) or r itself (any other record) starts. then runs before
// the pack can be sealed, and so before compaction can judge its records: a
// chunk's index entry made there is never missed. append does not wait for
// the disk: Sync does. Once it returns, the record survives the death of the
// process.
func (d *Disk) append(r *rec, frame []byte, then func(p *pack, off int64)) error {
	if d.readOnly {
		return ErrReadOnly // the write methods say so first; this is the backstop
	}
	var hb [frameHeader + fixedHeader + maxCIDLen + 4]byte
	hdr := appendRecord(hb[:0], r)
	d.amu.Lock()
	p, err := d.activeLocked()
	if err != nil {
		d.amu.Unlock()
		return err
	}
	start := p.size
	if err := writeAllAt(p.f, start, hdr, frame); err != nil {
		// Cut what was written, so the pack ends with a whole record.
		p.f.Truncate(start)
		d.amu.Unlock()
		return err
	}
	n := int64(len(hdr) + len(frame))
	p.size += n
	r.off = start
	if r.typ == recChunk {
		r.off = start + int64(len(hdr))
	}
	p.recs = append(p.recs, *r)
	if then != nil {
		then(p, r.off)
	}
	d.dirty[p] = struct{}{}
	d.writeGen++
	d.unflushed += n
	var full *pack
	if p.size >= d.opts.PackSize {
		full, d.active = p, nil
	}
	kick := d.unflushed >= flushBytes && !d.volatile
	d.amu.Unlock()
	if full != nil {
		// A failed seal leaves the pack to be scanned and sealed at the
		// next open; its records are whole.
		_ = d.seal(full)
	}
	if kick && d.bgFlushing.CompareAndSwap(false, true) {
		d.bg.Go(func() {
			defer d.bgFlushing.Store(false)
			_ = d.Sync(context.Background())
		})
	}
	return nil
}

// writeAllAt writes the parts one after another at off, as one write.
func writeAllAt(f *os.File, off int64, parts ...[]byte) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	iov := make([][]byte, 0, len(parts))
	for _, p := range parts {
		if len(p) > 0 {
			iov = append(iov, p)
		}
	}
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		for len(iov) > 0 {
			n, err := unix.Pwritev(int(fd), iov, off)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				werr = err
				return true
			}
			if n == 0 {
				werr = io.ErrShortWrite
				return true
			}
			off += int64(n)
			for n > 0 {
				if n >= len(iov[0]) {
					n -= len(iov[0])
					iov = iov[1:]
				} else {
					iov[0] = iov[0][n:]
					n = 0
				}
			}
		}
		return true
	})
	if err == nil {
		err = werr
	}
	return err
}

// seal ends a pack no longer written with its index and makes it durable.
func (d *Disk) seal(p *pack) error {
	idx := appendIndex(nil, p.recs, nil)
	if _, err := p.f.WriteAt(idx, p.size); err != nil {
		return fmt.Errorf("seal pack %s: %w", packName(p.id), err)
	}
	if !d.volatile {
		if err := unix.Fdatasync(int(p.f.Fd())); err != nil {
			return fmt.Errorf("seal pack %s: %w", packName(p.id), err)
		}
	}
	d.mu.Lock()
	p.size += int64(len(idx))
	p.sealed = true
	p.recs = nil
	d.mu.Unlock()
	return nil
}

// Put stores data under id. Once it returns nil the chunk is whole in a pack
// and survives the death of the process; after the next Sync it survives a
// power loss too. Putting a chunk that is present refreshes its modification
// time.
func (d *Disk) Put(ctx context.Context, id cid.Cid, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.writable("put"); err != nil {
		return err
	}
	if err := verify(id, data); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	if ok, err := d.refresh(id); ok || err != nil {
		return err
	}
	buf := getBuf(MaxFrameSize(len(data)))
	defer putBuf(buf)
	*buf = EncodeFrame((*buf)[:0], data)
	_, _, err := d.store(id, *buf, time.Now())
	return err
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
	if err := d.writable("put"); err != nil {
		return err
	}
	buf := getBuf(0)
	defer putBuf(buf)
	content, err := checkFrame(buf, id, frame)
	if err != nil {
		return fmt.Errorf("put: %w", err)
	}
	if _, _, err := d.store(id, frame, time.Now()); err != nil {
		return err
	}
	if use != nil {
		use(id, content)
	}
	return nil
}

// store appends frame as id's record unless id is present, which it
// refreshes instead. It reports whether it appended, and the stored frame's
// size.
func (d *Disk) store(id cid.Cid, frame []byte, mtime time.Time) (bool, int64, error) {
	mu := d.lock(id)
	mu.Lock()
	defer mu.Unlock()
	if e, ok := d.lookup(id); ok {
		return false, int64(e.size), d.refreshLocked(id, e)
	}
	r := rec{typ: recChunk, id: id, seq: d.seq.Add(1), time: mtime.UnixNano(), a: uint64(len(frame)), b: xxhash.Sum64(frame)}
	err := d.append(&r, frame, func(p *pack, off int64) {
		d.mu.Lock()
		d.index[id] = entry{pack: p.id, off: off, size: uint32(len(frame)), sum: r.b, seq: r.seq, mtime: r.time}
		p.live += recordSize(len(id.KeyString())) + int64(len(frame))
		d.mu.Unlock()
	})
	if err != nil {
		return false, 0, fmt.Errorf("put %s: %w", id, err)
	}
	return true, int64(len(frame)), nil
}

// refresh sets the modification time of a present chunk to now, so that GC
// keeps it. It reports whether the chunk is present.
func (d *Disk) refresh(id cid.Cid) (bool, error) {
	if _, ok := d.lookup(id); !ok {
		return false, nil
	}
	mu := d.lock(id)
	mu.Lock()
	defer mu.Unlock()
	e, ok := d.lookup(id)
	if !ok {
		return false, nil
	}
	return true, d.refreshLocked(id, e)
}

// refreshLocked refreshes e, id's entry, holding id's lock. Only a refresh
// of a time older than touchEvery is written to the pack: GC's grace is
// measured in hours, and a fetch puts the same chunk many times.
func (d *Disk) refreshLocked(id cid.Cid, e entry) error {
	now := time.Now().UnixNano()
	if now-e.mtime < int64(touchEvery) {
		return nil
	}
	r := rec{typ: recTouch, id: id, seq: d.seq.Add(1), time: now}
	if err := d.append(&r, nil, nil); err != nil {
		return fmt.Errorf("put %s: %w", id, err)
	}
	d.mu.Lock()
	if cur, ok := d.index[id]; ok && cur.seq == e.seq {
		cur.mtime = now
		d.index[id] = cur
	}
	d.mu.Unlock()
	return nil
}

// remove deletes id's live record e, holding id's lock: a tombstone naming
// e's pack first, then the index entry.
func (d *Disk) remove(id cid.Cid, e entry) error {
	r := rec{typ: recTomb, id: id, seq: d.seq.Add(1), time: time.Now().UnixNano(), a: e.pack}
	err := d.append(&r, nil, nil)
	d.dropEntry(id, e)
	return err
}

// dropEntry removes id's entry from the index if it is still e.
func (d *Disk) dropEntry(id cid.Cid, e entry) {
	d.mu.Lock()
	if cur, ok := d.index[id]; ok && cur.seq == e.seq {
		delete(d.index, id)
		if p, ok := d.packs[e.pack]; ok {
			p.live -= recordSize(len(id.KeyString())) + int64(e.size)
		}
	}
	d.mu.Unlock()
}

// Delete removes a chunk; its tombstone is durable after the next Sync, and
// GC reclaims its space.
func (d *Disk) Delete(ctx context.Context, id cid.Cid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.writable("delete"); err != nil {
		return err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	mu := d.lock(id)
	mu.Lock()
	e, ok := d.lookup(id)
	var err error
	if ok {
		err = d.remove(id, e)
	}
	mu.Unlock()
	if err != nil {
		return fmt.Errorf("delete chunk %s: %w", id, err)
	}
	if ok {
		d.maybeCompact()
	}
	return nil
}

// deleteStale removes a chunk unless it was modified after cutoff, holding
// the chunk's lock so that a concurrent Put either refreshes it before the
// check or stores it anew after the removal.
func (d *Disk) deleteStale(ctx context.Context, id cid.Cid, cutoff time.Time) (int64, bool, error) {
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	if err := d.writable("delete"); err != nil {
		return 0, false, err
	}
	mu := d.lock(id)
	mu.Lock()
	defer mu.Unlock()
	e, ok := d.lookup(id)
	if !ok || time.Unix(0, e.mtime).After(cutoff) {
		return 0, false, nil
	}
	if err := d.remove(id, e); err != nil {
		return 0, false, fmt.Errorf("delete chunk %s: %w", id, err)
	}
	return int64(e.size), true, nil
}

// quarantine removes id's entry e after a read found it bad, reports it, and
// returns the error for the reader. The caller does not hold id's lock. A
// read-only Disk only returns the error: it cannot write the tombstone, and
// the writer quarantines the chunk when it reads it.
func (d *Disk) quarantine(id cid.Cid, e entry, cause error) error {
	if d.readOnly {
		return fmt.Errorf("chunk %s: %v: %w", id, cause, ErrCorrupt)
	}
	mu := d.lock(id)
	mu.Lock()
	defer mu.Unlock()
	return d.quarantineLocked(id, e, cause)
}

func (d *Disk) quarantineLocked(id cid.Cid, e entry, cause error) error {
	err := fmt.Errorf("chunk %s: %v; removed from the store, to be fetched again: %w", id, cause, ErrCorrupt)
	if cur, ok := d.lookup(id); !ok || cur.seq != e.seq {
		return err // quarantined already, or stored anew
	}
	// The tombstone keeps it out after a restart; without it the chunk
	// is still out of the index, and the next read of the record after a
	// restart fails the same check.
	_ = d.remove(id, e)
	d.quarantined.Add(1)
	if d.opts.OnCorrupt != nil {
		d.opts.OnCorrupt(id, err)
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
	buf := getBuf(0)
	defer putBuf(buf)
	frame, e, err := d.readFrame(id, (*buf)[:0])
	if err != nil {
		return dst, err
	}
	*buf = frame[:0]
	out, err := decodeChunk(dst, id, frame)
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			return dst, d.quarantine(id, e, err)
		}
		return dst, err
	}
	return out, nil
}

// GetFrame returns the stored frame of a chunk, checked against its
// checksum.
func (d *Disk) GetFrame(ctx context.Context, id cid.Cid) ([]byte, error) {
	return d.AppendFrame(ctx, id, nil)
}

// AppendFrame appends the stored frame of a chunk to dst, checked against
// its checksum: the bytes a peer receives are the bytes once stored.
func (d *Disk) AppendFrame(ctx context.Context, id cid.Cid, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return dst, fmt.Errorf("get: %w", err)
	}
	out, _, err := d.readFrame(id, dst)
	return out, err
}

// readFrame appends id's frame to dst and checks it against its checksum,
// quarantining the chunk if it fails; a read-only Disk first loads its index
// again if the packs changed (readonly.go).
func (d *Disk) readFrame(id cid.Cid, dst []byte) ([]byte, entry, error) {
	var bad entry // the record a read-only Disk found bad before it reloaded
	reloads := 0
	for range 8 {
		d.mu.RLock()
		e, ok := d.index[id]
		var p *pack
		if ok {
			p = d.packs[e.pack]
		}
		gen := d.loadGen
		d.mu.RUnlock()
		if !ok {
			return dst, entry{}, fmt.Errorf("chunk %s: %w", id, ErrNotFound)
		}
		n := len(dst)
		out := slices.Grow(dst, int(e.size))[:n+int(e.size)]
		_, err := p.f.ReadAt(out[n:], e.off)
		var cause error
		switch {
		case errors.Is(err, os.ErrClosed):
			continue // repacked or reloaded meanwhile: look it up again
		case errors.Is(err, io.EOF):
			cause = fmt.Errorf("pack %s ends before the chunk's frame", packName(e.pack))
		case err != nil:
			return dst, e, fmt.Errorf("chunk %s: %w", id, err)
		case xxhash.Sum64(out[n:]) != e.sum:
			cause = fmt.Errorf("frame does not match its checksum in pack %s", packName(e.pack))
		default:
			return out, e, nil
		}
		if !d.readOnly {
			return dst, e, d.quarantine(id, e, cause)
		}
		// The writer may have cut or replaced the pack since this Disk
		// loaded its index, or stored the chunk anew: the record is
		// reported corrupt only if the packs have not changed since, or
		// if the index loaded again still names it.
		if reloads == maxReloads || reloads > 0 && sameRecord(bad, e) {
			return dst, e, d.quarantine(id, e, cause)
		}
		bad = e
		reloads++
		changed, err := d.reload(gen)
		if err != nil {
			return dst, e, fmt.Errorf("chunk %s: %v, and loading the index again failed: %w", id, cause, err)
		}
		if !changed {
			return dst, e, d.quarantine(id, e, cause)
		}
	}
	return dst, entry{}, fmt.Errorf("chunk %s: its pack was replaced while it was being read, again and again", id)
}

// Location is where a chunk's frame is stored.
type Location struct {
	Pack   string // path of the pack file
	Offset int64  // of the frame in the pack
	Size   int64  // of the frame
}

// Locate tells where a chunk's frame is, for diagnostics and for tests that
// damage it on purpose. ErrNotFound if absent.
func (d *Disk) Locate(ctx context.Context, id cid.Cid) (Location, error) {
	if err := ctx.Err(); err != nil {
		return Location{}, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	e, ok := d.index[id]
	if !ok {
		return Location{}, fmt.Errorf("chunk %s: %w", id, ErrNotFound)
	}
	return Location{Pack: d.packs[e.pack].path, Offset: e.off, Size: int64(e.size)}, nil
}

// Has reports whether a chunk is in the index; it reads nothing.
func (d *Disk) Has(ctx context.Context, id cid.Cid) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return false, fmt.Errorf("has: %w", err)
	}
	_, ok := d.lookup(id)
	return ok, nil
}

// Stat returns the stored frame size and last Put time of a chunk.
func (d *Disk) Stat(ctx context.Context, id cid.Cid) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return Info{}, fmt.Errorf("stat: %w", err)
	}
	e, ok := d.lookup(id)
	if !ok {
		return Info{}, fmt.Errorf("chunk %s: %w", id, ErrNotFound)
	}
	return Info{StoredSize: int64(e.size), Modified: time.Unix(0, e.mtime)}, nil
}

// List calls fn for every chunk stored when List was called; fn may change
// the store.
func (d *Disk) List(ctx context.Context, fn func(cid.Cid) error) error {
	d.mu.RLock()
	ids := make([]cid.Cid, 0, len(d.index))
	for id := range d.index {
		ids = append(ids, id)
	}
	d.mu.RUnlock()
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(id); err != nil {
			return err
		}
	}
	return nil
}

// Sync makes every Put, PutFrame, Add and Delete that returned before it
// survive a power loss: one fdatasync of each pack written since the last
// flush (and of the packs directory if a pack was created), shared by every
// caller that arrives while it runs. A caller waiting for a flush that
// another started returns ctx.Err() if ctx ends first; the flush goes on.
func (d *Disk) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.readOnly {
		return nil // it wrote nothing
	}
	d.amu.Lock()
	target := d.writeGen
	d.amu.Unlock()
	if err := d.flush.wait(ctx, target, d.flushOnce); err != nil {
		return fmt.Errorf("sync store: %w", err)
	}
	return nil
}

// flushOnce flushes what was written until now, and returns the write
// generation it made durable.
func (d *Disk) flushOnce() (uint64, error) {
	d.amu.Lock()
	gen := d.writeGen
	dirty, dirDirty := d.dirty, d.dirDirty
	d.dirty, d.dirDirty, d.unflushed = make(map[*pack]struct{}), false, 0
	if d.active != nil {
		// The active pack stays dirty: appends go on while this flush
		// runs, and the next flush must cover them.
		d.dirty[d.active] = struct{}{}
	}
	d.amu.Unlock()
	if d.volatile {
		return gen, nil
	}
	var err error
	for p := range dirty {
		if p.removed.Load() {
			continue
		}
		if e := fdatasync(p.f); e != nil && !p.removed.Load() && err == nil {
			err = fmt.Errorf("pack %s: %w", packName(p.id), e)
		}
	}
	if dirDirty && err == nil {
		err = syncDir(d.packsDir)
	}
	if err != nil {
		d.amu.Lock()
		for p := range dirty {
			d.dirty[p] = struct{}{}
		}
		d.dirDirty = d.dirDirty || dirDirty
		d.amu.Unlock()
		return 0, err
	}
	return gen, nil
}

// fdatasync flushes f's data and the metadata needed to read it back (its
// size), not its times.
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for {
			serr = unix.Fdatasync(int(fd))
			if serr != unix.EINTR {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// flusher runs one flush at a time and lets every caller wait for the first
// flush that covers its writes: a group commit. Writers that arrive while a
// flush runs are covered by the next one, which one of them leads.
type flusher struct {
	mu      sync.Mutex
	running chan struct{} // closed when the flush running ends; nil if none runs
	done    uint64        // every write of a generation up to done is durable
}

// wait returns once every write of a generation up to target is durable,
// running flush if no flush runs. It stops waiting for a flush that another
// caller leads when ctx ends; a flush it leads runs to its end.
func (f *flusher) wait(ctx context.Context, target uint64, flush func() (uint64, error)) error {
	f.mu.Lock()
	for f.done < target {
		if running := f.running; running != nil {
			f.mu.Unlock()
			select {
			case <-running:
			case <-ctx.Done():
				return ctx.Err()
			}
			f.mu.Lock()
			continue
		}
		running := make(chan struct{})
		f.running = running
		f.mu.Unlock()
		gen, err := flush()
		f.mu.Lock()
		f.running = nil
		close(running)
		if err != nil {
			f.mu.Unlock()
			return err
		}
		f.done = max(f.done, gen)
	}
	f.mu.Unlock()
	return nil
}

// removePackFile closes and removes a pack's file.
func (d *Disk) removePackFile(p *pack) error {
	if err := os.Remove(p.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	p.removed.Store(true)
	p.f.Close()
	return nil
}

// Batch adds many chunks to a Disk and settles their durability together:
// Add stores each chunk without waiting for the disk, and Commit returns
// once every chunk added is durable. A Batch is safe for concurrent use.
type Batch struct{ d *Disk }

// NewBatch starts a batch of writes.
func (d *Disk) NewBatch() *Batch { return &Batch{d: d} }

var _ Adder = (*Batch)(nil)

// Add stores data under its chunk ID, durably once Commit returns. A chunk
// already stored is only refreshed, as by Put.
func (b *Batch) Add(ctx context.Context, data []byte) (Added, error) {
	return b.d.Add(ctx, data)
}

// Commit waits until every chunk added is durable.
func (b *Batch) Commit(ctx context.Context) error { return b.d.Sync(ctx) }
