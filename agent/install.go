package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
)

// Installed is the record an installed release leaves under
// <data-dir>/installed/<name>.json.
type Installed struct {
	Name        string    `json:"name"`
	CID         string    `json:"cid"`
	InstalledAt time.Time `json:"installed_at"`
	Hook        []string  `json:"hook,omitempty"`
}

// maxHookOutput bounds the hook output kept for an error message.
const maxHookOutput = 4 << 10

// install extracts a fetched release into <data-dir>/installed/<name>, runs
// its hook there, and leaves the record. An install interrupted before the
// record was written starts again from a fresh extract.
func (a *agentState) install(ctx context.Context, m *manifest.Manifest, id cid.Cid) error {
	base := filepath.Join(a.n.cfg.DataDir, installedDir)
	if err := os.MkdirAll(base, 0o755); err != nil {
		return err
	}
	dir := filepath.Join(base, m.Name)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("install %s: clear a previous attempt: %w", m.Name, err)
	}
	if err := store.Extract(ctx, a.n.Store, m, dir, store.ExtractOptions{}); err != nil {
		return fmt.Errorf("install %s: %w", m.Name, err)
	}
	if len(m.Install.Hook) > 0 {
		if err := a.runHook(ctx, m, dir); err != nil {
			return err
		}
	}
	rec, err := json.Marshal(Installed{Name: m.Name, CID: id.String(), InstalledAt: time.Now().UTC(), Hook: m.Install.Hook})
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(base, m.Name+".json"), rec, 0o644); err != nil {
		return fmt.Errorf("install %s: record: %w", m.Name, err)
	}
	a.log.Info("agent: release installed", "release", m.Name)
	return nil
}

// runHook runs the release's hook in its directory with a minimal
// environment and a time limit. Its output is kept only for the error.
func (a *agentState) runHook(ctx context.Context, m *manifest.Manifest, dir string) error {
	timeout := a.n.cfg.HookTimeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.Install.Hook[0], m.Install.Hook[1:]...)
	cmd.Dir = dir
	// The hook sees what it needs to know and nothing of the agent's own
	// environment, which may hold credentials.
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"PATCHCTL_RELEASE=" + m.Name,
		"PATCHCTL_SITE=" + a.n.cfg.Site,
		"PATCHCTL_RELEASE_DIR=" + dir,
	}
	var out bytes.Buffer
	cmd.Stdout = &cappedWriter{w: &out, n: maxHookOutput}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("install %s: hook %q: %w: %s", m.Name, strings.Join(m.Install.Hook, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// cappedWriter keeps the first n bytes written and discards the rest.
type cappedWriter struct {
	w *bytes.Buffer
	n int
}

func (c *cappedWriter) Write(p []byte) (int, error) {
	if room := c.n - c.w.Len(); room > 0 {
		c.w.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// loadInstalled reads the install records into the agent's states, so a
// restarted node does not install again what it has.
func (a *agentState) loadInstalled() error {
	entries, err := os.ReadDir(filepath.Join(a.n.cfg.DataDir, installedDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, de := range entries {
		if de.IsDir() || !strings.HasSuffix(de.Name(), ".json") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(a.n.cfg.DataDir, installedDir, de.Name()))
		if err != nil {
			return err
		}
		var rec Installed
		if err := json.Unmarshal(data, &rec); err != nil {
			a.log.Warn("agent: unreadable install record", "file", de.Name(), "err", err)
			continue
		}
		a.states[rec.Name] = ReleaseState{Name: rec.Name, CID: rec.CID, State: p2p.StateInstalled}
	}
	return nil
}

// Installed returns the releases installed on this node.
func (n *Node) Installed() []string {
	var names []string
	for _, s := range n.States() {
		if s.State == p2p.StateInstalled {
			names = append(names, s.Name)
		}
	}
	return names
}
