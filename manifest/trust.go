package manifest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
)

// MaxRootKeys bounds the keys of a trust root. A threshold can need no more
// signatures than an envelope may carry.
const MaxRootKeys = MaxSignatures

// Root is a trust root: the publisher keys a node trusts, how many of them
// must sign (Threshold), its Version and when it expires. An operator
// installs the first root by hand (ParseTrustedRoot); every later one must be
// signed by the threshold of the root before it (Rotate), so keys can be
// replaced without re-imaging the fleet.
type Root struct {
	Version   uint64    `json:"version"`
	Expires   time.Time `json:"expires"`
	Threshold int       `json:"threshold"`
	Keys      []RootKey `json:"keys"`
}

// RootKey is one trusted publisher key. ID is KeyID(PublicKey).
type RootKey struct {
	ID        string            `json:"id"`
	PublicKey ed25519.PublicKey `json:"public_key"`
}

// NewRoot returns a root trusting pubs, of which threshold must sign. It
// refuses a threshold outside 1..len(pubs), duplicate keys and version 0.
func NewRoot(pubs []ed25519.PublicKey, threshold int, version uint64, expires time.Time) (*Root, error) {
	r := &Root{Version: version, Expires: expires.UTC().Truncate(time.Second), Threshold: threshold}
	for _, pub := range pubs {
		if len(pub) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("trust root: ed25519 public key is %d bytes, want %d: %w", len(pub), ed25519.PublicKeySize, ErrInvalid)
		}
		r.Keys = append(r.Keys, RootKey{ID: KeyID(pub), PublicKey: slices.Clone(pub)})
	}
	slices.SortFunc(r.Keys, func(a, b RootKey) int { return strings.Compare(a.ID, b.ID) })
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// Validate checks that r can verify anything: version at least 1, an expiry,
// 1 to MaxRootKeys well-formed keys with matching IDs and no duplicates, and
// a threshold between 1 and the number of keys.
func (r *Root) Validate() error {
	if r.Version == 0 {
		return fmt.Errorf("trust root: version must be at least 1: %w", ErrInvalid)
	}
	if r.Expires.IsZero() {
		return fmt.Errorf("trust root version %d: no expiry: %w", r.Version, ErrInvalid)
	}
	if len(r.Keys) == 0 || len(r.Keys) > MaxRootKeys {
		return fmt.Errorf("trust root version %d: %d keys, want 1 to %d: %w", r.Version, len(r.Keys), MaxRootKeys, ErrInvalid)
	}
	if r.Threshold < 1 || r.Threshold > len(r.Keys) {
		return fmt.Errorf("trust root version %d: threshold %d, want 1 to %d (the number of keys): %w", r.Version, r.Threshold, len(r.Keys), ErrInvalid)
	}
	seen := make(map[string]bool, len(r.Keys))
	for _, k := range r.Keys {
		if len(k.PublicKey) != ed25519.PublicKeySize {
			return fmt.Errorf("trust root version %d: key %s is %d bytes, want %d: %w", r.Version, k.ID, len(k.PublicKey), ed25519.PublicKeySize, ErrInvalid)
		}
		if id := KeyID(k.PublicKey); k.ID != id {
			return fmt.Errorf("trust root version %d: key ID %q does not match its key, which has ID %s: %w", r.Version, k.ID, id, ErrInvalid)
		}
		if seen[k.ID] {
			return fmt.Errorf("trust root version %d: key %s appears twice: %w", r.Version, k.ID, ErrInvalid)
		}
		seen[k.ID] = true
	}
	return nil
}

// KeyIDs returns the IDs of r's keys.
func (r *Root) KeyIDs() []string {
	ids := make([]string, len(r.Keys))
	for i, k := range r.Keys {
		ids[i] = k.ID
	}
	return ids
}

func (r *Root) keyMap() map[string]ed25519.PublicKey {
	m := make(map[string]ed25519.PublicKey, len(r.Keys))
	for _, k := range r.Keys {
		m[k.ID] = k.PublicKey
	}
	return m
}

// expired reports an error if r is past its expiry at now.
func (r *Root) expired(now time.Time) error {
	if now.After(r.Expires) {
		return fmt.Errorf("trust root version %d expired at %s: %w", r.Version, r.Expires.Format(time.RFC3339), ErrExpired)
	}
	return nil
}

// MarshalRoot validates r and returns its canonical encoding: compact JSON,
// keys sorted by ID, expiry in UTC to the second.
func MarshalRoot(r *Root) ([]byte, error) {
	c := *r
	c.Expires = c.Expires.UTC().Truncate(time.Second)
	c.Keys = slices.Clone(r.Keys)
	slices.SortFunc(c.Keys, func(a, b RootKey) int { return strings.Compare(a.ID, b.ID) })
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return canonicalJSON(&c)
}

