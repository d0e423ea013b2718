package adminapi_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

const token = "0123456789abcdef0123456789abcdef"

// startAgent runs an agent of cfg's role on loopback, with a fresh data dir
// and a trust root of key, until the test ends.
func startAgent(t *testing.T, key ed25519.PrivateKey, cfg agent.Config) *agent.Agent {
	t.Helper()
	root, err := manifest.NewRoot([]ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, 1, 1, time.Now().Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	env, err := manifest.SignRoot(root, key)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir, cfg.ListenAddrs, cfg.Trust, cfg.PollInterval = t.TempDir(), []string{"/ip4/127.0.0.1/tcp/0"}, env, time.Hour
	a, err := agent.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	return a
}

func startOrigin(t *testing.T, key ed25519.PrivateKey) (*agent.Agent, *httptest.Server) {
	t.Helper()
	a := startAgent(t, key, agent.Config{Origin: &agent.OriginConfig{}})
	h, err := adminapi.NewServer(a.API(), adminapi.Options{Token: token, Hosts: []string{"patchctl-origin.example"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return a, srv
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// publish publishes a small generated release into a data dir of its own,
// as a release machine would, and returns its result and store.
func publish(t *testing.T, key ed25519.PrivateKey, name string) (*agent.PublishResult, *store.Disk) {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "pack", "a.bin")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte(name+" makes a small release\n"), 20000)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenDisk(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	cat, err := agent.OpenCatalog(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	sources, err := agent.CollectSources([]string{filepath.Join(dir, "pack")})
	if err != nil {
		t.Fatal(err)
	}
	res, err := agent.Publish(t.Context(), s, cat, []ed25519.PrivateKey{key}, sources, agent.PublishOptions{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return res, s
}

// send makes a raw request, as a browser or a script might.
func send(t *testing.T, srv *httptest.Server, method, path string, header map[string]string, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestTheAdminAPIRefusesWhatAWebPageCouldForge(t *testing.T) {
	key := newKey(t)
	o, srv := startOrigin(t, key)
	ix := &manifest.Index{Version: 1, Channel: "stable", Created: time.Now(), Expires: time.Now().Add(time.Hour)}
	res, _ := publish(t, key, "SP-S041000005")
	ix.Releases = []manifest.IndexEntry{{Name: res.Name, CID: res.CID.String(), Sequence: res.Sequence}}
	env, err := manifest.SignIndex(ix, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.API().(adminapi.Origin).PostIndex(t.Context(), env); err != nil {
		t.Fatal(err)
	}
	bearer := "Bearer " + token
	retry := `{"release":"SP-S041000005"}`
	tests := []struct {
		name         string
		method, path string
		header       map[string]string
		body         string
		want         int
	}{
		{"a form post of text/plain without the token", "POST", "/v1/retry", map[string]string{"Content-Type": "text/plain", "Origin": "http://evil.example"}, retry, http.StatusForbidden},
		{"a text/plain post without the token", "POST", "/v1/retry", map[string]string{"Content-Type": "text/plain"}, retry, http.StatusUnauthorized},
		{"a text/plain post with the token", "POST", "/v1/retry", map[string]string{"Content-Type": "text/plain", "Authorization": bearer}, retry, http.StatusBadRequest},
		{"a form post with the token", "POST", "/v1/retry", map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": bearer}, retry, http.StatusBadRequest},
		{"a cross-site post with the token", "POST", "/v1/retry", map[string]string{"Content-Type": "application/json", "Authorization": bearer, "Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, retry, http.StatusForbidden},
		{"a post with a wrong token", "POST", "/v1/retry", map[string]string{"Content-Type": "application/json", "Authorization": "Bearer 0123456789abcdef0123456789abcdeX"}, retry, http.StatusUnauthorized},
		{"a read through a rebound DNS name", "GET", "/v1/status", map[string]string{"Host": "evil.example:7411"}, "", http.StatusForbidden},
		{"a post through a rebound DNS name", "POST", "/v1/retry", map[string]string{"Host": "evil.example", "Content-Type": "application/json", "Authorization": bearer}, retry, http.StatusForbidden},
		{"a read by IP address", "GET", "/v1/status", nil, "", http.StatusOK},
		{"a read by localhost", "GET", "/v1/health", map[string]string{"Host": "localhost:7411"}, "", http.StatusOK},
		{"a read by a configured name", "GET", "/v1/health", map[string]string{"Host": "patchctl-origin.example:7411"}, "", http.StatusOK},
		{"the CLI's post", "POST", "/v1/retry", map[string]string{"Content-Type": "application/json", "Authorization": bearer}, retry, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := send(t, srv, tt.method, tt.path, tt.header, tt.body)
			if code != tt.want {
				t.Errorf("%s %s: %d %s, want %d", tt.method, tt.path, code, body, tt.want)
			}
		})
	}
	// Of all the posts, only the CLI's ordered a retry.
	st, err := adminapi.NewClient(srv.URL, adminapi.ClientOptions{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.Retry(t.Context(), adminapi.RetryRequest{Release: "SP-S041000005"})
	if err != nil || r.Generation != 2 {
		t.Errorf("the next retry: %+v, %v; want generation 2 after the one post that got through", r, err)
	}
}

func TestTheAdminAPIVerifiesWhatItIsGivenAndSaysWhy(t *testing.T) {
	key := newKey(t)
	o, srv := startOrigin(t, key)
	c, err := adminapi.NewClient(srv.URL, adminapi.ClientOptions{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	res, pubStore := publish(t, key, "SP-S041000005")
	foreign, err := manifest.SignIndex(&manifest.Index{Version: 1, Channel: "stable", Created: time.Now(), Expires: time.Now().Add(time.Hour)}, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	firstChunk := firstChunkOf(t, res)
	tests := []struct {
		name string
		call func() error
		want adminapi.Class
	}{
		{"an index signed by an unknown key", func() error { _, err := c.PostIndex(ctx, foreign); return err }, adminapi.BadData},
		{"a garbage index", func() error { _, err := c.PostIndex(ctx, []byte("{")); return err }, adminapi.BadData},
		{"a tampered release", func() error {
			_, err := c.PostRelease(ctx, bytes.Replace(res.Envelope, []byte("SP-S041000005"), []byte("SP-S041000006"), 1))
			return err
		}, adminapi.BadData},
		{"a chunk that is not its CID", func() error { return c.PutChunk(ctx, firstChunk, store.EncodeFrame(nil, []byte("not the chunk"))) }, adminapi.BadData},
		{"a retry of a name that is no name", func() error {
			_, err := c.Retry(ctx, adminapi.RetryRequest{Release: "../x"})
			return err
		}, adminapi.Usage},
		{"a retry of a release not in the index", func() error {
			_, err := c.Retry(ctx, adminapi.RetryRequest{Release: "NOPE-1"})
			return err
		}, adminapi.NotFound},
		{"an install asked of the origin", func() error { _, err := c.Install(ctx, "SP-S041000005"); return err }, adminapi.WrongRole},
		{"the index of an origin that has none", func() error { _, err := c.Index(ctx); return err }, adminapi.NotFound},
		{"status of a release not in the index", func() error { _, err := c.Status(ctx, "SP-S041000009"); return err }, adminapi.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if got := adminapi.Classify(err); err == nil || got != tt.want {
				t.Errorf("error %v of class %s, want %s", err, got, tt.want)
			}
		})
	}

	// The release handed over: first the missing chunks are named, then
	// the release is taken once they are all there.
	ing, err := c.PostRelease(ctx, res.Envelope)
	if err != nil || ing.Stored || len(ing.Missing) == 0 {
		t.Fatalf("first hand-over: %+v, %v; want missing chunks", ing, err)
	}
	for _, ref := range ing.Missing {
		id, _ := manifest.ParseChunkID(ref)
		frame, err := pubStore.GetFrame(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.PutChunk(ctx, id, frame); err != nil {
			t.Fatalf("PUT chunk: %v", err)
		}
	}
	if ing, err = c.PostRelease(ctx, res.Envelope); err != nil || !ing.Stored || len(ing.Missing) != 0 {
		t.Fatalf("second hand-over: %+v, %v; want the release stored", ing, err)
	}
	if _, err := o.Peer().Catalog.Get("SP-S041000005"); err != nil {
		t.Errorf("the origin's catalog lacks the release: %v", err)
	}
	h, err := c.Health(ctx)
	if err != nil || h.Role != "origin" || h.PeerID != o.Peer().Host.ID().String() {
		t.Errorf("health: %+v, %v", h, err)
	}
}

func firstChunkOf(t *testing.T, res *agent.PublishResult) cid.Cid {
	t.Helper()
	env, err := manifest.ParseEnvelope(res.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(env.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return m.ChunkIDs()[0]
}

func TestTheOriginTakesOneIndexPerVersionAndTheOtherConflicts(t *testing.T) {
	key := newKey(t)
	_, srv := startOrigin(t, key)
	c, err := adminapi.NewClient(srv.URL, adminapi.ClientOptions{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	res, _ := publish(t, key, "SP-S041000005")
	entry := manifest.IndexEntry{Name: res.Name, CID: res.CID.String(), Sequence: res.Sequence}
	sign := func(version uint64, selector string) []byte {
		ix := &manifest.Index{Version: version, Channel: "stable", Created: time.Now(), Expires: time.Now().Add(time.Hour),
			Releases: []manifest.IndexEntry{entry}}
		if selector != "" {
			ix.Deployments = []manifest.Deployment{{Release: entry.Name, Selector: selector, Mode: manifest.ModeAssigned}}
		}
		env, err := manifest.SignIndex(ix, key)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	if _, err := c.PostIndex(t.Context(), sign(1, "")); err != nil {
		t.Fatal(err)
	}
	// Two deploys built on version 1 at once: one wins, the other is told.
	first, second := sign(2, "site=a"), sign(2, "site=b")
	if v, err := c.PostIndex(t.Context(), first); err != nil || v != 2 {
		t.Fatalf("the first version 2: %d, %v", v, err)
	}
	_, err = c.PostIndex(t.Context(), second)
	if !errors.Is(err, adminapi.ErrConflict) || adminapi.Classify(err).ExitCode() != adminapi.ExitConflict {
		t.Errorf("the second version 2: %v, want a conflict (exit %d)", err, adminapi.ExitConflict)
	}
	// The same index again is no conflict; an older one is.
	if v, err := c.PostIndex(t.Context(), first); err != nil || v != 2 {
		t.Errorf("the first version 2 again: %d, %v; want it taken as it is", v, err)
	}
	if _, err := c.PostIndex(t.Context(), sign(1, "site=c")); !errors.Is(err, adminapi.ErrConflict) {
		t.Errorf("a version 1 after 2: %v, want a conflict", err)
	}
	got, err := c.Index(t.Context())
	if err != nil || !bytes.Equal(got, first) {
		t.Errorf("the origin holds %d bytes (%v), want the first version 2", len(got), err)
	}
	var body map[string]any
	code, raw := send(t, srv, "GET", "/v1/status", nil, "")
	if err := json.Unmarshal([]byte(raw), &body); code != http.StatusOK || err != nil {
		t.Errorf("status: %d %s", code, raw)
	}
}
