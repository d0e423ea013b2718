package manifest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Envelope types. The type is part of every signed message, so a signature
// made for one kind of document never verifies as another.
const (
	TypeManifest = "patchctl.manifest.v1"
	TypeRoot     = "patchctl.root.v1"
	TypeIndex    = "patchctl.index.v1"
)

// Caps on untrusted envelopes. The payload is base64 inside JSON, so an
// envelope of the largest manifest is 4/3 of MaxManifestSize; the slack holds
// the readable fields and MaxSignatures signatures.
const (
	MaxEnvelopeSize = MaxManifestSize*4/3 + 64<<10
	MaxSignatures   = 32
)

// signaturePrefix starts every signed message; it names this scheme so that
// a patchctl key can never be tricked into signing something that verifies
// in another protocol, nor the reverse.
const signaturePrefix = "patchctl signature v1\n"

// Envelope is a signed document: canonical payload bytes, signatures over
// them, and readable copies of the fields an operator greps for. The
// readable fields are never trusted: verification checks each against the
// signed payload, and a difference is ErrTampered.
//
// Which readable fields are set depends on the type: name, channel,
// sequence, cid and expires for manifests; version and expires for trust
// roots; channel, version and expires for indexes.
type Envelope struct {
	Type     string    `json:"type"`
	Name     string    `json:"name,omitempty"`
	Channel  string    `json:"channel,omitempty"`
	Version  uint64    `json:"version,omitempty"`
	Sequence uint64    `json:"sequence,omitempty"`
	CID      string    `json:"cid,omitempty"`
	Expires  time.Time `json:"expires,omitzero"`
	// Payload is the canonical document; JSON carries it as base64, so its
	// bytes survive any reformatting of the envelope.
	Payload    []byte      `json:"payload"`
	Signatures []Signature `json:"signatures"`
}

// Signature is one ed25519 signature and the ID (KeyID) of the key that made
// it, over signaturePrefix + type + "\n" + payload.
type Signature struct {
	KeyID string `json:"key_id"`
	Sig   []byte `json:"sig"`
}

// ParseEnvelope decodes an envelope from an untrusted source, without
// verifying it. It rejects oversize input, unknown and duplicate fields,
// data after the JSON object, unknown types, an empty or oversize payload,
// more than MaxSignatures signatures and malformed key IDs or signatures.
// An envelope without signatures parses; verifying it fails with ErrUnsigned.
func ParseEnvelope(data []byte) (*Envelope, error) {
	if len(data) > MaxEnvelopeSize {
		return nil, fmt.Errorf("envelope is %d bytes, more than %d: %w", len(data), MaxEnvelopeSize, ErrTooLarge)
	}
	if err := checkJSONKeys(data, 3); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	var e Envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("envelope: %v: %w", err, ErrInvalid)
	}
	if err := e.check(); err != nil {
		return nil, err
	}
	return &e, nil
}

// check validates what can be known of e without its payload's type.
func (e *Envelope) check() error {
	switch {
	case e.Type == TypeManifest || e.Type == TypeRoot || e.Type == TypeIndex:
	case strings.HasPrefix(e.Type, "patchctl."):
		return fmt.Errorf("envelope type %q is newer than this build (it reads %s, %s, %s); upgrade patchctl: %w",
			e.Type, TypeManifest, TypeRoot, TypeIndex, ErrUnknownSchema)
	default:
		return fmt.Errorf("envelope type %q is not a patchctl document: %w", e.Type, ErrInvalid)
	}
	if len(e.Payload) == 0 {
		return fmt.Errorf("%s envelope has an empty payload: %w", e.Type, ErrInvalid)
	}
	if len(e.Payload) > MaxManifestSize {
		return fmt.Errorf("%s envelope payload is %d bytes, more than %d: %w", e.Type, len(e.Payload), MaxManifestSize, ErrTooLarge)
	}
	if len(e.Signatures) > MaxSignatures {
		return fmt.Errorf("%s envelope has %d signatures, more than %d: %w", e.Type, len(e.Signatures), MaxSignatures, ErrTooLarge)
	}
	for i, s := range e.Signatures {
		if !isKeyID(s.KeyID) {
			return fmt.Errorf("%s envelope signature %d: key ID %q is not %d lower-case hex digits: %w", e.Type, i, s.KeyID, keyIDLen, ErrInvalid)
		}
		if len(s.Sig) != ed25519.SignatureSize {
			return fmt.Errorf("%s envelope signature %d by key %s is %d bytes, want %d: %w", e.Type, i, s.KeyID, len(s.Sig), ed25519.SignatureSize, ErrInvalid)
		}
	}
	return nil
}

