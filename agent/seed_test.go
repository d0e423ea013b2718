package agent

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// seedFile is a file of a test tree, cut into chunks of the given contents.
type seedFile struct {
	path   string
	chunks [][]byte
}

func (f seedFile) content() []byte { return bytes.Join(f.chunks, nil) }

// manifestOf returns a manifest listing files, as a publisher would cut
// them.
func manifestOf(name string, files ...seedFile) *manifest.Manifest {
	m := &manifest.Manifest{Name: name}
	for _, f := range files {
		mf := manifest.File{Path: f.path, Mode: 0o644}
		for _, c := range f.chunks {
			mf.Chunks = append(mf.Chunks, manifest.ChunkRef{CID: manifest.ChunkID(c), Size: uint32(len(c))})
			mf.Size += int64(len(c))
		}
		m.Files = append(m.Files, mf)
	}
	return m
}

func randomChunk(rng *rand.Rand, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestSeedTakesVerifiedChunksFromInstalledFiles installs a tree of three
// files (one chunk shared by two of them) and seeds a store for a next
// version that keeps every old chunk and adds one, after the tree was
// changed in the ways a hook, an operator or an attacker could change it.
func TestSeedTakesVerifiedChunksFromInstalledFiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	a1, a2, a3 := randomChunk(rng, 40<<10), randomChunk(rng, 20<<10), randomChunk(rng, 30<<10)
	c1, shared, d1 := randomChunk(rng, 25<<10), randomChunk(rng, 35<<10), randomChunk(rng, 15<<10)
	fresh := randomChunk(rng, 10<<10)
	files := []seedFile{
		{"a.bin", [][]byte{a1, a2, a3}},
		{"b/c.bin", [][]byte{c1, shared}},
		{"d.bin", [][]byte{shared, d1}},
	}
	installed := manifestOf("SP-S041000005", files...)
	next := manifestOf("SP-S041000006", seedFile{"a.bin", [][]byte{a1, a2, a3, fresh}}, files[1], files[2])
	id := manifest.ChunkID
	all := []cid.Cid{id(a1), id(a2), id(a3), id(c1), id(shared), id(d1)}
	without := func(drop ...[]byte) []cid.Cid {
		return slices.DeleteFunc(slices.Clone(all), func(c cid.Cid) bool {
			for _, d := range drop {
				if c == id(d) {
					return true
				}
			}
			return false
		})
	}
	// overwrite writes content at off of the tree's file p.
	overwrite := func(t *testing.T, tree, p string, off int64, content []byte) {
		f, err := os.OpenFile(filepath.Join(tree, p), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(content, off); err != nil {
			t.Fatal(err)
		}
	}
	// replace puts a file of the same content as p outside the tree, and
	// makes p a symlink to it.
	symlinkOut := func(t *testing.T, tree, outside, p string) {
		target := filepath.Join(outside, filepath.Base(p))
		data, err := os.ReadFile(filepath.Join(tree, p))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, target, data)
		if err := os.Remove(filepath.Join(tree, p)); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(tree, p)); err != nil {
			t.Fatal(err)
		}
	}

	cases := []struct {
		name string
		// change alters the installed tree; outside is a directory beside
		// it.
		change func(t *testing.T, tree, outside string)
		// stored are chunks the store holds already.
		stored [][]byte
		// manifest, if set, gives the installed tree's manifest in place of
		// the one it was installed from.
		manifest func(outside string) *manifest.Manifest
		want     []cid.Cid
		rejected int
	}{
		{name: "intact tree", want: all},
		{name: "chunks already stored are not read", stored: [][]byte{a1, shared}, want: without(a1, shared)},
		{
			name: "a file changed in one chunk",
			change: func(t *testing.T, tree, _ string) {
				overwrite(t, tree, "a.bin", int64(len(a1))+5, []byte("hook was here"))
			},
			want: without(a2), rejected: 1,
		},
		{
			name:   "a file removed",
			change: func(t *testing.T, tree, _ string) { os.Remove(filepath.Join(tree, "a.bin")) },
			want:   without(a1, a2, a3), rejected: 3,
		},
		{
			name: "a file truncated",
			change: func(t *testing.T, tree, _ string) {
				if err := os.Truncate(filepath.Join(tree, "a.bin"), int64(len(a1)+len(a2)/2)); err != nil {
					t.Fatal(err)
				}
			},
			want: without(a2, a3), rejected: 2,
		},
		{
			name: "a file grown keeps its chunks",
			change: func(t *testing.T, tree, _ string) {
				overwrite(t, tree, "a.bin", int64(len(a1)+len(a2)+len(a3)), []byte("appended"))
			},
			want: all,
		},
		{
			name:   "a file made a symlink out of the tree",
			change: func(t *testing.T, tree, outside string) { symlinkOut(t, tree, outside, "a.bin") },
			want:   without(a1, a2, a3), rejected: 3,
		},
		{
			name: "a file made a symlink inside the tree",
			change: func(t *testing.T, tree, _ string) {
				if err := os.Rename(filepath.Join(tree, "a.bin"), filepath.Join(tree, "a.orig")); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink("a.orig", filepath.Join(tree, "a.bin")); err != nil {
					t.Fatal(err)
				}
			},
			want: without(a1, a2, a3), rejected: 3,
		},
		{
			name: "a directory made a symlink out of the tree",
			change: func(t *testing.T, tree, outside string) {
				if err := os.Rename(filepath.Join(tree, "b"), filepath.Join(outside, "b")); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(filepath.Join(outside, "b"), filepath.Join(tree, "b")); err != nil {
					t.Fatal(err)
				}
			},
			// The shared chunk comes from d.bin instead.
			want: without(c1), rejected: 2,
		},
		{
			name: "a file made a FIFO",
			change: func(t *testing.T, tree, _ string) {
				os.Remove(filepath.Join(tree, "d.bin"))
				if err := syscall.Mkfifo(filepath.Join(tree, "d.bin"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			// The shared chunk came from b/c.bin already.
			want: without(d1), rejected: 1,
		},
		{
			name: "a shared chunk changed in one file is taken from the other",
			change: func(t *testing.T, tree, _ string) {
				overwrite(t, tree, "b/c.bin", int64(len(c1))+1, []byte("changed"))
			},
			want: all, rejected: 1,
		},
		{
			name: "a manifest path leaving the tree is not followed",
			change: func(t *testing.T, tree, outside string) {
				writeFile(t, filepath.Join(outside, "a.bin"), files[0].content())
				writeFile(t, filepath.Join(outside, "b", "c.bin"), files[1].content())
			},
			manifest: func(outside string) *manifest.Manifest {
				return &manifest.Manifest{Name: "SP-S041000005", Files: []manifest.File{
					withPath(installed.Files[0], "../outside/a.bin"),
					withPath(installed.Files[1], filepath.Join(outside, "b", "c.bin")),
					installed.Files[2],
				}}
			},
			want: []cid.Cid{id(shared), id(d1)},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			tree, outside := filepath.Join(dir, "installed"), filepath.Join(dir, "outside")
			for _, f := range files {
				writeFile(t, filepath.Join(tree, filepath.FromSlash(f.path)), f.content())
			}
			if err := os.MkdirAll(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			if c.change != nil {
				c.change(t, tree, outside)
			}
			s, err := store.OpenDisk(filepath.Join(dir, "data"))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			for _, b := range c.stored {
				if err := s.Put(ctx, id(b), b); err != nil {
					t.Fatal(err)
				}
			}
			m := installed
			if c.manifest != nil {
				m = c.manifest(outside)
			}
			placed := map[cid.Cid]bool{}
			res, err := seed(ctx, s, next, []seedTree{{Dir: tree, Manifest: m}}, func(id cid.Cid, data []byte) {
				if manifest.VerifyChunk(id, data) != nil {
					t.Errorf("placed %s with other content", id)
				}
				placed[id] = true
			})
			if err != nil {
				t.Fatal(err)
			}
			sizes := map[cid.Cid]int64{}
			for _, f := range next.Files {
				for _, ch := range f.Chunks {
					sizes[ch.CID] = int64(ch.Size)
				}
			}
			var got []cid.Cid
			var bytes int64
			for _, w := range next.ChunkIDs() {
				if placed[w] {
					got = append(got, w)
					bytes += sizes[w]
					if ok, _ := s.Has(ctx, w); !ok {
						t.Errorf("chunk %s placed but not stored", w)
					}
				}
			}
			key := func(a, b cid.Cid) int { return bytesCompare(a.Bytes(), b.Bytes()) }
			slices.SortFunc(got, key)
			want := slices.SortedFunc(slices.Values(c.want), key)
			if !slices.Equal(got, want) {
				t.Errorf("seeded %d chunks %v, want %d %v", len(got), got, len(want), want)
			}
			if res.Chunks != len(want) || res.Bytes != bytes || res.Rejected != c.rejected {
				t.Errorf("result %+v, want %d chunks of %d bytes, %d rejected", res, len(want), bytes, c.rejected)
			}
			// Every chunk the store holds reads back as its own.
			for _, w := range all {
				if ok, _ := s.Has(ctx, w); ok {
					if _, err := s.Get(ctx, w); err != nil {
						t.Errorf("stored chunk %s: %v", w, err)
					}
				}
			}
			if ok, _ := s.Has(ctx, id(fresh)); ok {
				t.Error("the chunk no tree holds is stored")
			}
		})
	}
}

func withPath(f manifest.File, p string) manifest.File {
	f.Path = p
	return f
}

func bytesCompare(a, b []byte) int { return bytes.Compare(a, b) }

// TestSeedStopsWithItsContext checks that a cancelled seed returns the
// context's error and stores nothing more.
func TestSeedStopsWithItsContext(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	f := seedFile{"a.bin", [][]byte{randomChunk(rng, 4<<10), randomChunk(rng, 4<<10)}}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "tree", "a.bin"), f.content())
	s, err := store.OpenDisk(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m := manifestOf("SP-S041000005", f)
	if _, err := seed(ctx, s, m, []seedTree{{Dir: filepath.Join(dir, "tree"), Manifest: m}}, nil); err == nil {
		t.Error("a cancelled seed returned no error")
	}
}
