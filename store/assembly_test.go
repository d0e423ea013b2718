package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

// countingGetter counts the chunks Extract reads from the store.
type countingGetter struct {
	store.Getter
	gets atomic.Int64
}

func (g *countingGetter) Get(ctx context.Context, id cid.Cid) ([]byte, error) {
	g.gets.Add(1)
	return g.Getter.Get(ctx, id)
}

// assemblyFiles are sampleFiles with one file twice, so that chunks have
// places in two files.
func assemblyFiles() []testFile {
	files := sampleFiles()
	return append(files, testFile{"copy/setup.exe", 0o755, files[0].data})
}

// positions counts the places of chunks in m for which pick is true.
func positions(m *manifest.Manifest, pick func(cid.Cid) bool) int64 {
	var n int64
	for _, f := range m.Files {
		for _, c := range f.Chunks {
			if pick(c.CID) {
				n++
			}
		}
	}
	return n
}

// assemblyDir returns the directory of the one assembly in parent.
func assemblyDir(t *testing.T, parent string) string {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(parent, ".*.assembly-*"))
	if err != nil || len(matches) != 1 {
		t.Fatalf("assembly directories in %s: %v %v, want one", parent, matches, err)
	}
	return matches[0]
}

func TestExtractWithAssembly(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// place says which chunks the fetch placed; content may cut a
		// chunk short to stand for a placement that went wrong.
		place   func(i int) bool
		content func(data []byte) []byte
		// alter changes the staged files before Extract.
		alter   func(t *testing.T, staged string)
		wantErr error
	}{
		{name: "every chunk placed", place: func(int) bool { return true }},
		{name: "half the chunks placed", place: func(i int) bool { return i%2 == 0 }},
		{name: "no chunk placed", place: func(int) bool { return false }},
		{
			name:    "placements of the wrong size are not placements",
			place:   func(int) bool { return true },
			content: func(data []byte) []byte { return data[:len(data)/2] },
		},
		{
			name:  "a staged byte changed",
			place: func(int) bool { return true },
			alter: func(t *testing.T, staged string) {
				p := filepath.Join(staged, "lib", "x64", "core.dll")
				f, err := os.OpenFile(p, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if _, err := f.WriteAt([]byte{'!'}, 1000); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: store.ErrCorrupt,
		},
		{
			name:  "a staged file cut short",
			place: func(int) bool { return true },
			alter: func(t *testing.T, staged string) {
				if err := os.Truncate(filepath.Join(staged, "setup.exe"), 1000); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: store.ErrCorrupt,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			s := openDisk(t, t.TempDir())
			files := assemblyFiles()
			m := publish(t, s, "SP-S041000005", files)
			parent := t.TempDir()
			asm, err := store.NewAssembly(m, parent)
			if err != nil {
				t.Fatal(err)
			}
			placed := map[cid.Cid]bool{}
			for i, id := range m.ChunkIDs() {
				if !tt.place(i) {
					continue
				}
				frame, err := s.GetFrame(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				use := asm.Place
				if tt.content != nil {
					use = func(id cid.Cid, data []byte) { asm.Place(id, tt.content(data)) }
				} else {
					placed[id] = true
				}
				// The way a fetch places chunks: as the store takes them.
				if err := s.PutFrameContent(ctx, id, frame, use); err != nil {
					t.Fatal(err)
				}
			}
			if tt.alter != nil {
				tt.alter(t, assemblyDir(t, parent))
			}
			g := &countingGetter{Getter: s}
			dir := filepath.Join(parent, "release")
			err = store.Extract(ctx, g, m, dir, store.ExtractOptions{Assembly: asm})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Extract: %v, want %v", err, tt.wantErr)
				}
				checkNoLeftovers(t, parent)
				// The store is what counts: Extract without the
				// assembly installs the release.
				if err := store.Extract(ctx, s, m, dir, store.ExtractOptions{}); err != nil {
					t.Fatalf("Extract again without the assembly: %v", err)
				}
				checkTree(t, dir, files)
				return
			}
			if err != nil {
				t.Fatalf("Extract: %v", err)
			}
			checkTree(t, dir, files)
			checkNoLeftovers(t, parent, "release")
			want := positions(m, func(id cid.Cid) bool { return !placed[id] })
			if got := g.gets.Load(); got != want {
				t.Errorf("Extract read %d chunks from the store, want %d (the places of the chunks not placed)", got, want)
			}
		})
	}
}

func TestAssemblyIsUsedOnce(t *testing.T) {
	t.Parallel()
	s := store.NewMem()
	m := publish(t, s, "SP-S041000005", sampleFiles())
	parent := t.TempDir()
	asm, err := store.NewAssembly(m, parent)
	if err != nil {
		t.Fatal(err)
	}
	other := publish(t, s, "SP-S041000006", sampleFiles())
	err = store.Extract(t.Context(), s, other, filepath.Join(parent, "other"), store.ExtractOptions{Assembly: asm})
	if err == nil || !strings.Contains(err.Error(), "assembly of SP-S041000005") {
		t.Fatalf("Extract of another release with the assembly: %v", err)
	}
	err = store.Extract(t.Context(), s, m, filepath.Join(parent, "release"), store.ExtractOptions{Assembly: asm})
	if err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("Extract with a used assembly: %v", err)
	}
	checkNoLeftovers(t, parent)
}

func TestAssemblyDiscardAndLeftovers(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := store.NewMem()
	m := publish(t, s, "SP-S041000005", sampleFiles())
	other := publish(t, s, "SP-S041000006", []testFile{{"a.txt", 0o644, storetest.Text(9, 5000)}})
	parent := t.TempDir()
	place := func(asm *store.Assembly, m *manifest.Manifest) {
		for _, id := range m.ChunkIDs() {
			data, err := s.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			asm.Place(id, data)
		}
	}

	asm, err := store.NewAssembly(m, parent)
	if err != nil {
		t.Fatal(err)
	}
	place(asm, m)
	if err := asm.Discard(); err != nil {
		t.Fatal(err)
	}
	if err := asm.Discard(); err != nil {
		t.Fatalf("second Discard: %v", err)
	}
	asm.Place(m.ChunkIDs()[0], nil) // after Discard: nothing happens
	checkNoLeftovers(t, parent)

	// What a killed process leaves: two assemblies of one release, one of
	// another.
	for _, mm := range []*manifest.Manifest{m, m, other} {
		a, err := store.NewAssembly(mm, parent)
		if err != nil {
			t.Fatal(err)
		}
		place(a, mm)
	}
	if err := os.WriteFile(filepath.Join(parent, ".SP-S041000005.assembly-file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := store.RemoveAssemblies(parent, "SP-S041000005"); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if len(left) != 2 || !strings.HasPrefix(left[0], ".SP-S041000005.assembly-file") || !strings.HasPrefix(left[1], ".SP-S041000006.assembly-") {
		t.Errorf("left after RemoveAssemblies: %v, want the other release's assembly and the plain file", left)
	}
	if err := store.RemoveAssemblies(filepath.Join(parent, "absent"), "SP-S041000005"); err != nil {
		t.Errorf("RemoveAssemblies in an absent directory: %v", err)
	}
	// Without a name: every release's, still not the plain file.
	if err := store.RemoveAssemblies(parent, ""); err != nil {
		t.Fatal(err)
	}
	checkNoLeftovers(t, parent, ".SP-S041000005.assembly-file")
}
