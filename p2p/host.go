package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	libp2pconnmgr "github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// IdentityFile is the name of the node's private key in its data directory.
const IdentityFile = "identity.key"

// DefaultListenAddrs returns where a host listens unless told otherwise: TCP
// and QUIC on every IPv4 interface, on ports the system picks. With a network
// key only the TCP address is used.
func DefaultListenAddrs() []string {
	return []string{"/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"}
}

// HostConfig configures NewHost. The zero value is valid: a fresh identity,
// the default listen addresses, an open network.
type HostConfig struct {
	// DataDir holds the node's identity key (IdentityFile), created on
	// first use, so the node keeps its peer ID across restarts. Empty
	// means a fresh identity every time, for tests.
	DataDir string
	// ListenAddrs are multiaddrs to listen on; empty means
	// DefaultListenAddrs().
	ListenAddrs []string
	// NetworkKey, if set, is the 32-byte pre-shared key of a private
	// network (see ParseNetworkKey): the host then only talks to hosts with
	// the same key. libp2p cannot apply a pre-shared key to QUIC, which does
	// its own encryption, so a host with a network key uses TCP only, and
	// asking it to listen on a UDP address is an error.
	NetworkKey []byte
	// Allow, if not nil, is the only set of peers the host connects to or
	// accepts connections from.
	Allow *Allowlist
	// Gater, if set, also decides which peers and addresses the host may
	// dial and accept; a connection must pass both it and Allow.
	Gater connmgr.ConnectionGater
	// NATPortMap asks the local gateway (UPnP, NAT-PMP) to forward the
	// listen ports. Off by default: nodes reach the WAN through their
	// site's proxy, which an operator configures.
	NATPortMap bool
	// Peers is how many peers the host must hold connections to at once,
	// such as every node of a large site for its proxy; 0 keeps libp2p's
	// defaults, which trim beyond 192 peers and, on a machine with 24 GiB
	// of memory, admit 256 inbound connections in all (docs/decisions/0018).
	Peers int
	// DialTCP, if set, opens every outgoing TCP connection in place of the
	// operating system's dialer; test networks use it to run connections
	// through links shaped like a site's WAN.
	DialTCP tcp.DialerForAddr
}

// NewHost starts a libp2p host with TCP and QUIC (TCP only with a network
// key), Noise and yamux, no relay, and no metrics registered globally. It
// enables none of libp2p's browser transports (WebRTC, WebTransport,
// WebSocket); they are still linked into the binary, since the libp2p and
// libp2p/config packages import them whatever the options. Close the host
// to stop it.
func NewHost(ctx context.Context, cfg HostConfig) (host.Host, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	key, err := loadIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	listen := cfg.ListenAddrs
	if len(listen) == 0 {
		listen = DefaultListenAddrs()
		if cfg.NetworkKey != nil {
			listen = listen[:1]
		}
	}
	for _, s := range listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("listen address %q: %v: %w", s, err, ErrConfig)
		}
		if _, err := a.ValueForProtocol(ma.P_UDP); err == nil && cfg.NetworkKey != nil {
			return nil, fmt.Errorf("listen address %s: a private network (network key) works over TCP only, QUIC cannot carry its pre-shared key: %w", s, ErrConfig)
		}
	}
	var tcpOptions []any // tcp.Option values; libp2p.Transport takes them untyped
	if cfg.DialTCP != nil {
		tcpOptions = append(tcpOptions, tcp.WithDialerForAddr(cfg.DialTCP))
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ListenAddrStrings(listen...),
		libp2p.Transport(tcp.NewTCPTransport, tcpOptions...),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.DisableRelay(),
		// Several hosts live in one process in tests and the demo; the
		// agent exports its own metrics.
		libp2p.DisableMetrics(),
	}
	if cfg.NetworkKey != nil {
		if len(cfg.NetworkKey) != 32 {
			return nil, fmt.Errorf("network key of %d bytes, want 32: %w", len(cfg.NetworkKey), ErrNetworkKey)
		}
		opts = append(opts, libp2p.PrivateNetwork(pnet.PSK(bytes.Clone(cfg.NetworkKey))))
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	switch {
	case cfg.Allow != nil && cfg.Gater != nil:
		opts = append(opts, libp2p.ConnectionGater(gaters{cfg.Allow, cfg.Gater}))
	case cfg.Allow != nil:
		opts = append(opts, libp2p.ConnectionGater(cfg.Allow))
	case cfg.Gater != nil:
		opts = append(opts, libp2p.ConnectionGater(cfg.Gater))
	}
	if cfg.NATPortMap {
		opts = append(opts, libp2p.NATPortMap())
	}
	more, err := roomForPeers(cfg.Peers)
	if err != nil {
		return nil, err
	}
	opts = append(opts, more...)
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("start libp2p host: %w", err)
	}
	return h, nil
}

