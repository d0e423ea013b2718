package agent

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// startAgent starts an agent of role on loopback with a fresh data dir and
// a trust root of key.
func startAgent(t *testing.T, role Role, key ed25519.PrivateKey) *Node {
	t.Helper()
	root, err := manifest.NewRoot([]ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, 1, 1, time.Now().Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cfg := NodeConfig{DataDir: t.TempDir(), ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
		AgentConfig: AgentConfig{Root: root, Role: role, PollInterval: time.Hour}}
	n, err := StartNode(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func call(t *testing.T, h http.Handler, method, path, token string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func chunkOf(t *testing.T, f *fixture, name string) string {
	t.Helper()
	r, err := f.cat.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return r.Manifest.ChunkIDs()[0].String()
}

func TestTheAdminAPIAsksForItsTokenAndVerifiesWhatItIsGiven(t *testing.T) {
	// A release and its chunks, published elsewhere.
	pub := newFixture(t)
	writeFile(t, filepath.Join(pub.dir, "pack", "a.bin"), generate(1, 300<<10, 0))
	res := pub.publish(t, "SP-S041000005", filepath.Join(pub.dir, "pack"))
	origin := startAgent(t, RoleOrigin, pub.key)
	const token = "0123456789abcdef0123"
	h := origin.AdminHandler(token)

	if w := call(t, h, "GET", "/", "", nil); w.Code != http.StatusUnauthorized {
		t.Errorf("GET / without the token: %d, want 401", w.Code)
	}
	if w := call(t, h, "GET", "/", "wrong", nil); w.Code != http.StatusUnauthorized {
		t.Errorf("GET / with a wrong token: %d, want 401", w.Code)
	}
	w := call(t, h, "GET", "/", token, nil)
	var health Health
	if err := json.Unmarshal(w.Body.Bytes(), &health); err != nil || health.PeerID != origin.Host.ID().String() || health.Role != RoleOrigin {
		t.Errorf("GET / = %d %s", w.Code, w.Body)
	}

	_, other, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := manifest.SignIndex(&manifest.Index{Version: 1, Channel: "stable", Created: time.Now(), Expires: time.Now().Add(time.Hour)}, other)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, path string
		body               []byte
		want               int
	}{
		{"index signed by an unknown key", "POST", "/v1/index", foreign, http.StatusUnprocessableEntity},
		{"garbage index", "POST", "/v1/index", []byte("{"), http.StatusUnprocessableEntity},
		{"release envelope tampered", "POST", "/v1/releases", bytes.Replace(res.Envelope, []byte("SP-S041000005"), []byte("SP-S041000006"), 1), http.StatusUnprocessableEntity},
		{"chunk that is not its CID", "PUT", "/v1/chunks/" + chunkOf(t, pub, "SP-S041000005"), store.EncodeFrame(nil, []byte("not the chunk")), http.StatusUnprocessableEntity},
		{"chunk ID that is no CID", "PUT", "/v1/chunks/xyz", []byte("x"), http.StatusBadRequest},
		{"retry of a bad name", "POST", "/v1/retry", []byte(`{"release":"../x"}`), http.StatusBadRequest},
		{"install on the origin", "POST", "/v1/install/SP-S041000005", nil, http.StatusConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if w := call(t, h, tt.method, tt.path, token, tt.body); w.Code != tt.want {
				t.Errorf("%s %s: %d %s, want %d", tt.method, tt.path, w.Code, w.Body, tt.want)
			}
		})
	}

	// The release handed over: first the missing chunks are named, then
	// the release is taken once they are all there.
	var ing IngestResult
	json.Unmarshal(call(t, h, "POST", "/v1/releases", token, res.Envelope).Body.Bytes(), &ing)
	if ing.Stored || len(ing.Missing) == 0 {
		t.Fatalf("first hand-over: %+v, want missing chunks", ing)
	}
	for _, ref := range ing.Missing {
		id, _ := manifest.ParseChunkID(ref)
		frame, err := pub.store.GetFrame(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if w := call(t, h, "PUT", "/v1/chunks/"+ref, token, frame); w.Code != http.StatusNoContent {
			t.Fatalf("PUT chunk: %d %s", w.Code, w.Body)
		}
	}
	json.Unmarshal(call(t, h, "POST", "/v1/releases", token, res.Envelope).Body.Bytes(), &ing)
	if !ing.Stored || len(ing.Missing) != 0 {
		t.Fatalf("second hand-over: %+v, want the release stored", ing)
	}
	if _, err := origin.Catalog.Get("SP-S041000005"); err != nil {
		t.Errorf("the origin's catalog lacks the release: %v", err)
	}
}
