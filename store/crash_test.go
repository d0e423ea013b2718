package store_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

// The crash tests re-execute the test binary as a child (TestHelperProcess)
// that works on a store and prints what returned, kill it with SIGKILL at a
// random moment, and check the store as the next open finds it.

const (
	helperDirEnv  = "PATCHCTL_STORE_HELPER_DIR"
	helperModeEnv = "PATCHCTL_STORE_HELPER_MODE"
	helperSeedEnv = "PATCHCTL_STORE_HELPER_SEED"
	crashPackSize = 1 << 20 // seals and repacks happen often
)

// child starts the helper process in mode on dir.
func child(t *testing.T, mode, dir string, seed int) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperDirEnv+"="+dir, helperModeEnv+"="+mode, helperSeedEnv+"="+strconv.Itoa(seed))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	return cmd, sc
}

// TestDiskCrashLosesNothingAcknowledged kills a process that puts chunks
// from four goroutines, deletes most of them and compacts (sealing the pack
// being written early, as it is mostly dead), at 20 random moments, reopening the same store each time: every chunk whose Put
// returned is there and verifies, every chunk whose Delete returned is gone,
// and nothing torn is ever served.
func TestDiskCrashLosesNothingAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("starts writer processes")
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	dir := t.TempDir()
	present := make(map[string]bool) // acknowledged Puts not deleted since
	deleted := make(map[string]bool) // acknowledged Deletes
	for round := range 20 {
		cmd, sc := child(t, "write", dir, round)
		if !sc.Scan() || sc.Text() != "open" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: the child did not open the store: %q", round, sc.Text())
		}
		// The child holds the store: another process is refused.
		if s, err := store.OpenDisk(dir); !errors.Is(err, store.ErrLocked) {
			t.Errorf("round %d: open while the child has the store: %v, want ErrLocked", round, err)
			if err == nil {
				s.Close()
			}
		}
		lines := make(chan string, 1<<16)
		go func() {
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Time-based: the kill lands anywhere in a Put, a seal, a Delete
		// or a repack.
		time.Sleep(time.Duration(50+r.IntN(400)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		puts, dels := 0, 0
		for line := range lines {
			verb, id, _ := strings.Cut(line, " ")
			switch verb {
			case "put":
				present[id] = true
				puts++
			case "deleting": // may or may not have happened
				delete(present, id)
			case "del":
				deleted[id] = true
				dels++
			}
		}
		s, err := store.OpenDisk(dir)
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		for id := range present {
			c, _ := cid.Decode(id)
			if _, err := s.Get(t.Context(), c); err != nil {
				t.Errorf("round %d: acknowledged chunk: %v", round, err)
			}
		}
		for id := range deleted {
			c, _ := cid.Decode(id)
			if ok, _ := s.Has(t.Context(), c); ok {
				t.Errorf("round %d: chunk %s back after its Delete returned", round, id)
			}
		}
		res, err := store.Fsck(t.Context(), s, func(p store.Problem) { t.Errorf("round %d: fsck: %v", round, p) })
		if err != nil {
			t.Fatalf("round %d: Fsck: %v", round, err)
		}
		packs, live, size := s.PackStats()
		t.Logf("round %d: %d puts and %d deletes returned; store holds %d good chunks in %d packs (%d of %d bytes live); open repaired %+v",
			round, puts, dels, res.Chunks, packs, live, size, s.Recovered())
		if s.Quarantined() != 0 {
			t.Errorf("round %d: %d chunks quarantined", round, s.Quarantined())
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDiskConversionSurvivesKills converts a data dir of the file-per-chunk
// layout, written by that store's own code, in a process killed at a random
// moment, five times over, then finishes: every chunk is in a pack and
// verifies, and the chunk files are gone.
func TestDiskConversionSurvivesKills(t *testing.T) {
	if testing.Short() {
		t.Skip("starts converting processes")
	}
	dir := t.TempDir()
	want := writeFileLayout(t, dir, 3000)
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for round := range 5 {
		cmd, sc := child(t, "open", dir, round)
		time.Sleep(time.Duration(r.IntN(400)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		for sc.Scan() {
			t.Logf("round %d: the child said %q", round, sc.Text())
		}
		files, _ := filepath.Glob(filepath.Join(dir, "chunks", "*", "*.zst"))
		t.Logf("round %d: %d chunk files left", round, len(files))
	}
	s := openDisk(t, dir)
	t.Logf("the last open converted %d chunks", s.Recovered().Converted)
	checkConverted(t, s, dir, want)
}

// writeFileLayout writes n chunks with the file-per-chunk store and returns
// their contents by ID; a few get an old modification time, which the
// conversion keeps.
func writeFileLayout(t *testing.T, dir string, n int) map[cid.Cid][]byte {
	t.Helper()
	old, err := store.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := old.NewBatch()
	want := make(map[cid.Cid][]byte)
	var g errgroup.Group
	g.SetLimit(8)
	for i := range n {
		data := storetest.Text(uint64(i), 8<<10+i%(8<<10))
		if i%3 == 0 {
			data = storetest.Random(uint64(i), 8<<10+i%(8<<10))
		}
		want[manifest.ChunkID(data)] = data
		g.Go(func() error {
			_, err := b.Add(t.Context(), data)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := old.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	return want
}

func checkConverted(t *testing.T, s *store.Disk, dir string, want map[cid.Cid][]byte) {
	t.Helper()
	if got := listAll(t, s); len(got) != len(want) {
		t.Errorf("%d chunks after conversion, want %d", len(got), len(want))
	}
	for id, data := range want {
		got, err := s.Get(t.Context(), id)
		if err != nil || string(got) != string(data) {
			t.Fatalf("Get %s after conversion: %v", id, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks")); !os.IsNotExist(err) {
		t.Errorf("chunks directory left after conversion: %v", err)
	}
}

// TestDiskConvertsTheFileLayout opens data dirs written by the file-per-chunk
// store: its chunks, their times and its pins carry over; a corrupt chunk
// file is reported and not converted; files that are not chunks stay.
func TestDiskConvertsTheFileLayout(t *testing.T) {
	dir := t.TempDir()
	want := writeFileLayout(t, dir, 200)
	var ids []cid.Cid
	for id := range want {
		ids = append(ids, id)
	}
	old, _ := store.OpenFileStore(dir)
	if err := old.Pin(t.Context(), "HF-S041000005-012", ids[:10]); err != nil {
		t.Fatal(err)
	}
	// One chunk file made old, one corrupted.
	stale := ids[0]
	p := chunkFile(dir, stale)
	then := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
	if err := os.Chtimes(p, then, then); err != nil {
		t.Fatal(err)
	}
	bad := ids[1]
	flip(t, chunkFile(dir, bad), 20)
	delete(want, bad)

	var reported []cid.Cid
	s := openDiskWith(t, dir, store.DiskOptions{OnCorrupt: func(id cid.Cid, err error) { reported = append(reported, id) }})
	if r := s.Recovered(); r.Converted != 199 || r.CorruptFiles != 1 {
		t.Errorf("Recovered = %+v, want 199 converted and 1 corrupt", r)
	}
	if len(reported) != 1 || reported[0] != bad {
		t.Errorf("reported %v, want %s", reported, bad)
	}
	checkConverted(t, s, dir, want)
	info, err := s.Stat(t.Context(), stale)
	if err != nil || !info.Modified.Equal(then) {
		t.Errorf("Stat of a converted chunk = %+v, %v; want its file's time %v", info, err, then)
	}
	pins, err := s.Pins(t.Context())
	if err != nil || len(pins["HF-S041000005-012"]) != 10 {
		t.Errorf("pins after conversion = %v, %v", pins, err)
	}
}

func chunkFile(dir string, id cid.Cid) string {
	s := id.String()
	return filepath.Join(dir, "chunks", s[len(s)-2:], s+".zst")
}

// TestHelperProcess is the child of the crash tests.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("the child process of the crash tests")
	}
	seed, _ := strconv.Atoi(os.Getenv(helperSeedEnv))
	switch os.Getenv(helperModeEnv) {
	case "open":
		s, err := store.OpenDisk(dir)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("converted %d\n", s.Recovered().Converted)
	case "write":
		crashWriter(t, dir, seed)
	}
}

// crashWriter puts chunks from four goroutines, which delete most of them at
// once, and deletes more and compacts from a fifth, printing each Put and
// Delete that returned, until killed.
func crashWriter(t *testing.T, dir string, seed int) {
	s, err := store.OpenDiskWith(dir, store.DiskOptions{PackSize: crashPackSize})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("open")
	ctx := context.Background()
	text := storetest.Text(1, 300<<10)
	ids := make(chan cid.Cid, 1024)
	g, ctx := errgroup.WithContext(ctx)
	for w := range 4 {
		g.Go(func() error {
			// Bounded in case the parent never kills.
			for i := range 5000 {
				n := seed<<24 | w<<20 | i
				var data []byte
				switch i % 3 {
				case 0:
					data = storetest.Random(uint64(n), 16<<10+i%(48<<10))
				case 1:
					data = append([]byte(strconv.Itoa(n)), text[:i%(250<<10)]...)
				default:
					data = storetest.Random(uint64(n), 100<<10)
				}
				id := manifest.ChunkID(data)
				if err := s.Put(ctx, id, data); err != nil {
					return err
				}
				if _, err := fmt.Printf("put %s\n", id); err != nil {
					return err // the parent is gone
				}
				// Most chunks are deleted at once, so that the pack
				// being written is mostly dead when the fifth goroutine
				// compacts, which then seals it early.
				if (i+w)%4 != 0 {
					fmt.Printf("deleting %s\n", id)
					if err := s.Delete(ctx, id); err != nil {
						return err
					}
					fmt.Printf("del %s\n", id)
					continue
				}
				select {
				case ids <- id:
				default:
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		for i := 0; ; i++ {
			var id cid.Cid
			select {
			case id = <-ids:
			case <-time.After(10 * time.Second):
				return nil // the writers are done
			}
			if i%3 != 0 {
				continue
			}
			fmt.Printf("deleting %s\n", id)
			if err := s.Delete(ctx, id); err != nil {
				return err
			}
			fmt.Printf("del %s\n", id)
			if i%60 == 0 {
				if _, _, err := s.Compact(); err != nil {
					return err
				}
			}
		}
	})
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}
