package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/ipfs/go-cid"
)

// A read-only Disk reads a data dir that another Disk may have open for
// writing, in another process (a running agent) or in this one: the CLI's
// ls, verify, fsck and extract beside an agent. It takes no lock and writes
// nothing. It loads the index as a writable open does, but passes over what
// that open would repair or finish: the records after the last whole one
// of a pack being written, repack outputs not sealed yet, packs a finished
// repack replaced. It keeps every pack it loaded open, so a pack the writer
// removes meanwhile reads as it was until the next load; a read whose record
// fails its checksum loads the index again, at most maxReloads times, and
// reports the chunk corrupt only if the packs are unchanged or the writer's
// index still names that record (docs/decisions/0045).

const (
	// maxLoads bounds the loads of one open or reload that a repack
	// finishing meanwhile spoils.
	maxLoads = 8
	// maxReloads bounds the loads of the index again of one read.
	maxReloads = 2
)

// errPacksChanged means a repack removed a pack, or wrote one, while the
// packs were being loaded: the load starts over.
var errPacksChanged = errors.New("the packs kept being repacked while they were loaded; try again")

// OpenDiskReadOnly opens the store in dir for reading only, beside the Disk
// that has it open for writing, if any, in this process or another. It
// takes no lock and never writes, truncates, converts, removes or renames
// anything. It returns a Disk of its own even if this process has the store
// open for writing: its write methods (Put, PutFrame, Add, Delete, Pin,
// Unpin, and GC but for a DryRun) fail with ErrReadOnly wherever the writer
// is.
//
// It sees the chunks the store held when it was opened; chunks written
// later are not seen, and a chunk deleted later may still be read (its
// bytes stay whole). Reads check checksums as a writable Disk's do, but
// quarantine nothing: a read whose record fails loads the index again if
// the packs changed since, and gives what the writer holds; a chunk whose
// record the writer still holds returns an error wrapping ErrCorrupt and
// stays listed, and Quarantined stays zero. A record of a pack being
// written that fails is taken for one a power loss tore, and not listed,
// as a writable open would drop it. A dir with no
// store (no packs directory) is an error wrapping fs.ErrNotExist; one that
// still holds chunk files of the file-per-chunk layout is an error too, as
// only a writable open converts them. Close releases its files.
func OpenDiskReadOnly(dir string) (*Disk, error) {
	d := &Disk{
		dir:      dir,
		packsDir: filepath.Join(dir, "packs"),
		pinDir:   pinDir{filepath.Join(dir, "pins")},
		opts:     DiskOptions{PackSize: DefaultPackSize},
		readOnly: true,
	}
	if _, err := os.Stat(d.packsDir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open store %s read-only: no store there: %w", dir, err)
		}
		return nil, fmt.Errorf("open store %s read-only: %w", dir, err)
	}
	if err := checkNoChunkFiles(dir); err != nil {
		return nil, fmt.Errorf("open store %s read-only: %w", dir, err)
	}
	s, err := loadSnapshot(d.packsDir)
	if err != nil {
		return nil, fmt.Errorf("open store %s read-only: %w", dir, err)
	}
	d.index, d.packs, d.stamps = s.index, s.packs, s.stamps
	return d, nil
}

// ReadOnly reports whether d was opened by OpenDiskReadOnly.
func (d *Disk) ReadOnly() bool { return d.readOnly }

// writable returns an error wrapping ErrReadOnly, naming op, if d is
// read-only.
func (d *Disk) writable(op string) error {
	if d.readOnly {
		return fmt.Errorf("%s: %s: %w", op, d.dir, ErrReadOnly)
	}
	return nil
}

// checkNoChunkFiles fails if dir holds chunk files of the file-per-chunk
// layout (convert.go): a read-only Disk would not see them.
func checkNoChunkFiles(dir string) error {
	old := filepath.Join(dir, "chunks")
	shards, err := os.ReadDir(old)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, shard := range shards {
		if !shard.IsDir() {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(old, shard.Name()))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		for _, e := range entries {
			if _, ok := chunkName(shard.Name(), e); ok {
				return fmt.Errorf("%s holds chunk files of the file-per-chunk layout, which a writable open (the agent's, when it starts) converts into packs first", old)
			}
		}
	}
	return nil
}

// fileStamp tells whether a pack file changed: a file replaced under the
// same name has another inode, and the pack being written grows.
type fileStamp struct {
	ino  uint64
	size int64
}

