package manifest

import (
	"bytes"
	"cmp"
	"crypto/ed25519"
	"fmt"
	"slices"
	"strings"
	"time"
)

// MaxIndexEntries bounds the releases of one index.
const MaxIndexEntries = 100_000

// Index is a signed list of the releases of a channel, with a version that
// only goes up, so a node can tell that it was shown an old list (rollback)
// and an expiry, so it can tell that it was shown no new list for too long.
type Index struct {
	Version  uint64       `json:"version"`
	Channel  string       `json:"channel"`
	Created  time.Time    `json:"created"`
	Expires  time.Time    `json:"expires"`
	Releases []IndexEntry `json:"releases"`
	// Deployments say which nodes install which releases, and how. A node
	// installs only releases deployed to it; proxies replicate the
	// releases deployed to their site.
	Deployments []Deployment `json:"deployments,omitempty"`
	// Proxies enrol the proxies whose status reports are believed: each
	// may report the status of the sites it names, its own and those of
	// the proxies below it. A report of any other site, or from any other
	// peer, is refused, so that no node can speak for a site.
	Proxies []ProxyEnrolment `json:"proxies,omitempty"`
}

// ProxyEnrolment names a proxy by its libp2p peer ID and the sites whose
// status it reports.
type ProxyEnrolment struct {
	Peer  string   `json:"peer"`
	Sites []string `json:"sites"`
}

// maxPeerIDLen bounds a peer ID's text: an identity multihash of an
// ed25519 key is 52 characters in base58, a SHA-256 one 46.
const maxPeerIDLen = 128

// MayReport reports whether the proxy with peer ID p is enrolled to report
// the status of site.
func (ix *Index) MayReport(p, site string) bool {
	for _, e := range ix.Proxies {
		if e.Peer == p && slices.Contains(e.Sites, site) {
			return true
		}
	}
	return false
}

// Deployment modes.
const (
	// ModeAssigned: download and install automatically, inside the
	// window when one is given.
	ModeAssigned = "assigned"
	// ModeAvailable: download; install when someone asks on the node.
	ModeAvailable = "available"
)

// Deployment targets a release at the nodes a selector matches. The agent
// parses Selector and Window (package agent); here they are only bounded,
// so that a signed index is never refused for them: a deployment an agent
// cannot parse matches none of its nodes.
type Deployment struct {
	Release  string `json:"release"`
	Selector string `json:"selector,omitempty"` // "" is every node
	Mode     string `json:"mode"`
	Window   string `json:"window,omitempty"` // "HH:MM-HH:MM" local time; "" is any time
}

// Bounds of a deployment's text fields.
const (
	MaxSelectorLen = 2048
	MaxWindowLen   = 16
)

// IndexEntry names one release of an index: its name, the CID of its
// manifest and that manifest's sequence.
type IndexEntry struct {
	Name     string `json:"name"`
	CID      string `json:"cid"`
	Sequence uint64 `json:"sequence"`
	// Sites, if not empty, are the only sites the release is meant for;
	// empty means every site.
	Sites []string `json:"sites,omitempty"`
	// Withdrawn: the release is deployed nowhere any more, and nodes that
	// have not installed it stop; it stays listed so that every node and
	// status hear of it.
	Withdrawn bool `json:"withdrawn,omitempty"`
	// Uninstall: nodes that installed the withdrawn release run its signed
	// uninstall command.
	Uninstall bool `json:"uninstall,omitempty"`
}

// ForSite reports whether the release is meant for site.
func (e IndexEntry) ForSite(site string) bool {
	return len(e.Sites) == 0 || slices.Contains(e.Sites, site)
}

// MaxSiteLen bounds a site name.
const MaxSiteLen = 64

// ValidateSite checks a site name: 1 to MaxSiteLen letters, digits, '-', '_'
// or '.', starting with a letter or digit. Site names appear in paths, logs
// and metrics labels.
func ValidateSite(site string) error {
	if len(site) == 0 || len(site) > MaxSiteLen {
		return fmt.Errorf("site name of %d bytes, want 1 to %d: %w", len(site), MaxSiteLen, ErrInvalid)
	}
	for i, r := range site {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || (i > 0 && (r == '-' || r == '_' || r == '.'))
		if !ok {
			return fmt.Errorf("site name %q: character %q not allowed: %w", site, r, ErrInvalid)
		}
	}
	return nil
}

