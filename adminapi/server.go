package adminapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
)

// The admin API is HTTP with JSON, for the CLI and the console on the same
// machine, or, over TLS with the token, an operator's elsewhere. Its routes:
//
//	GET  /v1/health             who the agent is
//	GET  /v1/index              the signed index the agent follows
//	POST /v1/index              origin: a newer signed index to adopt and announce
//	POST /v1/root               origin: a new trust root that follows the held one
//	POST /v1/releases           origin: a signed release envelope; answers the chunks missing,
//	                            and takes the release once none is
//	PUT  /v1/chunks/{cid}       origin: one stored chunk frame, verified against its CID
//	GET  /v1/status[?release=]  origin and proxies: the fleet view; nodes: their releases
//	POST /v1/retry              origin: re-run failed installs
//	POST /v1/install/{release}  node: install an available release, or re-run a failed one
//	GET  /v1/about              node: installed and retired releases
//
// Every request must name a host this agent answers to (an IP address,
// localhost, or a configured name), so that a web page cannot read the API
// through DNS rebinding. Every request that changes state needs the admin
// token, a body of the route's content type (JSON, or octet-stream for
// chunks, which a cross-site form cannot send without a preflight no one
// answers), and must not come from a web page of another origin. Bodies are
// bounded before they are read, and everything in them is verified as it
// would be from a peer: signatures against the trust root, chunks against
// their CIDs.

// Agent is what every agent answers.
type Agent interface {
	Health(ctx context.Context) (Health, error)
	// Index returns the signed index envelope the agent follows; an error
	// wrapping ErrNotFound if it has none yet.
	Index(ctx context.Context) ([]byte, error)
	// RemoveRelease forgets a release of the agent's data dir, by name or
	// manifest CID: ErrNotFound if it holds none, ErrConflict if the
	// origin's index lists it.
	RemoveRelease(ctx context.Context, ref string) (Removal, error)
	// CollectGarbage deletes the chunks no release pins, keeping those
	// written within grace.
	CollectGarbage(ctx context.Context, grace time.Duration) (GCReport, error)
	// CheckStore verifies every chunk of the agent's store, quarantining
	// the corrupt ones to fetch them again (and, with repair, the missing
	// ones too).
	CheckStore(ctx context.Context, repair bool) (FsckReport, error)
}

// Origin is what the origin answers beside Agent.
type Origin interface {
	// PostIndex adopts env, a signed index newer than the one held, and
	// returns its version. An index that does not build on the held one
	// (another was adopted meanwhile) is ErrConflict.
	PostIndex(ctx context.Context, env []byte) (uint64, error)
	// PostRoot takes a new trust root, which must follow the origin's
	// (signed by its threshold and its own), and returns its version.
	PostRoot(ctx context.Context, env []byte) (uint64, error)
	IngestRelease(ctx context.Context, env []byte) (IngestResult, error)
	PutChunk(ctx context.Context, id cid.Cid, frame []byte) error
	Retry(ctx context.Context, req RetryRequest) (RetryResult, error)
}

// Fleet is what agents with a view of sites answer: the origin and proxies.
type Fleet interface {
	FleetStatus(ctx context.Context, release string) (FleetStatus, error)
}

// Node is what a node answers beside Agent.
type Node interface {
	NodeStatus(ctx context.Context) (NodeStatus, error)
	Install(ctx context.Context, release string) (InstallResult, error)
	About(ctx context.Context) (About, error)
}

// Options configure a Server.
type Options struct {
	// Token is the admin token every request that changes state must
	// carry as "Authorization: Bearer <token>". It must not be empty.
	Token string
	// TokenForReads requires the token of reads too, as an agent must
	// whose API is reachable from other machines.
	TokenForReads bool
	// Hosts are host names, beside IP addresses and localhost, that
	// requests may name in their Host header.
	Hosts []string
	// Logger receives a line for every answer of status 500; nil discards.
	Logger *slog.Logger
}

// Bounds of request bodies.
const (
	maxIndexBody = 48 << 20 // as the index protocol's
	maxSmallBody = 4 << 10
)

// Content types of request bodies.
const (
	contentJSON   = "application/json"
	contentBinary = "application/octet-stream"
)

type server struct {
	agent Agent
	opts  Options
	log   *slog.Logger
	mux   *http.ServeMux
	csrf  *http.CrossOriginProtection
}

