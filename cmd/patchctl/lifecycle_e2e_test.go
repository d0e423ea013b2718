package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/fleet"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/testnet/packgen"
)

// agentProc is a `patchctl agent` process of a test.
type agentProc struct {
	e    *env
	name string
	dir  string // data dir
	args []string
	cmd  *exec.Cmd
	info AgentInfo
	// relative: the agent is given its data dir relative to its working
	// directory, the test's.
	relative bool
}

// startAgent starts `patchctl agent` with a data dir of its own under the
// test's directory, its log in <name>.log there, and waits until it is up.
func (e *env) startAgent(name string, args ...string) *agentProc {
	e.t.Helper()
	p := &agentProc{e: e, name: name, dir: filepath.Join(e.dir, name), args: args}
	p.start()
	e.t.Cleanup(p.stop)
	return p
}

func (p *agentProc) start() {
	t := p.e.t
	t.Helper()
	os.Remove(filepath.Join(p.dir, agentInfoFile))
	// The data dir as the command line names it: relative to the test's
	// directory for an agent started as an operator following the README
	// would start it.
	dataDir := p.dir
	if p.relative {
		dataDir = p.name
	}
	args := append([]string{"--data-dir", dataDir, "agent", "--trust", "trust.json", "--listen", "/ip4/127.0.0.1/tcp/0",
		"--admin", "127.0.0.1:0", "--poll", "300ms"}, p.args...)
	if slices.Contains(p.args, "node") {
		// The machine's boot, as the test decides it.
		bootID := filepath.Join(p.dir, "boot_id")
		if _, err := os.Stat(bootID); err != nil {
			if err := os.MkdirAll(p.dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(bootID, []byte("first boot\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		args = append(args, "--boot-id-file", bootID)
	}
	p.cmd = exec.Command(patchctlBin, args...)
	p.cmd.Dir = p.e.dir
	logFile, err := os.OpenFile(filepath.Join(p.e.dir, p.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(p.dir, agentInfoFile))
		if err == nil && json.Unmarshal(b, &p.info) == nil && p.info.PID == p.cmd.Process.Pid {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s did not start within 30 s; its log:\n%s", p.name, p.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop stops the agent with SIGTERM and checks that it stopped cleanly.
func (p *agentProc) stop() {
	if p.cmd == nil || p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		p.e.t.Errorf("agent %s after SIGTERM: %v; its log:\n%s", p.name, err, p.log())
	}
}

// kill stops the agent as a crash would.
func (p *agentProc) kill() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

func (p *agentProc) log() string {
	b, _ := os.ReadFile(filepath.Join(p.e.dir, p.name+".log"))
	return string(b)
}

func (p *agentProc) addr() string { return p.info.Addrs[0] }

// token is the path of the agent's admin token.
func (p *agentProc) token() string { return filepath.Join(p.dir, adminTokenFile) }

// getJSON decodes an admin API answer of p.
func (p *agentProc) getJSON(path string, v any) error {
	resp, err := http.Get(p.info.Admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// getRaw reads an admin API answer of p as it is.
func (p *agentProc) getRaw(path string, b *[]byte) error {
	resp, err := http.Get(p.info.Admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	*b, err = io.ReadAll(resp.Body)
	return err
}

// waitFor polls cond until it holds, failing the test after a minute with
// what describe says of the last state.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within a minute; last: %s", what, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// releaseStatus is `patchctl status --json RELEASE`.
func (e *env) releaseStatus(origin *agentProc, release string) adminapi.ReleaseStatus {
	e.t.Helper()
	var rs adminapi.ReleaseStatus
	out := e.ok("status", "--json", "--origin", origin.info.Admin, release)
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		e.t.Fatalf("status --json printed %q: %v", out, err)
	}
	return rs
}

// counts renders a release's sites as "a 3/3/3 b 2/2/2" (nodes/replicated/installed).
func counts(rs adminapi.ReleaseStatus) string {
	var parts []string
	for _, s := range rs.Sites {
		parts = append(parts, fmt.Sprintf("%s %d/%d/%d failed %d", s.Site, s.Nodes, s.Replicated, s.Installed, len(s.Failed)))
	}
	return strings.Join(parts, ", ")
}

func (e *env) waitCounts(origin *agentProc, release, want string) adminapi.ReleaseStatus {
	e.t.Helper()
	var rs adminapi.ReleaseStatus
	waitFor(e.t, release+" reaches "+want, func() (bool, string) {
		rs = e.releaseStatus(origin, release)
		return counts(rs) == want, counts(rs)
	})
	return rs
}

func (e *env) about(node *agentProc) adminapi.About {
	e.t.Helper()
	var ab adminapi.About
	out := e.ok("about", "--json", "--admin", node.info.Admin)
	if err := json.Unmarshal([]byte(out), &ab); err != nil {
		e.t.Fatalf("about --json printed %q: %v", out, err)
	}
	return ab
}

func names(entries []adminapi.AboutEntry) string {
	var s []string
	for _, e := range entries {
		s = append(s, e.Name)
	}
	return strings.Join(s, " ")
}

// The operator's scenario of a fleet: an origin, a proxy for each of two
// sites and six nodes, all real processes on loopback.
func TestAFleetInstallsServicePacksAndHotfixesAsDeployedAndReportsExactStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nine agents")
	}
	e := newEnv(t)
	writeGenerated(t, filepath.Join(e.dir, "sp5", "server.bin"), 11, 8<<20, packgen.Incompressible)
	writeGenerated(t, filepath.Join(e.dir, "hf", "fix.bin"), 12, 256<<10, packgen.Software)
	writeGenerated(t, filepath.Join(e.dir, "sp6", "server.bin"), 13, 1<<20, packgen.Software)

	// The origin's settings come from a config file.
	if err := os.WriteFile(filepath.Join(e.dir, "origin.yaml"), []byte("role: origin\npoll: 300ms\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	origin := e.startAgent("origin", "--config", "origin.yaml")
	proxy := map[string]*agentProc{}
	for _, site := range []string{"a", "b"} {
		// 40 Mbit/s over the WAN: the first pack takes about two seconds
		// to reach a site, long enough to kill a node in the middle.
		proxy[site] = e.startAgent("proxy-"+site, "--role", "proxy", "--site", site, "--upstream", origin.addr(), "--wan-rate", "40Mbit")
		// The origin takes a site's status from its enrolled proxy only.
		e.ok("enrol", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key", "--site", site, proxy[site].info.PeerID)
	}
	fault := func(node string) string { return filepath.Join(e.dir, "fault-"+node) }
	startNode := func(name, site string) *agentProc {
		hook := fmt.Sprintf("echo installing $PATCH_NAME from $PATCH_DIR; if [ -e %s ]; then echo 'disk check failed: fault file present' >&2; exit 7; fi", fault(name))
		args := []string{"--role", "node", "--site", site, "--target", "server", "--label", "ring=r" + name[len(name)-1:],
			"--upstream", proxy[site].addr(), "--install-hook", hook}
		if site == "b" {
			args = append(args, "--allow-release-commands")
		}
		return e.startAgent(name, args...)
	}
	nodes := map[string]*agentProc{}
	for _, name := range []string{"a1", "a2", "a3", "b1", "b2"} {
		nodes[name] = startNode(name, name[:1])
	}

	// A service pack to every node; b3 is offline.
	e.ok("--data-dir", "release", "publish", "--key", "release.key", "--name", "SP-S041000005", "--origin", origin.info.Admin, "--admin-token", origin.token(), "sp5")
	e.ok("deploy", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key", "SP-S041000005")

	// a1 is killed in the middle of its download and started again.
	a1 := nodes["a1"]
	waitFor(t, "a1 downloads part of the service pack", func() (bool, string) {
		var st struct{ Deployments []fleet.DeploymentStatus }
		if err := a1.getJSON("/v1/status", &st); err != nil {
			return false, err.Error()
		}
		for _, d := range st.Deployments {
			if d.Release == "SP-S041000005" && d.Bytes > 0 && d.Bytes < d.Total {
				return true, ""
			}
		}
		return false, fmt.Sprint(st.Deployments)
	})
	a1.kill()
	a1.start()

	// A selector key no node reports is a mistake, named.
	e.fails(2, `no node reports a label "sit"; did you mean "site"?`, "deploy", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key", "--to", "sit=a", "SP-S041000005")
	// Deploying again changes nothing.
	if out := e.ok("deploy", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key", "SP-S041000005"); !strings.Contains(out, "already deployed") {
		t.Errorf("a deployment sent again: %q, want it to say it is already deployed", out)
	}

	e.waitCounts(origin, "SP-S041000005", "a 3/3/3 failed 0, b 2/2/2 failed 0")
	line := lastLine(a1.log(), "fetch done")
	var total, present, fetched int
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "chunks_total":
			fmt.Sscan(v, &total)
		case "chunks_present":
			fmt.Sscan(v, &present)
		case "chunks_fetched":
			fmt.Sscan(v, &fetched)
		}
	}
	if present == 0 || present+fetched != total {
		t.Errorf("a1 after its restart: %d chunks present, %d fetched, of %d; want those stored before the kill kept: %s", present, fetched, total, line)
	}
	t.Logf("a1 after its restart: %d of %d chunks were stored before the kill, %d fetched", present, total, fetched)

	// b3 was offline during the deployment and catches up.
	nodes["b3"] = startNode("b3", "b")
	e.waitCounts(origin, "SP-S041000005", "a 3/3/3 failed 0, b 3/3/3 failed 0")

	// A hotfix to site a only; a2's install hook fails.
	if err := os.WriteFile(fault("a2"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e.ok("--data-dir", "release", "publish", "--key", "release.key", "--name", "HF-S041000005-001", "--origin", origin.info.Admin, "--admin-token", origin.token(), "hf")
	e.ok("deploy", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key", "--to", "site=a", "HF-S041000005-001")
	rs := e.waitCounts(origin, "HF-S041000005-001", "a 3/3/2 failed 1")
	f := rs.Sites[0].Failed[0]
	if f.Node != nodes["a2"].info.PeerID || !strings.Contains(f.Reason, "exited with status 7") || !strings.Contains(f.Reason, "fault file present") {
		t.Errorf("failure %+v, want a2's with the exit status and the hook's last line", f)
	}
	t.Logf("status with a2 failed:\n%s", e.ok("status", "--origin", origin.info.Admin))
	if ab := e.about(nodes["a2"]); len(ab.Others) != 1 || ab.Others[0].State != lifecycle.Failed || !strings.Contains(ab.Others[0].Reason, "status 7") {
		t.Errorf("about on a2 lists %+v beside what is installed, want the failed hotfix with its reason", ab.Others)
	}

	// The fault is removed and the install run again on a2 alone.
	if err := os.Remove(fault("a2")); err != nil {
		t.Fatal(err)
	}
	e.ok("retry", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--node", nodes["a2"].info.PeerID, "HF-S041000005-001")
	e.waitCounts(origin, "HF-S041000005-001", "a 3/3/3 failed 0")
	if got := names(e.about(nodes["b1"]).Installed); got != "SP-S041000005" {
		t.Errorf("b1, in a site the hotfix was not deployed to, has installed %q", got)
	}
	if got := names(e.about(nodes["a2"]).Installed); got != "HF-S041000005-001 SP-S041000005" {
		t.Errorf("a2 has installed %q", got)
	}

	// A tool deployed as available to site b, with an install command of
	// its own that only site b's nodes may run, installs on b1 when asked.
	e.ok("--data-dir", "release", "publish", "--key", "release.key", "--name", "agent-tools", "--install-cmd", "touch tools.marker", "--origin", origin.info.Admin, "--admin-token", origin.token(), "hf")
	e.ok("deploy", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key", "--to", "site=b", "--mode", "available", "agent-tools")
	waitFor(t, "agent-tools downloaded in site b", func() (bool, string) {
		rs := e.releaseStatus(origin, "agent-tools")
		return counts(rs) == "b 3/3/0 failed 0" && rs.Sites[0].States[lifecycle.Downloaded] == 3, fmt.Sprint(rs)
	})
	if ab := e.about(nodes["b1"]); len(ab.Others) != 1 || ab.Others[0].Name != "agent-tools" || !strings.HasPrefix(ab.Others[0].Reason, "available") {
		t.Errorf("about on b1 lists %+v beside what is installed, want agent-tools available", ab.Others)
	}
	e.ok("install", "--admin", nodes["b1"].info.Admin, "--admin-token", nodes["b1"].token(), "agent-tools")
	e.waitCounts(origin, "agent-tools", "b 3/3/1 failed 0")
	if _, err := os.Stat(filepath.Join(nodes["b1"].dir, "installed", "agent-tools", "tools.marker")); err != nil {
		t.Errorf("the release's own install command did not run on b1: %v", err)
	}

	// A newer service pack, needing a restart, retires the hotfix and the
	// older pack.
	e.ok("--data-dir", "release", "publish", "--key", "release.key", "--name", "SP-S041000006", "--restart-required", "--origin", origin.info.Admin, "--admin-token", origin.token(), "sp6")
	e.ok("deploy", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key", "--to", "target=server", "SP-S041000006")
	e.waitCounts(origin, "SP-S041000006", "a 3/3/3 failed 0, b 3/3/3 failed 0")
	ab := e.about(nodes["a3"])
	if names(ab.Installed) != "SP-S041000006" || names(ab.Retired) != "HF-S041000005-001 SP-S041000005" {
		t.Errorf("a3 after the newer pack: installed %q, retired %q", names(ab.Installed), names(ab.Retired))
	}
	if !strings.Contains(nodes["a3"].log(), "release retired") {
		t.Error("a3's log does not say it retired the hotfix")
	}
	if rs := e.releaseStatus(origin, "SP-S041000006"); rs.Sites[0].States[lifecycle.RestartRequired] != 3 {
		t.Errorf("SP-S041000006 states in site a: %v, want 3 restart-required", rs.Sites[0].States)
	}
	// The pack takes effect when the machine restarts, not the agent.
	nodes["a3"].stop()
	nodes["a3"].start()
	if ab := e.about(nodes["a3"]); len(ab.Installed) != 1 || !ab.Installed[0].RestartRequired {
		t.Errorf("a3 after the agent's restart in the same boot: %+v, want SP-S041000006 still waiting for a machine restart", ab.Installed)
	}
	nodes["a3"].stop()
	if err := os.WriteFile(filepath.Join(nodes["a3"].dir, "boot_id"), []byte("second boot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	nodes["a3"].start()
	if ab := e.about(nodes["a3"]); len(ab.Installed) != 1 || ab.Installed[0].RestartRequired {
		t.Errorf("a3 after the machine's restart: %+v, want SP-S041000006 in effect", ab.Installed)
	}
	if _, err := os.Stat(filepath.Join(nodes["a3"].dir, "retired", "HF-S041000005-001.json")); err != nil {
		t.Errorf("the hotfix's record did not move to retired: %v", err)
	}
	// The node frees what it retired, but the newest retired service
	// pack (--keep-service-packs 1), for a rollback.
	waitFor(t, "a3 frees the retired hotfix and keeps the retired service pack", func() (bool, string) {
		_, hf := os.Stat(filepath.Join(nodes["a3"].dir, "installed", "HF-S041000005-001"))
		_, hfPin := os.Stat(filepath.Join(nodes["a3"].dir, "pins", "HF-S041000005-001"))
		_, sp := os.Stat(filepath.Join(nodes["a3"].dir, "installed", "SP-S041000005"))
		return os.IsNotExist(hf) && os.IsNotExist(hfPin) && sp == nil, fmt.Sprintf("hotfix tree %v, pin %v; service pack tree %v", hf, hfPin, sp)
	})
	t.Logf("final status:\n%s", e.ok("status", "--origin", origin.info.Admin))
	for site, p := range proxy {
		if _, err := os.Stat(filepath.Join(p.dir, "installed")); err == nil {
			t.Errorf("the proxy of site %s installed a release; proxies only cache and serve", site)
		}
	}
}

// lastLine returns the last line of log that contains s.
func lastLine(log, s string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i]
		}
	}
	return ""
}

func TestIndexAddDeploysWhatItListsOnTheOriginsMachine(t *testing.T) {
	e := newEnv(t)
	e.publish("--name", "HF-S041000005-012", "pack")
	e.ok("index", "add", "--key", "release.key", "--to", "target=server,site=a", "--mode", "available", "HF-S041000005-012")
	e.ok("index", "add", "--key", "release.key", "--to", "site=a,target=server", "--mode", "available", "HF-S041000005-012")
	var ix struct {
		Version     uint64
		Deployments []struct{ Release, Selector, Mode string }
	}
	if err := json.Unmarshal([]byte(e.ok("index", "show", "--json")), &ix); err != nil {
		t.Fatal(err)
	}
	if ix.Version != 2 || len(ix.Deployments) != 1 || ix.Deployments[0].Selector != "site=a,target=server" || ix.Deployments[0].Mode != "available" {
		t.Errorf("index after adding the same deployment twice: %+v, want version 2 with one deployment in canonical form", ix)
	}
	e.fails(2, "target must be client or server", "index", "add", "--key", "release.key", "--to", "target=router", "HF-S041000005-012")
}
