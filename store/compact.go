package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/ipfs/go-cid"
)

// Compaction reclaims the space of deleted chunks: a pack of which less than
// 1/repackBelow is live is replaced by a copy of what of it must outlive it
// (live chunks, tombstones whose packs still exist, refreshed times),
// written to a new pack beside the others, and removed; a pack with nothing
// to keep is removed whole. The active pack is sealed first if it is mostly
// dead, so that a store smaller than a pack gives its space back too.
// Readers and writers go on meanwhile: copies are made under each chunk's
// lock, the index points to a copy only once the new pack is sealed and
// durable, and a reader that finds its pack closed looks the chunk up again
// (docs/decisions/0042).

// repackBelow: a pack is repacked once less than half of it is live, which
// bounds the dead space of sealed packs to about their live size.
const repackBelow = 2

// compactResult counts what a compaction did.
type compactResult struct {
	PacksRemoved int   // packs removed, whole or once copied
	PacksWritten int   // new packs written by repacking
	BytesRemoved int64 // bytes of the packs removed
	BytesWritten int64 // bytes of the packs written
}

// maybeCompact starts a compaction in the background after chunks were
// deleted, if enough of the packs is dead: a proxy's cache evicts with
// Delete and never runs GC.
func (d *Disk) maybeCompact() {
	if d.closed.Load() || d.compacting.Load() || !d.worthCompacting() {
		return
	}
	if !d.compacting.CompareAndSwap(false, true) {
		return
	}
	d.bg.Go(func() {
		defer d.compacting.Store(false)
		_, _ = d.compact(context.Background())
	})
}

// worthCompacting reports whether the packs compaction would rewrite, the
// active one included, hold at least half a pack of dead bytes.
func (d *Disk) worthCompacting() bool {
	d.amu.Lock()
	defer d.amu.Unlock()
	d.mu.RLock()
	defer d.mu.RUnlock()
	var dead int64
	for _, p := range d.packs {
		if (p.sealed || p == d.active) && mostlyDead(p) {
			dead += p.size - p.live
		}
	}
	return dead >= d.opts.PackSize/2
}

// mostlyDead reports whether less than 1/repackBelow of p is live. The
// caller holds d.mu, and d.amu too if p is the active pack.
func mostlyDead(p *pack) bool { return p.live*repackBelow < p.size }

// candidate is a sealed pack compaction may remove or repack.
type candidate struct {
	p    *pack
	size int64
	recs []rec
}

// compact removes dead packs and repacks mostly dead ones.
func (d *Disk) compact(ctx context.Context) (compactResult, error) {
	var res compactResult
	if err := d.writable("compact"); err != nil {
		return res, err
	}
	d.gcMu.Lock()
	defer d.gcMu.Unlock()
	d.mu.RLock()
	var sealed []*pack
	for _, p := range d.packs {
		if p.sealed && mostlyDead(p) {
			sealed = append(sealed, p)
		}
	}
	d.mu.RUnlock()
	slices.SortFunc(sealed, func(a, b *pack) int { return compareUint(a.id, b.id) })
	cands := make([]*candidate, 0, len(sealed)+1)
	for _, p := range sealed {
		c, err := d.candidateOf(p)
		if err != nil {
			return res, err
		}
		cands = append(cands, c)
	}
	// The packs removed whole go first: their tombstones in the active
	// pack are then no longer needed, and the active pack is judged
	// without them.
	if err := d.dropDead(cands, &res); err != nil {
		return res, err
	}
	p, err := d.sealIfMostlyDead()
	if err != nil {
		return res, err
	}
	if p != nil {
		c, err := d.candidateOf(p)
		if err != nil {
			return res, err
		}
		cands = append(cands, c)
		if err := d.dropDead(cands, &res); err != nil {
			return res, err
		}
	}
	var out *repackOut
	for _, c := range cands {
		if err := ctx.Err(); err != nil {
			break
		}
		if c == nil {
			continue // removed whole
		}
		src := c.p
		keep, keepBytes := d.toKeep(src.id, c.recs)
		if len(keep) == 0 {
			if err := d.dropPack(src); err != nil {
				return res, err
			}
			res.PacksRemoved++
			res.BytesRemoved += c.size
			continue
		}
		if keepBytes*repackBelow >= c.size {
			// Mostly tombstones and times still needed: a copy would
			// free little, and the next compaction would copy it again.
			continue
		}
		if out != nil && out.size+keepBytes > d.opts.PackSize {
			if err := d.finishRepack(ctx, out, &res); err != nil {
				return res, err
			}
			out = nil
		}
		if out == nil {
			if out, err = d.newRepackOut(); err != nil {
				return res, err
			}
		}
		if err := d.copyInto(out, src, keep); err != nil {
			out.abort()
			return res, err
		}
		out.replaces = append(out.replaces, src)
		out.removedBytes += c.size
	}
	if out != nil {
		if err := d.finishRepack(ctx, out, &res); err != nil {
			return res, err
		}
	}
	if res.PacksRemoved > 0 && !d.volatile {
		if err := syncDir(d.packsDir); err != nil {
			return res, fmt.Errorf("compact: %w", err)
		}
	}
	return res, ctx.Err()
}

