// Package agent owns what a node does with releases: the publisher's
// pipeline that turns files into stored chunks and a signed manifest, the
// catalog of signed release envelopes a node holds, and (as the node grows)
// release tracking, deployments, installs and status. It drives store and
// manifest; it speaks no wire format itself.
package agent
