package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/patchctl/patchctl/manifest"
)

// groupCommit makes new chunk files durable in groups before they get their
// names. A writer writes its temporary file without fsync and queues it; a
// leader takes everything queued, flushes it all with one syncfs(2), renames
// each file into place and tells its writer. Put leads at once if no flush is
// running (the files of writers that arrive meanwhile go in the next flush);
// a Batch queues without waiting and leads only once a group's worth of bytes
// is queued, so publishing overlaps compression with write-back.
//
// One syncfs per group costs far less than an fsync per file, each of which
// forces a journal commit (docs/decisions/0010). syncfs also flushes other
// dirty data of the file system, which is fine for a machine that mostly
// moves packs; the guarantee is fsync's: no chunk is renamed to its name
// before its bytes are on disk.
type groupCommit struct {
	mu      sync.Mutex
	queue   []*commitEntry
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

// groupBytes is how much a Batch lets queue before one of its writers
// flushes it: large enough that a flush is mostly sequential write-back,
// small enough that write-back overlaps the work of producing the next group.
const groupBytes = 32 << 20

type commitEntry struct {
	tmp, final, dir string
	size            int64
	waiter          bool
	done            chan error // buffered: the leader never blocks on it
}

func (g *groupCommit) enqueue(e *commitEntry) {
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
func (g *groupCommit) lead(fsDir string, force bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if force {
		g.forced = true
	}
	if g.leading {
		return
	}
	g.leading = true
	for len(g.queue) > 0 && (g.forced || g.waiting > 0 || g.queued >= groupBytes) {
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
func (g *groupCommit) commitNow(fsDir, tmp, final string) error {
	e := &commitEntry{tmp: tmp, final: final, waiter: true, done: make(chan error, 1)}
	g.enqueue(e)
	g.lead(fsDir, false)
	return <-e.done
}

// inMemory reports whether dir is on a memory file system (tmpfs or ramfs).
func inMemory(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
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

// Batch adds many chunks to a Disk and settles their durability together:
// Add writes each chunk and returns without waiting for the disk, and Commit
// returns once every chunk added is durable under its name. Chunks added but
// not committed when a process dies are never visible under their names;
// GC removes their temporary files. A Batch is safe for concurrent use.
type Batch struct {
	d       *Disk
	mu      sync.Mutex
	entries []*commitEntry
	added   map[cid.Cid]Added
}

// NewBatch starts a batch of writes.
func (d *Disk) NewBatch() *Batch {
	return &Batch{d: d, added: make(map[cid.Cid]Added)}
}

var _ Adder = (*Batch)(nil)

// Add stores data under its chunk ID, durably once Commit returns. A chunk
// already stored is only refreshed, as by Put.
func (b *Batch) Add(ctx context.Context, data []byte) (Added, error) {
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
	e := &commitEntry{tmp: tmp, final: p, dir: filepath.Dir(p), size: size, done: make(chan error, 1)}
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
func (b *Batch) Commit(ctx context.Context) error {
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
