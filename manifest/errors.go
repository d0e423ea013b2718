package manifest

import "errors"

var (
	// ErrInvalid marks input that does not have the form this package
	// requires: a malformed manifest, name, envelope or trust root.
	ErrInvalid = errors.New("invalid")
	// ErrChunkMismatch means bytes do not hash to the chunk ID that names them.
	ErrChunkMismatch = errors.New("content does not match its ID")
	// ErrUnknownSchema means a document has a schema version this build
	// does not understand.
	ErrUnknownSchema = errors.New("unknown schema version")
	// ErrTooLarge means input exceeds a size cap.
	ErrTooLarge = errors.New("too large")
)
