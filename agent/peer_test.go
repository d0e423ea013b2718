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
