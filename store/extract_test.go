package store_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

func sampleFiles() []testFile {
	return []testFile{
		{"setup.exe", 0o755, storetest.Random(1, 700<<10)},
		{"README.txt", 0o644, storetest.Text(2, 3000)},
		{"empty.cfg", 0o600, nil},
		{"lib/x64/core.dll", 0o644, append(storetest.Text(3, 300<<10), storetest.Random(4, 300<<10)...)},
		{"lib/x64/plugins/readonly.dat", 0o400, storetest.Text(5, 100)},
		{"docs/a/b/c/deep.txt", 0o640, storetest.Text(6, 20000)},
		{"no-perms", 0o000, []byte("x")},
	}
}

// checkTree checks that dir holds exactly files, with their contents and
// modes.
func checkTree(t *testing.T, dir string, files []testFile) {
	t.Helper()
	want := make(map[string]testFile)
	for _, f := range files {
		want[f.path] = f
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			return nil
		}
		f, ok := want[filepath.ToSlash(rel)]
		if !ok {
			t.Errorf("unexpected file %s", rel)
			return nil
		}
		delete(want, f.path)
		if !d.Type().IsRegular() {
			t.Errorf("%s is %v, not a regular file", rel, d.Type())
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode().Perm() != fs.FileMode(f.mode) {
			t.Errorf("%s has mode %v, want %v", rel, fi.Mode().Perm(), fs.FileMode(f.mode))
		}
		got, err := os.ReadFile(p)
		if err != nil && f.mode&0o400 == 0 {
			return nil // unreadable by design; the digest was checked while writing
		}
		if err != nil {
			return err
		}
		if !bytes.Equal(got, f.data) {
			t.Errorf("%s: content differs (%d bytes, want %d)", rel, len(got), len(f.data))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range want {
		t.Errorf("missing file %s", p)
	}
}

// checkNoLeftovers checks that parent holds nothing but the entries named.
func checkNoLeftovers(t *testing.T, parent string, allowed ...string) {
	t.Helper()
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		ok := false
		for _, a := range allowed {
			ok = ok || e.Name() == a
		}
		if !ok {
			t.Errorf("left behind in %s: %s", parent, e.Name())
		}
	}
}

func TestExtractRoundTrip(t *testing.T) {
	t.Parallel()
	for _, target := range []string{"absent", "empty dir"} {
		t.Run(target, func(t *testing.T) {
			s := openDisk(t, t.TempDir())
			files := sampleFiles()
			m := publish(t, s, "HF-S041000005-012", files)
			parent := t.TempDir()
			dir := filepath.Join(parent, "release")
			if target == "empty dir" {
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			var last, calls int64
			err := store.Extract(t.Context(), s, m, dir, store.ExtractOptions{Progress: func(n int64) {
				if n < last {
					t.Errorf("progress went back from %d to %d", last, n)
				}
				last = n
				calls++
			}})
			if err != nil {
				t.Fatalf("Extract: %v", err)
			}
			checkTree(t, dir, files)
			checkNoLeftovers(t, parent, "release")
			if last != m.TotalSize() || calls == 0 {
				t.Errorf("progress ended at %d after %d calls, want %d", last, calls, m.TotalSize())
			}
		})
	}
}

// TestExtractManyChunksInOrder extracts a file of a few hundred chunks, more
// than the fetch window, so that the order of the prefetched chunks matters.
func TestExtractManyChunksInOrder(t *testing.T) {
	s := store.NewMem()
	params := manifest.ChunkParams{Min: 64, Avg: 256, Max: 1024}
	data := storetest.Random(1, 200<<10)
	m := publish(t, s, "pkg", []testFile{{"big.bin", 0o644, data}})
	// Re-chunk with small chunks by hand: publish uses the default sizes.
	m.Chunking = params
	m.Files[0].Chunks = nil
	for off := 0; off < len(data); off += 700 {
		chunk := data[off:min(off+700, len(data))]
		id := manifest.ChunkID(chunk)
		if err := s.Put(t.Context(), id, chunk); err != nil {
			t.Fatal(err)
		}
		m.Files[0].Chunks = append(m.Files[0].Chunks, manifest.ChunkRef{CID: id, Size: uint32(len(chunk))})
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "out")
	if err := store.Extract(t.Context(), s, m, dir, store.ExtractOptions{}); err != nil {
		t.Fatalf("Extract: %v", err)
	}
	checkTree(t, dir, []testFile{{"big.bin", 0o644, data}})
}

func TestExtractRefusesTarget(t *testing.T) {
	t.Parallel()
	s := store.NewMem()
	m := publish(t, s, "pkg", []testFile{{"a.txt", 0o644, []byte("a")}})
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
	}{
		{"not empty", func(t *testing.T, dir string) {
			os.Mkdir(dir, 0o755)
			os.WriteFile(filepath.Join(dir, "keep.txt"), []byte("keep"), 0o644)
		}},
		{"a file", func(t *testing.T, dir string) {
			os.WriteFile(dir, []byte("keep"), 0o644)
		}},
		{"a symlink to an empty dir", func(t *testing.T, dir string) {
			os.Mkdir(dir+".real", 0o755)
			if err := os.Symlink(filepath.Base(dir)+".real", dir); err != nil {
				t.Skip(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "release")
			tt.setup(t, dir)
			before := snapshot(t, parent)
			err := store.Extract(t.Context(), s, m, dir, store.ExtractOptions{})
			if !errors.Is(err, fs.ErrExist) {
				t.Fatalf("Extract: %v, want an error wrapping fs.ErrExist", err)
			}
			if after := snapshot(t, parent); after != before {
				t.Errorf("Extract changed the parent:\n%s\nbecame\n%s", before, after)
			}
		})
	}
}

// snapshot describes every entry under dir, with file contents.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		b.WriteString(p + " " + d.Type().String())
		if d.Type().IsRegular() {
			data, _ := os.ReadFile(p)
			b.WriteString(" " + string(data))
		}
		b.WriteByte('\n')
		return nil
	})
	return b.String()
}

