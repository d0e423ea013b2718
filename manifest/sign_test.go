package manifest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func pubsOf(keys ...ed25519.PrivateKey) []ed25519.PublicKey {
	pubs := make([]ed25519.PublicKey, len(keys))
	for i, k := range keys {
		pubs[i] = publicKey(k)
	}
	return pubs
}

// testRoot returns a root of version 1 trusting keys with the threshold,
// valid for two years from fixtureTime.
func testRoot(t testing.TB, threshold int, keys ...ed25519.PrivateKey) *Root {
	t.Helper()
	r, err := NewRoot(pubsOf(keys...), threshold, 1, fixtureTime.AddDate(2, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func signManifest(t testing.TB, m *Manifest, keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	env, _, err := SignManifest(m, keys...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// editEnvelope parses env, lets edit change it and encodes it again.
func editEnvelope(t testing.TB, env []byte, edit func(e *Envelope)) []byte {
	t.Helper()
	e, err := ParseEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	edit(e)
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSignVerifyManifest(t *testing.T) {
	key := testKey(1)
	root := testRoot(t, 1, key)
	m := fixtureManifest()
	env, id, err := SignManifest(m, key)
	if err != nil {
		t.Fatal(err)
	}
	if id.String() != goldenManifestCID {
		t.Errorf("SignManifest CID = %s, want %s", id, goldenManifestCID)
	}
	got, gotID, err := root.VerifyManifest(env, fixtureNow())
	if err != nil {
		t.Fatalf("VerifyManifest: %v", err)
	}
	if gotID != id {
		t.Errorf("VerifyManifest CID = %s, want %s", gotID, id)
	}
	if !bytes.Equal(mustMarshal(t, got), mustMarshal(t, m)) {
		t.Error("verified manifest differs from the signed one")
	}
	// The readable fields are there for grep.
	for _, want := range []string{
		`"type": "patchctl.manifest.v1"`, `"name": "HF-S041000005-012"`, `"channel": "stable"`,
		`"sequence": 3`, `"cid": "` + goldenManifestCID + `"`, `"expires": "2026-03-01T09:00:00Z"`,
		`"key_id": "` + KeyID(publicKey(key)) + `"`,
	} {
		if !bytes.Contains(env, []byte(want)) {
			t.Errorf("envelope does not contain %s:\n%.600s", want, env)
		}
	}
	if bytes.Contains(env, []byte(`"version"`)) {
		t.Errorf("manifest envelope has a version field:\n%.600s", env)
	}
}

func TestVerifyManifestTampered(t *testing.T) {
	key := testKey(1)
	root := testRoot(t, 1, key)
	env := signManifest(t, fixtureManifest(), key)
	other := fixtureManifest()
	other.Name = "HF-S041000005-013"
	otherEnv := signManifest(t, other, key)
	otherParsed, err := ParseEnvelope(otherEnv)
	if err != nil {
		t.Fatal(err)
	}
	ix := testIndex(t, 1)
	ixEnv, err := SignIndex(ix, key)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		env  []byte
		want error
	}{
		{"payload byte flipped", editEnvelope(t, env, func(e *Envelope) { e.Payload[40] ^= 1 }), ErrTampered},
		{"payload extended", editEnvelope(t, env, func(e *Envelope) { e.Payload = append(e.Payload, ' ') }), ErrTampered},
		{"signature flipped", editEnvelope(t, env, func(e *Envelope) { e.Signatures[0].Sig[5] ^= 1 }), ErrTampered},
		{"readable name edited", editEnvelope(t, env, func(e *Envelope) { e.Name = "HF-S041000005-013" }), ErrTampered},
		{"readable name removed", editEnvelope(t, env, func(e *Envelope) { e.Name = "" }), ErrTampered},
		{"readable channel edited", editEnvelope(t, env, func(e *Envelope) { e.Channel = "beta" }), ErrTampered},
		{"readable sequence edited", editEnvelope(t, env, func(e *Envelope) { e.Sequence = 4 }), ErrTampered},
		{"readable cid edited", editEnvelope(t, env, func(e *Envelope) { e.CID = otherParsed.CID }), ErrTampered},
		{"readable expires edited", editEnvelope(t, env, func(e *Envelope) { e.Expires = e.Expires.AddDate(5, 0, 0) }), ErrTampered},
		{"version field added", editEnvelope(t, env, func(e *Envelope) { e.Version = 9 }), ErrTampered},
		{"another manifest's payload swapped in", editEnvelope(t, env, func(e *Envelope) { e.Payload = otherParsed.Payload }), ErrTampered},
		{"another manifest's payload and fields swapped in", editEnvelope(t, otherEnv, func(e *Envelope) {
			orig, _ := ParseEnvelope(env)
			e.Signatures = orig.Signatures
		}), ErrTampered},
		{"index relabeled as manifest", editEnvelope(t, ixEnv, func(e *Envelope) {
			e.Type = TypeManifest
			e.Name, e.Sequence, e.CID = "HF-S041000005-012", 3, goldenManifestCID
		}), ErrTampered},
		{"index given as manifest", ixEnv, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _, err := root.VerifyManifest(tt.env, fixtureNow())
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifyManifest = %v, want %v", err, tt.want)
			}
			if m != nil {
				t.Error("VerifyManifest returned a manifest with its error")
			}
		})
	}
}

func TestVerifyManifestSignatures(t *testing.T) {
	k1, k2, k3, stranger := testKey(1), testKey(2), testKey(3), testKey(99)
	m := fixtureManifest()
	dup := func(env []byte) []byte {
		return editEnvelope(t, env, func(e *Envelope) { e.Signatures = append(e.Signatures, e.Signatures[0]) })
	}
	unsigned := editEnvelope(t, signManifest(t, m, k1), func(e *Envelope) { e.Signatures = nil })

	tests := []struct {
		name string
		root *Root
		env  []byte
		want error
	}{
		{"1-of-1", testRoot(t, 1, k1), signManifest(t, m, k1), nil},
		{"unsigned", testRoot(t, 1, k1), unsigned, ErrUnsigned},
		{"unknown key", testRoot(t, 1, k1), signManifest(t, m, stranger), ErrUnknownKey},
		{"unknown keys only", testRoot(t, 1, k1), signManifest(t, m, stranger, k2), ErrUnknownKey},
		{"unknown key ignored beside a trusted one", testRoot(t, 1, k1), signManifest(t, m, stranger, k1), nil},
		{"2-of-3 with one", testRoot(t, 2, k1, k2, k3), signManifest(t, m, k2), ErrThreshold},
		{"2-of-3 with one and a stranger", testRoot(t, 2, k1, k2, k3), signManifest(t, m, k2, stranger), ErrThreshold},
		{"2-of-3 with one signature twice", testRoot(t, 2, k1, k2, k3), dup(signManifest(t, m, k2)), ErrThreshold},
		{"2-of-3 with two", testRoot(t, 2, k1, k2, k3), signManifest(t, m, k3, k1), nil},
		{"2-of-3 with three", testRoot(t, 2, k1, k2, k3), signManifest(t, m, k1, k2, k3), nil},
		{"1-of-1 with its signature twice", testRoot(t, 1, k1), dup(signManifest(t, m, k1)), nil},
		{"3-of-3 with two", testRoot(t, 3, k1, k2, k3), signManifest(t, m, k1, k2), ErrThreshold},
		{"bad signature by a trusted key beside good ones", testRoot(t, 1, k1, k2),
			editEnvelope(t, signManifest(t, m, k1, k2), func(e *Envelope) { e.Signatures[1].Sig[0] ^= 1 }), ErrTampered},
		{"a trusted key's signature under a stranger's ID", testRoot(t, 1, k1),
			editEnvelope(t, signManifest(t, m, k1), func(e *Envelope) { e.Signatures[0].KeyID = KeyID(publicKey(stranger)) }), ErrUnknownKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := tt.root.VerifyManifest(tt.env, fixtureNow())
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifyManifest = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSignManifestDeduplicatesSigners(t *testing.T) {
	k := testKey(1)
	env := signManifest(t, fixtureManifest(), k, k, k)
	e, err := ParseEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Signatures) != 1 {
		t.Errorf("signing with one key three times gave %d signatures, want 1", len(e.Signatures))
	}
	if _, _, err := SignManifest(fixtureManifest()); !errors.Is(err, ErrUnsigned) {
		t.Errorf("SignManifest without keys = %v, want ErrUnsigned", err)
	}
	bad := fixtureManifest()
	bad.Files[0].Path = "/etc/passwd"
	if _, _, err := SignManifest(bad, k); !errors.Is(err, ErrInvalid) {
		t.Errorf("SignManifest of an invalid manifest = %v, want ErrInvalid", err)
	}
}

func TestAddSignatures(t *testing.T) {
	k1, k2, k3 := testKey(1), testKey(2), testKey(3)
	root := testRoot(t, 2, k1, k2, k3)
	env := signManifest(t, fixtureManifest(), k1)
	if _, _, err := root.VerifyManifest(env, fixtureNow()); !errors.Is(err, ErrThreshold) {
		t.Fatalf("one of two signatures: %v, want ErrThreshold", err)
	}
	env2, err := AddSignatures(env, k1, k3)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := root.VerifyManifest(env2, fixtureNow()); err != nil {
		t.Fatalf("after a second key holder signed: %v", err)
	}
	e, _ := ParseEnvelope(env2)
	if got := strings.Join(e.KeyIDs(), ","); got != KeyID(publicKey(k1))+","+KeyID(publicKey(k3)) {
		t.Errorf("signatures by %s, want k1 then k3 once each", got)
	}
	// No one adds a signature to a file whose readable fields lie.
	lying := editEnvelope(t, env, func(e *Envelope) { e.Name = "HF-S041000005-099" })
	if _, err := AddSignatures(lying, k2); !errors.Is(err, ErrTampered) {
		t.Errorf("AddSignatures on edited fields = %v, want ErrTampered", err)
	}
}

func TestSignersSayWhoSignedAndWhatTheThresholdNeeds(t *testing.T) {
	k1, k2, k3, outsider := testKey(1), testKey(2), testKey(3), testKey(4)
	root := testRoot(t, 2, k1, k2, k3)
	id := func(k ed25519.PrivateKey) string { return KeyID(publicKey(k)) }
	one := signManifest(t, fixtureManifest(), k1, outsider)
	tests := []struct {
		name                         string
		env                          []byte
		trusted, untrusted, unsigned []string
		enough                       bool
	}{
		{"one of two", one, []string{id(k1)}, []string{id(outsider)}, []string{id(k2), id(k3)}, false},
		{"two of two", signManifest(t, fixtureManifest(), k3, k2), []string{id(k3), id(k2)}, []string{}, []string{id(k1)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := root.Signers(tt.env)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(tt.unsigned)
			got := []([]string){s.Trusted, s.Untrusted, s.Unsigned}
			want := []([]string){tt.trusted, tt.untrusted, tt.unsigned}
			for i := range got {
				slices.Sort(got[i])
				slices.Sort(want[i])
				if !slices.Equal(got[i], want[i]) {
					t.Errorf("signers %+v, want trusted %v untrusted %v unsigned %v", s, tt.trusted, tt.untrusted, tt.unsigned)
				}
			}
			if s.Enough() != tt.enough || s.Threshold != 2 {
				t.Errorf("enough %v of threshold %d, want %v of 2", s.Enough(), s.Threshold, tt.enough)
			}
		})
	}
	// The refusal names who signed and who may add theirs.
	_, _, err := root.VerifyManifest(one, fixtureNow())
	if !errors.Is(err, ErrThreshold) || !strings.Contains(err.Error(), "signed by "+id(k1)) || !strings.Contains(err.Error(), id(k2)) {
		t.Errorf("VerifyManifest of one signature: %v", err)
	}
	tampered := editEnvelope(t, one, func(e *Envelope) { e.Signatures[0].Sig[0] ^= 1 })
	if _, err := root.Signers(tampered); !errors.Is(err, ErrTampered) {
		t.Errorf("Signers of a broken signature: %v, want ErrTampered", err)
	}
}

func TestVerifyManifestExpiry(t *testing.T) {
	key := testKey(1)
	m := fixtureManifest()
	env := signManifest(t, m, key)
	root := testRoot(t, 1, key)
	shortRoot, err := NewRoot(pubsOf(key), 1, 1, fixtureTime.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		root *Root
		now  time.Time
		want error
	}{
		{"valid", root, fixtureNow(), nil},
		{"at the manifest's expiry", root, m.Expires, nil},
		{"after the manifest's expiry", root, m.Expires.Add(time.Second), ErrExpired},
		{"root expired", shortRoot, fixtureTime.Add(48 * time.Hour), ErrExpired},
		{"root valid", shortRoot, fixtureTime.Add(time.Hour), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := tt.root.VerifyManifest(env, tt.now)
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifyManifest = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestCheckSequence(t *testing.T) {
	held := fixtureManifest() // HF-S041000005-012 sequence 3
	with := func(f func(m *Manifest)) *Manifest {
		m := fixtureManifest()
		f(m)
		return m
	}
	tests := []struct {
		name     string
		held     *Manifest
		incoming *Manifest
		want     error
	}{
		{"nothing held", nil, held, nil},
		{"higher sequence", held, with(func(m *Manifest) { m.Sequence = 4; m.Labels["fix"] = "2" }), nil},
		{"identical re-delivery", held, fixtureManifest(), nil},
		{"same sequence, other content", held, with(func(m *Manifest) { m.Labels["fix"] = "2" }), ErrRollback},
		{"lower sequence", held, with(func(m *Manifest) { m.Sequence = 2 }), ErrRollback},
		{"lower sequence, other content", held, with(func(m *Manifest) { m.Sequence = 1; m.Install.Hook = nil }), ErrRollback},
		{"older release of the channel", held, with(func(m *Manifest) { m.Name = "HF-S041000005-011"; m.Sequence = 1 }), nil},
		{"newer release of the channel", held, with(func(m *Manifest) { m.Name = "HF-S041000005-013"; m.Sequence = 1 }), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckSequence(tt.held, tt.incoming); !errors.Is(err, tt.want) {
				t.Fatalf("CheckSequence = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNewRootValidates(t *testing.T) {
	k1, k2 := publicKey(testKey(1)), publicKey(testKey(2))
	exp := fixtureTime.AddDate(1, 0, 0)
	tests := []struct {
		name      string
		pubs      []ed25519.PublicKey
		threshold int
		version   uint64
		expires   time.Time
		ok        bool
	}{
		{"1-of-1", []ed25519.PublicKey{k1}, 1, 1, exp, true},
		{"2-of-2", []ed25519.PublicKey{k1, k2}, 2, 7, exp, true},
		{"no keys", nil, 1, 1, exp, false},
		{"threshold 0", []ed25519.PublicKey{k1}, 0, 1, exp, false},
		{"threshold above keys", []ed25519.PublicKey{k1, k2}, 3, 1, exp, false},
		{"duplicate key", []ed25519.PublicKey{k1, k2, k1}, 2, 1, exp, false},
		{"version 0", []ed25519.PublicKey{k1}, 1, 0, exp, false},
		{"no expiry", []ed25519.PublicKey{k1}, 1, 1, time.Time{}, false},
		{"short key", []ed25519.PublicKey{k1[:31]}, 1, 1, exp, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRoot(tt.pubs, tt.threshold, tt.version, tt.expires)
			if (err == nil) != tt.ok {
				t.Fatalf("NewRoot = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if err == nil && r.Keys[0].ID != KeyID(r.Keys[0].PublicKey) {
				t.Error("root key ID does not match its key")
			}
		})
	}
}

func signRoot(t testing.TB, r *Root, keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	env, err := SignRoot(r, keys...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestParseTrustedRoot(t *testing.T) {
	k1, k2, k3, stranger := testKey(1), testKey(2), testKey(3), testKey(99)
	r := testRoot(t, 2, k1, k2, k3)
	tests := []struct {
		name string
		env  []byte
		now  time.Time
		want error
	}{
		{"self-signed by threshold", signRoot(t, r, k1, k2), fixtureNow(), nil},
		{"self-signed below threshold", signRoot(t, r, k1), fixtureNow(), ErrThreshold},
		{"signed by a stranger", signRoot(t, r, stranger), fixtureNow(), ErrUnknownKey},
		{"expired", signRoot(t, r, k1, k2), r.Expires.Add(time.Second), ErrExpired},
		{"readable version edited", editEnvelope(t, signRoot(t, r, k1, k2), func(e *Envelope) { e.Version = 2 }), fixtureNow(), ErrTampered},
		{"readable expiry edited", editEnvelope(t, signRoot(t, r, k1, k2), func(e *Envelope) { e.Expires = e.Expires.AddDate(10, 0, 0) }), fixtureNow(), ErrTampered},
		{"manifest given as root", signManifest(t, fixtureManifest(), k1), fixtureNow(), ErrInvalid},
		{"manifest relabeled as root", editEnvelope(t, signManifest(t, fixtureManifest(), k1), func(e *Envelope) { e.Type = TypeRoot }), fixtureNow(), ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTrustedRoot(tt.env, tt.now)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseTrustedRoot = %v, want %v", err, tt.want)
			}
			if err == nil {
				a, _ := MarshalRoot(got)
				b, _ := MarshalRoot(r)
				if !bytes.Equal(a, b) {
					t.Errorf("parsed root %s, want %s", a, b)
				}
			}
		})
	}
}

func TestRootRotation(t *testing.T) {
	o1, o2, o3 := testKey(1), testKey(2), testKey(3) // the old root's keys
	n1, n2 := testKey(11), testKey(12)               // the new root's keys
	old := testRoot(t, 2, o1, o2, o3)
	next := func(version uint64, threshold int, keys ...ed25519.PrivateKey) *Root {
		r, err := NewRoot(pubsOf(keys...), threshold, version, fixtureTime.AddDate(3, 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	v2 := next(2, 2, n1, n2)
	v2keep := next(2, 1, o1, n1) // keeps one old key

	tests := []struct {
		name string
		env  []byte
		now  time.Time
		want error
	}{
		{"signed by old threshold and its own", signRoot(t, v2, o1, o3, n1, n2), fixtureNow(), nil},
		{"version skips ahead", signRoot(t, next(5, 2, n1, n2), o1, o2, n1, n2), fixtureNow(), nil},
		{"old key kept in the new root", signRoot(t, v2keep, o1, o2), fixtureNow(), nil},
		{"signed only by the new keys", signRoot(t, v2, n1, n2), fixtureNow(), ErrUnknownKey},
		{"below the old threshold", signRoot(t, v2, o1, n1, n2), fixtureNow(), ErrThreshold},
		{"below its own threshold", signRoot(t, v2, o1, o2, n1), fixtureNow(), ErrThreshold},
		{"without its own keys", signRoot(t, v2, o1, o2), fixtureNow(), ErrUnknownKey},
		{"same version, other keys", signRoot(t, next(1, 2, n1, n2), o1, o2, n1, n2), fixtureNow(), ErrRollback},
		{"lower version", signRoot(t, next(1, 1, o1), o1, o2), fixtureNow(), ErrRollback},
		{"new root expired", signRoot(t, v2, o1, o2, n1, n2), v2.Expires.Add(time.Second), ErrExpired},
		{"old root expired, new one current", signRoot(t, v2, o1, o2, n1, n2), old.Expires.Add(time.Hour), nil},
		{"readable version edited", editEnvelope(t, signRoot(t, v2, o1, o2, n1, n2), func(e *Envelope) { e.Version = 3 }), fixtureNow(), ErrTampered},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := old.Rotate(tt.env, tt.now)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Rotate = %v, want %v", err, tt.want)
			}
			if err == nil && got.Version <= old.Version {
				t.Errorf("rotated to version %d from %d", got.Version, old.Version)
			}
		})
	}

	t.Run("same root again", func(t *testing.T) {
		got, err := old.Rotate(signRoot(t, old, o1, o2), fixtureNow())
		if err != nil || got != old {
			t.Fatalf("Rotate(same root) = %p, %v; want the old root unchanged", got, err)
		}
	})
	t.Run("manifests follow the new keys", func(t *testing.T) {
		r2, err := old.Rotate(signRoot(t, v2, o1, o2, n1, n2), fixtureNow())
		if err != nil {
			t.Fatal(err)
		}
		env := signManifest(t, fixtureManifest(), n1, n2)
		if _, _, err := r2.VerifyManifest(env, fixtureNow()); err != nil {
			t.Errorf("new root rejects a manifest signed by its keys: %v", err)
		}
		if _, _, err := r2.VerifyManifest(signManifest(t, fixtureManifest(), o1, o2), fixtureNow()); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("new root on a manifest signed by retired keys = %v, want ErrUnknownKey", err)
		}
	})
}

func TestRootCanonical(t *testing.T) {
	r := testRoot(t, 1, testKey(2), testKey(1))
	b, err := MarshalRoot(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseRoot(b)
	if err != nil {
		t.Fatal(err)
	}
	if b2, _ := MarshalRoot(back); !bytes.Equal(b, b2) {
		t.Errorf("root changed in a round trip:\n%s\n%s", b, b2)
	}
	// Keys in another order, another time zone, or a wrong ID are refused.
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	keys := v["keys"].([]any)
	keys[0], keys[1] = keys[1], keys[0]
	swapped, _ := json.Marshal(map[string]any{"version": v["version"], "expires": v["expires"], "threshold": v["threshold"], "keys": keys})
	for name, data := range map[string][]byte{
		"keys unsorted": bytes.Replace(swapped, []byte(`{"expires"`), []byte(`{"version":1,"expires"`), 1),
		"wrong key ID":  bytes.Replace(b, []byte(r.Keys[0].ID), []byte(r.Keys[1].ID), 1),
		"unknown field": bytes.Replace(b, []byte(`{"version"`), []byte(`{"x":1,"version"`), 1),
		"padded base64": bytes.Replace(b, []byte(base64.StdEncoding.EncodeToString(r.Keys[0].PublicKey)), []byte(base64.StdEncoding.EncodeToString(r.Keys[0].PublicKey)+"\\n"), 1),
	} {
		if _, err := ParseRoot(data); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseRoot(%s) = %v, want ErrInvalid", name, err)
		}
	}
}

// testIndex returns an index of channel stable with three releases.
func testIndex(t testing.TB, version uint64) *Index {
	t.Helper()
	id := func(s string) string { return ManifestID([]byte(s)).String() }
	return &Index{
		Version: version,
		Channel: "stable",
		Created: fixtureTime,
		Expires: fixtureTime.AddDate(0, 3, 0),
		Releases: []IndexEntry{
			{Name: "SP-S041000005", CID: id("sp5"), Sequence: 1},
			{Name: "HF-S041000005-012", CID: goldenManifestCID, Sequence: 3},
			{Name: "HF-S041000005-011", CID: id("hf11"), Sequence: 2},
		},
	}
}

func signIndex(t testing.TB, ix *Index, keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	env, err := SignIndex(ix, keys...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestVerifyIndex(t *testing.T) {
	key := testKey(1)
	root := testRoot(t, 1, key)
	v5 := testIndex(t, 5)
	changed := func(version uint64) *Index {
		ix := testIndex(t, version)
		ix.Releases = ix.Releases[:2]
		return ix
	}
	beta := testIndex(t, 9)
	beta.Channel = "beta"

	tests := []struct {
		name string
		env  []byte
		held *Index
		now  time.Time
		want error
	}{
		{"first index", signIndex(t, v5, key), nil, fixtureNow(), nil},
		{"version up", signIndex(t, changed(6), key), v5, fixtureNow(), nil},
		{"same index again", signIndex(t, testIndex(t, 5), key), v5, fixtureNow(), nil},
		{"same version, other content", signIndex(t, changed(5), key), v5, fixtureNow(), ErrRollback},
		{"version down", signIndex(t, testIndex(t, 4), key), v5, fixtureNow(), ErrRollback},
		{"other channel", signIndex(t, beta, key), v5, fixtureNow(), ErrInvalid},
		{"expired", signIndex(t, v5, key), nil, v5.Expires.Add(time.Second), ErrExpired},
		{"unsigned", editEnvelope(t, signIndex(t, v5, key), func(e *Envelope) { e.Signatures = nil }), nil, fixtureNow(), ErrUnsigned},
		{"unknown key", signIndex(t, v5, testKey(2)), nil, fixtureNow(), ErrUnknownKey},
		{"readable version edited", editEnvelope(t, signIndex(t, testIndex(t, 4), key), func(e *Envelope) { e.Version = 6 }), v5, fixtureNow(), ErrTampered},
		{"readable channel edited", editEnvelope(t, signIndex(t, v5, key), func(e *Envelope) { e.Channel = "beta" }), nil, fixtureNow(), ErrTampered},
		{"manifest relabeled as index", editEnvelope(t, signManifest(t, fixtureManifest(), key), func(e *Envelope) {
			e.Type = TypeIndex
			e.Name, e.Sequence, e.CID, e.Version = "", 0, "", 7
		}), nil, fixtureNow(), ErrTampered},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ix, err := root.VerifyIndex(tt.env, tt.now, tt.held)
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifyIndex = %v, want %v", err, tt.want)
			}
			if err == nil && !slices.IsSortedFunc(ix.Releases, func(a, b IndexEntry) int { return strings.Compare(a.Name, b.Name) }) {
				t.Errorf("releases not sorted by name: %+v", ix.Releases)
			}
		})
	}
}

func TestIndexValidate(t *testing.T) {
	with := func(f func(ix *Index)) *Index {
		ix := testIndex(t, 1)
		f(ix)
		return ix
	}
	tests := []struct {
		name string
		ix   *Index
		want error
	}{
		{"valid", testIndex(t, 1), nil},
		{"no releases", with(func(ix *Index) { ix.Releases = nil }), nil},
		{"version 0", with(func(ix *Index) { ix.Version = 0 }), ErrInvalid},
		{"bad channel", with(func(ix *Index) { ix.Channel = "" }), ErrInvalid},
		{"expires before created", with(func(ix *Index) { ix.Expires = ix.Created }), ErrInvalid},
		{"bad name", with(func(ix *Index) { ix.Releases[0].Name = "HF-S1-1" }), ErrInvalid},
		{"duplicate name", with(func(ix *Index) { ix.Releases[0].Name = ix.Releases[1].Name }), ErrInvalid},
		{"duplicate name ignoring case", with(func(ix *Index) {
			ix.Releases = append(ix.Releases, IndexEntry{Name: "Agent", CID: goldenManifestCID, Sequence: 1}, IndexEntry{Name: "agent", CID: goldenManifestCID, Sequence: 1})
		}), ErrInvalid},
		{"chunk CID", with(func(ix *Index) { ix.Releases[0].CID = ChunkID(nil).String() }), ErrInvalid},
		{"garbage CID", with(func(ix *Index) { ix.Releases[0].CID = "not-a-cid" }), ErrInvalid},
		{"CID in base58", with(func(ix *Index) {
			s, _ := ManifestID([]byte("x")).StringOfBase('z')
			ix.Releases[0].CID = s
		}), ErrInvalid},
		{"sequence 0", with(func(ix *Index) { ix.Releases[0].Sequence = 0 }), ErrInvalid},
		{"deployments", with(func(ix *Index) {
			ix.Deployments = []Deployment{
				{Release: "HF-S041000005-012", Selector: "site=b", Mode: ModeAvailable},
				{Release: "SP-S041000005", Selector: "site=a,target=server", Mode: ModeAssigned, Window: "22:00-04:00"},
				{Release: "SP-S041000005", Mode: ModeAssigned},
			}
		}), nil},
		{"deployment of a release not in the index", with(func(ix *Index) {
			ix.Deployments = []Deployment{{Release: "SP-S041000009", Mode: ModeAssigned}}
		}), ErrInvalid},
		{"deployment without a mode", with(func(ix *Index) {
			ix.Deployments = []Deployment{{Release: "SP-S041000005"}}
		}), ErrInvalid},
		{"deployment twice", with(func(ix *Index) {
			d := Deployment{Release: "SP-S041000005", Selector: "site=a", Mode: ModeAssigned}
			ix.Deployments = []Deployment{d, d}
		}), ErrInvalid},
		{"deployment selector too long", with(func(ix *Index) {
			ix.Deployments = []Deployment{{Release: "SP-S041000005", Selector: strings.Repeat("a", MaxSelectorLen+1), Mode: ModeAssigned}}
		}), ErrTooLarge},
		{"a release withdrawn with uninstall", with(func(ix *Index) { ix.Releases[0].Withdrawn, ix.Releases[0].Uninstall = true, true }), nil},
		{"uninstall without withdrawal", with(func(ix *Index) { ix.Releases[0].Uninstall = true }), ErrInvalid},
		{"a deployment of a withdrawn release", with(func(ix *Index) {
			ix.Releases[1].Withdrawn = true
			ix.Deployments = []Deployment{{Release: ix.Releases[1].Name, Mode: ModeAssigned}}
		}), ErrInvalid},
		{"proxies, sites in any order", with(func(ix *Index) {
			ix.Proxies = []ProxyEnrolment{
				{Peer: "12D3KooWQbnMX7tGsbbPFFUA6e5QcdV6n7RNBxvyA3nhMZcKVCB7", Sites: []string{"west", "region-1", "east"}},
				{Peer: "12D3KooWAfPDpPRRRBrmqy9is2zjU5srQ4hKuZitiGmh4NTTpS2d", Sites: []string{"north"}},
			}
		}), nil},
		{"a proxy twice", with(func(ix *Index) {
			p := ProxyEnrolment{Peer: "12D3KooWAfPDpPRRRBrmqy9is2zjU5srQ4hKuZitiGmh4NTTpS2d", Sites: []string{"north"}}
			ix.Proxies = []ProxyEnrolment{p, p}
		}), ErrInvalid},
		{"a proxy without sites", with(func(ix *Index) {
			ix.Proxies = []ProxyEnrolment{{Peer: "12D3KooWAfPDpPRRRBrmqy9is2zjU5srQ4hKuZitiGmh4NTTpS2d"}}
		}), ErrInvalid},
		{"a proxy site twice", with(func(ix *Index) {
			ix.Proxies = []ProxyEnrolment{{Peer: "12D3KooWAfPDpPRRRBrmqy9is2zjU5srQ4hKuZitiGmh4NTTpS2d", Sites: []string{"b", "a", "b"}}}
		}), ErrInvalid},
		{"a proxy peer ID with a path in it", with(func(ix *Index) {
			ix.Proxies = []ProxyEnrolment{{Peer: "../12D3KooW", Sites: []string{"a"}}}
		}), ErrInvalid},
		{"a proxy of a bad site", with(func(ix *Index) {
			ix.Proxies = []ProxyEnrolment{{Peer: "12D3KooWAfPDpPRRRBrmqy9is2zjU5srQ4hKuZitiGmh4NTTpS2d", Sites: []string{"../a"}}}
		}), ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := MarshalIndex(tt.ix)
			if !errors.Is(err, tt.want) {
				t.Fatalf("MarshalIndex = %v, want %v", err, tt.want)
			}
			if err != nil {
				return
			}
			ix, err := ParseIndex(b)
			if err != nil {
				t.Fatalf("ParseIndex(MarshalIndex) = %v", err)
			}
			if b2, _ := MarshalIndex(ix); !bytes.Equal(b, b2) {
				t.Errorf("index changed in a round trip")
			}
		})
	}
}

func TestIndexSaysWhichProxyReportsWhichSite(t *testing.T) {
	ix := testIndex(t, 1)
	ix.Proxies = []ProxyEnrolment{{Peer: "12D3KooWQbnMX7tGsbbPFFUA6e5QcdV6n7RNBxvyA3nhMZcKVCB7", Sites: []string{"west", "east"}}}
	b, err := MarshalIndex(ix)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		peer, site string
		want       bool
	}{
		{"12D3KooWQbnMX7tGsbbPFFUA6e5QcdV6n7RNBxvyA3nhMZcKVCB7", "east", true},
		{"12D3KooWQbnMX7tGsbbPFFUA6e5QcdV6n7RNBxvyA3nhMZcKVCB7", "west", true},
		{"12D3KooWQbnMX7tGsbbPFFUA6e5QcdV6n7RNBxvyA3nhMZcKVCB7", "north", false},
		{"12D3KooWAfPDpPRRRBrmqy9is2zjU5srQ4hKuZitiGmh4NTTpS2d", "east", false},
	} {
		if got.MayReport(tt.peer, tt.site) != tt.want {
			t.Errorf("MayReport(%s, %s) = %v, want %v", tt.peer, tt.site, !tt.want, tt.want)
		}
	}
	// Without proxies the encoding is what it was before they existed.
	plain := testIndex(t, 1)
	if b, err := MarshalIndex(plain); err != nil || bytes.Contains(b, []byte("proxies")) {
		t.Errorf("an index without proxies encodes as %s, %v", b, err)
	}
}

func TestParseIndexRejectsUnsorted(t *testing.T) {
	ix := testIndex(t, 1)
	b, err := MarshalIndex(ix)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Version  uint64          `json:"version"`
		Channel  string          `json:"channel"`
		Created  json.RawMessage `json:"created"`
		Expires  json.RawMessage `json:"expires"`
		Releases []IndexEntry    `json:"releases"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	v.Releases[0], v.Releases[1] = v.Releases[1], v.Releases[0]
	unsorted, _ := json.Marshal(v)
	if _, err := ParseIndex(unsorted); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseIndex(unsorted releases) = %v, want ErrInvalid", err)
	}
}

func TestParseEnvelopeRejects(t *testing.T) {
	good := signManifest(t, fixtureManifest(), testKey(1))
	replace := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("envelope has no %q", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	parsed, err := ParseEnvelope(good)
	if err != nil {
		t.Fatal(err)
	}
	manySigs := editEnvelopeRaw(t, good, "signatures", slices.Repeat(parsed.Signatures, MaxSignatures+1))
	tests := []struct {
		name string
		data []byte
		want error
		why  string
	}{
		{"oversize", make([]byte, MaxEnvelopeSize+1), ErrTooLarge, "more than"},
		{"empty", nil, ErrInvalid, "empty document"},
		{"not an object", []byte(`["patchctl.manifest.v1"]`), ErrInvalid, "not a JSON object"},
		{"null", []byte(`null`), ErrInvalid, "not a JSON object"},
		{"unknown field", replace(`"type":`, `"comment": "x", "type":`), ErrInvalid, `unknown field "comment"`},
		{"unknown signature field", replace(`"key_id":`, `"alg": "ed25519", "key_id":`), ErrInvalid, `unknown field "alg"`},
		{"duplicate field", replace(`"type":`, `"name": "HF-S041000005-099", "type":`), ErrInvalid, `"name" appears twice`},
		{"upper-case field", replace(`"name":`, `"Name":`), ErrInvalid, `"Name" is not lower-case`},
		{"folded field", replace(`"sequence":`, `"ſequence":`), ErrInvalid, `is not lower-case`},
		{"trailing data", append(append([]byte(nil), good...), `{}`...), ErrInvalid, "after the JSON object"},
		{"trailing garbage", append(append([]byte(nil), good...), `x`...), ErrInvalid, "invalid character"},
		{"truncated", good[:len(good)/2], ErrInvalid, "unexpected EOF"},
		{"nested too deep", replace(`"type":`, `"x": [[[[1]]]], "type":`), ErrInvalid, "nested deeper"},
		{"unknown type", replace(`"patchctl.manifest.v1"`, `"acme.manifest.v1"`), ErrInvalid, "not a patchctl document"},
		{"newer type", replace(`"patchctl.manifest.v1"`, `"patchctl.manifest.v2"`), ErrUnknownSchema, "upgrade patchctl"},
		{"no payload", editEnvelopeRaw(t, good, "payload", nil), ErrInvalid, "empty payload"},
		{"payload not base64", editEnvelopeRaw(t, good, "payload", "*not base64*"), ErrInvalid, "illegal base64"},
		{"too many signatures", manySigs, ErrTooLarge, "33 signatures"},
		{"short key ID", editEnvelopeRaw(t, good, "signatures", []map[string]any{{"key_id": "abcd", "sig": make([]byte, 64)}}), ErrInvalid, "key ID"},
		{"upper-case key ID", editEnvelopeRaw(t, good, "signatures", []map[string]any{{"key_id": strings.Repeat("A", 32), "sig": make([]byte, 64)}}), ErrInvalid, "key ID"},
		{"short signature", editEnvelopeRaw(t, good, "signatures", []map[string]any{{"key_id": strings.Repeat("a", 32), "sig": make([]byte, 63)}}), ErrInvalid, "63 bytes"},
		{"signatures not a list", editEnvelopeRaw(t, good, "signatures", "x"), ErrInvalid, "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := ParseEnvelope(tt.data)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseEnvelope = %v, want %v", err, tt.want)
			}
			if e != nil {
				t.Error("ParseEnvelope returned an envelope with its error")
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q does not say %q", err, tt.why)
			}
		})
	}
}

// editEnvelopeRaw sets one top-level field of an envelope's JSON to v (or
// removes it if v is nil), bypassing Envelope's checks.
func editEnvelopeRaw(t testing.TB, env []byte, field string, v any) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(env, &m); err != nil {
		t.Fatal(err)
	}
	if v == nil {
		delete(m, field)
	} else {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		m[field] = b
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEnvelopeRoundTrip(t *testing.T) {
	env := signManifest(t, fixtureManifest(), testKey(1), testKey(2))
	e, err := ParseEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	again, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(env, again) {
		t.Errorf("envelope changed in a round trip:\n%s\n%s", env, again)
	}
	// Reformatting the envelope leaves it valid: the payload is base64.
	var compact bytes.Buffer
	if err := json.Compact(&compact, env); err != nil {
		t.Fatal(err)
	}
	if _, _, err := testRoot(t, 1, testKey(1)).VerifyManifest(compact.Bytes(), fixtureNow()); err != nil {
		t.Errorf("compacted envelope: %v", err)
	}
}

func TestSignedMessageSeparatesTypes(t *testing.T) {
	payload := []byte(`{"x":1}`)
	seen := map[string]string{}
	for _, typ := range []string{TypeManifest, TypeRoot, TypeIndex} {
		msg := string(signedMessage(typ, payload))
		if !strings.HasPrefix(msg, "patchctl signature v1\n"+typ+"\n") || !strings.HasSuffix(msg, string(payload)) {
			t.Errorf("signed message for %s is %q", typ, msg)
		}
		if prev, ok := seen[msg]; ok {
			t.Errorf("%s and %s sign the same message", typ, prev)
		}
		seen[msg] = typ
	}
	sig := ed25519.Sign(testKey(1), signedMessage(TypeIndex, payload))
	if ed25519.Verify(publicKey(testKey(1)), signedMessage(TypeManifest, payload), sig) {
		t.Error("an index signature verifies as a manifest signature")
	}
}

func TestLoadRootIgnoresExpiry(t *testing.T) {
	k1, k2, n1 := testKey(1), testKey(2), testKey(11)
	old := testRoot(t, 1, k1, k2)
	env := signRoot(t, old, k1)
	afterExpiry := old.Expires.Add(24 * time.Hour)
	if _, err := ParseTrustedRoot(env, afterExpiry); !errors.Is(err, ErrExpired) {
		t.Fatalf("ParseTrustedRoot(expired) = %v, want ErrExpired", err)
	}
	loaded, err := LoadRoot(env)
	if err != nil {
		t.Fatalf("LoadRoot(expired) = %v", err)
	}
	if _, _, err := loaded.VerifyManifest(signManifest(t, fixtureManifest(), k1), afterExpiry); !errors.Is(err, ErrExpired) {
		t.Errorf("VerifyManifest with an expired root = %v, want ErrExpired", err)
	}
	next, err := NewRoot(pubsOf(n1), 1, 2, afterExpiry.AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loaded.Rotate(signRoot(t, next, k2, n1), afterExpiry); err != nil {
		t.Errorf("rotating away from an expired root: %v", err)
	}
	if _, err := LoadRoot(signRoot(t, old, testKey(99))); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("LoadRoot(signed by a stranger) = %v, want ErrUnknownKey", err)
	}
}

func TestErrorsQuoteUntrustedFieldsShort(t *testing.T) {
	key := testKey(1)
	env := editEnvelope(t, signManifest(t, fixtureManifest(), key), func(e *Envelope) { e.Name = strings.Repeat("N", 1<<20) })
	_, _, err := testRoot(t, 1, key).VerifyManifest(env, fixtureNow())
	if !errors.Is(err, ErrTampered) {
		t.Fatalf("VerifyManifest = %v, want ErrTampered", err)
	}
	if len(err.Error()) > 1000 {
		t.Errorf("error message is %d bytes long", len(err.Error()))
	}
}
