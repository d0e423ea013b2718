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
	// ErrLocked means another process has the store open: one process at a
	// time writes a data dir's packs.
	ErrLocked = errors.New("store is open in another process (an agent running on this data dir?)")
	// ErrReadOnly means a write was asked of a store opened read-only
	// (OpenDiskReadOnly), which never writes to its data dir.
	ErrReadOnly = errors.New("store is open read-only")
)
