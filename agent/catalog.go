package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/manifest"
)

// ErrReleaseNotFound means no release of that name or CID is held (or in the
// index, for what acts on the index).
var ErrReleaseNotFound = fmt.Errorf("release %w", adminapi.ErrNotFound)

// Catalog holds the signed envelopes of the releases a node has, one file per
// release name under <data-dir>/releases/. Envelopes are stored as received,
// so any node can hand them on and anyone can verify them again.
//
// Parsed releases are cached, keyed by name and checked against the file's
// size and modification time on every use: a serving node answers have and
// manifest requests for its releases all day, and parsing a large manifest
// takes tens of milliseconds.
type Catalog struct {
	dir string

	mu    sync.Mutex
	cache map[string]cachedRelease
}

type cachedRelease struct {
	size    int64
	modTime time.Time
	release *Release
}

// releasesDir holds the catalog: releases/<name>.json.
const releasesDir = "releases"

// OpenCatalog opens (creating if needed) the catalog under dataDir.
func OpenCatalog(dataDir string) (*Catalog, error) {
	dir := filepath.Join(dataDir, releasesDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	return &Catalog{dir: dir, cache: make(map[string]cachedRelease)}, nil
}

// Release is a catalog entry: the envelope as stored and what it says. The
// manifest was verified when the release entered the catalog; callers that
// take it from a disk they do not trust verify the envelope again.
type Release struct {
	Name     string
	CID      cid.Cid
	Envelope []byte
	Manifest *manifest.Manifest
}

func (c *Catalog) path(name string) string {
	return filepath.Join(c.dir, name+".json")
}

// Save stores a release's envelope under its name, replacing the one held
// before. Callers verify the envelope and its sequence first.
func (c *Catalog) Save(name string, envelope []byte) error {
	if _, err := manifest.ParsePackName(name); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.cache, name)
	c.mu.Unlock()
	return writeFileAtomic(c.path(name), envelope, 0o644)
}

// Get returns the release named by ref: a release name or a manifest CID.
func (c *Catalog) Get(ref string) (*Release, error) {
	if id, err := cid.Decode(ref); err == nil {
		all, _, err := c.List()
		if err != nil {
			return nil, err
		}
		for _, r := range all {
			if r.CID.Equals(id) {
				return r, nil
			}
		}
		return nil, fmt.Errorf("release %s: %w", ref, ErrReleaseNotFound)
	}
	if _, err := manifest.ParsePackName(ref); err != nil {
		return nil, err
	}
	return c.load(ref)
}

// load reads the release stored under name, or takes it from the cache if
// the file has not changed since.
func (c *Catalog) load(name string) (*Release, error) {
	fi, err := os.Stat(c.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("release %s: %w", name, ErrReleaseNotFound)
	}
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	cached, ok := c.cache[name]
	c.mu.Unlock()
	if ok && cached.size == fi.Size() && cached.modTime.Equal(fi.ModTime()) {
		return cached.release, nil
	}
	data, err := os.ReadFile(c.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("release %s: %w", name, ErrReleaseNotFound)
	}
	if err != nil {
		return nil, err
	}
	r, err := decodeRelease(data)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.cache[name] = cachedRelease{size: fi.Size(), modTime: fi.ModTime(), release: r}
	c.mu.Unlock()
	return r, nil
}

// Unreadable is a catalog entry that does not read as a release: a file
// damaged on disk, or left by hand. Remove takes it away by its name.
type Unreadable struct {
	Name string // the entry's name, the file's without .json
	Err  error
}

// List returns every release in the catalog, sorted by name, and the entries
// that do not read as releases: one damaged file keeps no one from the rest.
func (c *Catalog) List() ([]*Release, []Unreadable, error) {
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, nil, err
	}
	var out []*Release
	var bad []Unreadable
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		r, err := c.Get(name)
		if err != nil {
			bad = append(bad, Unreadable{Name: name, Err: err})
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, bad, nil
}

// Has reports whether the catalog holds an entry of that name, readable or
// not.
func (c *Catalog) Has(name string) bool {
	if _, err := manifest.ParsePackName(name); err != nil {
		return false
	}
	_, err := os.Stat(c.path(name))
	return err == nil
}

// decodeRelease reads an envelope's manifest without checking signatures:
// the catalog only holds envelopes that were verified before they were saved.
func decodeRelease(envelope []byte) (*Release, error) {
	env, err := manifest.ParseEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	m, err := manifest.Parse(env.Payload)
	if err != nil {
		return nil, err
	}
	return &Release{Name: m.Name, CID: manifest.ManifestID(env.Payload), Envelope: envelope, Manifest: m}, nil
}

// writeFileAtomic writes data to path so that a crash leaves either the old
// file or the new one: temp file, fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Remove drops a release's envelope; removing an absent release is not an
// error.
func (c *Catalog) Remove(name string) error {
	if _, err := manifest.ParsePackName(name); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.cache, name)
	c.mu.Unlock()
	if err := os.Remove(c.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
