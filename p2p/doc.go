// Package p2p owns how content moves between nodes: the libp2p host
// (identity, transports, private network key, peer allowlist), the content
// protocols (manifest, have, chunk, index with its announcements, and the
// trust roots' chain) with
// their framing and message encodings, upload and download rate limits, the
// Upstream a proxy's cache fetches through, and the swarm fetcher, which
// chooses which chunk to get from which peer, scores peers and bans liars.
// The fleet's own protocols (tracker, status, nudge) live in package fleet, built on
// the framing, handlers and client exported here.
//
// It depends on chunk storage only through the small interfaces it declares
// or borrows from package store (Haser, FrameGetter), never on a concrete
// store, and it knows nothing of installs.
//
// Every protocol is a small service, NewXService(h host.Host, ...), that
// registers a handler under a versioned protocol ID and whose Close ends every
// handler it is running. The client side is Client. Because services accept a
// host.Host, tests run them over mocknet as well as over real loopback hosts.
//
// All messages are length-prefixed frames (see WriteFrame) with a size cap
// chosen per call site, and every decoder is a pure function with a fuzz
// target. A peer that sends anything malformed or oversized has its stream
// reset.
package p2p
