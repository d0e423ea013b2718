package agent

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/testnet/packgen"
)

// lyingFrames serves every chunk's frame with a byte changed.
type lyingFrames struct{ store.FrameGetter }

func (l lyingFrames) GetFrame(ctx context.Context, id cid.Cid) ([]byte, error) {
	f, err := l.FrameGetter.GetFrame(ctx, id)
	if err != nil {
		return nil, err
	}
	f = append([]byte(nil), f...)
	f[len(f)/2] ^= 0xff
	return f, nil
}

func TestAFetchFromPeersThatLieFailsAsBadData(t *testing.T) {
	f := newFixture(t)
	writeFile(t, filepath.Join(f.dir, "pack", "a.bin"), generate(7, 512<<10, packgen.Software))
	res := f.publish(t, "SP-S041000005", filepath.Join(f.dir, "pack"))
	liar, err := NewPeer(t.Context(), PeerConfig{DataDir: filepath.Join(f.dir, "data"), ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer liar.Close()
	liar.Serve(Serving{Frames: lyingFrames{liar.Store}})
	me, err := NewPeer(t.Context(), PeerConfig{DataDir: t.TempDir(), ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer me.Close()
	me.Serve(Serving{})
	me.Host.Peerstore().AddAddrs(liar.Host.ID(), liar.Host.Addrs(), peerstore.PermanentAddrTTL)
	_, err = me.Fetch(t.Context(), f.root, res.Name, []peer.ID{liar.Host.ID()}, FetchOptions{Swarm: p2p.FetchConfig{}})
	if !errors.Is(err, store.ErrCorrupt) || adminapi.Classify(err).ExitCode() != adminapi.ExitBadData {
		t.Errorf("fetch from a liar: %v; want bad data (exit %d)", err, adminapi.ExitBadData)
	}
}

func TestDroppingAReleasesChunksKeepsWhatOtherPinsAndFetchesUnderWayNeed(t *testing.T) {
	p, err := NewPeer(t.Context(), PeerConfig{DataDir: t.TempDir(), ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := t.Context()
	chunk := map[string]cid.Cid{}
	for _, name := range []string{"own", "pinned", "fetched", "other"} {
		data := []byte("the chunk " + name)
		chunk[name] = manifest.ChunkID(data)
		if err := p.Store.Put(ctx, chunk[name], data); err != nil {
			t.Fatal(err)
		}
	}
	installed := []cid.Cid{chunk["own"], chunk["pinned"], chunk["fetched"]}
	pin := func(name string, ids ...cid.Cid) {
		if err := p.Store.Pin(ctx, name, ids); err != nil {
			t.Fatal(err)
		}
	}
	pin("SP-S041000005", installed...)
	pin("HF-S041000005-001", chunk["pinned"], chunk["other"])
	fetching := manifest.ChunkID([]byte("a manifest"))
	p.startFetching(fetching, &inFlight{name: "SP-S041000006", chunks: []cid.Cid{chunk["fetched"]}})

	// A pin of another version of the name is not the one to drop.
	if unpinned, n, _, err := p.dropChunks(ctx, "SP-S041000005", installed[:2]); err != nil || unpinned || n != 0 {
		t.Fatalf("drop of another version: unpinned %v, %d chunks, %v", unpinned, n, err)
	}
	unpinned, n, bytes, err := p.dropChunks(ctx, "SP-S041000005", installed)
	if err != nil || !unpinned || n != 1 || bytes <= 0 {
		t.Fatalf("drop: unpinned %v, %d chunks of %d bytes, %v; want the one chunk nothing else needs", unpinned, n, bytes, err)
	}
	for name, want := range map[string]bool{"own": false, "pinned": true, "fetched": true, "other": true} {
		if ok, _ := p.Store.Has(ctx, chunk[name]); ok != want {
			t.Errorf("chunk %q held %v, want %v", name, ok, want)
		}
	}
	pins, err := p.Store.Pins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pins["SP-S041000005"]; ok || len(pins) != 1 {
		t.Errorf("pins after the drop: %v", pins)
	}
}
