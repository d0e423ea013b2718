package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/filecoin-project/go-clock"
	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// installer puts a node's releases in place: it assembles a release's files
// and verifies them, runs its install commands, and keeps the record.
type installer struct {
	dir   string // the data dir, absolute
	site  string
	conf  NodeConfig
	store *store.Disk
	db    *stateDB
	log   *slog.Logger
	clock clock.Clock
}

// maxHookOutput bounds the hook output kept for a failure's reason.
const maxHookOutput = 4 << 10

// maxReasonTail is how much of a failed hook's output its reason quotes:
// the last lines, where an installer says what went wrong.
const maxReasonTail = 5

// install assembles a fetched release in a staging directory, verifying
// every file, moves it to <data-dir>/installed/<name>, runs the install
// commands there, and keeps the record. An install interrupted before the
// record was written starts again from a fresh staging directory. waiting
// is told why the install waits, if it must.
func (in *installer) install(ctx context.Context, m *manifest.Manifest, id cid.Cid, asm *store.Assembly, waiting func(reason string)) (InstallRecord, error) {
	base := filepath.Join(in.dir, installedDir)
	if err := os.MkdirAll(base, 0o755); err != nil {
		return InstallRecord{}, err
	}
	cmds, err := in.commands(m)
	if err != nil {
		return InstallRecord{}, err
	}
	// The lock first: while a run of this release's commands from an
	// earlier agent lives on, its files must stay as they are.
	lock, err := in.lockHooks(ctx, m.Name, waiting)
	if err != nil {
		return InstallRecord{}, err
	}
	defer lock.Close()
	dir := filepath.Join(base, m.Name)
	staging := filepath.Join(base, ".staging-"+m.Name)
	for _, d := range []string{staging, dir} {
		if err := os.RemoveAll(d); err != nil {
			return InstallRecord{}, fmt.Errorf("clear a previous attempt: %w", err)
		}
	}
	err = store.Extract(ctx, in.store, m, staging, store.ExtractOptions{Assembly: asm})
	if err != nil && asm != nil && ctx.Err() == nil {
		// What was staged during the download is only a head start;
		// the store holds every chunk verified.
		in.log.Warn("agent: files staged during the download did not check out; assembling them from the store", "release", m.Name, "err", err)
		err = store.Extract(ctx, in.store, m, staging, store.ExtractOptions{})
	}
	if err != nil {
		return InstallRecord{}, fmt.Errorf("assemble files: %w", err)
	}
	if err := os.Rename(staging, dir); err != nil {
		return InstallRecord{}, err
	}
	rec := InstallRecord{Name: m.Name, CID: id.String(), RestartRequired: m.Install.RestartRequired}
	if rec.RestartRequired {
		if rec.BootID, err = in.conf.BootID(); err != nil {
			in.log.Warn("agent: the machine's boot is not known; the release stays restart-required", "release", m.Name, "err", err)
		}
	}
	if len(cmds) > 0 {
		logPath, err := in.runCommands(ctx, lock, m, dir, cmds)
		rec.Log = logPath
		if err != nil {
			return InstallRecord{}, err
		}
	}
	rec.InstalledAt = in.clock.Now().UTC()
	if err := in.db.put(bucketInstalled, m.Name, rec); err != nil {
		return InstallRecord{}, fmt.Errorf("record: %w", err)
	}
	// The marker beside the files is for people and scripts on the
	// machine; the database is what the agent trusts.
	if b, err := json.MarshalIndent(rec, "", "  "); err == nil {
		if err := writeFileAtomic(filepath.Join(base, m.Name+".json"), b, 0o644); err != nil {
			in.log.Warn("agent: install marker", "release", m.Name, "err", err)
		}
	}
	in.log.Info("agent: release installed", "release", m.Name, "restart_required", rec.RestartRequired)
	return rec, nil
}