// Validate checks ix: version at least 1, a valid channel, expiry after
// creation, at most MaxIndexEntries releases with valid names, manifest CIDs
// in canonical form, sequences of at least 1, and no name twice (ignoring
// case, since names become file names).
func (ix *Index) Validate() error {
	if ix.Version == 0 {
		return fmt.Errorf("index: version must be at least 1: %w", ErrInvalid)
	}
	if err := validateChannel(ix.Channel); err != nil {
		return fmt.Errorf("index version %d: %w", ix.Version, err)
	}
	if ix.Created.IsZero() || ix.Expires.IsZero() || !ix.Expires.After(ix.Created) {
		return fmt.Errorf("index version %d: expiry %s must come after creation %s: %w", ix.Version, ix.Expires, ix.Created, ErrInvalid)
	}
	if len(ix.Releases) > MaxIndexEntries {
		return fmt.Errorf("index version %d: %d releases, more than %d: %w", ix.Version, len(ix.Releases), MaxIndexEntries, ErrTooLarge)
	}
	seen := make(map[string]bool, len(ix.Releases))
	for _, r := range ix.Releases {
		if _, err := ParsePackName(r.Name); err != nil {
			return fmt.Errorf("index version %d: %w", ix.Version, err)
		}
		key := strings.ToLower(r.Name)
		if seen[key] {
			return fmt.Errorf("index version %d: release %s appears twice: %w", ix.Version, r.Name, ErrInvalid)
		}
		seen[key] = true
		id, err := ParseManifestID(r.CID)
		if err != nil {
			return fmt.Errorf("index version %d: release %s: %w", ix.Version, r.Name, err)
		}
		if id.String() != r.CID {
			return fmt.Errorf("index version %d: release %s: manifest ID %q is not in canonical form %s: %w", ix.Version, r.Name, r.CID, id, ErrInvalid)
		}
		if r.Sequence == 0 {
			return fmt.Errorf("index version %d: release %s: sequence must be at least 1: %w", ix.Version, r.Name, ErrInvalid)
		}
		if len(r.Sites) > MaxIndexEntries {
			return fmt.Errorf("index version %d: release %s: %d sites: %w", ix.Version, r.Name, len(r.Sites), ErrTooLarge)
		}
		for _, site := range r.Sites {
			if err := ValidateSite(site); err != nil {
				return fmt.Errorf("index version %d: release %s: %w", ix.Version, r.Name, err)
			}
		}
	}
	if len(ix.Deployments) > MaxIndexEntries {
		return fmt.Errorf("index version %d: %d deployments, more than %d: %w", ix.Version, len(ix.Deployments), MaxIndexEntries, ErrTooLarge)
	}
	withdrawn := make(map[string]bool)
	for _, r := range ix.Releases {
		if r.Uninstall && !r.Withdrawn {
			return fmt.Errorf("index version %d: release %s: uninstall without withdrawal: %w", ix.Version, r.Name, ErrInvalid)
		}
		withdrawn[r.Name] = r.Withdrawn
	}
	deployed := make(map[Deployment]bool, len(ix.Deployments))
	for i, d := range ix.Deployments {
		if !seen[strings.ToLower(d.Release)] {
			return fmt.Errorf("index version %d: deployment %d: release %q is not in the index: %w", ix.Version, i+1, d.Release, ErrInvalid)
		}
		if withdrawn[d.Release] {
			return fmt.Errorf("index version %d: deployment %d: release %s is withdrawn: %w", ix.Version, i+1, d.Release, ErrInvalid)
		}
		if d.Mode != ModeAssigned && d.Mode != ModeAvailable {
			return fmt.Errorf("index version %d: deployment %d of %s: mode %q, want %s or %s: %w", ix.Version, i+1, d.Release, d.Mode, ModeAssigned, ModeAvailable, ErrInvalid)
		}
		if len(d.Selector) > MaxSelectorLen || len(d.Window) > MaxWindowLen {
			return fmt.Errorf("index version %d: deployment %d of %s: selector or window too long: %w", ix.Version, i+1, d.Release, ErrTooLarge)
		}
		if deployed[d] {
			return fmt.Errorf("index version %d: deployment %d of %s appears twice: %w", ix.Version, i+1, d.Release, ErrInvalid)
		}
		deployed[d] = true
	}
	if len(ix.Proxies) > MaxIndexEntries {
		return fmt.Errorf("index version %d: %d proxies, more than %d: %w", ix.Version, len(ix.Proxies), MaxIndexEntries, ErrTooLarge)
	}
	proxies := make(map[string]bool, len(ix.Proxies))
	for i, e := range ix.Proxies {
		if err := validatePeerID(e.Peer); err != nil {
			return fmt.Errorf("index version %d: proxy %d: %w", ix.Version, i+1, err)
		}
		if proxies[e.Peer] {
			return fmt.Errorf("index version %d: proxy %s appears twice: %w", ix.Version, e.Peer, ErrInvalid)
		}
		proxies[e.Peer] = true
		if len(e.Sites) == 0 || len(e.Sites) > MaxIndexEntries {
			return fmt.Errorf("index version %d: proxy %s: %d sites, want 1 to %d: %w", ix.Version, e.Peer, len(e.Sites), MaxIndexEntries, ErrInvalid)
		}
		for j, site := range e.Sites {
			if err := ValidateSite(site); err != nil {
				return fmt.Errorf("index version %d: proxy %s: %w", ix.Version, e.Peer, err)
			}
			if j > 0 && e.Sites[j-1] == site {
				return fmt.Errorf("index version %d: proxy %s: site %s appears twice: %w", ix.Version, e.Peer, site, ErrInvalid)
			}
		}
	}
	return nil
}

