package testnet

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/fleet"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/testnet/packgen"
)

// NewTrust returns a fresh publisher key and a trust root of that one key,
// valid for a day.
func NewTrust() (ed25519.PrivateKey, *manifest.Root, error) {
	key, err := manifest.GenerateKey()
	if err != nil {
		return nil, nil, err
	}
	root, err := manifest.NewRoot([]ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, 1, 1, time.Now().Add(24*time.Hour))
	if err != nil {
		return nil, nil, err
	}
	return key, root, nil
}

// WritePack writes a generated service pack of about size bytes under dir:
// three quarters software-like content and one quarter already-compressed
// content, which together compress about 2:1, as a service pack of binaries,
// scripts and compressed resources does. Equal seeds give equal packs.
func WritePack(dir string, seed uint64, size int64) ([]agent.Source, error) {
	parts := []struct {
		path string
		size int64
		kind packgen.Kind
	}{
		{"bin/service.bin", size * 3 / 4, packgen.Software},
		{"res/resources.pak", size - size*3/4, packgen.Incompressible},
	}
	var sources []agent.Source
	for i, part := range parts {
		local := filepath.Join(dir, filepath.FromSlash(part.path))
		if err := os.MkdirAll(filepath.Dir(local), 0o755); err != nil {
			return nil, err
		}
		f, err := os.Create(local)
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(f, packgen.New(seed*2+uint64(i), part.size, part.kind))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
		sources = append(sources, agent.Source{Local: local, Path: part.path, Mode: 0o644, Size: part.size})
	}
	return sources, nil
}

// Release is a release published at the origin.
type Release struct {
	Name       string
	Manifest   *manifest.Manifest
	Entry      manifest.IndexEntry
	StoredSize int64 // bytes of its distinct chunks as stored: what one copy moves
}

// Publish publishes sources at the origin as release name, with the given
// install hook.
func (n *Network) Publish(ctx context.Context, name string, sources []agent.Source, hook []string) (*Release, error) {
	origin := n.Origin.Agent.Peer()
	res, err := agent.Publish(ctx, origin.Store, origin.Catalog, []ed25519.PrivateKey{n.Key}, sources, agent.PublishOptions{
		Name: name, Install: manifest.Install{Hook: hook},
	})
	if err != nil {
		return nil, err
	}
	r, err := origin.Catalog.Get(res.CID.String())
	if err != nil {
		return nil, err
	}
	return &Release{
		Name: name, Manifest: r.Manifest, StoredSize: StoredBytes(ctx, origin.Store, r.Manifest),
		Entry: manifest.IndexEntry{Name: name, CID: res.CID.String(), Sequence: res.Sequence},
	}, nil
}

// Announce signs an index of version listing releases, each deployed to
// every node to install at once, and gives it to the origin, which
// announces it down the tree.
func (n *Network) Announce(version uint64, releases ...*Release) error {
	ix := n.NewIndex(version, releases...)
	for _, r := range releases {
		ix.Deployments = append(ix.Deployments, manifest.Deployment{Release: r.Name, Mode: manifest.ModeAssigned})
	}
	return n.SetIndex(ix)
}

// NewIndex returns an index of version listing releases, deployed nowhere,
// with every site's proxy enrolled to report its site.
func (n *Network) NewIndex(version uint64, releases ...*Release) *manifest.Index {
	ix := &manifest.Index{Version: version, Channel: "stable", Created: time.Now(), Expires: time.Now().Add(24 * time.Hour)}
	for _, r := range releases {
		ix.Releases = append(ix.Releases, r.Entry)
	}
	for _, s := range n.Sites {
		if s.Proxy != nil {
			ix.Proxies = append(ix.Proxies, manifest.ProxyEnrolment{Peer: s.Proxy.id.String(), Sites: []string{s.Name}})
		}
	}
	return ix
}

// SetIndex signs ix and gives it to the origin.
func (n *Network) SetIndex(ix *manifest.Index) error {
	env, err := manifest.SignIndex(ix, n.Key)
	if err != nil {
		return err
	}
	o := n.Origin.Agent
	if o == nil {
		return fmt.Errorf("testnet: the origin is stopped")
	}
	_, err = o.API().(adminapi.Origin).PostIndex(context.Background(), env)
	return err
}

// Installed reports whether m has installed the release called name.
func Installed(m *Member, name string) bool {
	return stateOf(m, name).State == lifecycle.Installed
}

// WaitInstalled waits until every node of sites has installed rel, that very
// manifest and not another version of the name, or ctx ends.
func (n *Network) WaitInstalled(ctx context.Context, rel *Release, sites ...*Site) error {
	// Every 50 ms, and only the nodes not yet seen done: the check itself
	// must not load a network of hundreds of nodes.
	t := time.NewTicker(50 * time.Millisecond)
	done := make(map[*Member]bool)
	defer t.Stop()
	for {
		missing := 0
		var failed []string
		for _, s := range sites {
			for _, m := range s.Nodes {
				if done[m] {
					continue
				}
				st := stateOf(m, rel.Name)
				if st.CID == rel.Entry.CID && st.State == lifecycle.Installed {
					done[m] = true
					continue
				}
				missing++
				if st.State == lifecycle.Failed || st.State == lifecycle.Refused {
					failed = append(failed, fmt.Sprintf("%s: %s", m.Name, st.Reason))
				}
			}
		}
		if missing == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d nodes have not installed %s %s (failures seen: %v): %w", missing, rel.Name, rel.Entry.CID, failed, ctx.Err())
		case <-t.C:
		}
	}
}

// stateOf returns node m's state of the release called name.
func stateOf(m *Member, name string) fleet.DeploymentStatus {
	if a := m.Agent; a != nil {
		st, _ := a.API().(adminapi.Node).NodeStatus(context.Background())
		for _, d := range st.Deployments {
			if d.Release == name {
				return d
			}
		}
	}
	return fleet.DeploymentStatus{}
}

// Replicated reports whether s's proxy holds the release called name whole.
func Replicated(s *Site, name string) bool {
	if s.Proxy == nil || s.Proxy.Agent == nil {
		return false
	}
	st, err := s.Proxy.Agent.API().(adminapi.Fleet).FleetStatus(context.Background(), name)
	if err != nil || len(st.Releases) != 1 {
		return false
	}
	for _, c := range st.Releases[0].Sites {
		if c.Site == s.Name {
			return c.ProxyReplicated
		}
	}
	return false
}

// StoredBytes sums the stored size of m's distinct chunks held in st.
func StoredBytes(ctx context.Context, st store.Lister, m *manifest.Manifest) int64 {
	var total int64
	for _, id := range m.ChunkIDs() {
		if info, err := st.Stat(ctx, id); err == nil {
			total += info.StoredSize
		}
	}
	return total
}
