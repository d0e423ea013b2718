package agent

import (
	"crypto/ed25519"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/manifest"
)

func TestConfigValidateSaysWhatIsMissingOrWrong(t *testing.T) {
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	root, err := manifest.NewRoot([]ed25519.PublicKey{pub}, 1, 1, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	rootEnv, err := manifest.SignRoot(root, key)
	if err != nil {
		t.Fatal(err)
	}
	up := Uplink{Site: "east", Upstreams: []peer.AddrInfo{{ID: "12D3KooWAfPDpPRRRBrmqy9is2zjU5srQ4hKuZitiGmh4NTTpS2d"}}}
	base := func(f func(c *Config)) Config {
		c := Config{PeerConfig: PeerConfig{DataDir: "data"}, Trust: rootEnv, Node: &NodeConfig{Uplink: up}}
		f(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  Config
		want string // in the error; "" for none
	}{
		{"a node", base(func(*Config) {}), ""},
		{"an origin", base(func(c *Config) { c.Node, c.Origin = nil, &OriginConfig{} }), ""},
		{"a proxy", base(func(c *Config) { c.Node, c.Proxy = nil, &ProxyConfig{Uplink: up} }), ""},
		{"no data dir", base(func(c *Config) { c.DataDir = "" }), "data dir"},
		{"no trust root", base(func(c *Config) { c.Trust = nil }), "trust root"},
		{"no role", base(func(c *Config) { c.Node = nil }), "exactly one role"},
		{"two roles", base(func(c *Config) { c.Origin = &OriginConfig{} }), "exactly one role"},
		{"a node without a site", base(func(c *Config) { c.Node.Site = "" }), "needs its site"},
		{"a proxy without an upstream", base(func(c *Config) {
			c.Node, c.Proxy = nil, &ProxyConfig{Uplink: Uplink{Site: "east"}}
		}), "at least one upstream"},
		{"a site that is no name", base(func(c *Config) { c.Node.Site = "../east" }), "site"},
		{"an unknown target", base(func(c *Config) { c.Node.Target = "router" }), "target"},
		{"a label of a built-in key", base(func(c *Config) { c.Node.Labels = map[string]string{"site": "x"} }), "site"},
		{"a negative cache quota", base(func(c *Config) {
			c.Node, c.Proxy = nil, &ProxyConfig{Uplink: up, CacheQuota: -1}
		}), "negative"},
		{"a negative poll", base(func(c *Config) { c.PollInterval = -time.Second }), "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate() = %v, want an error about %q", err, tt.want)
			}
		})
	}
}

func TestConfigDefaultsAreSetInOnePlace(t *testing.T) {
	c := Config{PeerConfig: PeerConfig{DataDir: "rel"}, Proxy: &ProxyConfig{}}
	d, err := c.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(d.DataDir) || d.PollInterval != defaultPoll || d.Clock == nil || d.Logger == nil ||
		d.Peers != defaultServingPeers || d.Proxy.OfflineAfter != defaultOfflineAfter {
		t.Errorf("defaults: %+v, proxy %+v", d, d.Proxy)
	}
	if c.Proxy.OfflineAfter != 0 {
		t.Error("withDefaults changed the caller's proxy settings")
	}
	n := Config{PeerConfig: PeerConfig{DataDir: "/abs"}, Node: &NodeConfig{}}
	if d, _ := n.withDefaults(); d.Node.HookTimeout != defaultHookTimeout || d.Node.BootID == nil || d.Peers != 0 {
		t.Errorf("node defaults: %+v", d.Node)
	}
}
