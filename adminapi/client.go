package adminapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
)

// Client calls an agent's admin API; the CLI and the tests share it. It is
// safe for concurrent use.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// ClientOptions configure a Client; the zero value is ready to use.
type ClientOptions struct {
	// Token is sent with every request; without it the agent answers
	// only reads, and only on loopback.
	Token string
	// TLS, if set, configures https connections, such as the roots that
	// sign an agent's own certificate.
	TLS *tls.Config
	// Timeout bounds each call (default 5 min: a posted release may be
	// tens of MiB of manifest over a thin link).
	Timeout time.Duration
}

// maxAnswer bounds what the client reads of an answer: the largest is an
// index envelope or a fleet view.
const maxAnswer = 64 << 20

// NewClient returns a client of the agent whose admin API is at baseURL
// (http:// or https://).
func NewClient(baseURL string, opts ClientOptions) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("admin URL %q: want http://HOST:PORT or https://HOST:PORT: %w", baseURL, ErrUsage)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Minute
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = opts.TLS
	return &Client{
		base:  strings.TrimRight(baseURL, "/"),
		token: opts.Token,
		http:  &http.Client{Timeout: opts.Timeout, Transport: tr},
	}, nil
}

// URL returns the base URL of the agent.
func (c *Client) URL() string { return c.base }

// do sends a request with body (of contentType) and decodes a JSON answer
// into out, if out is not nil. An error answer becomes an *Error.
func (c *Client) do(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	raw, err := c.call(ctx, method, path, contentType, body)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: answer: %w", method, path, err)
	}
	return nil
}

// call sends a request and returns the body of a successful answer.
func (c *Client) call(ctx context.Context, method, path, contentType string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, c.base+path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode < 300 {
		return data, nil
	}
	e := &Error{Status: resp.StatusCode, Class: classOfStatus(resp.StatusCode)}
	var ae APIError
	if json.Unmarshal(data, &ae) == nil && ae.Error != "" {
		e.Message, e.Kind = ae.Error, ae.Kind
		if c, ok := classNamed(ae.Kind); ok {
			e.Class = c
		}
	} else {
		e.Message = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	return nil, e
}

// Health asks who the agent is.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.do(ctx, http.MethodGet, "/v1/health", "", nil, &h)
	return h, err
}

// Index returns the signed index envelope the agent follows; an error
// wrapping ErrNotFound if it has none. The caller verifies it.
func (c *Client) Index(ctx context.Context) ([]byte, error) {
	return c.call(ctx, http.MethodGet, "/v1/index", "", nil)
}

// PostIndex hands the origin a newer signed index; an error wrapping
// ErrConflict if the origin adopted another one meanwhile.
func (c *Client) PostIndex(ctx context.Context, env []byte) (uint64, error) {
	var res IndexPosted
	err := c.do(ctx, http.MethodPost, "/v1/index", contentJSON, env, &res)
	return res.Version, err
}

// PostRoot hands the origin a new trust root, which travels down the tree.
func (c *Client) PostRoot(ctx context.Context, env []byte) (uint64, error) {
	var res RootPosted
	err := c.do(ctx, http.MethodPost, "/v1/root", contentJSON, env, &res)
	return res.Version, err
}

// PostRelease hands the origin a signed release envelope and returns the
// chunks it still lacks.
func (c *Client) PostRelease(ctx context.Context, env []byte) (IngestResult, error) {
	var res IngestResult
	err := c.do(ctx, http.MethodPost, "/v1/releases", contentJSON, env, &res)
	return res, err
}

// PutChunk hands the origin one stored chunk frame.
func (c *Client) PutChunk(ctx context.Context, id cid.Cid, frame []byte) error {
	return c.do(ctx, http.MethodPut, "/v1/chunks/"+id.String(), contentBinary, frame, nil)
}

// Status returns the fleet view of release (every release if empty) from
// the origin or a proxy.
func (c *Client) Status(ctx context.Context, release string) (FleetStatus, error) {
	path := "/v1/status"
	if release != "" {
		path += "?release=" + url.QueryEscape(release)
	}
	var st FleetStatus
	err := c.do(ctx, http.MethodGet, path, "", nil, &st)
	return st, err
}

// NodeStatus returns a node's releases.
func (c *Client) NodeStatus(ctx context.Context) (NodeStatus, error) {
	var st NodeStatus
	err := c.do(ctx, http.MethodGet, "/v1/status", "", nil, &st)
	return st, err
}

// Retry orders failed installs to run again.
func (c *Client) Retry(ctx context.Context, req RetryRequest) (RetryResult, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return RetryResult{}, err
	}
	var res RetryResult
	err = c.do(ctx, http.MethodPost, "/v1/retry", contentJSON, body, &res)
	return res, err
}

// RemoveRelease asks an agent to forget a release of its data dir.
func (c *Client) RemoveRelease(ctx context.Context, ref string) (Removal, error) {
	var res Removal
	err := c.do(ctx, http.MethodDelete, "/v1/releases/"+url.PathEscape(ref), "", nil, &res)
	return res, err
}

// CollectGarbage asks an agent to delete the chunks no release pins.
func (c *Client) CollectGarbage(ctx context.Context, grace time.Duration) (GCReport, error) {
	body, err := json.Marshal(GCRequest{GraceSeconds: int64(grace / time.Second)})
	if err != nil {
		return GCReport{}, err
	}
	var res GCReport
	err = c.do(ctx, http.MethodPost, "/v1/gc", contentJSON, body, &res)
	return res, err
}

// CheckStore asks an agent to verify every chunk of its store.
func (c *Client) CheckStore(ctx context.Context, repair bool) (FsckReport, error) {
	body, err := json.Marshal(FsckRequest{Repair: repair})
	if err != nil {
		return FsckReport{}, err
	}
	var res FsckReport
	err = c.do(ctx, http.MethodPost, "/v1/fsck", contentJSON, body, &res)
	return res, err
}

// Install asks a node to install release.
func (c *Client) Install(ctx context.Context, release string) (InstallResult, error) {
	var res InstallResult
	err := c.do(ctx, http.MethodPost, "/v1/install/"+url.PathEscape(release), contentJSON, []byte("{}"), &res)
	return res, err
}

// About lists a node's installed and retired releases.
func (c *Client) About(ctx context.Context) (About, error) {
	var ab About
	err := c.do(ctx, http.MethodGet, "/v1/about", "", nil, &ab)
	return ab, err
}
