// Package fleet owns the protocols that run the fleet, beside package p2p's,
// which move content: the tracker, where a node reports to its site's proxy
// what it holds and how its deployments stand and learns which site peers to
// swarm with and which retries an operator ordered; status, where a
// proxy reports its site and the sites below it to its upstream; and
// nudge, where an upstream asks a peer below to report now. It owns
// their messages, their validation and their fuzzed decoders, and builds on
// p2p's framing, handlers and client.
//
// What these protocols carry is what peers say of themselves: it decides
// nothing about what is installed (every node verifies what it installs
// against its trust root). Each report is keyed by the authenticated peer of
// its stream; which sites a proxy may speak for is its receiver's to check.
package fleet
