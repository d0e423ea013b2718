package p2p

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/patchctl/patchctl/store"
)

func TestIdentityPersists(t *testing.T) {
	dir := t.TempDir()
	var ids []peer.ID
	for range 2 {
		h, err := NewHost(testContext(t), HostConfig{DataDir: dir, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, h.ID())
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if ids[0] != ids[1] {
		t.Fatalf("peer ID changed across restarts: %s, then %s", ids[0], ids[1])
	}
	fi, err := os.Stat(filepath.Join(dir, IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity key has mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("data dir holds %d entries, want only the key", len(entries))
	}

	// A fresh data dir is a fresh identity.
	h := newTestHost(t, HostConfig{DataDir: t.TempDir()})
	if h.ID() == ids[0] {
		t.Fatal("two data dirs share a peer ID")
	}
}

func TestIdentityRefusesUnsafeKey(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permissions")
	}
	cases := []struct {
		name  string
		setup func(path string)
	}{
		{"readable by others", func(path string) { _ = os.Chmod(path, 0o644) }},
		{"not a key", func(path string) { _ = os.WriteFile(path, []byte("hello"), 0o600) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			h := newTestHost(t, HostConfig{DataDir: dir})
			_ = h.Close()
			tc.setup(filepath.Join(dir, IdentityFile))
			if _, err := NewHost(testContext(t), HostConfig{DataDir: dir}); !errors.Is(err, ErrConfig) {
				t.Fatalf("NewHost = %v, want ErrConfig", err)
			}
		})
	}
}

func TestNetworkKeyFile(t *testing.T) {
	file := GenerateNetworkKey()
	if !bytes.HasPrefix(file, []byte("/key/swarm/psk/1.0.0/\n/base16/\n")) {
		t.Fatalf("swarm.key starts %q", file[:min(len(file), 40)])
	}
	k, err := ParseNetworkKey(file)
	if err != nil || len(k) != 32 {
		t.Fatalf("ParseNetworkKey = %x, %v", k, err)
	}
	if k2, _ := ParseNetworkKey(GenerateNetworkKey()); bytes.Equal(k, k2) {
		t.Fatal("two generated keys are equal")
	}
	for _, bad := range []string{"", "/key/swarm/psk/1.0.0/\n/base16/\nabcd\n", "/key/swarm/psk/2.0.0/\n/base16/\n" + string(bytes.Repeat([]byte("ab"), 32))} {
		if _, err := ParseNetworkKey([]byte(bad)); !errors.Is(err, ErrNetworkKey) {
			t.Errorf("ParseNetworkKey(%q) = %v, want ErrNetworkKey", bad, err)
		}
	}
}

// canFetch reports whether client can connect to server and get a chunk
// from its chunk service within timeout. A peer with the wrong network key
// makes the handshake wait for bytes that never come, so negative cases pass
// a short timeout rather than wait for libp2p's own.
func canFetch(t *testing.T, client, server host.Host, id cid.Cid, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(testContext(t), timeout)
	defer cancel()
	if err := client.Connect(ctx, peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}); err != nil {
		return err
	}
	var got []byte
	err := GetChunks(ctx, client, server.ID(), []cid.Cid{id}, func(_ cid.Cid, frame []byte) error {
		got = bytes.Clone(frame)
		return nil
	})
	if err == nil && got == nil {
		err = errors.New("chunk not found")
	}
	return err
}

func serveTestChunk(t *testing.T, h host.Host) cid.Cid {
	t.Helper()
	src := store.NewMem()
	data, ids := testChunks(1, 1000, 20)
	putChunks(t, src, data)
	svc := NewChunkService(h, src, ChunkConfig{})
	t.Cleanup(func() { _ = svc.Close() })
	return ids[0]
}

// refuseTimeout bounds attempts that should fail. If one succeeds, it does
// so within milliseconds on loopback.
const refuseTimeout = 2 * time.Second

func TestPrivateNetwork(t *testing.T) {
	key, err := ParseNetworkKey(GenerateNetworkKey())
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ParseNetworkKey(GenerateNetworkKey())
	server := newTestHost(t, HostConfig{NetworkKey: key})
	id := serveTestChunk(t, server)

	if err := canFetch(t, newTestHost(t, HostConfig{NetworkKey: key}), server, id, testTimeout); err != nil {
		t.Fatalf("host with the same network key: %v", err)
	}
	if err := canFetch(t, newTestHost(t, HostConfig{NetworkKey: other}), server, id, refuseTimeout); err == nil {
		t.Fatal("host with another network key fetched a chunk")
	} else {
		t.Logf("refused as it should be: %v", err)
	}
	if err := canFetch(t, newTestHost(t, HostConfig{}), server, id, refuseTimeout); err == nil {
		t.Fatal("host without a network key fetched a chunk")
	} else {
		t.Logf("refused as it should be: %v", err)
	}
}

func TestPrivateNetworkIsTCPOnly(t *testing.T) {
	key, _ := ParseNetworkKey(GenerateNetworkKey())
	_, err := NewHost(testContext(t), HostConfig{NetworkKey: key, ListenAddrs: []string{"/ip4/127.0.0.1/udp/0/quic-v1"}})
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("NewHost with a network key on QUIC = %v, want ErrConfig", err)
	}
	// The default addresses drop QUIC.
	h, err := NewHost(testContext(t), HostConfig{NetworkKey: key})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, a := range h.Addrs() {
		if _, err := a.ValueForProtocol(ma.P_UDP); err == nil {
			t.Fatalf("host with a network key listens on %s", a)
		}
	}
}

func TestAllowlist(t *testing.T) {
	allow := NewAllowlist()
	server := newTestHost(t, HostConfig{Allow: allow})
	id := serveTestChunk(t, server)
	friend := newTestHost(t, HostConfig{})
	stranger := newTestHost(t, HostConfig{})
	allow.Add(friend.ID())

	if err := canFetch(t, friend, server, id, testTimeout); err != nil {
		t.Fatalf("listed peer: %v", err)
	}
	if err := canFetch(t, stranger, server, id, refuseTimeout); err == nil {
		t.Fatal("unlisted peer fetched a chunk")
	} else {
		t.Logf("refused as it should be: %v", err)
	}
	// Outbound too: the server does not dial unlisted peers.
	strangerID := serveTestChunk(t, stranger)
	if err := canFetch(t, server, stranger, strangerID, refuseTimeout); err == nil {
		t.Fatal("host dialed an unlisted peer")
	} else {
		t.Logf("refused as it should be: %v", err)
	}
	allow.Remove(friend.ID())
	if allow.Allowed(friend.ID()) {
		t.Fatal("removed peer still allowed")
	}
}
