package store_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

func chunkPath(dir string, id cid.Cid) string {
	s := id.String()
	return filepath.Join(dir, "chunks", s[len(s)-2:], s+".zst")
}

func listAll(t *testing.T, s store.Store) []cid.Cid {
	t.Helper()
	var ids []cid.Cid
	if err := s.List(t.Context(), func(id cid.Cid) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatalf("List: %v", err)
	}
	return ids
}

// TestDiskLayout checks the documented layout, and that the zstd CLI reads a
// chunk file as it is.
func TestDiskLayout(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	for _, data := range [][]byte{storetest.Text(1, 100<<10), storetest.Random(2, 100<<10)} {
		id := manifest.ChunkID(data)
		if err := s.Put(t.Context(), id, data); err != nil {
			t.Fatal(err)
		}
		p := chunkPath(dir, id)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("chunk file: %v", err)
		}
		zstdCLI, err := exec.LookPath("zstd")
		if err != nil {
			continue
		}
		got, err := exec.Command(zstdCLI, "-d", "-c", "-q", p).Output()
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("zstd -d %s = %d bytes, %v", p, len(got), err)
		}
	}
	if err := s.Pin(t.Context(), "SP-S041000005", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pins", "SP-S041000005")); err != nil {
		t.Errorf("pin file: %v", err)
	}
	if err := s.Sync(t.Context()); err != nil {
		t.Errorf("Sync: %v", err)
	}
}

func TestDiskListSkipsOtherFiles(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	data := storetest.Text(1, 1000)
	id := manifest.ChunkID(data)
	if err := s.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	shard := filepath.Dir(chunkPath(dir, id))
	other := manifest.ChunkID([]byte("other")).String()
	wrongShard := "zz"
	if other[len(other)-2:] == wrongShard {
		wrongShard = "yy"
	}
	junk := map[string]string{
		filepath.Join(shard, ".tmp-12345"):                                        "temp",
		filepath.Join(shard, "README"):                                            "junk",
		filepath.Join(shard, other+".zst.bak"):                                    "junk",
		filepath.Join(shard, strings.ToUpper(id.String())+".zst"):                 "not canonical",
		filepath.Join(dir, "chunks", wrongShard, other+".zst"):                    "wrong shard",
		filepath.Join(dir, "chunks", "notashard", other+".zst"):                   "not a shard",
		filepath.Join(dir, "chunks", other[len(other)-2:], other+".zst", "x.zst"): "a directory",
	}
	for p, content := range junk {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := listAll(t, s); !slices.Equal(got, []cid.Cid{id}) {
		t.Errorf("List = %v, want only %s", got, id)
	}
}

// corrupt flips one byte of a chunk file.
func corrupt(t *testing.T, p string, at func(size int) int) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[at(len(b))] ^= 0x40
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDiskCorruptChunk flips one byte of a stored chunk and checks that Get,
// Fsck and Extract all catch it and name it, and that Extract leaves nothing
// behind.
func TestDiskCorruptChunk(t *testing.T) {
	t.Parallel()
	positions := map[string]func(int) int{
		"first":  func(int) int { return 0 },
		"header": func(int) int { return 4 },
		"middle": func(n int) int { return n / 2 },
		"last":   func(n int) int { return n - 1 },
	}
	for _, kind := range []string{"compressed", "raw"} {
		for where, at := range positions {
			t.Run(kind+"/"+where, func(t *testing.T) {
				dir := t.TempDir()
				s := openDisk(t, dir)
				ctx := t.Context()
				files := sampleFiles()
				m := publish(t, s, "HF-S041000005-012", files)
				if err := s.Pin(ctx, m.Name, m.ChunkIDs()); err != nil {
					t.Fatal(err)
				}
				// core.dll is text then random: its first chunk
				// compresses, its last does not.
				f := m.Files[3]
				victim := f.Chunks[0].CID
				if kind == "raw" {
					victim = f.Chunks[len(f.Chunks)-1].CID
				}
				corrupt(t, chunkPath(dir, victim), at)

				_, err := s.Get(ctx, victim)
				if !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), victim.String()) {
					t.Errorf("Get: %v, want ErrCorrupt naming %s", err, victim)
				}
				var problems []store.Problem
				res, err := store.Fsck(ctx, s, func(p store.Problem) { problems = append(problems, p) })
				if err != nil {
					t.Fatalf("Fsck: %v", err)
				}
				if len(problems) != 1 || problems[0].CID != victim || problems[0].Kind != store.Corrupt || !slices.Equal(problems[0].Pins, []string{m.Name}) {
					t.Errorf("Fsck problems = %v, want only %s corrupt, pinned by %s", problems, victim, m.Name)
				}
				if res.Corrupt != 1 || res.Missing != 0 || res.Chunks != len(m.ChunkIDs())-1 {
					t.Errorf("Fsck = %+v", res)
				}
				parent := t.TempDir()
				err = store.Extract(ctx, s, m, filepath.Join(parent, "release"), store.ExtractOptions{})
				if !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), victim.String()) || !strings.Contains(err.Error(), f.Path) {
					t.Errorf("Extract: %v, want ErrCorrupt naming %s and %s", err, victim, f.Path)
				}
				checkNoLeftovers(t, parent)
			})
		}
	}
}