// candidateOf reads the index of a sealed pack.
func (d *Disk) candidateOf(p *pack) (*candidate, error) {
	d.mu.RLock()
	size := p.size
	d.mu.RUnlock()
	idx, err := readIndex(p.f, size)
	if err != nil {
		return nil, fmt.Errorf("compact: pack %s: %w", packName(p.id), err)
	}
	return &candidate{p: p, size: size, recs: idx.recs}, nil
}

// dropDead removes the candidates with nothing to keep, until none is
// left: a tombstone is kept only while the pack of the record it killed
// exists, so removing one pack can leave another with nothing to keep. It
// sets the candidates it removed to nil.
func (d *Disk) dropDead(cands []*candidate, res *compactResult) error {
	for dropped := true; dropped; {
		dropped = false
		for i, c := range cands {
			if c == nil {
				continue
			}
			if keep, _ := d.toKeep(c.p.id, c.recs); len(keep) > 0 {
				continue
			}
			if err := d.dropPack(c.p); err != nil {
				return err
			}
			res.PacksRemoved++
			res.BytesRemoved += c.size
			cands[i] = nil
			dropped = true
		}
	}
	return nil
}

// sealIfMostlyDead seals the active pack, and returns it, if it is mostly
// dead and a copy of what of it must be kept would take less than half of
// it: a store smaller than a pack then gives its space back too.
func (d *Disk) sealIfMostlyDead() (*pack, error) {
	d.amu.Lock()
	p := d.active
	if p != nil {
		d.mu.RLock()
		dead := mostlyDead(p)
		d.mu.RUnlock()
		if dead {
			if _, keepBytes := d.toKeep(p.id, p.recs); keepBytes*repackBelow >= p.size {
				dead = false
			}
		}
		if dead {
			d.active = nil
		} else {
			p = nil
		}
	}
	d.amu.Unlock()
	if p == nil {
		return nil, nil
	}
	if err := d.seal(p); err != nil {
		return nil, err
	}
	return p, nil
}

// toKeep returns the records of pack src that must outlive it, and about
// how many bytes they take: its live chunks; its tombstones of records in
// packs that still exist; the refreshed times of live chunks in other packs.
func (d *Disk) toKeep(src uint64, recs []rec) ([]rec, int64) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var keep []rec
	var n int64
	for _, r := range recs {
		switch r.typ {
		case recChunk:
			if e, ok := d.index[r.id]; !ok || e.pack != src || e.seq != r.seq {
				continue
			}
			n += r.frameLen()
		case recTomb:
			if _, ok := d.packs[r.a]; !ok || r.a == src {
				continue
			}
		case recTouch:
			if e, ok := d.index[r.id]; !ok || e.pack == src {
				continue
			}
		}
		keep = append(keep, r)
		n += recordSize(len(r.id.KeyString()))
	}
	return keep, n
}