// request is what a route's handler is given of an HTTP request.
type request struct {
	body  []byte
	path  func(name string) string
	query url.Values
}

// NewServer returns the admin API of a. The routes a's role serves are
// those of the interfaces it implements (Origin, Fleet, Node); the others
// answer ErrWrongRole, naming the role that serves them.
func NewServer(a Agent, opts Options) (http.Handler, error) {
	if len(opts.Token) < 16 {
		return nil, fmt.Errorf("admin API: a token of at least 16 characters is required: %w", ErrUsage)
	}
	s := &server{agent: a, opts: opts, log: opts.Logger, mux: http.NewServeMux(), csrf: http.NewCrossOriginProtection()}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.route("GET /v1/health", "", 0, func(ctx context.Context, _ request) (any, error) { return a.Health(ctx) })
	s.mux.HandleFunc("GET /v1/index", s.guard("", 0, func(ctx context.Context, w http.ResponseWriter, _ request) error {
		env, err := a.Index(ctx)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", contentJSON)
		_, err = w.Write(env)
		return err
	}))

	s.route("DELETE /v1/releases/{ref}", "", 0, func(ctx context.Context, r request) (any, error) {
		return a.RemoveRelease(ctx, r.path("ref"))
	})
	s.route("POST /v1/gc", contentJSON, maxSmallBody, func(ctx context.Context, r request) (any, error) {
		var req GCRequest
		if err := decodeBody(r.body, &req); err != nil {
			return nil, err
		}
		if req.GraceSeconds < 0 {
			return nil, fmt.Errorf("grace_seconds %d is negative: %w", req.GraceSeconds, ErrUsage)
		}
		return a.CollectGarbage(ctx, time.Duration(req.GraceSeconds)*time.Second)
	})

	s.route("POST /v1/fsck", contentJSON, maxSmallBody, func(ctx context.Context, r request) (any, error) {
		var req FsckRequest
		if err := decodeBody(r.body, &req); err != nil {
			return nil, err
		}
		return a.CheckStore(ctx, req.Repair)
	})

	origin, isOrigin := a.(Origin)
	s.routeFor(isOrigin, "origin", "POST /v1/index", contentJSON, maxIndexBody, func(ctx context.Context, r request) (any, error) {
		v, err := origin.PostIndex(ctx, r.body)
		return IndexPosted{Version: v}, err
	})
	s.routeFor(isOrigin, "origin", "POST /v1/root", contentJSON, int64(p2p.MaxRootEnvelope), func(ctx context.Context, r request) (any, error) {
		v, err := origin.PostRoot(ctx, r.body)
		return RootPosted{Version: v}, err
	})
	s.routeFor(isOrigin, "origin", "POST /v1/releases", contentJSON, manifest.MaxEnvelopeSize, func(ctx context.Context, r request) (any, error) {
		return origin.IngestRelease(ctx, r.body)
	})
	s.routeFor(isOrigin, "origin", "PUT /v1/chunks/{cid}", contentBinary, int64(store.MaxFrameSize(manifest.MaxChunkSize)), func(ctx context.Context, r request) (any, error) {
		id, err := manifest.ParseChunkID(r.path("cid"))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUsage, err)
		}
		return nil, origin.PutChunk(ctx, id, r.body)
	})
	s.routeFor(isOrigin, "origin", "POST /v1/retry", contentJSON, maxSmallBody, func(ctx context.Context, r request) (any, error) {
		var req RetryRequest
		if err := decodeBody(r.body, &req); err != nil {
			return nil, err
		}
		return origin.Retry(ctx, req)
	})

	fleetView, hasFleet := a.(Fleet)
	node, isNode := a.(Node)
	switch {
	case hasFleet:
		s.route("GET /v1/status", "", 0, func(ctx context.Context, r request) (any, error) {
			return fleetView.FleetStatus(ctx, r.query.Get("release"))
		})
	case isNode:
		s.route("GET /v1/status", "", 0, func(ctx context.Context, _ request) (any, error) {
			return node.NodeStatus(ctx)
		})
	}
	s.routeFor(isNode, "node", "POST /v1/install/{release}", contentJSON, maxSmallBody, func(ctx context.Context, r request) (any, error) {
		return node.Install(ctx, r.path("release"))
	})
	s.routeFor(isNode, "node", "GET /v1/about", "", 0, func(ctx context.Context, _ request) (any, error) {
		return node.About(ctx)
	})
	return s, nil
}

