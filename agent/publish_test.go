package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/testnet/packgen"
)

func testKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	k, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func generate(seed uint64, size int64, kind packgen.Kind) []byte {
	data, _ := io.ReadAll(packgen.New(seed, size, kind))
	return data
}

type fixture struct {
	dir   string
	store *store.Disk
	cat   *Catalog
	key   ed25519.PrivateKey
	root  *manifest.Root
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	s, err := store.OpenDisk(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	cat, err := OpenCatalog(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	key := testKey(t)
	root, err := manifest.NewRoot([]ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, 1, 1, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{dir: dir, store: s, cat: cat, key: key, root: root}
}

func (f *fixture) publish(t testing.TB, name string, paths ...string) *PublishResult {
	t.Helper()
	sources, err := CollectSources(paths)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Publish(context.Background(), f.store, f.cat, []ed25519.PrivateKey{f.key}, sources, PublishOptions{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestPublishRecordsFilesAndVerifies(t *testing.T) {
	f := newFixture(t)
	pack := filepath.Join(f.dir, "pack")
	files := map[string][]byte{
		"setup.zip":        generate(1, 3<<20, packgen.Incompressible),
		"bin/tool":         generate(2, 1<<20+7, packgen.Software),
		"docs/empty.txt":   nil,
		"docs/readme.txt":  []byte("hello\n"),
		"a/b/c/deep.dat":   generate(3, 300<<10, packgen.Software),
		"same-as-tool.bin": generate(2, 1<<20+7, packgen.Software),
	}
	for p, data := range files {
		writeFile(t, filepath.Join(pack, p), data)
	}
	res := f.publish(t, "SP-S041000005", pack)
	if res.Sequence != 1 || res.TotalBytes != 3<<20+2*(1<<20+7)+6+300<<10 {
		t.Fatalf("result %+v", res)
	}
	m, id, err := f.root.VerifyManifest(res.Envelope, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !id.Equals(res.CID) || len(m.Files) != len(files) {
		t.Fatalf("manifest %s with %d files", id, len(m.Files))
	}
	ctx := context.Background()
	for _, file := range m.Files {
		var got bytes.Buffer
		for _, c := range file.Chunks {
			data, err := f.store.Get(ctx, c.CID)
			if err != nil {
				t.Fatal(err)
			}
			got.Write(data)
		}
		if !bytes.Equal(got.Bytes(), files[file.Path]) {
			t.Errorf("%s: stored chunks do not rebuild the file", file.Path)
		}
	}
	// Identical files share chunks: counted once.
	if res.Chunks != len(m.ChunkIDs()) {
		t.Errorf("result counts %d chunks, manifest has %d distinct", res.Chunks, len(m.ChunkIDs()))
	}
	pins, err := f.store.Pins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pins["SP-S041000005"]) != res.Chunks {
		t.Errorf("pin holds %d chunks, want %d", len(pins["SP-S041000005"]), res.Chunks)
	}
	held, err := f.cat.Get(res.CID.String())
	if err != nil || held.Name != "SP-S041000005" {
		t.Fatalf("catalog by CID: %v %v", held, err)
	}
}

func TestRepublishNeedsHigherSequence(t *testing.T) {
	f := newFixture(t)
	path := filepath.Join(f.dir, "HF-S041000005-012.zip")
	writeFile(t, path, generate(1, 1<<20, packgen.Software))
	first := f.publish(t, "HF-S041000005-012", path)
	second := f.publish(t, "HF-S041000005-012", path)
	if first.Sequence != 1 || second.Sequence != 2 || second.NewBytes != 0 {
		t.Fatalf("sequences %d, %d; second new bytes %d", first.Sequence, second.Sequence, second.NewBytes)
	}
	sources, _ := CollectSources([]string{path})
	opts := PublishOptions{Name: "HF-S041000005-012", Sequence: 2, Labels: map[string]string{"fix": "again"}}
	_, err := Publish(context.Background(), f.store, f.cat, []ed25519.PrivateKey{f.key}, sources, opts)
	if !errors.Is(err, manifest.ErrRollback) {
		t.Fatalf("publishing another sequence 2: %v, want ErrRollback", err)
	}
}

func TestCollectSourcesCarriesRegularFilesOnlyAndSaysWhy(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, pack string)
		want  string // in the error; "" for none
	}{
		{"a symbolic link", func(t *testing.T, pack string) {
			if err := os.Symlink("/etc/passwd", filepath.Join(pack, "link")); err != nil {
				t.Skip(err)
			}
		}, "is a symbolic link"},
		{"an empty directory", func(t *testing.T, pack string) {
			if err := os.Mkdir(filepath.Join(pack, "logs"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, "is an empty directory"},
		{"a named pipe", func(t *testing.T, pack string) {
			if err := syscall.Mkfifo(filepath.Join(pack, "fifo"), 0o644); err != nil {
				t.Skip(err)
			}
		}, "only regular files and directories"},
		{"a directory with a file", func(t *testing.T, pack string) {
			writeFile(t, filepath.Join(pack, "logs", ".keep"), nil)
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pack := filepath.Join(t.TempDir(), "pack")
			writeFile(t, filepath.Join(pack, "a"), []byte("a"))
			tt.setup(t, pack)
			_, err := CollectSources([]string{pack})
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("CollectSources: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("CollectSources: %v, want an error saying %q", err, tt.want)
			}
		})
	}
	if _, err := CollectSources([]string{filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Fatal("a missing path was accepted")
	}
}

func TestCollectSourcesClearsWriteForEveryone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tool")
	writeFile(t, path, []byte("x"))
	if err := os.Chmod(path, 0o777); err != nil {
		t.Fatal(err)
	}
	src, err := CollectSources([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	if src[0].Mode != 0o775 || src[0].Cleared != 0o002 {
		t.Errorf("mode %o, cleared %o; want 775 published and 002 cleared", src[0].Mode, src[0].Cleared)
	}
}

func TestAFileThatChangesWhilePublishedFailsThePublish(t *testing.T) {
	f := newFixture(t)
	path := filepath.Join(f.dir, "pack", "a.bin")
	writeFile(t, path, generate(3, 256<<10, packgen.Software))
	sources, err := CollectSources([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	// Rewritten after it was collected and before it was read through, as
	// a build that writes the pack while it is published would.
	later := time.Now().Add(time.Second)
	writeFile(t, path, generate(4, 256<<10, packgen.Software))
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	_, err = Publish(context.Background(), f.store, f.cat, []ed25519.PrivateKey{f.key}, sources, PublishOptions{Name: "SP-S041000005"})
	if !errors.Is(err, ErrFileChanged) {
		t.Fatalf("publish of a file rewritten meanwhile: %v, want ErrFileChanged", err)
	}
	if _, err := f.cat.Get("SP-S041000005"); !errors.Is(err, ErrReleaseNotFound) {
		t.Errorf("a release was signed of a file that changed: %v", err)
	}
}

// TestDedupeBetweenVersions is the dedupe scenario: a 128 MiB
// software-like pack, then the same pack with 20 scattered 16 KiB
// overwrites and 3 inserted 4 KiB runs (about 0.3% changed). The second
// publish may add at most 10% of the stored bytes.
func TestDedupeBetweenVersions(t *testing.T) {
	size := int64(128 << 20)
	if testing.Short() {
		size = 32 << 20
	}
	f := newFixture(t)
	v1 := generate(7, size, packgen.Software)
	rng := rand.New(rand.NewPCG(7, 7))
	v2 := append([]byte(nil), v1...)
	for range 20 {
		off := rng.IntN(len(v2) - 16<<10)
		junk := generate(rng.Uint64(), 16<<10, packgen.Incompressible)
		copy(v2[off:], junk)
	}
	for range 3 {
		off := rng.IntN(len(v2))
		ins := generate(rng.Uint64(), 4<<10, packgen.Incompressible)
		v2 = append(v2[:off], append(ins, v2[off:]...)...)
	}
	writeFile(t, filepath.Join(f.dir, "v1", "pack.tar"), v1)
	writeFile(t, filepath.Join(f.dir, "v2", "pack.tar"), v2)
	first := f.publish(t, "SP-S041000005", filepath.Join(f.dir, "v1", "pack.tar"))
	second := f.publish(t, "SP-S041000006", filepath.Join(f.dir, "v2", "pack.tar"))
	share := float64(second.NewBytes) / float64(second.StoredBytes)
	t.Logf("v1 stored %d bytes in %d chunks; v2 stored %d, new %d (%.1f%%)", first.StoredBytes, first.Chunks, second.StoredBytes, second.NewBytes, 100*share)
	if share > 0.10 {
		t.Errorf("the second version added %.1f%% new stored bytes, want at most 10%%", 100*share)
	}
}
