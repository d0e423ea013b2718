package p2p

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// testTimeout bounds every wait of a test: generous for a loaded CI machine
// running -race beside other packages (the ten-fetcher swarm takes 10-12 s
// alone under -race), and never reached when things work.
const testTimeout = time.Minute

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// testNetwork is a way to connect two hosts: the protocol tests run over each.
type testNetwork struct {
	name string
	pair func(t *testing.T) (server, client host.Host)
}

var testNetworks = []testNetwork{
	{"mocknet", mocknetPair},
	{"tcp", func(t *testing.T) (host.Host, host.Host) { return loopbackPair(t, "/ip4/127.0.0.1/tcp/0") }},
	{"quic", func(t *testing.T) (host.Host, host.Host) { return loopbackPair(t, "/ip4/127.0.0.1/udp/0/quic-v1") }},
}

func mocknetPair(t *testing.T) (host.Host, host.Host) {
	t.Helper()
	mn, err := mocknet.FullMeshConnected(2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mn.Close() })
	hs := mn.Hosts()
	return hs[0], hs[1]
}

// newTestHost starts a real host listening on loopback.
func newTestHost(t *testing.T, cfg HostConfig) host.Host {
	t.Helper()
	if cfg.ListenAddrs == nil {
		cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	}
	h, err := NewHost(testContext(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func loopbackPair(t *testing.T, listen string) (host.Host, host.Host) {
	t.Helper()
	server := newTestHost(t, HostConfig{ListenAddrs: []string{listen}})
	client := newTestHost(t, HostConfig{ListenAddrs: []string{listen}})
	connect(t, client, server)
	return server, client
}

func connect(t *testing.T, from, to host.Host) {
	t.Helper()
	if err := from.Connect(testContext(t), peer.AddrInfo{ID: to.ID(), Addrs: to.Addrs()}); err != nil {
		t.Fatalf("connect: %v", err)
	}
}

// testChunks returns n chunks of size bytes: even ones random (stored as raw
// frames), odd ones compressible (stored zstd-compressed).
func testChunks(n, size int, seed uint64) ([][]byte, []cid.Cid) {
	r := rand.New(rand.NewPCG(seed, 1))
	data := make([][]byte, n)
	ids := make([]cid.Cid, n)
	for i := range n {
		b := make([]byte, size)
		if i%2 == 0 {
			for j := range b {
				b[j] = byte(r.Uint32())
			}
		} else {
			line := fmt.Appendf(nil, "chunk %d of seed %d: the quick brown fox\n", i, seed)
			for j := range b {
				b[j] = line[j%len(line)]
			}
		}
		data[i] = b
		ids[i] = manifest.ChunkID(b)
	}
	return data, ids
}

func putChunks(t *testing.T, s *store.Mem, data [][]byte) {
	t.Helper()
	for _, b := range data {
		if err := s.Put(t.Context(), manifest.ChunkID(b), b); err != nil {
			t.Fatal(err)
		}
	}
}

// envelopes is an EnvelopeSource in a map.
type envelopes map[string][]byte

func (e envelopes) Envelope(_ context.Context, ref string) ([]byte, error) {
	b, ok := e[ref]
	if !ok {
		return nil, fmt.Errorf("envelope %q: %w", ref, store.ErrNotFound)
	}
	return b, nil
}

// releases is a Releases in a map.
type releases map[cid.Cid][]cid.Cid

func (r releases) ReleaseChunks(_ context.Context, id cid.Cid) ([]cid.Cid, error) {
	ids, ok := r[id]
	if !ok {
		return nil, fmt.Errorf("release %s: %w", id, ErrNotFound)
	}
	return ids, nil
}

func testManifestID(name string) cid.Cid {
	return manifest.ManifestID([]byte(`{"name":"` + name + `"}`))
}

// sendRaw opens a stream for pid, writes raw, closes its write side and
// returns what the peer answered and how the stream ended.
func sendRaw(t *testing.T, client host.Host, server peer.ID, pid protocol.ID, raw []byte) ([]byte, error) {
	t.Helper()
	ctx := testContext(t)
	// Each case starts on a fresh connection: the server cuts off a client
	// that sent garbage, and a stream on the connection an earlier case got
	// cut would fail for that case's garbage, not this one's.
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
	_, _ = s.Write(raw) // the server may reset before it has read it all
	_ = s.CloseWrite()
	return io.ReadAll(s)
}

// wantReset fails unless err says the peer reset the stream.
//
// The server also closes the connection of a peer that broke the protocol,
// and the client may see that first: a closed pipe counts as a reset too.
// What must never happen is a clean end or an answer.
func wantReset(t *testing.T, got []byte, err error) {
	t.Helper()
	refused := errors.Is(err, network.ErrReset) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed)
	if !refused || len(got) > 0 {
		t.Fatalf("stream ended with %v after %d bytes (%q), want a reset", err, len(got), got[:min(len(got), 32)])
	}
}

// eventually waits until cond holds, checking every few milliseconds, and
// fails the test after testTimeout. It is for state that has no event to
// wait on, such as a server noticing a closed stream.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func frameOf(p []byte) []byte {
	var b bytes.Buffer
	_ = WriteFrame(&b, p)
	return b.Bytes()
}

// againAfterGarbage runs a well-formed exchange after a peer sent garbage. The
// server cuts off peers that break the protocol, so if the exchange fails it
// waits for the connection to go and tries once more on a new one.
func againAfterGarbage(t *testing.T, client host.Host, server peer.ID, exchange func() error) error {
	t.Helper()
	if err := exchange(); err == nil {
		return nil
	}
	eventually(t, "the server to cut the connection", func() bool {
		return client.Network().Connectedness(server) != network.Connected
	})
	return exchange()
}
