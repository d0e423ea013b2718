package manifest

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
)

// Publisher keys are ed25519. They are stored as PEM, PKCS#8 for private keys
// and PKIX for public keys, so that openssl and other tools read them:
//
//	openssl pkey -in publisher.key -pubout
const (
	pemPrivateKey = "PRIVATE KEY"
	pemPublicKey  = "PUBLIC KEY"
)

// keyIDLen is the length of a key ID in hex digits (16 bytes).
const keyIDLen = 32

// GenerateKey returns a new ed25519 private key from the system's secure
// random source.
func GenerateKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	return priv, nil
}

// KeyID names a public key in signatures and trust roots: the lower-case hex
// of the first 16 bytes of the SHA-256 of the raw 32-byte key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:keyIDLen/2])
}

// publicKey returns the public half of priv.
func publicKey(priv ed25519.PrivateKey) ed25519.PublicKey {
	return priv.Public().(ed25519.PublicKey)
}

// MarshalPrivateKey encodes priv as a PEM "PRIVATE KEY" block (PKCS#8).
func MarshalPrivateKey(priv ed25519.PrivateKey) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("ed25519 private key is %d bytes, want %d: %w", len(priv), ed25519.PrivateKeySize, ErrInvalid)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// ParsePrivateKey decodes a PEM "PRIVATE KEY" block (PKCS#8) holding an
// ed25519 key, as MarshalPrivateKey and `openssl genpkey -algorithm ed25519`
// write it.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	der, err := decodePEM(data, pemPrivateKey)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("private key: %v: %w", err, ErrInvalid)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key is %s, patchctl signs with ed25519 only: %w", keyKind(key), ErrInvalid)
	}
	return priv, nil
}

// MarshalPublicKey encodes pub as a PEM "PUBLIC KEY" block (PKIX).
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("ed25519 public key is %d bytes, want %d: %w", len(pub), ed25519.PublicKeySize, ErrInvalid)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: der}), nil
}

// ParsePublicKey decodes a PEM "PUBLIC KEY" block (PKIX) holding an ed25519
// key, as MarshalPublicKey and `openssl pkey -pubout` write it.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	der, err := decodePEM(data, pemPublicKey)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("public key: %v: %w", err, ErrInvalid)
	}
	pub, ok := key.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key is %s, patchctl verifies ed25519 only: %w", keyKind(key), ErrInvalid)
	}
	return pub, nil
}

// decodePEM returns the bytes of the single PEM block of type want in data.
// Anything else in the file is refused rather than skipped, so that a file
// holding two keys cannot be mistaken for one of them.
func decodePEM(data []byte, want string) ([]byte, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM block found, want a %q block: %w", want, ErrInvalid)
	}
	if block.Type != want {
		hint := ""
		switch block.Type {
		case "ENCRYPTED PRIVATE KEY":
			hint = "; decrypt it first (openssl pkey -in KEY -out PLAIN)"
		case "OPENSSH PRIVATE KEY":
			hint = "; convert it to PKCS#8 (ssh-keygen -p -m PKCS8 -f KEY)"
		case pemPrivateKey, pemPublicKey:
			hint = "; a public key goes where verifying, a private key where signing"
		}
		return nil, fmt.Errorf("PEM block is %q, want %q%s: %w", block.Type, want, hint, ErrInvalid)
	}
	if len(block.Headers) != 0 {
		return nil, fmt.Errorf("PEM %q block has headers (legacy encryption?), want none: %w", want, ErrInvalid)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("data after the PEM %q block, want one key per file: %w", want, ErrInvalid)
	}
	return block.Bytes, nil
}

// keyKind names the algorithm of a key x509 returned, for error messages.
func keyKind(key any) string {
	switch key.(type) {
	case *rsa.PrivateKey, *rsa.PublicKey:
		return "an RSA key"
	case *ecdsa.PrivateKey, *ecdsa.PublicKey:
		return "an ECDSA key"
	case *ecdh.PrivateKey, *ecdh.PublicKey:
		return "an ECDH (X25519) key"
	}
	return fmt.Sprintf("a %T key", key)
}