// dropPack removes a pack that holds nothing that must outlive it.
func (d *Disk) dropPack(p *pack) error {
	d.mu.Lock()
	delete(d.packs, p.id)
	d.mu.Unlock()
	if err := d.removePackFile(p); err != nil {
		return fmt.Errorf("compact: remove pack %s: %w", packName(p.id), err)
	}
	return nil
}

// repackOut is a pack being written by a repack, under a temporary name
// until it is sealed.
type repackOut struct {
	p            *pack
	tmp          string
	w            *bufio.Writer
	size         int64
	recs         []rec
	copies       []repackCopy
	replaces     []*pack
	removedBytes int64
}

// repackCopy is a chunk copied into a repack's output: from the entry it had
// when copied to the entry it gets once the output is sealed.
type repackCopy struct {
	id       cid.Cid
	from, to entry
}

func (d *Disk) newRepackOut() (*repackOut, error) {
	d.amu.Lock()
	id := d.nextPack
	d.nextPack++
	d.amu.Unlock()
	out := &repackOut{p: &pack{id: id, path: filepath.Join(d.packsDir, packName(id)+packExt)}}
	out.tmp = filepath.Join(d.packsDir, packName(id)+packTemp)
	f, err := os.OpenFile(out.tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return nil, fmt.Errorf("compact: %w", err)
	}
	out.p.f = f
	out.w = bufio.NewWriterSize(f, 1<<20)
	hdr := appendPackHeader(nil, id)
	out.w.Write(hdr)
	out.size = int64(len(hdr))
	return out, nil
}

func (o *repackOut) abort() {
	o.p.f.Close()
	os.Remove(o.tmp)
}

// write appends record r, with frame for a chunk, to the output.
func (o *repackOut) write(r rec, frame []byte) error {
	var hb [frameHeader + fixedHeader + maxCIDLen + 4]byte
	hdr := appendRecord(hb[:0], &r)
	if _, err := o.w.Write(hdr); err != nil {
		return err
	}
	r.off = o.size
	o.size += int64(len(hdr))
	if r.typ == recChunk {
		r.off = o.size
		if _, err := o.w.Write(frame); err != nil {
			return err
		}
		o.size += int64(len(frame))
	}
	o.recs = append(o.recs, r)
	return nil
}

// copyInto copies the records of src to keep into out. Each chunk is copied
// under its lock, checked against its checksum, with a new seq: a delete
// that comes after the copy kills the copy too.
func (d *Disk) copyInto(out *repackOut, src *pack, keep []rec) error {
	var frame []byte
	for _, r := range keep {
		switch r.typ {
		case recTomb:
			if err := out.write(r, nil); err != nil {
				return fmt.Errorf("compact: %w", err)
			}
		case recTouch:
			e, ok := d.lookup(r.id)
			if !ok {
				continue
			}
			r.time = e.mtime
			if err := out.write(r, nil); err != nil {
				return fmt.Errorf("compact: %w", err)
			}
		case recChunk:
			mu := d.lock(r.id)
			mu.Lock()
			err := func() error {
				e, ok := d.lookup(r.id)
				if !ok || e.pack != src.id || e.seq != r.seq {
					return nil
				}
				frame = slices.Grow(frame[:0], int(e.size))[:e.size]
				if _, err := src.f.ReadAt(frame, e.off); err != nil {
					d.quarantineLocked(r.id, e, fmt.Errorf("repack: %v", err))
					return nil
				}
				if xxhash.Sum64(frame) != e.sum {
					d.quarantineLocked(r.id, e, fmt.Errorf("frame does not match its checksum in pack %s", packName(src.id)))
					return nil
				}
				c := rec{typ: recChunk, id: r.id, seq: d.seq.Add(1), time: e.mtime, a: uint64(e.size), b: e.sum}
				if err := out.write(c, frame); err != nil {
					return err
				}
				to := entry{pack: out.p.id, off: out.recs[len(out.recs)-1].off, size: e.size, sum: e.sum, seq: c.seq, mtime: e.mtime}
				out.copies = append(out.copies, repackCopy{id: r.id, from: e, to: to})
				return nil
			}()
			mu.Unlock()
			if err != nil {
				return fmt.Errorf("compact: %w", err)
			}
		}
	}
	return nil
}