// uninstall runs m's signed uninstall command in its directory, as
// install runs its install command (same lock, process group, environment
// and log), then removes its files and moves its record to retired, marked
// uninstalled. A release without an uninstall command is only removed.
func (in *installer) uninstall(ctx context.Context, m *manifest.Manifest, waiting func(reason string)) (InstallRecord, error) {
	var cmds []installCommand
	if len(m.Install.Uninstall) > 0 {
		if !in.conf.AllowReleaseCommands {
			return InstallRecord{}, fmt.Errorf("the release carries an uninstall command (%s); start the agent with --allow-release-commands to run it", strings.Join(m.Install.Uninstall, " "))
		}
		cmds = append(cmds, installCommand{"the release's uninstall command", shellJoin(m.Install.Uninstall)})
	}
	lock, err := in.lockHooks(ctx, m.Name, waiting)
	if err != nil {
		return InstallRecord{}, err
	}
	defer lock.Close()
	dir := filepath.Join(in.dir, installedDir, m.Name)
	logPath := ""
	if len(cmds) > 0 {
		if logPath, err = in.runCommands(ctx, lock, m, dir, cmds); err != nil {
			return InstallRecord{}, err
		}
	}
	rec, err := in.db.uninstalled(m.Name, in.clock.Now().UTC(), logPath)
	if err != nil {
		return InstallRecord{}, err
	}
	if err := in.moveMarker(m.Name); err != nil {
		in.log.Warn("agent: move install record", "release", m.Name, "err", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		in.log.Warn("agent: remove an uninstalled release's files", "release", m.Name, "err", err)
	}
	in.log.Info("agent: release uninstalled", "release", m.Name)
	return rec, nil
}

// commands returns what to run for m, each through /bin/sh -c: the
// release's own signed command if the node allows release commands, then
// the node's install hook. A release that carries a command the node does
// not allow fails: installed without it, it would be half installed.
func (in *installer) commands(m *manifest.Manifest) ([]installCommand, error) {
	var cmds []installCommand
	if len(m.Install.Hook) > 0 {
		if !in.conf.AllowReleaseCommands {
			return nil, fmt.Errorf("the release carries an install command (%s); start the agent with --allow-release-commands to run it", strings.Join(m.Install.Hook, " "))
		}
		cmds = append(cmds, installCommand{"the release's install command", shellJoin(m.Install.Hook)})
	}
	if in.conf.InstallHook != "" {
		cmds = append(cmds, installCommand{"the install hook", in.conf.InstallHook})
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

// hookRun is what a release's hook lock file says of the run holding it.
type hookRun struct {
	PGID    int       `json:"pgid"`
	Started time.Time `json:"started"`
}

// lockHooks takes the lock of a release's install commands: a file under
// <data-dir>/hooks that every run of them holds open, the agent and each
// process of the run alike, since the commands inherit it. The kernel frees
// it when the last of them ends, so an agent started again after a crash
// (kill -9) finds it held while any process of the earlier run lives, and
// waits: the same install never runs twice at once. A run that outlived its
// timeout, which the dead agent can no longer enforce, is killed.
func (in *installer) lockHooks(ctx context.Context, name string, waiting func(reason string)) (*os.File, error) {
	dir := filepath.Join(in.dir, hooksDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, name+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	said := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock the install commands of %s: %w", name, err)
		}
		var run hookRun
		b, _ := io.ReadAll(io.NewSectionReader(f, 0, 4<<10))
		_ = json.Unmarshal(b, &run)
		if !said {
			reason := fmt.Sprintf("waiting for an earlier run of its install commands (process group %d, started %s) to end", run.PGID, run.Started.Format(time.RFC3339))
			in.log.Warn("agent: "+reason, "release", name)
			waiting(reason)
			said = true
		}
		if run.PGID > 1 && !run.Started.IsZero() && in.clock.Since(run.Started) > in.conf.HookTimeout {
			in.log.Warn("agent: an earlier run of the install commands outlived its timeout; killing it", "release", name, "pgid", run.PGID)
			_ = syscall.Kill(-run.PGID, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-in.clock.After(time.Second):
		}
	}
}

// runCommands runs cmds in dir, each with /bin/sh -c in a process group of
// its own, with a minimal environment and a time limit, their output in one
// log file per install under <data-dir>/logs. On the time limit, when the
// agent stops, and when a command ends, its whole group is killed: a hook's
// processes live no longer than the hook. It returns the log's path; a
// failure's error carries the exit status and the output's last lines.
func (in *installer) runCommands(ctx context.Context, lock *os.File, m *manifest.Manifest, dir string, cmds []installCommand) (string, error) {
	logs := filepath.Join(in.dir, logsDir)
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return "", err
	}
	logPath := filepath.Join(logs, fmt.Sprintf("%s-%s.log", m.Name, in.clock.Now().UTC().Format("20060102T150405.000Z")))
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	defer logFile.Close()
	manifestPath := filepath.Join(in.dir, installedDir, m.Name+".manifest.json")
	if b, err := json.MarshalIndent(m, "", "  "); err == nil {
		if err := writeFileAtomic(manifestPath, b, 0o644); err != nil {
			return logPath, err
		}
	}
	for _, ic := range cmds {
		var tail tailWriter
		fmt.Fprintf(logFile, "$ %s\n", ic.line)
		hctx, cancel := context.WithTimeout(ctx, in.conf.HookTimeout)
		cmd := exec.CommandContext(hctx, "/bin/sh", "-c", ic.line)
		cmd.Dir = dir
		// The hook sees what it needs to know and nothing of the
		// agent's own environment, which may hold credentials.
		cmd.Env = []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"PATCH_NAME=" + m.Name,
			"PATCH_DIR=" + dir,
			"PATCH_MANIFEST=" + manifestPath,
			"PATCHCTL_SITE=" + in.site,
		}
		out := io.MultiWriter(logFile, &tail)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.ExtraFiles = []*os.File{lock}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = 5 * time.Second
		err := cmd.Start()
		if err == nil {
			in.recordRun(lock, cmd.Process.Pid)
			err = cmd.Wait()
			// What the command left running in its group goes too.
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
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
			why = fmt.Sprintf("timed out after %s", in.conf.HookTimeout)
		case ctx.Err() != nil:
			return logPath, ctx.Err()
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

// recordRun writes into the lock file which process group runs now, for an
// agent that starts while it still lives.
func (in *installer) recordRun(lock *os.File, pgid int) {
	b, _ := json.Marshal(hookRun{PGID: pgid, Started: in.clock.Now().UTC()})
	if err := lock.Truncate(0); err == nil {
		_, err = lock.WriteAt(b, 0)
		if err == nil {
			err = lock.Sync()
		}
		if err != nil {
			in.log.Warn("agent: record the install command's process group", "err", err)
		}
	}
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
func (in *installer) moveMarker(name string) error {
	from := filepath.Join(in.dir, installedDir, name+".json")
	toDir := filepath.Join(in.dir, retiredDir)
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
func (in *installer) importMarkers() error {
	entries, err := os.ReadDir(filepath.Join(in.dir, installedDir))
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
		if found, err := in.db.get(bucketInstalled, name, &known); err != nil || found {
			continue
		}
		data, err := os.ReadFile(filepath.Join(in.dir, installedDir, de.Name()))
		if err != nil {
			return err
		}
		var rec InstallRecord
		if err := json.Unmarshal(data, &rec); err != nil || rec.Name != name {
			in.log.Warn("agent: unreadable install record", "file", de.Name(), "err", err)
			continue
		}
		if err := in.db.put(bucketInstalled, name, rec); err != nil {
			return err
		}
	}
	return nil
}
