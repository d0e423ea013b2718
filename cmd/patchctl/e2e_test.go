package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/testnet/packgen"
)

// The end-to-end tests run the real binary as a user would, in real
// processes, against a data dir in t.TempDir().

var patchctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "patchctl-bin-")
	if err != nil {
		panic(err)
	}
	patchctlBin = filepath.Join(dir, "patchctl")
	build := exec.Command("go", "build", "-o", patchctlBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		panic("build patchctl: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// patchctl runs the binary with the data dir of env and returns what it did.
func (e *env) patchctl(args ...string) result {
	e.t.Helper()
	cmd := exec.Command(patchctlBin, args...)
	cmd.Env = append(os.Environ(), "PATCHCTL_DATA_DIR="+e.data)
	cmd.Dir = e.dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			e.t.Fatalf("run patchctl %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return result{code, stdout.String(), stderr.String()}
}

func (e *env) ok(args ...string) string {
	e.t.Helper()
	r := e.patchctl(args...)
	if r.code != 0 {
		e.t.Fatalf("patchctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func (e *env) fails(code int, wantInStderr string, args ...string) result {
	e.t.Helper()
	r := e.patchctl(args...)
	if r.code != code {
		e.t.Fatalf("patchctl %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr+r.stdout, wantInStderr) {
		e.t.Fatalf("patchctl %s: output lacks %q\nstdout: %s\nstderr: %s", strings.Join(args, " "), wantInStderr, r.stdout, r.stderr)
	}
	return r
}

type env struct {
	t    *testing.T
	dir  string // working directory: keys, trust roots, packs
	data string // data dir
}

// newEnv makes a key, a trust root and a pack directory with three files.
func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, data: filepath.Join(dir, "data")}
	e.ok("key", "generate", "--out", "release")
	e.ok("trust", "init", "--key", "release.key", "--out", "trust.json")
	writeGenerated(t, filepath.Join(dir, "pack", "HF-S041000005-012.zip"), 1, 3<<20, packgen.Incompressible)
	writeGenerated(t, filepath.Join(dir, "pack", "bin", "tool"), 2, 2<<20, packgen.Software)
	writeGenerated(t, filepath.Join(dir, "pack", "empty.txt"), 3, 0, packgen.Software)
	return e
}

func writeGenerated(t *testing.T, path string, seed uint64, size int64, kind packgen.Kind) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, packgen.New(seed, size, kind)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

type publishJSON struct {
	Name        string `json:"name"`
	CID         string `json:"cid"`
	Sequence    uint64 `json:"sequence"`
	TotalBytes  int64  `json:"total_bytes"`
	StoredBytes int64  `json:"stored_bytes"`
	NewBytes    int64  `json:"new_bytes"`
	Chunks      int    `json:"chunks"`
}

func (e *env) publish(args ...string) publishJSON {
	e.t.Helper()
	out := e.ok(append([]string{"publish", "--json", "--key", "release.key"}, args...)...)
	var p publishJSON
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		e.t.Fatalf("publish --json printed %q: %v", out, err)
	}
	return p
}

// storedChunks lists the chunks the data dir's store holds, and where each
// is, opening the store between commands.
func (e *env) storedChunks() map[cid.Cid]store.Location {
	e.t.Helper()
	return storedChunksIn(e.t, e.data)
}

func storedChunksIn(t *testing.T, dataDir string) map[cid.Cid]store.Location {
	t.Helper()
	s, err := store.OpenDiskReadOnly(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	chunks := map[cid.Cid]store.Location{}
	err = s.List(t.Context(), func(id cid.Cid) error {
		loc, err := s.Locate(t.Context(), id)
		chunks[id] = loc
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return chunks
}

// packBytes is the size of the pack files under a data dir: what a running
// process has written to its store, watched without opening it.
func packBytes(dataDir string) int64 {
	packs, _ := filepath.Glob(filepath.Join(dataDir, "packs", "*.pack"))
	var n int64
	for _, p := range packs {
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func sameTree(t *testing.T, want, got string) {
	t.Helper()
	err := filepath.WalkDir(want, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		a, _ := os.ReadFile(p)
		b, err := os.ReadFile(filepath.Join(got, rel))
		if err != nil {
			t.Errorf("%s missing from %s: %v", rel, got, err)
			return nil
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPublishVerifyExtractRoundTrip(t *testing.T) {
	e := newEnv(t)
	keyInfo, err := os.Stat(filepath.Join(e.dir, "release.key"))
	if err != nil {
		t.Fatal(err)
	}
	if keyInfo.Mode().Perm() != 0o600 {
		t.Errorf("release.key has mode %o, want 600", keyInfo.Mode().Perm())
	}
	p := e.publish("--name", "HF-S041000005-012", "--out", "env.json", "pack")
	if p.Name != "HF-S041000005-012" || p.Sequence != 1 || p.TotalBytes != 5<<20 || p.Chunks == 0 || p.NewBytes != p.StoredBytes {
		t.Fatalf("publish summary %+v", p)
	}
	// The incompressible 3 MiB cannot shrink; the 2 MiB of software does.
	if p.StoredBytes >= p.TotalBytes || p.StoredBytes < 3<<20 {
		t.Errorf("stored %d of %d bytes", p.StoredBytes, p.TotalBytes)
	}
	envelope, err := os.ReadFile(filepath.Join(e.dir, "env.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(envelope, []byte(`"HF-S041000005-012"`)) {
		t.Errorf("the release name is not readable in the envelope:\n%s", envelope)
	}
	for _, ref := range []string{"HF-S041000005-012", p.CID, "env.json"} {
		e.ok("verify", "--trust", "trust.json", ref)
	}
	e.ok("extract", "--trust", "trust.json", "HF-S041000005-012", "out")
	sameTree(t, filepath.Join(e.dir, "pack"), filepath.Join(e.dir, "out"))
	if fi, err := os.Stat(filepath.Join(e.dir, "out", "empty.txt")); err != nil || fi.Size() != 0 {
		t.Errorf("empty file: %v %v", fi, err)
	}
	e.fails(4, "not empty", "extract", "HF-S041000005-012", "out")

	// Publishing the same bytes again under another name stores nothing new.
	again := e.publish("--name", "SP-S041000005", "pack")
	if again.NewBytes != 0 || again.StoredBytes != p.StoredBytes {
		t.Errorf("republish: new %d stored %d, want 0 and %d", again.NewBytes, again.StoredBytes, p.StoredBytes)
	}
	var ls struct {
		Releases []struct {
			Name          string `json:"name"`
			Chunks        int    `json:"chunks"`
			ChunksPresent int    `json:"chunks_present"`
		} `json:"releases"`
	}
	// --json is accepted before the subcommand too.
	if err := json.Unmarshal([]byte(e.ok("--json", "ls")), &ls); err != nil {
		t.Fatal(err)
	}
	if len(ls.Releases) != 2 || ls.Releases[0].ChunksPresent != ls.Releases[0].Chunks {
		t.Errorf("ls: %+v", ls)
	}
	e.ok("fsck")
}

func TestDefaultNameAndSequence(t *testing.T) {
	e := newEnv(t)
	p := e.publish("pack/HF-S041000005-012.zip")
	if p.Name != "HF-S041000005-012" {
		t.Errorf("default name %q", p.Name)
	}
	p2 := e.publish("pack/HF-S041000005-012.zip")
	if p2.Sequence != 2 || p2.NewBytes != 0 {
		t.Errorf("re-publish: %+v", p2)
	}
	e.fails(1, "rollback", "publish", "--key", "release.key", "--sequence", "2", "--label", "fix=again", "pack/HF-S041000005-012.zip")
}

func TestTamperedEnvelopesFailVerification(t *testing.T) {
	e := newEnv(t)
	e.publish("--name", "HF-S041000005-012", "--out", "env.json", "pack")
	original, err := os.ReadFile(filepath.Join(e.dir, "env.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(original, &doc); err != nil {
		t.Fatal(err)
	}
	payload := doc["payload"].(string)
	flipped := []byte(payload)
	flipped[len(flipped)/2] ^= 'A' ^ 'B'
	for name, edit := range map[string]func(map[string]any){
		"readable name":     func(d map[string]any) { d["name"] = "HF-S041000005-013" },
		"readable sequence": func(d map[string]any) { d["sequence"] = 9 },
		"payload":           func(d map[string]any) { d["payload"] = string(flipped) },
		"no signatures":     func(d map[string]any) { d["signatures"] = []any{} },
	} {
		t.Run(name, func(t *testing.T) {
			d := map[string]any{}
			json.Unmarshal(original, &d)
			edit(d)
			data, _ := json.Marshal(d)
			path := filepath.Join(e.dir, "tampered.json")
			os.WriteFile(path, data, 0o644)
			e.fails(1, "", "verify", "--trust", "trust.json", "tampered.json")
		})
	}
	// A trust root of another key knows nothing of the signer.
	e.ok("key", "generate", "--out", "other")
	e.ok("trust", "init", "--key", "other.key", "--out", "other-trust.json")
	e.fails(1, "no key of the trust root", "verify", "--trust", "other-trust.json", "env.json")
}

func TestCorruptAndMissingChunks(t *testing.T) {
	e := newEnv(t)
	p := e.publish("--name", "HF-S041000005-012", "pack")
	chunks := e.storedChunks()
	if len(chunks) != p.Chunks {
		t.Fatalf("%d chunks stored, publish said %d chunks", len(chunks), p.Chunks)
	}
	ids := slices.SortedFunc(maps.Keys(chunks), func(a, b cid.Cid) int { return strings.Compare(a.KeyString(), b.KeyString()) })
	victim := ids[len(ids)/2]
	flipByte(t, chunks[victim].Pack, chunks[victim].Offset+chunks[victim].Size-10)

	// The first read of the bad frame names it, and quarantines it: from
	// then on the chunk is missing, for a fetch to bring it again.
	r := e.fails(1, victim.String(), "fsck")
	if strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("fsck should name exactly one chunk:\n%s", r.stdout)
	}
	if _, held := e.storedChunks()[victim]; held {
		t.Errorf("the corrupt chunk %s is still in the store after fsck", victim)
	}
	e.fails(1, victim.String(), "verify", "--trust", "trust.json", "HF-S041000005-012")
	e.fails(1, victim.String(), "extract", "HF-S041000005-012", "out")
	if _, err := os.Stat(filepath.Join(e.dir, "out")); !os.IsNotExist(err) {
		t.Errorf("a failed extract left %s behind: %v", "out", err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(e.dir, ".out*"))
	if len(leftovers) > 0 {
		t.Errorf("a failed extract left staging behind: %v", leftovers)
	}
	r = e.fails(1, "missing", "fsck")
	if !strings.Contains(r.stdout, victim.String()) || !strings.Contains(r.stdout, "HF-S041000005-012") {
		t.Errorf("fsck should name the missing chunk and its release:\n%s", r.stdout)
	}

	// A corrupt chunk verify meets first is named the same way.
	other := ids[0]
	flipByte(t, chunks[other].Pack, chunks[other].Offset+chunks[other].Size/2)
	e.fails(1, other.String(), "verify", "--trust", "trust.json", "HF-S041000005-012")
}

// flipByte flips one bit of the byte at off in the file at path.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveAndGC(t *testing.T) {
	e := newEnv(t)
	e.publish("--name", "HF-S041000005-012", "pack")
	before := len(e.storedChunks())
	if before == 0 {
		t.Fatal("publish stored no chunks")
	}
	e.ok("gc", "--grace", "0s")
	if n := len(e.storedChunks()); n != before {
		t.Fatalf("gc removed pinned chunks: %d -> %d", before, n)
	}
	e.ok("rm", "HF-S041000005-012")
	e.ok("gc", "--grace", "1h")
	if n := len(e.storedChunks()); n != before {
		t.Fatalf("gc removed chunks within the grace period: %d -> %d", before, n)
	}
	out := e.ok("gc", "--json", "--grace", "0s")
	if n := len(e.storedChunks()); n != 0 {
		t.Fatalf("gc left %d unpinned chunks", n)
	}
	var rep struct {
		Removed        int   `json:"removed_chunks"`
		SpaceReclaimed int64 `json:"space_reclaimed"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("gc --json printed %q: %v", out, err)
	}
	if rep.Removed != before || rep.SpaceReclaimed <= 0 {
		t.Errorf("gc reported %+v, want %d chunks removed and disk space reclaimed", rep, before)
	}
	if packs, _ := filepath.Glob(filepath.Join(e.data, "packs", "*.pack")); len(packs) > 1 {
		t.Errorf("%d packs are left holding nothing: %v", len(packs), packs)
	}
	e.fails(3, "not found", "verify", "--trust", "trust.json", "HF-S041000005-012")
}

func TestUsageErrors(t *testing.T) {
	e := newEnv(t)
	e.fails(2, "", "publish", "--key", "release.key")
	e.fails(2, "", "verify", "--trust", "trust.json")
	e.fails(2, "", "no-such-command")
	e.fails(2, "exists", "key", "generate", "--out", "release")
	e.fails(1, "HF-", "publish", "--key", "release.key", "--name", "HF-X1", "pack")
	e.fails(3, "", "extract", "SP-S041000005", "out")
	e.fails(2, "--out is required", "key", "generate")
	e.fails(2, "--trust is required", "verify", "SP-S041000005")
	e.fails(2, "--lifetime must be positive", "publish", "--key", "release.key", "--lifetime", "0s", "pack")
	e.fails(2, "--lifetime must be positive", "deploy", "--origin", "http://127.0.0.1:1", "--key", "release.key", "--lifetime", "-1h", "SP-S041000005")
}

func TestFlagsMayFollowTheArguments(t *testing.T) {
	e := newEnv(t)
	// The subcommand's flags after its arguments, and a global flag after
	// the subcommand.
	out := e.ok("publish", "pack", "--name", "SP-S041000005", "--key", "release.key", "--json")
	var p publishJSON
	if err := json.Unmarshal([]byte(out), &p); err != nil || p.Name != "SP-S041000005" {
		t.Fatalf("publish with its flags last printed %q (%v)", out, err)
	}
	other := filepath.Join(e.dir, "other")
	e.ok("publish", "pack", "--data-dir", other, "--key", "release.key", "--name", "SP-S041000006")
	if !strings.Contains(e.ok("ls", "--data-dir", other), "SP-S041000006") {
		t.Error("--data-dir after the subcommand did not choose the data dir")
	}
	if out := e.ok("verify", "SP-S041000005", "--trust", "trust.json", "--json"); !strings.Contains(out, "SP-S041000005") {
		t.Errorf("verify with its flags last printed %q", out)
	}
	// What follows -- is an argument, even if it looks like a flag.
	e.fails(1, `release name "-x"`, "verify", "--trust", "trust.json", "--", "-x")
	if out := e.ok("--version"); !strings.HasPrefix(out, "patchctl version ") {
		t.Errorf("--version printed %q", out)
	}
	if out := e.ok("help"); !strings.Contains(out, "COMMANDS") {
		t.Errorf("help printed %q", out)
	}
}

func TestTrustRotation(t *testing.T) {
	e := newEnv(t)
	var oldKey struct {
		KeyID string `json:"key_id"`
	}
	// The first key's ID, from the root it signed.
	var root struct {
		Keys []string `json:"keys"`
	}
	if err := json.Unmarshal([]byte(e.ok("trust", "show", "--json", "trust.json")), &root); err != nil || len(root.Keys) != 1 {
		t.Fatalf("trust show: %v %+v", err, root)
	}
	oldKey.KeyID = root.Keys[0]
	e.ok("key", "generate", "--out", "next")
	// A key ID that is not in the root is a mistake, not a no-op that
	// leaves the key meant to go trusted.
	e.fails(2, "no key of root version 1 has that ID", "trust", "rotate", "--trust", "trust.json", "--key", "next.key", "--sign", "release.key", "--remove", oldKey.KeyID[:8]+"typo", "--out", "typo.json")
	// Only the new key signs: the old root's threshold is not met.
	e.fails(1, "", "trust", "rotate", "--trust", "trust.json", "--key", "next.key", "--remove", oldKey.KeyID, "--out", "bad.json")
	e.ok("trust", "rotate", "--trust", "trust.json", "--key", "next.key", "--sign", "release.key", "--remove", oldKey.KeyID, "--out", "trust2.json")
	var next struct {
		Version uint64   `json:"version"`
		Keys    []string `json:"keys"`
	}
	if err := json.Unmarshal([]byte(e.ok("trust", "show", "--json", "trust2.json")), &next); err != nil {
		t.Fatal(err)
	}
	if next.Version != 2 || len(next.Keys) != 1 || next.Keys[0] == oldKey.KeyID {
		t.Fatalf("rotated root: %+v", next)
	}
	e.ok("publish", "--key", "next.key", "--name", "SP-S041000006", "pack")
	e.ok("verify", "--trust", "trust2.json", "SP-S041000006")
	e.fails(1, "", "verify", "--trust", "trust.json", "SP-S041000006")
}

// The production binary links no test harness: the demo, which runs a
// testnet in one process, is a build of its own (tag demo).
func TestTheProductionBinaryLinksNoTestnet(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.Contains(pkg, "/testnet") {
			t.Errorf("patchctl links %s", pkg)
		}
	}
	demo, err := exec.Command("go", "list", "-deps", "-tags", "demo", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(demo), "github.com/patchctl/patchctl/testnet\n") {
		t.Error("the demo build does not link the testnet it runs")
	}
}

func TestAnUnreadableCatalogEntryStopsNothingAndCanBeRemoved(t *testing.T) {
	e := newEnv(t)
	e.publish("--name", "SP-S041000005", "pack")
	e.publish("--name", "SP-S041000006", "pack")
	bad := filepath.Join(e.data, "releases", "SP-S041000005.json")
	if err := os.WriteFile(bad, []byte("{damaged"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.patchctl("ls")
	if r.code != 0 || !strings.Contains(r.stdout, "SP-S041000006") || !strings.Contains(r.stderr, "patchctl rm SP-S041000005 removes it") {
		t.Errorf("ls with a damaged entry: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	// serve serves the rest.
	serve := exec.Command(patchctlBin, "--data-dir", e.data, "serve", "--listen", "/ip4/127.0.0.1/tcp/0")
	stdout, err := serve.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	serve.Stderr = &stderr
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	serve.Process.Kill()
	serve.Wait()
	if err != nil || !strings.Contains(line, "/p2p/") || !strings.Contains(stderr.String(), "SP-S041000005.json is unreadable") {
		t.Errorf("serve with a damaged entry: %q (%v), stderr %s", line, err, stderr.String())
	}
	if out := e.ok("rm", "SP-S041000005"); !strings.Contains(out, "unreadable") {
		t.Errorf("rm of the damaged entry printed %q", out)
	}
	r = e.patchctl("ls")
	if r.code != 0 || r.stderr != "" || strings.Contains(r.stdout, "SP-S041000005") {
		t.Errorf("ls after rm: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
}