// LoadPeerID returns the peer ID of the node whose data dir is dir, making
// its identity key on first use, as NewHost would.
func LoadPeerID(dir string) (peer.ID, error) {
	if dir == "" {
		return "", fmt.Errorf("no data dir: %w", ErrConfig)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	key, err := loadIdentity(dir)
	if err != nil {
		return "", err
	}
	return peer.IDFromPrivateKey(key)
}

// loadIdentity reads the node's key from dir, creating it on first use. An
// empty dir gives a fresh key.
func loadIdentity(dir string) (crypto.PrivKey, error) {
	if dir == "" {
		key, _, err := crypto.GenerateEd25519Key(rand.Reader)
		return key, err
	}
	path := filepath.Join(dir, IdentityFile)
	key, err := readIdentity(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if err := writeIdentity(dir, path); err != nil {
		return nil, err
	}
	return readIdentity(path)
}

func readIdentity(path string) (crypto.PrivKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read identity: %w", err)
	}
	defer f.Close()
	if runtime.GOOS != "windows" {
		fi, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("read identity: %w", err)
		}
		// Like ssh, refuse a private key others can read: whoever reads it
		// can impersonate this node to the whole swarm.
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("identity key %s has mode %v; it must be readable by its owner only (chmod 600 %s): %w", path, fi.Mode().Perm(), path, ErrConfig)
		}
	}
	// An ed25519 key marshals to 68 bytes; the limit only guards
	// against reading a huge file put there by mistake.
	data, err := io.ReadAll(io.LimitReader(f, 4<<10))
	if err != nil {
		return nil, fmt.Errorf("read identity %s: %w", path, err)
	}
	key, err := crypto.UnmarshalPrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("identity key %s does not decode (%v); move it away to create a new identity: %w", path, err, ErrConfig)
	}
	return key, nil
}

// writeIdentity creates a new key at path without ever exposing a partial
// file or replacing a key another process created meanwhile: the key is
// written to a temporary file, synced, then hard-linked into place, which
// fails if path exists.
func writeIdentity(dir, path string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create identity: %w", err)
	}
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return fmt.Errorf("create identity: %w", err)
	}
	data, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		return fmt.Errorf("create identity: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".identity-*.tmp") // mode 0600
	if err != nil {
		return fmt.Errorf("create identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create identity: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create identity: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the new name durable; best effort
		_ = d.Close()
	}
	return nil
}

// Private network keys use the libp2p swarm.key format (as IPFS does):
// a "/key/swarm/psk/1.0.0/" line, an encoding line, and the 32-byte key.
const networkKeyHeader = "/key/swarm/psk/1.0.0/\n/base16/\n"

// GenerateNetworkKey returns the contents of a new swarm.key file: a random
// 32-byte key in hex. Every node of a private network needs the same file.
func GenerateNetworkKey() []byte {
	var k [32]byte
	_, _ = rand.Read(k[:]) // crypto/rand.Read never fails
	return []byte(networkKeyHeader + hex.EncodeToString(k[:]) + "\n")
}

// ParseNetworkKey returns the 32-byte key of a swarm.key file (base16,
// base64 or binary encoding), for HostConfig.NetworkKey.
func ParseNetworkKey(data []byte) ([]byte, error) {
	psk, err := pnet.DecodeV1PSK(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("network key: %v: %w", err, ErrNetworkKey)
	}
	if len(psk) != 32 {
		return nil, fmt.Errorf("network key of %d bytes, want 32: %w", len(psk), ErrNetworkKey)
	}
	return psk, nil
}

// Allowlist is a connection gater that admits only listed peers, inbound and
// outbound. It is safe for concurrent use, and changes apply to new
// connections; existing connections to removed peers stay open.
type Allowlist struct {
	mu  sync.RWMutex
	ids map[peer.ID]struct{}
}

var _ connmgr.ConnectionGater = (*Allowlist)(nil)

// NewAllowlist returns an allowlist of ids.
func NewAllowlist(ids ...peer.ID) *Allowlist {
	a := &Allowlist{ids: make(map[peer.ID]struct{}, len(ids))}
	a.Add(ids...)
	return a
}

// Add admits ids.
func (a *Allowlist) Add(ids ...peer.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		a.ids[id] = struct{}{}
	}
}

