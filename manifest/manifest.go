package manifest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ipfs/go-cid"
)

// SchemaVersion is the manifest schema this build writes and reads.
const SchemaVersion = 1

// Caps on untrusted manifests. A 64 KiB average chunk costs ~90 bytes of
// manifest, so 64 MiB holds the chunk list of packs far beyond 32 GiB.
const (
	MaxManifestSize = 64 << 20
	MaxFiles        = 100_000
	MaxLabels       = 64
	maxLabelLen     = 256
	maxHookLen      = 4096
)

// Manifest describes one release: what it is, its files and the chunks they
// are made of, and how to install it. Its canonical encoding (Marshal) is what
// publishers sign and what its CID names.
type Manifest struct {
	Schema   int         `json:"schema"`
	Name     string      `json:"name"`
	Channel  string      `json:"channel"`
	Sequence uint64      `json:"sequence"`
	Created  time.Time   `json:"created"`
	Expires  time.Time   `json:"expires"`
	Chunking ChunkParams `json:"chunking"`
	Files    []File      `json:"files"`
	Install  Install     `json:"install"`
	// Supersedes names releases this one replaces; Requires names releases
	// that must be installed first.
	Supersedes []string          `json:"supersedes,omitempty"`
	Requires   []string          `json:"requires,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
}

// File is one file of a release. Its content is its chunks in order.
type File struct {
	Path   string     `json:"path"` // relative, slash-separated, clean
	Mode   uint32     `json:"mode"` // permission bits only
	Size   int64      `json:"size"`
	SHA256 string     `json:"sha256"` // hex digest of the whole file
	Chunks []ChunkRef `json:"chunks"`
}

// ChunkRef is one chunk of a file: its ID and uncompressed size.
type ChunkRef struct {
	CID  cid.Cid
	Size uint32
}

type chunkRefJSON struct {
	CID  string `json:"cid"`
	Size uint32 `json:"size"`
}

// MarshalJSON writes the CID as a plain string, not IPLD's {"/": ...} form.
func (c ChunkRef) MarshalJSON() ([]byte, error) {
	return json.Marshal(chunkRefJSON{CID: c.CID.String(), Size: c.Size})
}

// UnmarshalJSON accepts only well-formed chunk IDs.
func (c *ChunkRef) UnmarshalJSON(b []byte) error {
	var j chunkRefJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return err
	}
	id, err := ParseChunkID(j.CID)
	if err != nil {
		return err
	}
	*c = ChunkRef{CID: id, Size: j.Size}
	return nil
}

// Install says how an agent installs a release once every file verified.
type Install struct {
	// Hook is the command run in the extracted release directory, as an
	// argument vector; empty means the release only needs extracting.
	Hook            []string `json:"hook,omitempty"`
	RestartRequired bool     `json:"restart_required,omitempty"`
	// Uninstall is the command that takes the release off a node again,
	// run in its directory when the release is withdrawn with uninstall.
	Uninstall []string `json:"uninstall,omitempty"`
}

// TotalSize is the sum of all file sizes.
func (m *Manifest) TotalSize() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// ChunkIDs returns every distinct chunk of the release, in first-use order.
func (m *Manifest) ChunkIDs() []cid.Cid {
	seen := make(map[cid.Cid]struct{})
	var ids []cid.Cid
	for _, f := range m.Files {
		for _, c := range f.Chunks {
			if _, ok := seen[c.CID]; !ok {
				seen[c.CID] = struct{}{}
				ids = append(ids, c.CID)
			}
		}
	}
	return ids
}

// Marshal validates m and returns its canonical encoding: compact JSON with
// fields in declaration order, map keys sorted, times in UTC to the second.
// Equal manifests always encode to equal bytes, so the manifest CID is stable.
func Marshal(m *Manifest) ([]byte, error) {
	c := *m
	c.Created = c.Created.UTC().Truncate(time.Second)
	c.Expires = c.Expires.UTC().Truncate(time.Second)
	// Validate after truncating, so that times less than a second apart
	// cannot pass here and then fail in Parse as equal.
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Files == nil {
		c.Files = []File{}
	}
	files := make([]File, len(c.Files))
	for i, f := range c.Files {
		if f.Chunks == nil {
			f.Chunks = []ChunkRef{}
		}
		files[i] = f
	}
	c.Files = files
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&c); err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Parse decodes canonical manifest bytes from an untrusted source. It rejects
// oversize input, unknown schema versions, unknown fields, invalid manifests
// (see Validate) and any encoding other than the canonical one.
func Parse(data []byte) (*Manifest, error) {
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("manifest is %d bytes, more than %d: %w", len(data), MaxManifestSize, ErrTooLarge)
	}
	var probe struct {
		Schema int `json:"schema"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("manifest: %v: %w", err, ErrInvalid)
	}
	if probe.Schema != SchemaVersion {
		return nil, fmt.Errorf("manifest schema %d, this build reads %d: %w", probe.Schema, SchemaVersion, ErrUnknownSchema)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		if errors.Is(err, ErrInvalid) { // from ChunkRef.UnmarshalJSON
			return nil, fmt.Errorf("manifest: %w", err)
		}
		return nil, fmt.Errorf("manifest: %v: %w", err, ErrInvalid)
	}
	if dec.More() {
		return nil, fmt.Errorf("manifest: data after the JSON object: %w", ErrInvalid)
	}
	canonical, err := Marshal(&m)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(canonical, data) {
		return nil, fmt.Errorf("manifest is not in canonical form: %w", ErrInvalid)
	}
	return &m, nil
}

