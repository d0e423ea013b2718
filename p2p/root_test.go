package p2p

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/libp2p/go-libp2p/core/protocol"
)

// chain serves the roots of versions 1 to len.
type chain [][]byte

func (c chain) Roots(_ context.Context, held uint64) ([][]byte, error) {
	if held >= uint64(len(c)) {
		return nil, nil
	}
	return c[held:], nil
}

func TestRootsAreServedNewerThanTheAskersInOrder(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	roots := chain{[]byte("root v1"), []byte("root v2"), []byte("root v3")}
	NewRootService(server, roots, nil)
	c := &Client{Host: client}
	for _, tc := range []struct {
		held uint64
		want string
	}{{0, "[root v1 root v2 root v3]"}, {1, "[root v2 root v3]"}, {3, "[]"}, {7, "[]"}} {
		got, err := c.GetRoots(testContext(t), server.ID(), tc.held)
		if err != nil || fmt.Sprintf("%s", got) != tc.want {
			t.Errorf("held %d: %s, %v; want %s", tc.held, got, err, tc.want)
		}
	}
}

func TestRootRequestsOfGarbageAreReset(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	NewRootService(server, chain{[]byte("r")}, nil)
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"version with trailing bytes", frameOf([]byte{1, 2})},
		{"overlong varint", frameOf([]byte{0x80, 0x00})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sendRaw(t, client, server.ID(), protocol.ID(RootProtocol), tc.raw)
			wantReset(t, got, err)
		})
	}
}

func FuzzDecodeRoots(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		roots, err := DecodeRoots(p)
		if err != nil {
			return
		}
		if len(roots) == 0 || len(roots) > MaxRootChain {
			t.Fatalf("%d roots accepted", len(roots))
		}
		again, err := EncodeRoots(roots)
		if err != nil || !bytes.Equal(again[1:], p) {
			t.Fatalf("accepted roots re-encode to %x (%v), read from %x", again, err, p)
		}
	})
}
