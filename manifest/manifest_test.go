package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

var update = flag.Bool("update", false, "rewrite the golden files and fuzz seed corpora in testdata")

// goldenManifestCID is the CID of testdata/manifest.golden.json, the canonical
// encoding of fixtureManifest. A change to it is a change of the manifest
// format: every signed manifest in the field would get a new ID.
const goldenManifestCID = "bagaaiera4r2sgszgne4lbb63lr6u5ku234ufwzfydr6hy7or2rpdfq2cpaaq"

// fixtureTime is the creation time of every fixture, and now is a moment
// in their validity.
var fixtureTime = time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)

func fixtureNow() time.Time { return fixtureTime.Add(30 * 24 * time.Hour) }

// fileOf returns a manifest file holding content, cut into chunks of the
// given sizes (which must add up to len(content)).
func fileOf(path string, mode uint32, content string, cuts ...int) File {
	sum := sha256.Sum256([]byte(content))
	f := File{Path: path, Mode: mode, Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:])}
	rest := content
	for _, n := range cuts {
		f.Chunks = append(f.Chunks, ChunkRef{CID: ChunkID([]byte(rest[:n])), Size: uint32(n)})
		rest = rest[n:]
	}
	return f
}

// fixtureManifest returns a fixed manifest using every field.
func fixtureManifest() *Manifest {
	return &Manifest{
		Schema:   SchemaVersion,
		Name:     "HF-S041000005-012",
		Channel:  "stable",
		Sequence: 3,
		Created:  fixtureTime,
		Expires:  fixtureTime.AddDate(1, 0, 0),
		Chunking: DefaultChunkParams,
		Files: []File{
			fileOf("README.txt", 0o644, "hello world\n", 12),
			fileOf("bin/apply-patch.sh", 0o755, "#!/bin/sh\nset -eu\necho applying <HF-012> & done\n", 20, 28),
			fileOf("conf/empty.cfg", 0o600, ""),
		},
		Install:    Install{Hook: []string{"bin/apply-patch.sh", "--quiet"}, RestartRequired: true},
		Supersedes: []string{"HF-S041000005-011"},
		Requires:   []string{"SP-S041000005"},
		Labels:     map[string]string{"os": "linux", "arch": "amd64", "ticket": "CHG-4711"},
	}
}

// encodeUnchecked encodes m the way Marshal does but without validating it,
// to build invalid documents for rejection tests.
func encodeUnchecked(t testing.TB, m *Manifest) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func mustMarshal(t testing.TB, m *Manifest) []byte {
	t.Helper()
	b, err := Marshal(m)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	return b
}

// writeOrCompareGolden compares got with testdata/name, or rewrites the file
// with -update.
func writeOrCompareGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the canonical encoding:\n got %s\nwant %s\nIf the format change is intended, run go test -update and pin the new CID.", path, got, want)
	}
}