// Validate checks everything a manifest promises about itself: a known schema,
// a valid name, safe unique paths, permission-only modes, chunk sizes that add
// up to each file's size, and bounded counts.
func (m *Manifest) Validate() error {
	if m.Schema != SchemaVersion {
		return fmt.Errorf("manifest schema %d, this build reads %d: %w", m.Schema, SchemaVersion, ErrUnknownSchema)
	}
	if _, err := ParsePackName(m.Name); err != nil {
		return err
	}
	if err := validateChannel(m.Channel); err != nil {
		return err
	}
	if m.Sequence == 0 {
		return fmt.Errorf("manifest %s: sequence must be at least 1: %w", m.Name, ErrInvalid)
	}
	if m.Created.IsZero() || m.Expires.IsZero() || !m.Expires.After(m.Created) {
		return fmt.Errorf("manifest %s: expiry %s must come after creation %s: %w", m.Name, m.Expires, m.Created, ErrInvalid)
	}
	if err := m.Chunking.Validate(); err != nil {
		return fmt.Errorf("manifest %s: %w", m.Name, err)
	}
	if len(m.Files) > MaxFiles {
		return fmt.Errorf("manifest %s: %d files, more than %d: %w", m.Name, len(m.Files), MaxFiles, ErrTooLarge)
	}
	// Paths must not collide on case-insensitive file systems either, and
	// no file may sit where another needs a directory.
	files := make(map[string]bool, len(m.Files))
	for _, f := range m.Files {
		if err := ValidatePath(f.Path); err != nil {
			return err
		}
		key := strings.ToLower(f.Path)
		if files[key] {
			return fmt.Errorf("manifest %s: path %q appears twice: %w", m.Name, f.Path, ErrInvalid)
		}
		files[key] = true
		if err := f.validate(m.Chunking.Max); err != nil {
			return fmt.Errorf("manifest %s: %w", m.Name, err)
		}
	}
	for _, f := range m.Files {
		for dir := path.Dir(f.Path); dir != "."; dir = path.Dir(dir) {
			if files[strings.ToLower(dir)] {
				return fmt.Errorf("manifest %s: %q is a file and a directory of %q: %w", m.Name, dir, f.Path, ErrInvalid)
			}
		}
	}
	for _, list := range [][]string{m.Supersedes, m.Requires} {
		for _, n := range list {
			if _, err := ParsePackName(n); err != nil {
				return fmt.Errorf("manifest %s: %w", m.Name, err)
			}
		}
	}
	for _, cmd := range []struct {
		what string
		argv []string
	}{{"install hook", m.Install.Hook}, {"uninstall command", m.Install.Uninstall}} {
		if len(cmd.argv) > 0 && cmd.argv[0] == "" {
			return fmt.Errorf("manifest %s: %s has an empty command: %w", m.Name, cmd.what, ErrInvalid)
		}
		// Every argument counts one byte more than its length, so that a
		// command of many empty arguments is bounded too.
		n := 0
		for _, a := range cmd.argv {
			if !utf8.ValidString(a) {
				return fmt.Errorf("manifest %s: %s argument %q is not valid UTF-8: %w", m.Name, cmd.what, a, ErrInvalid)
			}
			n += len(a) + 1
		}
		if n > maxHookLen {
			return fmt.Errorf("manifest %s: %s is longer than %d bytes: %w", m.Name, cmd.what, maxHookLen, ErrTooLarge)
		}
	}
	if len(m.Labels) > MaxLabels {
		return fmt.Errorf("manifest %s: %d labels, more than %d: %w", m.Name, len(m.Labels), MaxLabels, ErrTooLarge)
	}
	for k, v := range m.Labels {
		if k == "" || len(k) > maxLabelLen || len(v) > maxLabelLen {
			return fmt.Errorf("manifest %s: label %q: keys must be 1 to %d bytes, values at most %d: %w", m.Name, k, maxLabelLen, maxLabelLen, ErrInvalid)
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("manifest %s: label %q: keys and values must be valid UTF-8: %w", m.Name, k, ErrInvalid)
		}
	}
	return nil
}

