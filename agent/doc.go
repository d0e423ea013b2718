// Package agent owns what a machine of the fleet does with releases. Its
// Agent runs one role over a shared core (core.go: the swarm peer, the state
// database, the signed index it follows and serves down the tree, the loop
// that polls and reports): the origin (origin.go), which holds every release
// and the index and keeps the fleet view; a site's proxy (proxy.go,
// members.go), which replicates its site's releases over the WAN once,
// caches and tracks its site; or a node (node.go, install.go), which
// downloads, installs and reports. Peer (peer.go) is the swarm member an
// agent, `patchctl serve` and `patchctl fetch` run; the publisher's pipeline
// (publish.go, ingest.go) and the catalog of signed release envelopes
// (catalog.go) live here too. It drives store, manifest, p2p and fleet; it
// speaks no wire format itself.
package agent
