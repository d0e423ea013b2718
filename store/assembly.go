package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
)

// Assembly lays out the files of a release in a staging directory while its
// chunks arrive: Place writes each chunk's content, as verified by the store
// that accepted it, at every place of the release that holds it. Extract,
// given the Assembly, then reads the placed chunks back from the staged
// files instead of reading, decoding and verifying them from the store a
// second time, writes only the chunks that were never placed (stored before
// the fetch began), and checks every file's digest as it always does.
// Installing a release the moment it arrives becomes one read and hash of
// each file and a rename.
//
// Nothing an Assembly wrote is trusted before Extract has hashed it against
// the manifest. It lives in memory: a process that restarts builds a new one
// and removes what the old one left (RemoveAssemblies).
type Assembly struct {
	m     *manifest.Manifest
	dir   string
	root  *os.Root
	rel   []string           // OS path of each file of m, relative to dir
	where map[cid.Cid][]spot // every place of each chunk

	// busy is held shared by each placement and exclusively by take and
	// Discard, which so wait for placements under way.
	busy sync.RWMutex

	mu      sync.Mutex
	placed  map[cid.Cid]bool
	created []bool     // files created, by index in m.Files
	files   []*os.File // files kept open, by index; at most maxOpenStaged
	open    int
	over    bool // taken by Extract or discarded
}

// spot is one place of a chunk in the release: a file and an offset.
type spot struct {
	file int
	off  int64
	size int64
}

// maxOpenStaged is how many staged files an Assembly keeps open between
// placements. A service pack is one file; a tree of thousands of files opens
// each past this count for every placement instead of holding a descriptor
// per file.
const maxOpenStaged = 64

// assemblyMark is in the name of every assembly's directory, after the
// release name.
const assemblyMark = ".assembly-"

// NewAssembly starts assembling m's files in a new private directory in
// parent, which must be on the file system Extract will put the release in.
func NewAssembly(m *manifest.Manifest, parent string) (*Assembly, error) {
	a := &Assembly{
		m:       m,
		rel:     make([]string, len(m.Files)),
		where:   make(map[cid.Cid][]spot),
		placed:  make(map[cid.Cid]bool),
		created: make([]bool, len(m.Files)),
		files:   make([]*os.File, len(m.Files)),
	}
	for i, f := range m.Files {
		rel, err := LocalPath(f.Path)
		if err != nil {
			return nil, fmt.Errorf("assemble %s: %w", m.Name, err)
		}
		a.rel[i] = rel
		var off int64
		for _, c := range f.Chunks {
			a.where[c.CID] = append(a.where[c.CID], spot{file: i, off: off, size: int64(c.Size)})
			off += int64(c.Size)
		}
	}
	dir, err := os.MkdirTemp(parent, "."+m.Name+assemblyMark+"*")
	if err != nil {
		return nil, fmt.Errorf("assemble %s: %w", m.Name, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("assemble %s: %w", m.Name, err)
	}
	a.dir, a.root = dir, root
	return a, nil
}

// RemoveAssemblies removes what assemblies of the release name, or of
// every release if name is empty, left in parent, such as a process killed
// while fetching. No assembly it removes may be in use.
func RemoveAssemblies(parent, name string) error {
	entries, err := os.ReadDir(parent)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	prefix := "." + name + assemblyMark
	var errs []error
	for _, e := range entries {
		mine := strings.HasPrefix(e.Name(), prefix)
		if name == "" {
			mine = strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), assemblyMark)
		}
		if e.IsDir() && mine {
			errs = append(errs, os.RemoveAll(filepath.Join(parent, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// Place writes content, the verified content of chunk id, wherever the
// release holds it. It has the signature of ContentFramePutter's use, and
// is safe for concurrent use. A chunk it cannot place (an error writing, a
// size other than the manifest's) stays unplaced, and Extract takes it from
// the store; Place never fails the fetch that calls it.
func (a *Assembly) Place(id cid.Cid, content []byte) {
	a.busy.RLock()
	defer a.busy.RUnlock()
	a.mu.Lock()
	spots := a.where[id]
	skip := a.over || a.placed[id]
	a.mu.Unlock()
	if skip || len(spots) == 0 {
		return
	}
	for _, s := range spots {
		if int64(len(content)) != s.size {
			return
		}
		f, keep, err := a.file(s.file)
		if err != nil {
			return
		}
		_, err = f.WriteAt(content, s.off)
		if !keep {
			f.Close()
		}
		if err != nil {
			return
		}
	}
	a.mu.Lock()
	a.placed[id] = true
	a.mu.Unlock()
}

// file opens staged file i for writing, creating it the first time. keep
// reports whether the Assembly holds it open; if not, the caller closes it.
func (a *Assembly) file(i int) (f *os.File, keep bool, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if f := a.files[i]; f != nil {
		return f, true, nil
	}
	flag := os.O_WRONLY
	if !a.created[i] {
		if d := filepath.Dir(a.rel[i]); d != "." {
			if err := a.root.MkdirAll(d, 0o755); err != nil {
				return nil, false, err
			}
		}
		// O_EXCL, as Extract: never write through anything already at
		// the path.
		flag |= os.O_CREATE | os.O_EXCL
	}
	f, err = a.root.OpenFile(a.rel[i], flag, 0o600)
	if err != nil {
		return nil, false, err
	}
	a.created[i] = true
	if a.open < maxOpenStaged {
		a.files[i] = f
		a.open++
		return f, true, nil
	}
	return f, false, nil
}

// staged is what Extract takes over from an Assembly.
type staged struct {
	dir     string
	root    *os.Root
	placed  map[cid.Cid]bool
	created []bool
}

// take ends the placements, after those under way, and hands the directory
// to Extract, which then owns it.
func (a *Assembly) take(m *manifest.Manifest) (staged, error) {
	a.busy.Lock()
	defer a.busy.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.over {
		return staged{}, fmt.Errorf("assembly of %s already used", a.m.Name)
	}
	a.over = true
	var errs []error
	for i, f := range a.files {
		if f != nil {
			errs = append(errs, f.Close())
			a.files[i] = nil
		}
	}
	if a.m != m {
		errs = append(errs, fmt.Errorf("assembly of %s given to extract %s", a.m.Name, m.Name))
	}
	if err := errors.Join(errs...); err != nil {
		a.root.Close()
		os.RemoveAll(a.dir)
		return staged{}, err
	}
	return staged{dir: a.dir, root: a.root, placed: a.placed, created: a.created}, nil
}

// Discard removes the staged files, unless Extract took them. It is safe to
// call on a nil Assembly and more than once.
func (a *Assembly) Discard() error {
	if a == nil {
		return nil
	}
	a.busy.Lock()
	defer a.busy.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.over {
		return nil
	}
	a.over = true
	for i, f := range a.files {
		if f != nil {
			f.Close()
			a.files[i] = nil
		}
	}
	a.root.Close()
	return os.RemoveAll(a.dir)
}