// Marshal encodes e as indented JSON for people to read and grep.
func (e *Envelope) Marshal() ([]byte, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	c := *e
	if c.Signatures == nil {
		c.Signatures = []Signature{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(&c); err != nil {
		return nil, fmt.Errorf("encode %s envelope: %w", e.Type, err)
	}
	return buf.Bytes(), nil
}

// KeyIDs returns the IDs of the keys that signed e, as they appear, without
// verifying anything. It is for display.
func (e *Envelope) KeyIDs() []string {
	ids := make([]string, len(e.Signatures))
	for i, s := range e.Signatures {
		ids[i] = s.KeyID
	}
	return ids
}

// AddSignatures signs the payload of an existing envelope with more keys,
// for thresholds whose key holders sign one after another on different
// machines. Keys that already signed are skipped. It checks that the
// readable fields match the payload, so that no one is asked to sign a
// payload that says something other than what the file shows, but it does
// not verify the signatures already there.
func AddSignatures(envelope []byte, signers ...ed25519.PrivateKey) ([]byte, error) {
	e, err := ParseEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	want, err := describePayload(e)
	if err != nil {
		return nil, err
	}
	if err := e.checkFields(want); err != nil {
		return nil, err
	}
	return seal(e, signers)
}

// describePayload decodes e's payload by e's type and returns the readable
// fields the payload implies.
func describePayload(e *Envelope) (Envelope, error) {
	switch e.Type {
	case TypeManifest:
		m, err := Parse(e.Payload)
		if err != nil {
			return Envelope{}, err
		}
		return manifestFields(m, ManifestID(e.Payload)), nil
	case TypeRoot:
		r, err := ParseRoot(e.Payload)
		if err != nil {
			return Envelope{}, err
		}
		return rootFields(r), nil
	case TypeIndex:
		ix, err := ParseIndex(e.Payload)
		if err != nil {
			return Envelope{}, err
		}
		return indexFields(ix), nil
	}
	return Envelope{}, fmt.Errorf("envelope type %q: %w", e.Type, ErrInvalid)
}

// seal appends signatures by signers not yet on e and encodes it.
func seal(e *Envelope, signers []ed25519.PrivateKey) ([]byte, error) {
	if len(signers) == 0 {
		return nil, fmt.Errorf("sign %s: no signing key given: %w", e.Type, ErrUnsigned)
	}
	msg := signedMessage(e.Type, e.Payload)
	signed := make(map[string]bool, len(e.Signatures)+len(signers))
	for _, s := range e.Signatures {
		signed[s.KeyID] = true
	}
	sigs := append([]Signature(nil), e.Signatures...)
	for _, k := range signers {
		if len(k) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("sign %s: ed25519 private key is %d bytes, want %d: %w", e.Type, len(k), ed25519.PrivateKeySize, ErrInvalid)
		}
		id := KeyID(publicKey(k))
		if signed[id] {
			continue
		}
		signed[id] = true
		sigs = append(sigs, Signature{KeyID: id, Sig: ed25519.Sign(k, msg)})
	}
	c := *e
	c.Signatures = sigs
	return c.Marshal()
}

// signedMessage is what a signature covers: the scheme, the document type and
// the payload, so that a signature on one type never verifies as another.
func signedMessage(typ string, payload []byte) []byte {
	msg := make([]byte, 0, len(signaturePrefix)+len(typ)+1+len(payload))
	msg = append(msg, signaturePrefix...)
	msg = append(msg, typ...)
	msg = append(msg, '\n')
	return append(msg, payload...)
}

// verifySignatures checks e's signatures against the keys of r: distinct
// trusted keys with valid signatures must reach r's threshold. A signature by
// an untrusted key is ignored (it may be from a key not yet rotated in), but a
// signature by a trusted key that does not verify is tampering.
func verifySignatures(e *Envelope, r *Root) error {
	if len(e.Signatures) == 0 {
		return ErrUnsigned
	}
	msg := signedMessage(e.Type, e.Payload)
	trusted := r.keyMap()
	valid := make(map[string]bool, len(e.Signatures))
	for _, s := range e.Signatures {
		pub, ok := trusted[s.KeyID]
		if !ok {
			continue
		}
		if !ed25519.Verify(pub, msg, s.Sig) {
			return fmt.Errorf("signature by trusted key %s does not verify: %w", s.KeyID, ErrTampered)
		}
		valid[s.KeyID] = true
	}
	if len(valid) == 0 {
		return fmt.Errorf("key(s) %s signed, trust root version %d holds %s: %w",
			strings.Join(e.KeyIDs(), ", "), r.Version, strings.Join(r.KeyIDs(), ", "), ErrUnknownKey)
	}
	if len(valid) < r.Threshold {
		var more []string
		for _, id := range r.KeyIDs() {
			if !valid[id] {
				more = append(more, id)
			}
		}
		return fmt.Errorf("signed by %s: %d of the %d trusted signatures trust root version %d requires; %s may add theirs (patchctl sign): %w",
			strings.Join(sortedKeys(valid), ", "), len(valid), r.Threshold, r.Version, strings.Join(more, " or "), ErrThreshold)
	}
	return nil
}

// Signers is who signed an envelope, as a trust root sees it.
type Signers struct {
	Trusted   []string `json:"trusted"`   // keys of the root whose signatures verify
	Untrusted []string `json:"untrusted"` // keys the root does not hold
	Unsigned  []string `json:"unsigned"`  // keys of the root that have not signed
	Threshold int      `json:"threshold"` // trusted signatures the root requires
}

// Enough reports whether the trusted signatures reach the threshold.
func (s Signers) Enough() bool { return len(s.Trusted) >= s.Threshold }

// Signers says which keys signed envelope and what r's threshold needs. A
// signature by a key of r that does not verify is ErrTampered.
func (r *Root) Signers(envelope []byte) (Signers, error) {
	e, err := ParseEnvelope(envelope)
	if err != nil {
		return Signers{}, err
	}
	msg := signedMessage(e.Type, e.Payload)
	trusted := r.keyMap()
	out := Signers{Threshold: r.Threshold, Trusted: []string{}, Untrusted: []string{}, Unsigned: []string{}}
	signed := map[string]bool{}
	for _, s := range e.Signatures {
		pub, ok := trusted[s.KeyID]
		switch {
		case !ok:
			out.Untrusted = append(out.Untrusted, s.KeyID)
		case !ed25519.Verify(pub, msg, s.Sig):
			return Signers{}, fmt.Errorf("signature by trusted key %s does not verify: %w", s.KeyID, ErrTampered)
		case !signed[s.KeyID]:
			signed[s.KeyID] = true
			out.Trusted = append(out.Trusted, s.KeyID)
		}
	}
	for _, id := range r.KeyIDs() {
		if !signed[id] {
			out.Unsigned = append(out.Unsigned, id)
		}
	}
	return out, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkFields compares e's readable fields with those its payload implies.
func (e *Envelope) checkFields(want Envelope) error {
	diff := func(field string, have, want any) error {
		return fmt.Errorf("%s envelope field %q says %v, the signed payload says %v: %w", e.Type, field, have, want, ErrTampered)
	}
	switch {
	case e.Name != want.Name:
		return diff("name", quoted(e.Name), quoted(want.Name))
	case e.Channel != want.Channel:
		return diff("channel", quoted(e.Channel), quoted(want.Channel))
	case e.Version != want.Version:
		return diff("version", e.Version, want.Version)
	case e.Sequence != want.Sequence:
		return diff("sequence", e.Sequence, want.Sequence)
	case e.CID != want.CID:
		return diff("cid", quoted(e.CID), quoted(want.CID))
	case !e.Expires.Equal(want.Expires):
		return diff("expires", e.Expires.Format(time.RFC3339), want.Expires.Format(time.RFC3339))
	}
	return nil
}

// quoted quotes an untrusted string for an error message, cut short so that
// a hostile envelope cannot make its error megabytes long.
func quoted(s string) string {
	const max = 2 * MaxNameLen
	if len(s) > max {
		return fmt.Sprintf("%q... (%d bytes)", s[:max], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// isKeyID reports whether s has the form KeyID returns.
func isKeyID(s string) bool {
	if len(s) != keyIDLen {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// checkJSONKeys walks a JSON document and rejects what encoding/json would
// accept silently: a key given twice (the decoder keeps the last, while a
// person reading or grepping the file sees the first), keys in other than
// lower case (the decoder matches names case-insensitively), nesting deeper
// than maxDepth, a top level other than one object, and data after it.
func checkJSONKeys(data []byte, maxDepth int) error {
	type frame struct {
		object  bool
		wantKey bool
		seen    map[string]bool
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var stack []frame
	started := false
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].wantKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			if !started {
				return fmt.Errorf("empty document: %w", ErrInvalid)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("%v: %w", err, ErrInvalid)
		}
		if started && len(stack) == 0 {
			return fmt.Errorf("data after the JSON object: %w", ErrInvalid)
		}
		if !started {
			if tok != json.Delim('{') {
				return fmt.Errorf("not a JSON object: %w", ErrInvalid)
			}
			started = true
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantKey {
			if tok == json.Delim('}') {
				stack = stack[:n-1]
				valueDone()
				continue
			}
			key, _ := tok.(string)
			if key == "" || strings.TrimLeft(key, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
				return fmt.Errorf("field name %q is not lower-case letters, digits and _: %w", key, ErrInvalid)
			}
			if stack[n-1].seen[key] {
				return fmt.Errorf("field %q appears twice: %w", key, ErrInvalid)
			}
			stack[n-1].seen[key] = true
			stack[n-1].wantKey = false
			continue
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if len(stack) == maxDepth {
				return fmt.Errorf("nested deeper than %d levels: %w", maxDepth, ErrInvalid)
			}
			object := tok == json.Delim('{')
			f := frame{object: object, wantKey: object}
			if object {
				f.seen = make(map[string]bool)
			}
			stack = append(stack, f)
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
			valueDone()
		default:
			valueDone()
		}
	}
}
