package fleet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

// testTimeout bounds every wait of a test: generous for a loaded CI machine
// running -race, and never reached when things work.
const testTimeout = 20 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newTestHost starts a real host listening on loopback.
func newTestHost(t *testing.T) host.Host {
	t.Helper()
	h, err := p2p.NewHost(testContext(t), p2p.HostConfig{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func loopbackPair(t *testing.T, _ string) (server, client host.Host) {
	t.Helper()
	server, client = newTestHost(t), newTestHost(t)
	if err := client.Connect(testContext(t), peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}); err != nil {
		t.Fatalf("connect: %v", err)
	}
	return server, client
}

func testManifestID(name string) cid.Cid {
	return manifest.ManifestID([]byte(`{"name":"` + name + `"}`))
}

func frameOf(p []byte) []byte {
	var b bytes.Buffer
	_ = p2p.WriteFrame(&b, p)
	return b.Bytes()
}

// sendRaw opens a stream for pid on a fresh connection, writes raw, closes
// its write side and returns what the peer answered and how the stream
// ended.
func sendRaw(t *testing.T, client host.Host, server peer.ID, pid protocol.ID, raw []byte) ([]byte, error) {
	t.Helper()
	ctx := testContext(t)
	_ = client.Network().ClosePeer(server)
	s, err := client.NewStream(ctx, server, pid)
	for deadline := time.Now().Add(testTimeout); err != nil && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		s, err = client.NewStream(ctx, server, pid)
	}
	if err != nil {
		t.Fatalf("open %s: %v", pid, err)
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	_, _ = s.Write(raw)
	_ = s.CloseWrite()
	return io.ReadAll(s)
}

// wantReset fails unless the peer reset the stream (or cut the connection,
// which the client may see first) without answering.
func wantReset(t *testing.T, got []byte, err error) {
	t.Helper()
	refused := errors.Is(err, network.ErrReset) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed)
	if !refused || len(got) > 0 {
		t.Fatalf("stream ended with %v after %d bytes (%q), want a reset", err, len(got), got[:min(len(got), 32)])
	}
}
