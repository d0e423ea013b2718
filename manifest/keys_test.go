package manifest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testKey returns a fixed ed25519 key, so signatures in tests and fuzz seeds
// are the same on every run.
func testKey(n int) ed25519.PrivateKey {
	seed := sha256.Sum256(fmt.Appendf(nil, "patchctl test key %d", n))
	return ed25519.NewKeyFromSeed(seed[:])
}

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKeyID(t *testing.T) {
	// The public key of RFC 8032's first test vector; its ID computed with
	// python3 -c 'import hashlib; print(hashlib.sha256(bytes.fromhex(K)).hexdigest()[:32])'.
	pub, _ := hex.DecodeString("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
	if got, want := KeyID(pub), "21fe31dfa154a261626bf854046fd227"; got != want {
		t.Errorf("KeyID = %s, want %s", got, want)
	}
	if !isKeyID(KeyID(pub)) {
		t.Error("isKeyID rejects a KeyID")
	}
}

func TestKeyRoundTrip(t *testing.T) {
	priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	privPEM, err := MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(privPEM, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("private key PEM starts %q", privPEM[:30])
	}
	priv2, err := ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.Equal(priv2) {
		t.Error("private key changed in a round trip")
	}
	pubPEM, err := MarshalPublicKey(publicKey(priv))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(pubPEM, []byte("-----BEGIN PUBLIC KEY-----\n")) {
		t.Errorf("public key PEM starts %q", pubPEM[:30])
	}
	pub, err := ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(publicKey(priv)) {
		t.Error("public key changed in a round trip")
	}
}

// TestKeysMatchOpenSSL reads keys written by
//
//	openssl genpkey -algorithm ed25519 -out openssl-ed25519.key
//	openssl pkey -in openssl-ed25519.key -pubout -out openssl-ed25519.pub
//
// and checks that this package writes the same bytes, so either tool reads
// the other's files.
func TestKeysMatchOpenSSL(t *testing.T) {
	keyPEM := readTestdata(t, "openssl-ed25519.key")
	pubPEM := readTestdata(t, "openssl-ed25519.pub")
	priv, err := ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(publicKey(priv)) {
		t.Fatal("openssl's public key is not the public half of its private key")
	}
	if b, _ := MarshalPrivateKey(priv); !bytes.Equal(b, keyPEM) {
		t.Errorf("MarshalPrivateKey writes\n%s\nopenssl wrote\n%s", b, keyPEM)
	}
	if b, _ := MarshalPublicKey(pub); !bytes.Equal(b, pubPEM) {
		t.Errorf("MarshalPublicKey writes\n%s\nopenssl wrote\n%s", b, pubPEM)
	}
}

func TestParseKeyRejects(t *testing.T) {
	priv := testKey(1)
	privPEM, _ := MarshalPrivateKey(priv)
	pubPEM, _ := MarshalPublicKey(publicKey(priv))
	block := func(typ string, headers map[string]string, der []byte) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: typ, Headers: headers, Bytes: der})
	}
	privDER, _ := pem.Decode(privPEM)
	pubDER, _ := pem.Decode(pubPEM)

	tests := []struct {
		name    string
		data    []byte
		private bool
		why     string
	}{
		{"private: empty", nil, true, "no PEM block"},
		{"private: not PEM", []byte("hello"), true, "no PEM block"},
		{"private: raw seed", priv.Seed(), true, "no PEM block"},
		{"private: public key given", pubPEM, true, `is "PUBLIC KEY"`},
		{"private: encrypted", block("ENCRYPTED PRIVATE KEY", nil, []byte{1}), true, "decrypt it first"},
		{"private: OpenSSH", block("OPENSSH PRIVATE KEY", nil, []byte{1}), true, "ssh-keygen"},
		{"private: legacy headers", block("PRIVATE KEY", map[string]string{"Proc-Type": "4,ENCRYPTED"}, privDER.Bytes), true, "headers"},
		{"private: two keys", append(append([]byte(nil), privPEM...), privPEM...), true, "one key per file"},
		{"private: garbage DER", block("PRIVATE KEY", nil, []byte{0x30, 0x01, 0x00}), true, "private key"},
		{"private: P-256", readTestdata(t, "openssl-p256.key"), true, "ECDSA"},
		{"private: X25519", readTestdata(t, "openssl-x25519.key"), true, "X25519"},
		{"public: private key given", privPEM, false, `is "PRIVATE KEY"`},
		{"public: empty", nil, false, "no PEM block"},
		{"public: garbage DER", block("PUBLIC KEY", nil, []byte{0x30, 0x00}), false, "public key"},
		{"public: P-256", readTestdata(t, "openssl-p256.pub"), false, "ECDSA"},
		{"public: trailing data", append(append([]byte(nil), pubPEM...), "junk"...), false, "one key per file"},
		{"public: headers", block("PUBLIC KEY", map[string]string{"Comment": "x"}, pubDER.Bytes), false, "headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.private {
				_, err = ParsePrivateKey(tt.data)
			} else {
				_, err = ParsePublicKey(tt.data)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q does not say %q", err, tt.why)
			}
		})
	}
}

func TestMarshalKeyRejectsWrongSize(t *testing.T) {
	if _, err := MarshalPrivateKey(ed25519.PrivateKey(make([]byte, 10))); !errors.Is(err, ErrInvalid) {
		t.Errorf("MarshalPrivateKey(10 bytes) = %v, want ErrInvalid", err)
	}
	if _, err := MarshalPublicKey(ed25519.PublicKey(make([]byte, 10))); !errors.Is(err, ErrInvalid) {
		t.Errorf("MarshalPublicKey(10 bytes) = %v, want ErrInvalid", err)
	}
}