func stampOf(fi fs.FileInfo) fileStamp {
	st := fileStamp{size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st
}

// snapshot is the index of a read-only Disk and the packs it reads.
type snapshot struct {
	index  map[cid.Cid]entry
	packs  map[uint64]*pack
	stamps map[string]fileStamp // every pack file listed, as opened
}

func (s *snapshot) close() {
	for _, p := range s.packs {
		p.f.Close()
	}
}

// loadSnapshot loads the index of the packs in dir without changing them,
// starting over while a repack finishing meanwhile spoils the load.
func loadSnapshot(dir string) (*snapshot, error) {
	for n := 1; ; n++ {
		s, err := readSnapshot(dir)
		if errors.Is(err, errPacksChanged) && n < maxLoads {
			continue
		}
		return s, err
	}
}

// readSnapshot loads the index of the packs in dir as loadSnapshot does,
// once. A writer removes a pack only once what of it must outlive it is in
// a pack renamed into place before, so a pack that vanishes between the
// listing and its open, or a repack output that appears after the listing,
// means the packs loaded may miss a chunk: errPacksChanged.
func readSnapshot(dir string) (*snapshot, error) {
	names, err := packFiles(dir)
	if err != nil {
		return nil, err
	}
	s := &snapshot{packs: make(map[uint64]*pack), stamps: make(map[string]fileStamp)}
	ok := false
	defer func() {
		if !ok {
			s.close()
		}
	}()
	recs := make(map[uint64][]rec)
	replaced := make(map[uint64]bool)
	var unsealed []*pack
	for name, id := range names {
		p := &pack{id: id, path: filepath.Join(dir, name)}
		if p.f, err = os.Open(p.path); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, errPacksChanged
			}
			return nil, err
		}
		s.packs[id] = p
		fi, err := p.f.Stat()
		if err != nil {
			return nil, err
		}
		s.stamps[name] = stampOf(fi)
		p.size = fi.Size()
		idx, err := readIndex(p.f, p.size)
		if err != nil {
			unsealed = append(unsealed, p) // being written, or its writer died
			continue
		}
		p.sealed = true
		recs[id] = idx.recs
		for _, r := range idx.replaces {
			replaced[r] = true
		}
	}
	drop := func(p *pack) {
		p.f.Close()
		delete(s.packs, p.id)
		delete(recs, p.id)
	}
	for id := range replaced {
		if p, ok := s.packs[id]; ok {
			drop(p)
		}
	}
	for _, p := range unsealed {
		if replaced[p.id] {
			continue
		}
		res, err := scanPack(p.f, p.size)
		if err != nil {
			drop(p) // no pack header yet: a pack being created
			continue
		}
		p.size = res.end
		recs[p.id] = res.recs
	}
	later, err := packFiles(dir)
	if err != nil {
		return nil, err
	}
	for name := range later {
		if _, ok := s.stamps[name]; !ok && replacesPacks(filepath.Join(dir, name)) {
			return nil, errPacksChanged
		}
	}
	s.index, _, _ = indexOf(recs, s.packs)
	ok = true
	return s, nil
}

// replacesPacks reports whether the pack file p is a repack's output, or
// might be: one that names packs it replaced, or one gone already.
func replacesPacks(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return true
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return true
	}
	idx, err := readIndex(f, fi.Size())
	return err == nil && len(idx.replaces) > 0
}

// packFiles lists the pack files in dir by name, with their IDs.
func packFiles(dir string) (map[string]uint64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make(map[string]uint64, len(entries))
	for _, e := range entries {
		if id, ok := packID(e); ok {
			names[e.Name()] = id
		}
	}
	return names, nil
}

// packID parses the name of a pack file, <16 hex digits>.pack.
func packID(e fs.DirEntry) (uint64, bool) {
	hex, ok := strings.CutSuffix(e.Name(), packExt)
	if !ok || len(hex) != 16 || !e.Type().IsRegular() {
		return 0, false
	}
	id, err := strconv.ParseUint(hex, 16, 64)
	return id, err == nil
}

// sameRecord reports whether a and b are the same record of a chunk.
func sameRecord(a, b entry) bool {
	return a.pack == b.pack && a.off == b.off && a.seq == b.seq && a.sum == b.sum
}

// reload loads the index of a read-only Disk again after a read found its
// record bad at load gen. It reports false, and loads nothing, if the pack
// files are as the last load found them: the record is bad on disk. If
// another read reloaded since gen, it only reports true.
func (d *Disk) reload(gen uint64) (bool, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if d.closed.Load() {
		return false, errors.New("store closed")
	}
	d.mu.RLock()
	cur := d.loadGen
	d.mu.RUnlock()
	if cur != gen {
		return true, nil
	}
	if changed, err := d.packsChanged(); err != nil || !changed {
		return false, err
	}
	s, err := loadSnapshot(d.packsDir)
	if err != nil {
		return false, err
	}
	d.mu.Lock()
	old := d.packs
	d.index, d.packs = s.index, s.packs
	d.loadGen++
	d.mu.Unlock()
	d.stamps = s.stamps
	// A read of an old pack finds it closed and looks its chunk up again.
	for _, p := range old {
		p.f.Close()
	}
	return true, nil
}

// packsChanged reports whether the pack files differ from those the last
// load found: a pack added, removed, replaced or grown.
func (d *Disk) packsChanged() (bool, error) {
	entries, err := os.ReadDir(d.packsDir)
	if err != nil {
		return false, err
	}
	n := 0
	for _, e := range entries {
		if _, ok := packID(e); !ok {
			continue
		}
		n++
		was, ok := d.stamps[e.Name()]
		if !ok {
			return true, nil
		}
		fi, err := e.Info()
		if err != nil || stampOf(fi) != was {
			return true, nil // gone since the listing, or changed
		}
	}
	return n != len(d.stamps), nil
}
