package manifest

import "errors"

var (
	// ErrInvalid marks input that does not have the form this package
	// requires: a malformed manifest, name, envelope, key or trust root.
	ErrInvalid = errors.New("invalid")
	// ErrChunkMismatch means bytes do not hash to the chunk ID that names them.
	ErrChunkMismatch = errors.New("content does not match its ID")
	// ErrUnknownSchema means a document has a schema version this build
	// does not understand.
	ErrUnknownSchema = errors.New("unknown schema version")
	// ErrTooLarge means input exceeds a size cap.
	ErrTooLarge = errors.New("too large")

	// ErrUnsigned means an envelope carries no signature at all; the
	// publisher must sign it with a key of the trust root.
	ErrUnsigned = errors.New("not signed; sign it with a key of the trust root")
	// ErrUnknownKey means no signature on an envelope is by a key of the
	// trust root: it was signed with the wrong key, or this node's trust root
	// is out of date and needs rotating.
	ErrUnknownKey = errors.New("signed by no key of the trust root; check the signing key or rotate the trust root")
	// ErrThreshold means fewer distinct trusted keys signed than the trust
	// root requires; more key holders must sign.
	ErrThreshold = errors.New("not enough trusted signatures; more key holders must sign")
	// ErrExpired means a signed document or the trust root is past its
	// expiry; the publisher must re-sign it, or a new root must be installed.
	ErrExpired = errors.New("expired; re-sign it or install a current trust root")
	// ErrTampered means a signature by a trusted key does not verify, or the
	// readable fields of an envelope do not match its signed payload: the
	// file was changed after signing. Fetch it again from a good source.
	ErrTampered = errors.New("changed after signing; fetch it again from a trusted source")
	// ErrRollback means a signed document is older than one already
	// accepted: a manifest of a held release with a sequence not above the
	// held one, or an index or trust root whose version went down. It may be
	// a replay by an attacker; the publisher must issue a higher number.
	ErrRollback = errors.New("not newer than the version already accepted (rollback); the publisher must issue a higher sequence or version")
)
