// Package manifest owns what a release is: pack identity (HF/SP names),
// content-defined chunking, chunk and manifest IDs, the manifest type and its
// canonical encoding, signed envelopes, the trust root and the signed release
// index. It is pure values and functions: it reads the files it chunks and does
// no other I/O.
package manifest
