package store

import "errors"

var (
	// ErrNotFound means the chunk (or pin, or release) is not stored.
	ErrNotFound = errors.New("not found")
	// ErrCorrupt means stored bytes do not decode or do not match their ID.
	ErrCorrupt = errors.New("corrupt")
	// ErrMismatch means bytes offered to Put or PutFrame do not hash to the
	// ID they were offered under.
	ErrMismatch = errors.New("content does not match its ID")
)
