package agent

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// The admin API is HTTP with JSON, for the CLI on the same machine (or,
// with a token, an operator's elsewhere). Its routes:
//
//	GET  /                      health: peer ID, role, site, index version
//	GET  /v1/index              the signed index the agent follows
//	POST /v1/index              origin: a newer signed index to adopt and announce
//	POST /v1/releases           origin: a signed release envelope; answers the chunks missing,
//	                            and takes the release once none is
//	PUT  /v1/chunks/{cid}       origin: one stored chunk frame, verified against its CID
//	GET  /v1/status[?release=]  origin and proxies: the fleet view; nodes: their releases
//	POST /v1/retry              origin: {"release", "node"} re-runs failed installs
//	POST /v1/install/{release}  node: install an available release, or re-run a failed one
//	GET  /v1/about              node: installed and retired releases
//
// Bodies are bounded before they are read; everything from the body is
// verified as it would be from a peer (signatures against the trust root,
// chunks against their CIDs).

// maxIndexBody bounds a posted index, as the index protocol does.
const maxIndexBody = 48 << 20

// Health is the answer to GET /.
type Health struct {
	PeerID       string            `json:"peer_id"`
	Role         Role              `json:"role"`
	Site         string            `json:"site,omitempty"`
	Target       string            `json:"target,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	Addrs        []string          `json:"addrs"`
	IndexVersion uint64            `json:"index_version"`
}

// IngestResult answers a posted release: the chunks the origin still lacks,
// or none once it took the release.
type IngestResult struct {
	Name    string   `json:"name"`
	CID     string   `json:"cid"`
	Missing []string `json:"missing"`
	Stored  bool     `json:"stored"`
}

// AdminHandler returns the admin API. A non-empty token is required of every
// request as "Authorization: Bearer <token>".
func (n *Node) AdminHandler(token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.Health()) })
	mux.HandleFunc("GET /v1/index", func(w http.ResponseWriter, r *http.Request) {
		env := n.IndexEnvelope()
		if env == nil {
			httpError(w, http.StatusNotFound, errors.New("no index yet"))
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(env)
	})
	mux.HandleFunc("POST /v1/index", func(w http.ResponseWriter, r *http.Request) {
		if !n.isOrigin(w) {
			return
		}
		env, ok := readBody(w, r, maxIndexBody)
		if !ok {
			return
		}
		if err := n.SetIndex(env); err != nil {
			httpError(w, statusOf(err), err)
			return
		}
		writeJSON(w, map[string]uint64{"version": n.Health().IndexVersion})
	})
	mux.HandleFunc("POST /v1/releases", func(w http.ResponseWriter, r *http.Request) {
		if !n.isOrigin(w) {
			return
		}
		env, ok := readBody(w, r, manifest.MaxEnvelopeSize)
		if !ok {
			return
		}
		res, err := n.IngestRelease(r, env)
		if err != nil {
			httpError(w, statusOf(err), err)
			return
		}
		writeJSON(w, res)
	})
	mux.HandleFunc("PUT /v1/chunks/{cid}", func(w http.ResponseWriter, r *http.Request) {
		if !n.isOrigin(w) {
			return
		}
		id, err := manifest.ParseChunkID(r.PathValue("cid"))
		if err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		frame, ok := readBody(w, r, int64(store.MaxFrameSize(manifest.MaxChunkSize)))
		if !ok {
			return
		}
		if err := n.Store.PutFrame(r.Context(), id, frame); err != nil {
			httpError(w, statusOf(err), err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		if n.cfg.Role == RoleNode {
			writeJSON(w, map[string]any{"deployments": n.Deployments()})
			return
		}
		st, err := n.FleetStatus(r.URL.Query().Get("release"))
		if err != nil {
			httpError(w, statusOf(err), err)
			return
		}
		writeJSON(w, st)
	})
	mux.HandleFunc("POST /v1/retry", func(w http.ResponseWriter, r *http.Request) {
		if !n.isOrigin(w) {
			return
		}
		body, ok := readBody(w, r, 4<<10)
		if !ok {
			return
		}
		var req struct{ Release, Node string }
		if err := json.Unmarshal(body, &req); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		gen, err := n.Retry(req.Release, req.Node)
		if err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, map[string]any{"release": req.Release, "node": req.Node, "generation": gen})
	})
	mux.HandleFunc("POST /v1/install/{release}", func(w http.ResponseWriter, r *http.Request) {
		if err := n.RequestInstall(r.PathValue("release")); err != nil {
			httpError(w, statusOf(err), err)
			return
		}
		writeJSON(w, map[string]string{"release": r.PathValue("release"), "state": "requested"})
	})
	mux.HandleFunc("GET /v1/about", func(w http.ResponseWriter, r *http.Request) {
		ab, err := n.About()
		if err != nil {
			httpError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, ab)
	})
	if token == "" {
		return mux
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			httpError(w, http.StatusUnauthorized, errors.New("a valid admin token is required"))
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// Health describes the agent.
func (n *Node) Health() Health {
	h := Health{PeerID: n.Host.ID().String(), Addrs: []string{}}
	for _, a := range n.Addrs() {
		h.Addrs = append(h.Addrs, a.String())
	}
	if a := n.agent; a != nil {
		cfg := n.cfg.AgentConfig
		h.Role, h.Site, h.Target, h.Labels = cfg.Role, cfg.Site, cfg.Target, cfg.Labels
		a.mu.Lock()
		if a.held != nil {
			h.IndexVersion = a.held.Version
		}
		a.mu.Unlock()
	}
	return h
}

// IndexEnvelope returns the signed index the agent follows, or nil.
func (n *Node) IndexEnvelope() []byte {
	if n.agent == nil {
		return nil
	}
	n.agent.mu.Lock()
	defer n.agent.mu.Unlock()
	return n.agent.heldEnv
}

// IngestRelease takes a signed release handed to the origin: it verifies
// the envelope against the trust root and an earlier release of the name,
// and lists the chunks still missing; once none is, the release is pinned
// and enters the catalog, as publishing there would have left it.
func (n *Node) IngestRelease(r *http.Request, env []byte) (IngestResult, error) {
	ctx := r.Context()
	a := n.agent
	m, id, err := a.n.cfg.Root.VerifyManifest(env, a.now())
	if err != nil {
		return IngestResult{}, err
	}
	if held, err := n.Catalog.Get(m.Name); err == nil {
		if held.CID.Equals(id) {
			return IngestResult{Name: m.Name, CID: id.String(), Missing: []string{}, Stored: true}, nil
		}
		if err := manifest.CheckSequence(held.Manifest, m); err != nil {
			return IngestResult{}, err
		}
	} else if !errors.Is(err, ErrReleaseNotFound) {
		return IngestResult{}, err
	}
	res := IngestResult{Name: m.Name, CID: id.String(), Missing: []string{}}
	ids := m.ChunkIDs()
	seen := make(map[cid.Cid]bool, len(ids))
	for _, c := range ids {
		if seen[c] {
			continue
		}
		seen[c] = true
		ok, err := n.Store.Has(ctx, c)
		if err != nil {
			return IngestResult{}, err
		}
		if !ok {
			res.Missing = append(res.Missing, c.String())
		}
	}
	if len(res.Missing) > 0 {
		return res, nil
	}
	if err := n.Store.Sync(ctx); err != nil {
		return IngestResult{}, err
	}
	if err := n.Store.Pin(ctx, m.Name, ids); err != nil {
		return IngestResult{}, err
	}
	if err := n.Catalog.Save(m.Name, env); err != nil {
		return IngestResult{}, err
	}
	a.log.Info("agent: release received", "release", m.Name, "cid", id)
	res.Stored = true
	return res, nil
}

func (n *Node) isOrigin(w http.ResponseWriter) bool {
	if n.agent == nil || n.cfg.Role != RoleOrigin {
		httpError(w, http.StatusConflict, fmt.Errorf("this agent is a %s; %w", n.cfg.Role, errOriginOnly))
		return false
	}
	return true
}

// readBody reads at most limit bytes of r's body, answering 413 if there
// are more.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			httpError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("body over %d bytes", limit))
		} else {
			httpError(w, http.StatusBadRequest, err)
		}
		return nil, false
	}
	return b, true
}

// statusOf maps an error to an HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrReleaseNotFound), errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, manifest.ErrRollback), errors.Is(err, errOriginOnly), errors.Is(err, errNodeOnly):
		return http.StatusConflict
	case errors.Is(err, manifest.ErrInvalid), errors.Is(err, manifest.ErrTampered), errors.Is(err, manifest.ErrUnsigned),
		errors.Is(err, manifest.ErrUnknownKey), errors.Is(err, manifest.ErrThreshold), errors.Is(err, manifest.ErrExpired),
		errors.Is(err, manifest.ErrTooLarge), errors.Is(err, manifest.ErrChunkMismatch), errors.Is(err, store.ErrCorrupt),
		errors.Is(err, store.ErrMismatch), errors.Is(err, manifest.ErrUnknownSchema):
		return http.StatusUnprocessableEntity
	}
	return http.StatusInternalServerError
}

// APIError is the body of every error answer.
type APIError struct {
	Error string `json:"error"`
}

func httpError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(APIError{Error: strings.TrimSpace(err.Error())})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