// Remove stops admitting ids.
func (a *Allowlist) Remove(ids ...peer.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		delete(a.ids, id)
	}
}

// Allowed reports whether id is admitted.
func (a *Allowlist) Allowed(id peer.ID) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	_, ok := a.ids[id]
	return ok
}

// InterceptPeerDial refuses to dial unlisted peers.
func (a *Allowlist) InterceptPeerDial(p peer.ID) bool { return a.Allowed(p) }

// InterceptAddrDial refuses to dial unlisted peers.
func (a *Allowlist) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return a.Allowed(p) }

// InterceptAccept admits every inbound connection: the peer is not known
// until the security handshake, where InterceptSecured checks it.
func (a *Allowlist) InterceptAccept(network.ConnMultiaddrs) bool { return true }

// InterceptSecured drops connections, either way, to unlisted peers once
// the handshake has authenticated them.
func (a *Allowlist) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return a.Allowed(p)
}

// InterceptUpgraded admits every connection that got this far.
func (a *Allowlist) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}

// roomForPeers returns the options that let a host hold peers connections:
// a connection manager that trims only beyond them, and resource limits
// whose connection and stream counts grow with them. Memory stays bounded
// by libp2p's limits scaled to the machine, so a flood of peers runs into
// those rather than the node's memory. With peers 0 the host keeps libp2p's
// default limits and connection manager.
func roomForPeers(peers int) ([]libp2p.Option, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	scaled := limits.AutoScale()
	if peers > 0 {
		conns := rcmgr.LimitVal(2 * peers)
		streams := rcmgr.LimitVal(16 * peers)
		more := rcmgr.ResourceLimits{Conns: conns, ConnsInbound: conns, ConnsOutbound: conns, Streams: streams, StreamsInbound: streams, StreamsOutbound: streams}
		scaled = rcmgr.PartialLimitConfig{System: more, Transient: more}.Build(scaled)
	}
	// libp2p.DisableMetrics does not reach a resource manager, neither one
	// built here nor libp2p's default: without this option it traces every
	// reservation into Prometheus collectors nobody exports, at a cost in
	// CPU (docs/decisions/0019).
	mgr, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(scaled), rcmgr.WithMetricsDisabled())
	if err != nil {
		return nil, err
	}
	if peers == 0 {
		return []libp2p.Option{libp2p.ResourceManager(mgr)}, nil
	}
	cm, err := libp2pconnmgr.NewConnManager(peers, peers+peers/4, libp2pconnmgr.WithGracePeriod(time.Minute))
	if err != nil {
		mgr.Close()
		return nil, err
	}
	return []libp2p.Option{libp2p.ResourceManager(mgr), libp2p.ConnectionManager(cm)}, nil
}

// gaters passes a connection only if every gater does.
type gaters []connmgr.ConnectionGater

func (gs gaters) InterceptPeerDial(p peer.ID) bool {
	for _, g := range gs {
		if !g.InterceptPeerDial(p) {
			return false
		}
	}
	return true
}

func (gs gaters) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool {
	for _, g := range gs {
		if !g.InterceptAddrDial(p, a) {
			return false
		}
	}
	return true
}

func (gs gaters) InterceptAccept(addrs network.ConnMultiaddrs) bool {
	for _, g := range gs {
		if !g.InterceptAccept(addrs) {
			return false
		}
	}
	return true
}

func (gs gaters) InterceptSecured(d network.Direction, p peer.ID, addrs network.ConnMultiaddrs) bool {
	for _, g := range gs {
		if !g.InterceptSecured(d, p, addrs) {
			return false
		}
	}
	return true
}

func (gs gaters) InterceptUpgraded(c network.Conn) (bool, control.DisconnectReason) {
	for _, g := range gs {
		if ok, why := g.InterceptUpgraded(c); !ok {
			return false, why
		}
	}
	return true, 0
}