func TestDiskMissingPinnedChunk(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openDisk(t, dir)
	ctx := t.Context()
	m := publish(t, s, "HF-S041000005-012", sampleFiles())
	if err := s.Pin(ctx, m.Name, m.ChunkIDs()); err != nil {
		t.Fatal(err)
	}
	victim := m.Files[0].Chunks[0].CID
	if err := os.Remove(chunkPath(dir, victim)); err != nil {
		t.Fatal(err)
	}
	var problems []store.Problem
	res, err := store.Fsck(ctx, s, func(p store.Problem) { problems = append(problems, p) })
	if err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	if len(problems) != 1 || problems[0].CID != victim || problems[0].Kind != store.Missing || !slices.Equal(problems[0].Pins, []string{m.Name}) {
		t.Errorf("Fsck problems = %v, want %s missing, pinned by %s", problems, victim, m.Name)
	}
	if !strings.Contains(problems[0].String(), m.Name) || !strings.Contains(problems[0].String(), "missing") {
		t.Errorf("Problem.String() = %q", problems[0])
	}
	if res.Missing != 1 || res.Corrupt != 0 {
		t.Errorf("Fsck = %+v", res)
	}
}

// TestDiskGetRefusesOversizeFile checks that a chunk file larger than any
// frame is reported corrupt without being read into memory.
func TestDiskGetRefusesOversizeFile(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	data := storetest.Text(1, 1000)
	id := manifest.ChunkID(data)
	if err := s.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(chunkPath(dir, id), 1<<40); err != nil {
		t.Skip("sparse files not supported:", err)
	}
	if _, err := s.Get(t.Context(), id); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("Get: %v, want ErrCorrupt", err)
	}
	if _, err := s.GetFrame(t.Context(), id); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("GetFrame: %v, want ErrCorrupt", err)
	}
}