// routeFor routes pattern to fn if the agent serves it (ok), and otherwise
// to an answer that says which role does.
func (s *server) routeFor(ok bool, role, pattern, contentType string, limit int64, fn func(context.Context, request) (any, error)) {
	if ok {
		s.route(pattern, contentType, limit, fn)
		return
	}
	s.route(pattern, contentType, limit, func(ctx context.Context, _ request) (any, error) {
		h, err := s.agent.Health(ctx)
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("this agent is a %s; only a %s does that: %w", h.Role, role, ErrWrongRole)
	})
}

// route serves pattern with fn, whose answer is written as JSON (or 204 No
// Content for nil).
func (s *server) route(pattern, contentType string, limit int64, fn func(context.Context, request) (any, error)) {
	s.mux.HandleFunc(pattern, s.guard(contentType, limit, func(ctx context.Context, w http.ResponseWriter, r request) error {
		v, err := fn(ctx, r)
		if err != nil {
			return err
		}
		if v == nil {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		writeJSON(w, http.StatusOK, v)
		return nil
	}))
}

// guard reads and bounds the body of a request (of contentType, at most
// limit bytes; none if contentType is empty) and answers fn's error.
func (s *server) guard(contentType string, limit int64, fn func(context.Context, http.ResponseWriter, request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		req := request{path: r.PathValue, query: r.URL.Query()}
		if contentType != "" {
			if err := checkContentType(r, contentType); err != nil {
				s.fail(w, err)
				return
			}
			b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
			if err != nil {
				var tooBig *http.MaxBytesError
				if errors.As(err, &tooBig) {
					err = fmt.Errorf("body over %d bytes: %w", limit, ErrTooLarge)
				}
				s.fail(w, err)
				return
			}
			req.body = b
		}
		if err := fn(r.Context(), w, req); err != nil {
			s.fail(w, err)
		}
	}
}

// ServeHTTP checks who may ask before the route answers: the host named,
// the origin of a browser's request, and the token.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.hostAllowed(r.Host) {
		s.fail(w, fmt.Errorf("host %q is not a name of this agent (start it with --admin-host %s to answer to it): %w", r.Host, hostOnly(r.Host), ErrForbidden))
		return
	}
	safe := r.Method == http.MethodGet || r.Method == http.MethodHead
	if !safe {
		if err := s.csrf.Check(r); err != nil {
			s.fail(w, fmt.Errorf("a request from a web page of another origin: %w", ErrForbidden))
			return
		}
	}
	if !safe || s.opts.TokenForReads {
		want := []byte("Bearer " + s.opts.Token)
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			s.fail(w, fmt.Errorf("%w (--admin-token FILE; the agent keeps it in admin.token in its data dir)", ErrUnauthorized))
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

// hostAllowed reports whether a request naming host (Host header, with or
// without a port) is for this agent: an IP address, which DNS rebinding
// cannot forge, localhost, or a configured name.
func (s *server) hostAllowed(host string) bool {
	name := hostOnly(host)
	if name == "" {
		return false
	}
	if net.ParseIP(name) != nil || strings.EqualFold(name, "localhost") {
		return true
	}
	return slices.ContainsFunc(s.opts.Hosts, func(h string) bool { return strings.EqualFold(h, name) })
}

func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.Trim(host, "[]")
}

func checkContentType(r *http.Request, want string) error {
	got, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || got != want {
		return fmt.Errorf("the body must be %s, not %q: %w", want, r.Header.Get("Content-Type"), ErrUsage)
	}
	return nil
}

// decodeBody decodes a JSON body into v, refusing unknown fields.
func decodeBody(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %v: %w", err, ErrUsage)
	}
	return nil
}

// fail answers err with its class's status and a JSON APIError.
func (s *server) fail(w http.ResponseWriter, err error) {
	c := Classify(err)
	if c == Internal {
		s.log.Warn("admin API: request failed", "err", err)
	}
	writeJSON(w, c.HTTPStatus(), APIError{Error: strings.TrimSpace(err.Error()), Kind: c.String()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", contentJSON)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