func (f *File) validate(maxChunk int) error {
	if f.Mode&^0o777 != 0 {
		return fmt.Errorf("file %s: mode %o has bits beyond permissions (setuid, setgid, sticky or a type): %w", f.Path, f.Mode, ErrInvalid)
	}
	if f.Size < 0 {
		return fmt.Errorf("file %s: negative size %d: %w", f.Path, f.Size, ErrInvalid)
	}
	if d, err := hex.DecodeString(f.SHA256); err != nil || len(d) != 32 || strings.ToLower(f.SHA256) != f.SHA256 {
		return fmt.Errorf("file %s: sha256 %q is not 64 lower-case hex digits: %w", f.Path, f.SHA256, ErrInvalid)
	}
	var sum int64
	for i, c := range f.Chunks {
		if c.Size == 0 || int(c.Size) > maxChunk {
			return fmt.Errorf("file %s: chunk %d (%s) has size %d, want 1 to %d: %w", f.Path, i, c.CID, c.Size, maxChunk, ErrInvalid)
		}
		if err := CheckChunkID(c.CID); err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
		sum += int64(c.Size)
	}
	if sum != f.Size {
		return fmt.Errorf("file %s: chunks add up to %d bytes, file size is %d: %w", f.Path, sum, f.Size, ErrInvalid)
	}
	return nil
}

// ValidatePath reports whether p is safe to create under an install root:
// relative, slash-separated, clean, valid UTF-8, without "..", empty or "."
// elements, backslashes, colons or control characters, and without elements
// that end in a dot or a space: Windows drops those, so ".. " would leave the
// root and "a." would collide with "a".
func ValidatePath(p string) error {
	bad := func(why string) error {
		return fmt.Errorf("path %q %s: %w", p, why, ErrInvalid)
	}
	switch {
	case p == "" || p == ".":
		return bad("is empty")
	case len(p) > 4096:
		return bad("is longer than 4096 bytes")
	case strings.HasPrefix(p, "/"):
		return bad("is absolute")
	case path.Clean(p) != p:
		return bad("is not clean (no //, ./ or trailing /)")
	case strings.ContainsAny(p, `\:`):
		return bad(`contains \ or :`)
	case !utf8.ValidString(p):
		return bad("is not valid UTF-8")
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return bad("leaves its root with ..")
		}
		if strings.HasSuffix(part, ".") || strings.HasSuffix(part, " ") {
			return bad(fmt.Sprintf("has an element %q ending in a dot or space, which Windows drops", part))
		}
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return bad("contains a control character")
		}
	}
	return nil
}

func validateChannel(c string) error {
	if len(c) > MaxNameLen {
		return fmt.Errorf("channel is longer than %d bytes: %w", MaxNameLen, ErrInvalid)
	}
	if err := checkToken(c); err != nil {
		return fmt.Errorf("channel %w", err)
	}
	return nil
}
