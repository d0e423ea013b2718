package agent

import (
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/patchctl/patchctl/manifest"
)

func signedRoot(t *testing.T, version uint64, keys []ed25519.PrivateKey, signers ...ed25519.PrivateKey) []byte {
	t.Helper()
	pubs := make([]ed25519.PublicKey, len(keys))
	for i, k := range keys {
		pubs[i] = k.Public().(ed25519.PublicKey)
	}
	r, err := manifest.NewRoot(pubs, 1, version, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	env, err := manifest.SignRoot(r, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestTheTrustRootFollowsItsChainAndRefusesAnUnrelatedOne(t *testing.T) {
	a, b, c, x := testKey(t), testKey(t), testKey(t), testKey(t)
	v1 := signedRoot(t, 1, []ed25519.PrivateKey{a}, a)
	v2 := signedRoot(t, 2, []ed25519.PrivateKey{b}, a, b)
	v3 := signedRoot(t, 3, []ed25519.PrivateKey{c}, b, c)
	unrelated := signedRoot(t, 1, []ed25519.PrivateKey{x}, x)
	skipping := signedRoot(t, 3, []ed25519.PrivateKey{x}, x)
	db, err := openStateDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Now()
	load := func(given []byte, reset bool) (*trustChain, error) { return loadTrust(db, given, reset, now) }

	tc, err := load(v1, false)
	if err != nil || tc.current().Version != 1 {
		t.Fatalf("first start: %v", err)
	}
	// Rotations arrive over the network, in order, and are kept.
	if v, moved, err := tc.take([][]byte{v2, v3}, now); err != nil || !moved || v != 3 {
		t.Fatalf("take v2, v3: %d %v %v", v, moved, err)
	}
	if v, moved, err := tc.take([][]byte{v2}, now); err == nil || moved || v != 3 {
		t.Errorf("an older root taken again: %d %v %v, want it refused", v, moved, err)
	}
	if got, _ := tc.Roots(t.Context(), 1); len(got) != 2 {
		t.Errorf("roots served above version 1: %d, want 2", len(got))
	}
	tests := []struct {
		name    string
		given   []byte
		reset   bool
		want    uint64
		wantErr error
	}{
		{"the root first installed", v1, false, 3, nil},
		{"a root of the chain", v2, false, 3, nil},
		{"an unrelated root", unrelated, false, 0, ErrTrustMismatch},
		{"a newer root that does not follow", signedRoot(t, 4, []ed25519.PrivateKey{x}, x), false, 0, ErrTrustMismatch},
		{"an unrelated root of the same version", skipping, false, 0, ErrTrustMismatch},
		{"the successor, given by hand", signedRoot(t, 4, []ed25519.PrivateKey{c}, c), false, 4, nil},
		{"an unrelated root, reset", unrelated, true, 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc, err := load(tt.given, tt.reset)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("load: %v, want %v", err, tt.wantErr)
			}
			if err == nil && tc.current().Version != tt.want {
				t.Errorf("follows version %d, want %d", tc.current().Version, tt.want)
			}
		})
	}
}
