package manifest

import (
	"bytes"
	"crypto/sha256"
	"fmt"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// Chunk and manifest IDs are CIDv1 with a SHA-256 multihash: at the 64 KiB
// average chunk size SHA-256 with SHA-NI outruns BLAKE3 (BenchmarkHash), and
// whole-file digests can then be checked with sha256sum (docs/decisions/0004).
const hashCode = mh.SHA2_256

// codecJSON is the multicodec code of plain JSON: manifests are canonical
// JSON, not IPLD DAG-JSON.
const codecJSON = 0x0200

// ChunkID returns the CID of a chunk: CIDv1, raw codec, SHA-256 of the
// uncompressed bytes.
func ChunkID(data []byte) cid.Cid {
	sum := sha256.Sum256(data)
	return cidOf(cid.Raw, sum[:])
}

// ManifestID returns the CID of canonical manifest bytes (JSON codec).
func ManifestID(canonical []byte) cid.Cid {
	sum := sha256.Sum256(canonical)
	return cidOf(codecJSON, sum[:])
}

func cidOf(codec uint64, digest []byte) cid.Cid {
	hash, err := mh.Encode(digest, hashCode)
	if err != nil {
		panic(err) // unreachable: SHA-256 digests are always 32 bytes
	}
	return cid.NewCidV1(codec, hash)
}

// VerifyChunk reports whether data hashes to id. The error names the chunk, so
// it can be shown to an operator as it is.
func VerifyChunk(id cid.Cid, data []byte) error {
	if err := CheckChunkID(id); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if !bytes.Equal(id.Hash()[2:], sum[:]) {
		return fmt.Errorf("chunk %s: %w", id, ErrChunkMismatch)
	}
	return nil
}

// CheckChunkID reports whether id has the form of a chunk ID, so that IDs from
// the network or a manifest cannot name other codecs or hash functions.
func CheckChunkID(id cid.Cid) error {
	if !id.Defined() {
		return fmt.Errorf("chunk ID is empty: %w", ErrInvalid)
	}
	p := id.Prefix()
	if p.Version != 1 || p.Codec != cid.Raw || p.MhType != hashCode || p.MhLength != sha256.Size {
		return fmt.Errorf("chunk ID %s is not a CIDv1 raw SHA-256: %w", id, ErrInvalid)
	}
	return nil
}

// ParseChunkID decodes and checks a chunk ID in its string form.
func ParseChunkID(s string) (cid.Cid, error) {
	id, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("chunk ID %q: %v: %w", s, err, ErrInvalid)
	}
	if err := CheckChunkID(id); err != nil {
		return cid.Undef, err
	}
	return id, nil
}

// CheckManifestID reports whether id has the form of a manifest ID: CIDv1,
// JSON codec, SHA-256.
func CheckManifestID(id cid.Cid) error {
	if !id.Defined() {
		return fmt.Errorf("manifest ID is empty: %w", ErrInvalid)
	}
	p := id.Prefix()
	if p.Version != 1 || p.Codec != codecJSON || p.MhType != hashCode || p.MhLength != sha256.Size {
		return fmt.Errorf("manifest ID %s is not a CIDv1 JSON SHA-256: %w", id, ErrInvalid)
	}
	return nil
}

// ParseManifestID decodes and checks a manifest ID in its string form.
func ParseManifestID(s string) (cid.Cid, error) {
	id, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("manifest ID %q: %v: %w", s, err, ErrInvalid)
	}
	if err := CheckManifestID(id); err != nil {
		return cid.Undef, err
	}
	return id, nil
}