func TestExtractFailsCleanly(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// spoil changes the store or the manifest; it returns strings the
		// error message must contain and the error it must wrap.
		spoil func(t *testing.T, s *store.Mem, m *manifest.Manifest) ([]string, error)
	}{
		{"wrong file digest", func(t *testing.T, s *store.Mem, m *manifest.Manifest) ([]string, error) {
			m.Files[1].SHA256 = strings.Repeat("0", 64)
			return []string{m.Files[1].Path}, store.ErrCorrupt
		}},
		{"missing chunk", func(t *testing.T, s *store.Mem, m *manifest.Manifest) ([]string, error) {
			id := m.Files[3].Chunks[1].CID
			if err := s.Delete(t.Context(), id); err != nil {
				t.Fatal(err)
			}
			return []string{m.Files[3].Path, id.String()}, store.ErrNotFound
		}},
		{"path out of the root", func(t *testing.T, s *store.Mem, m *manifest.Manifest) ([]string, error) {
			m.Files[2].Path = "../escaped"
			return []string{"../escaped"}, manifest.ErrInvalid
		}},
		{"absolute path", func(t *testing.T, s *store.Mem, m *manifest.Manifest) ([]string, error) {
			m.Files[2].Path = "/tmp/escaped"
			return []string{"/tmp/escaped"}, manifest.ErrInvalid
		}},
		{"same path twice", func(t *testing.T, s *store.Mem, m *manifest.Manifest) ([]string, error) {
			m.Files[2].Path = m.Files[1].Path
			return []string{m.Files[1].Path}, fs.ErrExist
		}},
		{"file where a directory must be", func(t *testing.T, s *store.Mem, m *manifest.Manifest) ([]string, error) {
			m.Files[1].Path = "lib"
			return []string{"lib/x64/core.dll"}, nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := store.NewMem()
			m := publish(t, s, "HF-S041000005-012", sampleFiles())
			wantText, wantErr := tt.spoil(t, s, m)
			parent := t.TempDir()
			dir := filepath.Join(parent, "release")
			err := store.Extract(t.Context(), s, m, dir, store.ExtractOptions{})
			if err == nil {
				t.Fatal("Extract succeeded")
			}
			if wantErr != nil && !errors.Is(err, wantErr) {
				t.Errorf("Extract: %v, want it to wrap %v", err, wantErr)
			}
			for _, s := range wantText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Extract error %q does not name %s", err, s)
				}
			}
			// An escaped file would be in parent too.
			checkNoLeftovers(t, parent)
		})
	}
}

func TestExtractCancelled(t *testing.T) {
	s := store.NewMem()
	m := publish(t, s, "pkg", sampleFiles())
	ctx, cancel := context.WithCancel(t.Context())
	parent := t.TempDir()
	dir := filepath.Join(parent, "release")
	err := store.Extract(ctx, s, m, dir, store.ExtractOptions{Progress: func(int64) { cancel() }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Extract: %v, want context.Canceled", err)
	}
	checkNoLeftovers(t, parent)
}