func TestDiskGCRemovesStaleTemps(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	data := storetest.Text(1, 1000)
	id := manifest.ChunkID(data)
	if err := s.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(t.Context(), "pkg", []cid.Cid{id}); err != nil {
		t.Fatal(err)
	}
	shard := filepath.Dir(chunkPath(dir, id))
	old := time.Now().Add(-2 * time.Hour)
	temps := map[string]bool{ // path: stale
		filepath.Join(shard, ".tmp-old"):            true,
		filepath.Join(shard, ".tmp-new"):            false,
		filepath.Join(dir, "pins", ".tmp-old"):      true,
		filepath.Join(dir, "pins", ".tmp-new"):      false,
		filepath.Join(shard, ".not-a-temp-but-old"): false,
	}
	for p, stale := range temps {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
		if stale || strings.Contains(p, "not-a-temp") {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	res, err := store.GC(t.Context(), s, store.GCOptions{Grace: time.Hour})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if res.TempsRemoved != 2 || res.Pinned != 1 || res.Deleted != 0 {
		t.Errorf("GC = %+v, want 2 temporary files removed and the pinned chunk kept", res)
	}
	for p, stale := range temps {
		if _, err := os.Stat(p); (err == nil) == stale {
			t.Errorf("%s: stale %v, stat after GC: %v", p, stale, err)
		}
	}
}

// TestDiskCorruptPinStopsGC checks that GC deletes nothing when a pin file
// cannot be read: it would otherwise delete the chunks that pin protects.
func TestDiskCorruptPinStopsGC(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	data := storetest.Text(1, 1000)
	id := manifest.ChunkID(data)
	if err := s.Put(t.Context(), id, data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pins", "pkg"), []byte(id.String()+"\nnot a cid\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pins(t.Context()); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("Pins: %v, want ErrCorrupt", err)
	}
	if _, err := store.GC(t.Context(), s, store.GCOptions{}); err == nil {
		t.Error("GC succeeded with a corrupt pin")
	}
	if ok, _ := s.Has(t.Context(), id); !ok {
		t.Error("GC deleted a chunk while a pin was unreadable")
	}
}

// A writer process killed with SIGKILL in the middle of Puts must leave no
// chunk file whose name is valid but whose content is not. The test
// re-executes its own binary as the writer (TestHelperWriter), waits until
// the writer reports a few complete Puts, kills it at a random moment during
// the next ones, and checks the store.
func TestDiskPutSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts writer processes")
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	for round := range 4 {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriter$", "-test.count=1")
		cmd.Env = append(os.Environ(), helperEnv+"="+dir)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wantPuts := 3 + round*2
		sc := bufio.NewScanner(out)
		puts := 0
		for puts < wantPuts && sc.Scan() {
			if strings.HasPrefix(sc.Text(), "put ") {
				puts++
			}
		}
		if puts < wantPuts {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: writer stopped after %d puts: %v", round, puts, sc.Err())
		}
		// Writers are mid-Put all the time; a random delay lands the kill
		// at a different point of one.
		time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()

		s := openDisk(t, dir)
		ids := listAll(t, s)
		if len(ids) < wantPuts {
			t.Errorf("round %d: %d chunks listed, %d Puts had returned", round, len(ids), wantPuts)
		}
		for _, id := range ids {
			if _, err := s.Get(t.Context(), id); err != nil {
				t.Errorf("round %d: %v", round, err)
			}
		}
		res, err := store.Fsck(t.Context(), s, func(p store.Problem) { t.Errorf("round %d: fsck: %v", round, p) })
		if err != nil {
			t.Fatalf("round %d: Fsck: %v", round, err)
		}
		temps, _ := filepath.Glob(filepath.Join(dir, "chunks", "*", ".tmp-*"))
		t.Logf("round %d: killed after %d puts; %d chunks good, %d temporary files left", round, wantPuts, res.Chunks, len(temps))
	}
}

const helperEnv = "PATCHCTL_STORE_HELPER_DIR"

// TestHelperWriter is the writer process of TestDiskPutSurvivesSIGKILL: four
// goroutines Put large chunks, half compressible and half not, and report
// each completed Put on stdout until the process is killed.
func TestHelperWriter(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("the writer process of TestDiskPutSurvivesSIGKILL")
	}
	s := openDisk(t, dir)
	text := storetest.Text(1, 2<<20)
	done := make(chan error)
	for w := range 4 {
		go func() {
			// Bounded in case the parent never kills: a few hundred
			// Puts take far longer than the parent waits.
			for i := range 500 {
				var data []byte
				if i%2 == 0 {
					data = storetest.Random(uint64(w<<20|i), 1<<20+i)
				} else {
					data = append([]byte(strconv.Itoa(w<<20|i)), text...)
				}
				if err := s.Put(t.Context(), manifest.ChunkID(data), data); err != nil {
					done <- err
					return
				}
				if _, err := fmt.Printf("put %d %d\n", w, i); err != nil {
					done <- err // the parent is gone
					return
				}
			}
			done <- nil
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