// validatePeerID checks the form of a libp2p peer ID's text (base58 or
// base32 letters and digits); that it decodes is the agents' to check.
func validatePeerID(p string) error {
	if len(p) == 0 || len(p) > maxPeerIDLen {
		return fmt.Errorf("peer ID of %d characters, want 1 to %d: %w", len(p), maxPeerIDLen, ErrInvalid)
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return fmt.Errorf("peer ID %q: character %q not allowed: %w", p, r, ErrInvalid)
		}
	}
	return nil
}

// DeploymentsOf returns the deployments of the release called name.
func (ix *Index) DeploymentsOf(name string) []Deployment {
	var out []Deployment
	for _, d := range ix.Deployments {
		if d.Release == name {
			out = append(out, d)
		}
	}
	return out
}

// Lookup returns the entry of the release called name.
func (ix *Index) Lookup(name string) (IndexEntry, bool) {
	for _, r := range ix.Releases {
		if r.Name == name {
			return r, true
		}
	}
	return IndexEntry{}, false
}

// MarshalIndex validates ix and returns its canonical encoding: compact
// JSON, releases sorted by name, times in UTC to the second.
func MarshalIndex(ix *Index) ([]byte, error) {
	c := *ix
	c.Created = c.Created.UTC().Truncate(time.Second)
	c.Expires = c.Expires.UTC().Truncate(time.Second)
	c.Releases = slices.Clone(ix.Releases)
	if c.Releases == nil {
		c.Releases = []IndexEntry{}
	}
	slices.SortFunc(c.Releases, func(a, b IndexEntry) int { return strings.Compare(a.Name, b.Name) })
	c.Deployments = slices.Clone(ix.Deployments)
	slices.SortFunc(c.Deployments, func(a, b Deployment) int {
		return cmp.Or(strings.Compare(a.Release, b.Release), strings.Compare(a.Selector, b.Selector),
			strings.Compare(a.Mode, b.Mode), strings.Compare(a.Window, b.Window))
	})
	c.Proxies = make([]ProxyEnrolment, len(ix.Proxies))
	for i, e := range ix.Proxies {
		c.Proxies[i] = ProxyEnrolment{Peer: e.Peer, Sites: slices.Clone(e.Sites)}
		slices.Sort(c.Proxies[i].Sites)
	}
	slices.SortFunc(c.Proxies, func(a, b ProxyEnrolment) int { return strings.Compare(a.Peer, b.Peer) })
	if len(c.Proxies) == 0 {
		c.Proxies = nil
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return canonicalJSON(&c)
}

// ParseIndex decodes canonical index bytes without verifying any signature.
// It is for the payload of an index envelope, and for the last index this
// node accepted and keeps in its state as the floor for rollback checks.
func ParseIndex(payload []byte) (*Index, error) {
	var ix Index
	if err := parseCanonical(payload, &ix, "index", func() ([]byte, error) { return MarshalIndex(&ix) }); err != nil {
		return nil, err
	}
	return &ix, nil
}

func indexFields(ix *Index) Envelope {
	return Envelope{Type: TypeIndex, Channel: ix.Channel, Version: ix.Version, Expires: ix.Expires}
}

// SignIndex returns an envelope of ix signed by signers.
func SignIndex(ix *Index, signers ...ed25519.PrivateKey) ([]byte, error) {
	payload, err := MarshalIndex(ix)
	if err != nil {
		return nil, err
	}
	e := indexFields(ix)
	e.Expires = e.Expires.UTC().Truncate(time.Second)
	e.Payload = payload
	return seal(&e, signers)
}

// VerifyIndexExpired verifies an index envelope as VerifyIndex does, at the
// last moment the index was valid: an index that expired is still the floor
// of rollback checks and the base of its next version, though no node acts
// on it. It returns the index and whether it has expired at now.
func (r *Root) VerifyIndexExpired(envelope []byte, now time.Time, held *Index) (*Index, bool, error) {
	e, err := ParseEnvelope(envelope)
	if err != nil {
		return nil, false, err
	}
	if e.Type != TypeIndex {
		return nil, false, fmt.Errorf("envelope holds a %s, want an index (%s): %w", e.Type, TypeIndex, ErrInvalid)
	}
	at := now
	if e.Expires.Before(now) {
		at = e.Expires
	}
	ix, err := r.VerifyIndex(envelope, at, held)
	if err != nil {
		return nil, false, err
	}
	return ix, now.After(ix.Expires), nil
}

// VerifyIndex verifies an index envelope against r at now and returns the
// index. held is the last index of the channel this node accepted, or nil:
// an index with a lower version is ErrRollback, and so is one with the same
// version but other content; the same index delivered again is accepted.
// Signature and expiry failures are reported as by VerifyManifest; an index
// of another channel than held is ErrInvalid.
func (r *Root) VerifyIndex(envelope []byte, now time.Time, held *Index) (*Index, error) {
	e, err := ParseEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	if e.Type != TypeIndex {
		return nil, fmt.Errorf("envelope holds a %s, want an index (%s): %w", e.Type, TypeIndex, ErrInvalid)
	}
	what := fmt.Sprintf("index of channel %s version %d", quoted(e.Channel), e.Version)
	if err := r.expired(now); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := verifySignatures(e, r); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	ix, err := ParseIndex(e.Payload)
	if err != nil {
		return nil, err
	}
	if err := e.checkFields(indexFields(ix)); err != nil {
		return nil, err
	}
	if now.After(ix.Expires) {
		return nil, fmt.Errorf("index of channel %s version %d expired at %s: %w", ix.Channel, ix.Version, ix.Expires.Format(time.RFC3339), ErrExpired)
	}
	if held == nil {
		return ix, nil
	}
	if held.Channel != ix.Channel {
		return nil, fmt.Errorf("index is of channel %s, the held index of channel %s: %w", ix.Channel, held.Channel, ErrInvalid)
	}
	switch {
	case ix.Version > held.Version:
		return ix, nil
	case ix.Version == held.Version:
		prev, err := MarshalIndex(held)
		if err != nil {
			return nil, fmt.Errorf("held index: %w", err)
		}
		if bytes.Equal(prev, e.Payload) {
			return ix, nil
		}
		return nil, fmt.Errorf("index of channel %s version %d differs from the held index of the same version: %w", ix.Channel, ix.Version, ErrRollback)
	default:
		return nil, fmt.Errorf("index of channel %s version %d, this node holds version %d: %w", ix.Channel, ix.Version, held.Version, ErrRollback)
	}
}