// ParseRoot decodes canonical root bytes without verifying any signature. It
// is for the payload of a root envelope, and for a root this node verified
// before and keeps in its own state: a node reloads its root even after it
// expired, or it could never rotate to the next one.
func ParseRoot(payload []byte) (*Root, error) {
	var r Root
	if err := parseCanonical(payload, &r, "trust root", func() ([]byte, error) { return MarshalRoot(&r) }); err != nil {
		return nil, err
	}
	return &r, nil
}

func rootFields(r *Root) Envelope {
	return Envelope{Type: TypeRoot, Version: r.Version, Expires: r.Expires}
}

// SignRoot returns an envelope of r signed by signers. A root for rotation
// is signed by the threshold of the old root's keys and of its own.
func SignRoot(r *Root, signers ...ed25519.PrivateKey) ([]byte, error) {
	payload, err := MarshalRoot(r)
	if err != nil {
		return nil, err
	}
	e := rootFields(r)
	e.Expires = e.Expires.UTC().Truncate(time.Second)
	e.Payload = payload
	return seal(&e, signers)
}

// ParseTrustedRoot verifies the root an operator installs by hand (trust on
// first use): it must be signed by its own threshold of its own keys and not
// be expired at now. Whoever hands it over vouches for the keys; the
// signatures prove that their holders control them.
func ParseTrustedRoot(envelope []byte, now time.Time) (*Root, error) {
	r, err := LoadRoot(envelope)
	if err != nil {
		return nil, err
	}
	if err := r.expired(now); err != nil {
		return nil, err
	}
	return r, nil
}

// LoadRoot reloads the root this node installed or rotated to earlier, from
// its own state: it verifies the envelope as ParseTrustedRoot does but not
// the expiry, because a node whose root expired must still be able to Rotate
// to the next one. Verifying against an expired root fails with ErrExpired.
func LoadRoot(envelope []byte) (*Root, error) {
	r, err := openRoot(envelope)
	if err != nil {
		return nil, err
	}
	if err := verifySignatures(r.env, r.root); err != nil {
		return nil, fmt.Errorf("trust root version %d is not signed by its own keys: %w", r.root.Version, err)
	}
	return r.root, nil
}

// Rotate verifies a new trust root against r and returns it: it must be
// signed by r's threshold of r's keys and by its own threshold of its own
// keys, have a higher version, and not be expired at now. r itself may have
// expired: rotation is how a node that missed its root's renewal recovers.
//
// The same root delivered again (equal version, identical content) returns r
// unchanged. The version may skip numbers only if the old root's keys signed
// the new one; otherwise rotate through each root in turn.
func (r *Root) Rotate(newEnvelope []byte, now time.Time) (*Root, error) {
	next, err := openRoot(newEnvelope)
	if err != nil {
		return nil, err
	}
	if err := verifySignatures(next.env, r); err != nil {
		return nil, fmt.Errorf("trust root version %d is not signed by the keys of trusted root version %d: %w", next.root.Version, r.Version, err)
	}
	if err := verifySignatures(next.env, next.root); err != nil {
		return nil, fmt.Errorf("trust root version %d is not signed by its own keys: %w", next.root.Version, err)
	}
	if next.root.Version <= r.Version {
		if next.root.Version == r.Version {
			if held, err := MarshalRoot(r); err == nil && bytes.Equal(held, next.env.Payload) {
				return r, nil
			}
		}
		return nil, fmt.Errorf("trust root version %d does not follow trusted version %d: %w", next.root.Version, r.Version, ErrRollback)
	}
	if err := next.root.expired(now); err != nil {
		return nil, err
	}
	return next.root, nil
}

type openedRoot struct {
	env  *Envelope
	root *Root
}

// openRoot parses a root envelope and its payload and checks the readable
// fields, verifying no signature yet.
func openRoot(envelope []byte) (openedRoot, error) {
	e, err := ParseEnvelope(envelope)
	if err != nil {
		return openedRoot{}, err
	}
	if e.Type != TypeRoot {
		return openedRoot{}, fmt.Errorf("envelope holds a %s, want a trust root (%s): %w", e.Type, TypeRoot, ErrInvalid)
	}
	// The payload is parsed before its signatures are checked because the
	// keys that check them may be in it; ParseRoot is strict and bounded.
	r, err := ParseRoot(e.Payload)
	if err != nil {
		return openedRoot{}, err
	}
	if err := e.checkFields(rootFields(r)); err != nil {
		return openedRoot{}, err
	}
	return openedRoot{env: e, root: r}, nil
}