func TestManifestGolden(t *testing.T) {
	got := mustMarshal(t, fixtureManifest())
	writeOrCompareGolden(t, "manifest.golden.json", got)
	if id := ManifestID(got).String(); id != goldenManifestCID {
		t.Errorf("manifest CID = %s, want %s", id, goldenManifestCID)
	}
	golden, err := os.ReadFile(filepath.Join("testdata", "manifest.golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse(golden)
	if err != nil {
		t.Fatalf("Parse(golden): %v", err)
	}
	if again := mustMarshal(t, m); !bytes.Equal(again, golden) {
		t.Errorf("Marshal(Parse(golden)) differs from golden:\n%s", again)
	}
}

func TestMarshalIsDeterministic(t *testing.T) {
	a := mustMarshal(t, fixtureManifest())
	m := fixtureManifest()
	// Another zone and a sub-second part name the same canonical second.
	tokyo := time.FixedZone("JST", 9*3600)
	m.Created = m.Created.In(tokyo).Add(400 * time.Millisecond)
	m.Expires = m.Expires.In(tokyo)
	if b := mustMarshal(t, m); !bytes.Equal(a, b) {
		t.Errorf("equal manifests encode differently:\n%s\n%s", a, b)
	}
}

// TestMarshalTruncatesBeforeValidating is the regression test for Marshal
// validating before truncating to seconds: it accepted an expiry a fraction
// of a second after creation and wrote bytes that Parse then refused.
func TestMarshalTruncatesBeforeValidating(t *testing.T) {
	m := fixtureManifest()
	m.Created = fixtureTime.Add(100 * time.Millisecond)
	m.Expires = fixtureTime.Add(900 * time.Millisecond)
	if b, err := Marshal(m); !errors.Is(err, ErrInvalid) {
		t.Errorf("Marshal with expiry and creation in the same second = %s, %v; want ErrInvalid", b, err)
	}
}

func TestParseRejects(t *testing.T) {
	good := mustMarshal(t, fixtureManifest())
	replace := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("fixture has no %q", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	mutate := func(f func(m *Manifest)) []byte {
		m := fixtureManifest()
		f(m)
		return encodeUnchecked(t, m)
	}
	chunkCID := func(codec uint64, code uint64, digest []byte) string {
		h, err := mh.Encode(digest, code)
		if err != nil {
			t.Fatal(err)
		}
		return cid.NewCidV1(codec, h).String()
	}
	readme := ChunkID([]byte("hello world\n")).String()
	sum := sha256.Sum256([]byte("hello world\n"))
	sum512 := make([]byte, 64)

	tests := []struct {
		name string
		data []byte
		want error
		why  string // a part of the error message naming the reason
	}{
		{"unknown schema version", replace(`"schema":1`, `"schema":2`), ErrUnknownSchema, "schema 2"},
		{"no schema", replace(`"schema":1,`, ``), ErrUnknownSchema, "schema 0"},
		{"oversize", make([]byte, MaxManifestSize+1), ErrTooLarge, "more than"},
		{"empty", nil, ErrInvalid, "unexpected end"},
		{"not an object", []byte(`[1]`), ErrInvalid, "cannot unmarshal array"},
		{"absolute path", replace(`"README.txt"`, `"/README.txt"`), ErrInvalid, "is absolute"},
		{"dot-dot path", replace(`"README.txt"`, `"../README.txt"`), ErrInvalid, "leaves its root"},
		{"dot-dot inside path", replace(`"bin/apply-patch.sh"`, `"bin/../../apply-patch.sh"`), ErrInvalid, "not clean"},
		{"unclean path", replace(`"bin/apply-patch.sh"`, `"bin//apply-patch.sh"`), ErrInvalid, "not clean"},
		{"backslash path", replace(`"bin/apply-patch.sh"`, `"bin\\apply-patch.sh"`), ErrInvalid, "contains \\"},
		{"windows trailing dot", replace(`"README.txt"`, `"README.txt."`), ErrInvalid, "ending in a dot"},
		{"duplicate path", mutate(func(m *Manifest) { m.Files[2].Path = "README.txt"; m.Files[2] = fileOf("README.txt", 0o644, "") }), ErrInvalid, "appears twice"},
		{"duplicate path ignoring case", mutate(func(m *Manifest) { m.Files[2] = fileOf("readme.TXT", 0o644, "") }), ErrInvalid, "appears twice"},
		{"file is also a directory", mutate(func(m *Manifest) { m.Files[2] = fileOf("bin", 0o644, "") }), ErrInvalid, "is a file and a directory"},
		{"file is also a directory ignoring case", mutate(func(m *Manifest) { m.Files[2] = fileOf("BIN", 0o644, "") }), ErrInvalid, "is a file and a directory"},
		{"sizes do not add up", mutate(func(m *Manifest) { m.Files[1].Size++ }), ErrInvalid, "add up to 48 bytes, file size is 49"},
		{"negative size", mutate(func(m *Manifest) { m.Files[2].Size = -1 }), ErrInvalid, "negative size"},
		{"zero-size chunk", mutate(func(m *Manifest) {
			m.Files[2].Chunks = []ChunkRef{{CID: ChunkID(nil), Size: 0}}
		}), ErrInvalid, "has size 0"},
		{"chunk above max", mutate(func(m *Manifest) {
			n := DefaultChunkParams.Max + 1
			m.Files[2] = fileOf("conf/empty.cfg", 0o600, strings.Repeat("x", n), n)
		}), ErrInvalid, "has size 262145"},
		{"setuid mode", replace(`"mode":493`, `"mode":2541`), ErrInvalid, "mode 4755"},
		{"file type in mode", mutate(func(m *Manifest) { m.Files[0].Mode = 0o100644 }), ErrInvalid, "mode 100644"},
		{"upper-case digest", mutate(func(m *Manifest) { m.Files[0].SHA256 = strings.ToUpper(m.Files[0].SHA256) }), ErrInvalid, "lower-case hex"},
		{"short digest", mutate(func(m *Manifest) { m.Files[0].SHA256 = m.Files[0].SHA256[:62] }), ErrInvalid, "lower-case hex"},
		{"indented", func() []byte {
			var b bytes.Buffer
			if err := json.Indent(&b, good, "", "  "); err != nil {
				t.Fatal(err)
			}
			return b.Bytes()
		}(), ErrInvalid, "canonical"},
		{"space after colon", replace(`"schema":1`, `"schema": 1`), ErrInvalid, "canonical"},
		{"trailing newline", append(append([]byte(nil), good...), '\n'), ErrInvalid, "canonical"},
		{"reordered keys", func() []byte {
			var v map[string]any
			if err := json.Unmarshal(good, &v); err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(v) // map keys sorted: "channel" first
			if err != nil {
				t.Fatal(err)
			}
			return b
		}(), ErrInvalid, "canonical"},
		{"escaped letter", replace(`"stable"`, `"st\u0061ble"`), ErrInvalid, "canonical"},
		{"key in other case", replace(`"name":`, `"Name":`), ErrInvalid, "canonical"},
		{"duplicate key", replace(`"channel":"stable"`, `"channel":"beta","channel":"stable"`), ErrInvalid, "canonical"},
		{"fractional second", replace(`"created":"2025-03-01T09:00:00Z"`, `"created":"2025-03-01T09:00:00.5Z"`), ErrInvalid, "canonical"},
		{"time zone offset", replace(`"created":"2025-03-01T09:00:00Z"`, `"created":"2025-03-01T18:00:00+09:00"`), ErrInvalid, "canonical"},
		{"float size", replace(`"size":12}`, `"size":12.0}`), ErrInvalid, "cannot unmarshal"},
		{"null files", mutate(func(m *Manifest) { m.Files = nil }), ErrInvalid, "canonical"},
		{"empty supersedes", mutate(func(m *Manifest) { m.Supersedes = []string{} }), ErrInvalid, "canonical"},
		{"unknown field", replace(`{"schema":1,`, `{"schema":1,"signed_by":"me",`), ErrInvalid, "unknown field \"signed_by\""},
		{"unknown chunk field", replace(`"size":12}`, `"size":12,"zstd":true}`), ErrInvalid, "unknown field \"zstd\""},
		{"chunk CID with JSON codec", replace(readme, chunkCID(codecJSON, mh.SHA2_256, sum[:])), ErrInvalid, "not a CIDv1 raw SHA-256"},
		{"chunk CID with dag-pb codec", replace(readme, chunkCID(cid.DagProtobuf, mh.SHA2_256, sum[:])), ErrInvalid, "not a CIDv1 raw SHA-256"},
		{"chunk CID with SHA-512", replace(readme, chunkCID(cid.Raw, mh.SHA2_512, sum512)), ErrInvalid, "not a CIDv1 raw SHA-256"},
		{"chunk CID with identity hash", replace(readme, chunkCID(cid.Raw, mh.IDENTITY, []byte("hi"))), ErrInvalid, "not a CIDv1 raw SHA-256"},
		{"chunk CIDv0", replace(readme, cid.NewCidV0(ChunkID(nil).Hash()).String()), ErrInvalid, "not a CIDv1 raw SHA-256"},
		{"chunk CID in base58", replace(readme, func() string {
			s, err := ChunkID([]byte("hello world\n")).StringOfBase('z')
			if err != nil {
				t.Fatal(err)
			}
			return s
		}()), ErrInvalid, "canonical"},
		{"chunk CID garbage", replace(readme, "bafkreinotacid"), ErrInvalid, "invalid cid"},
		{"trailing data", append(append([]byte(nil), good...), []byte(`{}`)...), ErrInvalid, "after top-level value"},
		{"trailing garbage", append(append([]byte(nil), good...), []byte(` x`)...), ErrInvalid, "after top-level value"},
		{"bad name", replace(`"name":"HF-S041000005-012"`, `"name":"HF-S04100005-012"`), ErrInvalid, "13 characters"},
		{"bad channel", replace(`"channel":"stable"`, `"channel":".hidden"`), ErrInvalid, "must start with"},
		{"zero sequence", replace(`"sequence":3`, `"sequence":0`), ErrInvalid, "sequence must be"},
		{"expires before created", replace(`"expires":"2026-03-01T09:00:00Z"`, `"expires":"2024-03-01T09:00:00Z"`), ErrInvalid, "must come after"},
		{"bad chunking", replace(`"avg":65536`, `"avg":65535`), ErrInvalid, "not a power of two"},
		{"bad supersedes", mutate(func(m *Manifest) { m.Supersedes = []string{"SP-X"} }), ErrInvalid, "SP-X"},
		{"empty hook command", mutate(func(m *Manifest) { m.Install.Hook = []string{"", "x"} }), ErrInvalid, "empty command"},
		{"empty uninstall command", mutate(func(m *Manifest) { m.Install.Uninstall = []string{""} }), ErrInvalid, "uninstall command has an empty command"},
		{"uninstall command too long", mutate(func(m *Manifest) { m.Install.Uninstall = []string{"sh", strings.Repeat("x", 5000)} }), ErrTooLarge, "uninstall command is longer"},
		{"too many labels", mutate(func(m *Manifest) {
			for i := range MaxLabels + 1 {
				m.Labels[strings.Repeat("k", i+1)] = "v"
			}
		}), ErrTooLarge, "68 labels"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse(tt.data)
			if err == nil {
				t.Fatalf("Parse accepted %.200s", tt.data)
			}
			if m != nil {
				t.Errorf("Parse returned a manifest with error %v", err)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("Parse error %q is not %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("Parse error %q does not say %q", err, tt.why)
			}
		})
	}
}

func TestValidatePath(t *testing.T) {
	tests := []struct {
		path string
		ok   bool
	}{
		{"a", true},
		{"dir/file.txt", true},
		{"deep/er/path/with-dash_and.dots.tar.gz", true},
		{".hidden", true},
		{"..data", true},
		{"日本語/ファイル.txt", true},
		{"", false},
		{".", false},
		{"/abs", false},
		{"..", false},
		{"../x", false},
		{"a/..", false},
		{"a/../b", false},
		{"a/./b", false},
		{"./a", false},
		{"a/", false},
		{"a//b", false},
		{`a\b`, false},
		{`..\x`, false},
		{"c:evil", false},
		{"a/b:stream", false},
		{"tab\there", false},
		{"nul\x00", false},
		{"del\x7f", false},
		{"bad\xffutf8", false},
		{"trailing.", false},
		{"dir./x", false},
		{"trailing ", false},
		{".. /x", false},
		{"...", false},
		{strings.Repeat("a", 4097), false},
	}
	for _, tt := range tests {
		err := ValidatePath(tt.path)
		if (err == nil) != tt.ok {
			t.Errorf("ValidatePath(%q) = %v, want ok=%v", tt.path, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidatePath(%q) error %v does not wrap ErrInvalid", tt.path, err)
		}
	}
}

func TestManifestHelpers(t *testing.T) {
	m := fixtureManifest()
	if got, want := m.TotalSize(), int64(12+48); got != want {
		t.Errorf("TotalSize = %d, want %d", got, want)
	}
	m.Files = append(m.Files, fileOf("copy.txt", 0o644, "hello world\n", 12))
	ids := m.ChunkIDs()
	if len(ids) != 3 || ids[0] != ChunkID([]byte("hello world\n")) {
		t.Errorf("ChunkIDs = %v, want 3 distinct IDs in first-use order", ids)
	}
}

func TestVerifyChunk(t *testing.T) {
	data := []byte("chunk")
	id := ChunkID(data)
	if err := VerifyChunk(id, data); err != nil {
		t.Errorf("VerifyChunk(good) = %v", err)
	}
	if err := VerifyChunk(id, []byte("chunK")); !errors.Is(err, ErrChunkMismatch) {
		t.Errorf("VerifyChunk(other bytes) = %v, want ErrChunkMismatch", err)
	}
	if err := VerifyChunk(ManifestID(data), data); !errors.Is(err, ErrInvalid) {
		t.Errorf("VerifyChunk(manifest ID) = %v, want ErrInvalid", err)
	}
	if err := VerifyChunk(cid.Undef, data); !errors.Is(err, ErrInvalid) {
		t.Errorf("VerifyChunk(undefined ID) = %v, want ErrInvalid", err)
	}
	if _, err := ParseChunkID(id.String()); err != nil {
		t.Errorf("ParseChunkID(%s) = %v", id, err)
	}
	if _, err := ParseManifestID(id.String()); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseManifestID(chunk ID) = %v, want ErrInvalid", err)
	}
	if _, err := ParseManifestID(ManifestID(data).String()); err != nil {
		t.Errorf("ParseManifestID(manifest ID) = %v", err)
	}
}
