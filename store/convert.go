package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
)

// A data dir written before packs holds one file per chunk,
// <dir>/chunks/<last two characters of the CID>/<CID>.zst, each one frame.
// Opening it moves every chunk into packs: each file is read, verified
// against its CID and appended with its modification time; once every chunk
// is in and the packs are synced, the files and their directories are
// removed. A kill at any point leaves every chunk in a file, a pack or both,
// and the next open goes on (docs/decisions/0043).

const chunkExt = ".zst"

// convertFiles converts the file-per-chunk layout under d.dir, if there is
// one.
func (d *Disk) convertFiles(ctx context.Context) error {
	old := filepath.Join(d.dir, "chunks")
	shards, err := os.ReadDir(old)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var done []string // files whose chunk is in a pack, or that hold none
	buf := getBuf(0)
	defer putBuf(buf)
	for _, shard := range shards {
		if !shard.IsDir() {
			continue
		}
		dir := filepath.Join(old, shard.Name())
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := filepath.Join(dir, e.Name())
			if strings.HasPrefix(e.Name(), tempPrefix) {
				done = append(done, p) // a write that never got its name
				continue
			}
			id, ok := chunkName(shard.Name(), e)
			if !ok {
				continue // not ours: left where it is
			}
			if _, ok := d.lookup(id); ok {
				done = append(done, p)
				continue
			}
			ok, err := d.convertFile(id, p, buf)
			if err != nil {
				return err
			}
			if ok {
				d.recovery.Converted++
			} else {
				d.recovery.CorruptFiles++
			}
			done = append(done, p)
		}
	}
	if err := d.Sync(ctx); err != nil {
		return err
	}
	for _, p := range done {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	// Directories that still hold something not ours stay.
	for _, shard := range shards {
		os.Remove(filepath.Join(old, shard.Name()))
	}
	os.Remove(old)
	return syncDir(d.dir)
}

// convertFile appends the chunk file p to the packs if it verifies, and
// reports whether it did. A file that does not is reported as quarantined.
func (d *Disk) convertFile(id cid.Cid, p string, buf *[]byte) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	bad := func(cause error) (bool, error) {
		err := fmt.Errorf("chunk %s: file %s: %v; not converted, to be fetched again: %w", id, p, cause, ErrCorrupt)
		d.quarantined.Add(1)
		if d.opts.OnCorrupt != nil {
			d.opts.OnCorrupt(id, err)
		}
		return false, nil
	}
	if fi.Size() > int64(MaxFrameSize(manifest.MaxChunkSize)) {
		return bad(fmt.Errorf("%d bytes, larger than any chunk frame", fi.Size()))
	}
	frame := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, frame); err != nil {
		return false, err
	}
	if _, err := checkFrame(buf, id, frame); err != nil {
		return bad(err)
	}
	if _, _, err := d.store(id, frame, fi.ModTime()); err != nil {
		return false, err
	}
	return true, nil
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