func manifestFields(m *Manifest, id cid.Cid) Envelope {
	return Envelope{
		Type:     TypeManifest,
		Name:     m.Name,
		Channel:  m.Channel,
		Sequence: m.Sequence,
		CID:      id.String(),
		Expires:  m.Expires,
	}
}

// SignManifest returns an envelope of m signed by signers, and m's CID.
func SignManifest(m *Manifest, signers ...ed25519.PrivateKey) (envelope []byte, id cid.Cid, err error) {
	payload, err := Marshal(m)
	if err != nil {
		return nil, cid.Undef, err
	}
	id = ManifestID(payload)
	e := manifestFields(m, id)
	e.Expires = e.Expires.UTC().Truncate(time.Second)
	e.Payload = payload
	envelope, err = seal(&e, signers)
	if err != nil {
		return nil, cid.Undef, err
	}
	return envelope, id, nil
}

// VerifyManifest verifies a manifest envelope against r at now and returns
// the manifest and its CID. It fails with ErrExpired if r or the manifest
// has expired; ErrUnsigned, ErrUnknownKey, ErrThreshold or ErrTampered if
// the signatures do not satisfy r; ErrTampered if a readable field differs
// from the signed manifest. It does not check for rollback: see
// CheckSequence.
func (r *Root) VerifyManifest(envelope []byte, now time.Time) (*Manifest, cid.Cid, error) {
	e, err := ParseEnvelope(envelope)
	if err != nil {
		return nil, cid.Undef, err
	}
	if e.Type != TypeManifest {
		return nil, cid.Undef, fmt.Errorf("envelope holds a %s, want a manifest (%s): %w", e.Type, TypeManifest, ErrInvalid)
	}
	what := "manifest " + quoted(e.Name)
	if err := r.expired(now); err != nil {
		return nil, cid.Undef, fmt.Errorf("%s: %w", what, err)
	}
	if err := verifySignatures(e, r); err != nil {
		return nil, cid.Undef, fmt.Errorf("%s: %w", what, err)
	}
	m, err := Parse(e.Payload)
	if err != nil {
		return nil, cid.Undef, err
	}
	id := ManifestID(e.Payload)
	if err := e.checkFields(manifestFields(m, id)); err != nil {
		return nil, cid.Undef, err
	}
	if now.After(m.Expires) {
		return nil, cid.Undef, fmt.Errorf("manifest %s sequence %d expired at %s: %w", m.Name, m.Sequence, m.Expires.Format(time.RFC3339), ErrExpired)
	}
	return m, id, nil
}

// CheckSequence reports ErrRollback if incoming is a manifest of the release
// held (the one this node already accepted, or nil) with a sequence not above
// the held one, unless it is the held manifest itself delivered again.
// Manifests of other releases never conflict: releases of a channel arrive in
// any order, and an older release is not a rollback (expiry guards against a
// frozen view).
func CheckSequence(held, incoming *Manifest) error {
	if held == nil || held.Name != incoming.Name || incoming.Sequence > held.Sequence {
		return nil
	}
	a, err := Marshal(held)
	if err != nil {
		return fmt.Errorf("held manifest: %w", err)
	}
	b, err := Marshal(incoming)
	if err != nil {
		return err
	}
	if bytes.Equal(a, b) {
		return nil
	}
	if incoming.Sequence == held.Sequence {
		return fmt.Errorf("manifest %s sequence %d differs from the one of the same sequence held here: %w", incoming.Name, incoming.Sequence, ErrRollback)
	}
	return fmt.Errorf("manifest %s sequence %d is older than sequence %d held here: %w", incoming.Name, incoming.Sequence, held.Sequence, ErrRollback)
}

// canonicalJSON encodes v as compact JSON without HTML escaping, the
// canonical form of roots and indexes.
func canonicalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode: %v: %w", err, ErrInvalid)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// parseCanonical decodes data into v strictly and accepts it only if
// remarshal encodes the result to the same bytes, so every document has one
// encoding and one ID.
func parseCanonical(data []byte, v any, what string, remarshal func() ([]byte, error)) error {
	if len(data) > MaxManifestSize {
		return fmt.Errorf("%s is %d bytes, more than %d: %w", what, len(data), MaxManifestSize, ErrTooLarge)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %v: %w", what, err, ErrInvalid)
	}
	canonical, err := remarshal()
	if err != nil {
		return err
	}
	if !bytes.Equal(canonical, data) {
		return fmt.Errorf("%s is not in canonical form: %w", what, ErrInvalid)
	}
	return nil
}
