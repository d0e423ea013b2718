package p2p

import "errors"

var (
	// ErrFrameTooLarge means a peer announced a frame longer than the cap
	// of the message expected at that point.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrMalformed means a message did not decode: a bad length, a field
	// out of bounds, an unknown status or trailing bytes.
	ErrMalformed = errors.New("malformed message")
	// ErrNotFound means the peer (or a local source) does not have what was
	// asked for.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable means the peer has what was asked for but failed to
	// serve it (a storage error or an overloaded service); another peer may
	// succeed.
	ErrUnavailable = errors.New("peer could not serve the request")
	// ErrNetworkKey means a swarm.key file is not a valid private network key.
	ErrNetworkKey = errors.New("invalid network key")
	// ErrConfig means a HostConfig cannot be satisfied.
	ErrConfig = errors.New("invalid host configuration")
)
