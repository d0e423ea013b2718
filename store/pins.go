package store

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/patchctl/patchctl/manifest"
)

const (
	tempPrefix = ".tmp-"
	dirPerm    = 0o750

	// staleTempAge is how old a temporary pin file must be before GC takes
	// it for a leftover of a crashed writer rather than a write in progress.
	staleTempAge = time.Hour
)

// pinDir keeps pins as files, <dir>/<release name>, one chunk ID a line.
type pinDir struct{ dir string }

// Pin records ids under name, atomically replacing name's previous pin.
// The pin is durable when Pin returns.
func (p pinDir) Pin(ctx context.Context, name string, ids []cid.Cid) error {
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
	f, err := os.CreateTemp(p.dir, tempPrefix+"*")
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
		err = os.Rename(tmp, filepath.Join(p.dir, name))
	}
	if err == nil {
		err = syncDir(p.dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pin %s: %w", name, err)
	}
	return nil
}

// Unpin removes name's pin, durably.
func (p pinDir) Unpin(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkPinName(name); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(p.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = syncDir(p.dir)
	}
	if err != nil {
		return fmt.Errorf("unpin %s: %w", name, err)
	}
	return nil
}

// Pin records ids under name in a Disk's pins, unless it is read-only.
func (d *Disk) Pin(ctx context.Context, name string, ids []cid.Cid) error {
	if err := d.writable("pin " + name); err != nil {
		return err
	}
	return d.pinDir.Pin(ctx, name, ids)
}

// Unpin removes name's pin from a Disk's pins, unless it is read-only.
func (d *Disk) Unpin(ctx context.Context, name string) error {
	if err := d.writable("unpin " + name); err != nil {
		return err
	}
	return d.pinDir.Unpin(ctx, name)
}

// Pins reads every pin. A pin file that cannot be parsed fails the whole
// call with ErrCorrupt: GC must never run on a partial view of the pins.
func (p pinDir) Pins(ctx context.Context) (map[string][]cid.Cid, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(p.dir)
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
		ids, err := readPin(filepath.Join(p.dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // unpinned since the listing (a read-only Disk reads beside a writer)
		}
		if err != nil {
			return nil, fmt.Errorf("pin %s: %w", name, err)
		}
		pins[name] = ids
	}
	return pins, nil
}

// removeStaleTemps removes temporary pin files older than staleTempAge
// before now: the leftovers of writers that crashed between create and
// rename.
func (p pinDir) removeStaleTemps(ctx context.Context, now time.Time) (int, error) {
	return removeStaleTempsIn(ctx, p.dir, now)
}

func removeStaleTempsIn(ctx context.Context, dir string, now time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("remove stale temporary files: %w", err)
	}
	cutoff := now.Add(-staleTempAge)
	removed := 0
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
	return removed, nil
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

// inMemory reports whether dir is on a memory file system (tmpfs or ramfs),
// where a flush makes nothing durable: tmpfs loses every file at power-off
// however often it is synced (docs/decisions/0012).
func inMemory(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
}
