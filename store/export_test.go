package store

import (
	"context"
)

// FileStore is the file-per-chunk store packs replaced (filestore_test.go),
// for the conversion test and as the benchmarks' baseline.
type FileStore = fileStore

// OpenFileStore opens a store of the file-per-chunk layout in dir.
func OpenFileStore(dir string) (*FileStore, error) { return openFileStore(dir) }

// PackStats returns the number of packs and their bytes, live and in all.
func (d *Disk) PackStats() (packs int, live, size int64) {
	d.amu.Lock()
	defer d.amu.Unlock()
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, p := range d.packs {
		packs++
		live += p.live
		size += p.size
	}
	return packs, live, size
}

// Compact runs a compaction now, as GC does after its deletes.
func (d *Disk) Compact() (removed, written int, err error) {
	res, err := d.compact(t0ctx())
	return res.PacksRemoved, res.PacksWritten, err
}

func t0ctx() context.Context { return context.Background() }