// finishRepack seals the output, makes it durable under its name, points
// the index at the copies, and removes the packs it replaces. A kill before
// the rename leaves a temporary file that the next open removes; a kill after
// it leaves packs the output names as replaced, which the next open removes.
func (d *Disk) finishRepack(ctx context.Context, out *repackOut, res *compactResult) error {
	replaces := make([]uint64, len(out.replaces))
	for i, p := range out.replaces {
		replaces[i] = p.id
	}
	idx := appendIndex(nil, out.recs, replaces)
	out.w.Write(idx)
	out.size += int64(len(idx))
	err := out.w.Flush()
	if err == nil && !d.volatile {
		err = fdatasync(out.p.f)
	}
	if err == nil {
		err = os.Rename(out.tmp, out.p.path)
	}
	if err == nil && !d.volatile {
		err = syncDir(d.packsDir)
	}
	if err != nil {
		out.abort()
		return fmt.Errorf("compact: pack %s: %w", packName(out.p.id), err)
	}
	out.p.size, out.p.sealed = out.size, true
	d.mu.Lock()
	d.packs[out.p.id] = out.p
	d.mu.Unlock()
	res.PacksWritten++
	res.BytesWritten += out.size

	// A chunk deleted between its copy and now has a tombstone naming the
	// pack it was copied from, which is about to go: its copy needs one
	// naming the new pack.
	orphans := false
	for _, c := range out.copies {
		mu := d.lock(c.id)
		mu.Lock()
		d.mu.Lock()
		cur, ok := d.index[c.id]
		moved := ok && cur.seq == c.from.seq
		if moved {
			to := c.to
			to.mtime = cur.mtime
			d.index[c.id] = to
			n := recordSize(len(c.id.KeyString())) + int64(c.to.size)
			out.p.live += n
			if from, ok := d.packs[c.from.pack]; ok {
				from.live -= n
			}
		}
		d.mu.Unlock()
		var err error
		if !moved {
			t := rec{typ: recTomb, id: c.id, seq: d.seq.Add(1), time: time.Now().UnixNano(), a: out.p.id}
			err = d.append(&t, nil, nil)
			orphans = true
		}
		mu.Unlock()
		if err != nil {
			return fmt.Errorf("compact: %w", err)
		}
	}
	if orphans {
		if err := d.Sync(ctx); err != nil {
			return fmt.Errorf("compact: %w", err)
		}
	}
	for _, p := range out.replaces {
		if err := d.dropPack(p); err != nil {
			return err
		}
		res.PacksRemoved++
	}
	res.BytesRemoved += out.removedBytes
	if !d.volatile {
		if err := syncDir(d.packsDir); err != nil {
			return fmt.Errorf("compact: %w", err)
		}
	}
	return nil
}

// removeStaleTemps removes what killed writers left: repack outputs never
// sealed (none is being written while it holds the compaction lock, and no
// other process writes this store) and stale temporary pin files.
func (d *Disk) removeStaleTemps(ctx context.Context, now time.Time) (int, error) {
	if err := d.writable("remove stale temporary files"); err != nil {
		return 0, err
	}
	d.gcMu.Lock()
	entries, err := os.ReadDir(d.packsDir)
	removed := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), packTemp) {
			if os.Remove(filepath.Join(d.packsDir, e.Name())) == nil {
				removed++
			}
		}
	}
	d.gcMu.Unlock()
	if err != nil {
		return removed, fmt.Errorf("remove stale temporary files: %w", err)
	}
	n, err := d.pinDir.removeStaleTemps(ctx, now)
	return removed + n, err
}
