package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// maxHookOutput bounds the hook output kept for a failure's reason.
const maxHookOutput = 4 << 10

// maxReasonTail is how much of a failed hook's output its reason quotes:
// the last lines, where an installer says what went wrong.
const maxReasonTail = 5

// install assembles a fetched release in a staging directory, verifying
// every file, moves it to <data-dir>/installed/<name>, runs the install
// commands there, and keeps the record. An install interrupted before the
// record was written starts again from a fresh staging directory.
func (a *agentState) install(ctx context.Context, m *manifest.Manifest, id cid.Cid, asm *store.Assembly) (InstallRecord, error) {
	base := filepath.Join(a.n.cfg.DataDir, installedDir)
	if err := os.MkdirAll(base, 0o755); err != nil {
		return InstallRecord{}, err
	}
	dir := filepath.Join(base, m.Name)
	staging := filepath.Join(base, ".staging-"+m.Name)
	for _, d := range []string{staging, dir} {
		if err := os.RemoveAll(d); err != nil {
			return InstallRecord{}, fmt.Errorf("clear a previous attempt: %w", err)
		}
	}
	err := store.Extract(ctx, a.n.Store, m, staging, store.ExtractOptions{Assembly: asm})
	if err != nil && asm != nil && ctx.Err() == nil {
		// What was staged during the download is only a head start;
		// the store holds every chunk verified.
		a.log.Warn("agent: files staged during the download did not check out; assembling them from the store", "release", m.Name, "err", err)
		err = store.Extract(ctx, a.n.Store, m, staging, store.ExtractOptions{})
	}
	if err != nil {
		return InstallRecord{}, fmt.Errorf("assemble files: %w", err)
	}
	if err := os.Rename(staging, dir); err != nil {
		return InstallRecord{}, err
	}
	rec := InstallRecord{Name: m.Name, CID: id.String(), RestartRequired: m.Install.RestartRequired}
	cmds, err := a.installCommands(m)
	if err != nil {
		return InstallRecord{}, err
	}
	if len(cmds) > 0 {
		logPath, err := a.runInstall(ctx, m, dir, cmds)
		rec.Log = logPath
		if err != nil {
			return InstallRecord{}, err
		}
	}
	rec.InstalledAt = a.now().UTC()
	if err := a.db.put(bucketInstalled, m.Name, rec); err != nil {
		return InstallRecord{}, fmt.Errorf("record: %w", err)
	}
	// The marker beside the files is for people and scripts on the
	// machine; the database is what the agent trusts.
	if b, err := json.MarshalIndent(rec, "", "  "); err == nil {
		if err := writeFileAtomic(filepath.Join(base, m.Name+".json"), b, 0o644); err != nil {
			a.log.Warn("agent: install marker", "release", m.Name, "err", err)
		}
	}
	a.log.Info("agent: release installed", "release", m.Name, "restart_required", rec.RestartRequired)
	return rec, nil
}

// installCommands returns what to run for m, each through /bin/sh -c: the
// release's own signed command if the node allows release commands, then
// the node's install hook. A release that carries a command the node does
// not allow fails: installed without it, it would be half installed.
func (a *agentState) installCommands(m *manifest.Manifest) ([]installCommand, error) {
	var cmds []installCommand
	if len(m.Install.Hook) > 0 {
		if !a.n.cfg.AllowReleaseCommands {
			return nil, fmt.Errorf("the release carries an install command (%s); start the agent with --allow-release-commands to run it", strings.Join(m.Install.Hook, " "))
		}
		cmds = append(cmds, installCommand{"the release's install command", shellJoin(m.Install.Hook)})
	}
	if a.n.cfg.InstallHook != "" {
		cmds = append(cmds, installCommand{"the install hook", a.n.cfg.InstallHook})
	}
	return cmds, nil
}

// installCommand is a command an install runs, and what to call it in a
// failure's reason: the operator knows their hook by that name, and the
// command line itself is in the log.
type installCommand struct {
	what, line string
}

// shellJoin quotes args for /bin/sh so that it runs them as the argv they
// are; a release command written as one string ("/bin/sh", "-c", cmd)
// comes out as that string.
func shellJoin(args []string) string {
	if len(args) == 3 && args[0] == "/bin/sh" && args[1] == "-c" {
		return args[2]
	}
	q := make([]string, len(args))
	for i, s := range args {
		q[i] = "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// runInstall runs cmds in dir, each with /bin/sh -c, with a minimal
// environment and a time limit, their output in one log file per install
// under <data-dir>/logs. It returns the log's path; a failure's error
// carries the exit status and the output's last lines.
func (a *agentState) runInstall(ctx context.Context, m *manifest.Manifest, dir string, cmds []installCommand) (string, error) {
	timeout := a.n.cfg.HookTimeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	logs := filepath.Join(a.n.cfg.DataDir, logsDir)
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return "", err
	}
	logPath := filepath.Join(logs, fmt.Sprintf("%s-%s.log", m.Name, a.now().UTC().Format("20060102T150405.000Z")))
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	defer logFile.Close()
	manifestPath := filepath.Join(a.n.cfg.DataDir, installedDir, m.Name+".manifest.json")
	if b, err := json.MarshalIndent(m, "", "  "); err == nil {
		if err := writeFileAtomic(manifestPath, b, 0o644); err != nil {
			return logPath, err
		}
	}
	for _, ic := range cmds {
		c := ic.line
		var tail tailWriter
		fmt.Fprintf(logFile, "$ %s\n", c)
		hctx, cancel := context.WithTimeout(ctx, timeout)
		cmd := exec.CommandContext(hctx, "/bin/sh", "-c", c)
		cmd.Dir = dir
		// The hook sees what it needs to know and nothing of the
		// agent's own environment, which may hold credentials.
		cmd.Env = []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"PATCH_NAME=" + m.Name,
			"PATCH_DIR=" + dir,
			"PATCH_MANIFEST=" + manifestPath,
			"PATCHCTL_SITE=" + a.n.cfg.Site,
		}
		out := io.MultiWriter(logFile, &tail)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.WaitDelay = 5 * time.Second
		err := cmd.Run()
		timedOut := hctx.Err() == context.DeadlineExceeded
		cancel()
		if err == nil {
			continue
		}
		fmt.Fprintf(logFile, "# %v\n", err)
		why := err.Error()
		var exit *exec.ExitError
		switch {
		case timedOut:
			why = fmt.Sprintf("timed out after %s", timeout)
		case errors.As(err, &exit) && exit.ExitCode() >= 0:
			why = fmt.Sprintf("exited with status %d", exit.ExitCode())
		}
		reason := fmt.Sprintf("%s %s", ic.what, why)
		if last := tail.lastLines(maxReasonTail); last != "" {
			reason += ": " + last
		}
		return logPath, fmt.Errorf("%s (log %s)", reason, logPath)
	}
	return logPath, nil
}

// tailWriter keeps the last few KiB written.
type tailWriter struct{ buf []byte }

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > maxHookOutput {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-maxHookOutput:]...)
	}
	return len(p), nil
}

// lastLines returns the last n non-empty lines, joined by " | ".
func (t *tailWriter) lastLines(n int) string {
	var lines []string
	for _, l := range strings.Split(string(t.buf), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// moveMarker moves a release's install marker to the retired folder.
func (a *agentState) moveMarker(name string) error {
	from := filepath.Join(a.n.cfg.DataDir, installedDir, name+".json")
	toDir := filepath.Join(a.n.cfg.DataDir, retiredDir)
	if err := os.MkdirAll(toDir, 0o755); err != nil {
		return err
	}
	err := os.Rename(from, filepath.Join(toDir, name+".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// importMarkers takes install markers of releases the database does not
// know, as an agent from before the database left them.
func (a *agentState) importMarkers() error {
	entries, err := os.ReadDir(filepath.Join(a.n.cfg.DataDir, installedDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, de := range entries {
		name, ok := strings.CutSuffix(de.Name(), ".json")
		if de.IsDir() || !ok || strings.HasSuffix(name, ".manifest") {
			continue
		}
		var known InstallRecord
		if found, err := a.db.get(bucketInstalled, name, &known); err != nil || found {
			continue
		}
		data, err := os.ReadFile(filepath.Join(a.n.cfg.DataDir, installedDir, de.Name()))
		if err != nil {
			return err
		}
		var rec InstallRecord
		if err := json.Unmarshal(data, &rec); err != nil || rec.Name != name {
			a.log.Warn("agent: unreadable install record", "file", de.Name(), "err", err)
			continue
		}
		if err := a.db.put(bucketInstalled, name, rec); err != nil {
			return err
		}
	}
	return nil
}

// About is a node's list of installed and retired releases.
type About struct {
	Installed []AboutEntry `json:"installed"`
	Retired   []AboutEntry `json:"retired"`
}

// AboutEntry is one release of About.
type AboutEntry struct {
	Name            string    `json:"name"`
	InstalledAt     time.Time `json:"installed_at"`
	RestartRequired bool      `json:"restart_required,omitempty"`
	RetiredAt       time.Time `json:"retired_at,omitzero"`
	RetiredBy       string    `json:"retired_by,omitempty"`
}

// About lists what this node has installed and what was retired.
func (n *Node) About() (About, error) {
	ab := About{Installed: []AboutEntry{}, Retired: []AboutEntry{}}
	if n.agent == nil {
		return ab, nil
	}
	for _, b := range []struct {
		bucket []byte
		out    *[]AboutEntry
	}{{bucketInstalled, &ab.Installed}, {bucketRetired, &ab.Retired}} {
		recs, err := n.agent.db.records(b.bucket)
		if err != nil {
			return ab, err
		}
		for _, r := range recs {
			restart := r.RestartRequired && n.agent.restartPending(r.Name)
			*b.out = append(*b.out, AboutEntry{Name: r.Name, InstalledAt: r.InstalledAt, RestartRequired: restart, RetiredAt: r.RetiredAt, RetiredBy: r.RetiredBy})
		}
	}
	return ab, nil
}

func (a *agentState) restartPending(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	ds := a.lifecycle[name]
	return ds != nil && ds.State == p2p.StateRestartRequired
}
