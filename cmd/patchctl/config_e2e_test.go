package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestAgentSettingsComeFromAConfigFileWithEveryMistakeNamed(t *testing.T) {
	e := newEnv(t)
	write := func(name, yaml string) string {
		t.Helper()
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		return name
	}
	tests := []struct {
		name, yaml string
		args       []string
		want       string
	}{
		{"a misspelt key", "role: node\ntrust: trust.json\ninstal-hook: ./install.sh\n", nil, `unknown setting "instal-hook"; did you mean "install-hook"?`},
		{"a key far from any", "role: origin\ntrust: trust.json\nfrobnicate: 3\n", nil, `unknown setting "frobnicate"`},
		{"a mapping for a value", "role: origin\ntrust: {file: trust.json}\n", nil, "not a mapping"},
		{"a setting of another role", "role: origin\ntrust: trust.json\ninstall-hook: ./install.sh\n", nil, "--install-hook is for a node, not a origin"},
		{"a flag of another role", "role: origin\ntrust: trust.json\n", []string{"--wan-rate", "20Mbit"}, "--wan-rate is for a proxy, not a origin"},
		{"a node's setting for a proxy", "role: proxy\ntrust: trust.json\nkeep-chunks: true\n", nil, "--keep-chunks is for a node, not a proxy"},
		{"no trust anywhere", "role: origin\n", nil, "--trust FILE is required"},
		{"a value that does not parse", "role: origin\ntrust: trust.json\npoll: 60\n", nil, "poll"},
		{"a node without its site", "role: node\ntrust: trust.json\nupstream: [/ip4/127.0.0.1/tcp/1/p2p/12D3KooWAfPDpPRRRBrmqy9is2zjU5srQ4hKuZitiGmh4NTTpS2d]\n", nil, "needs its site"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := write("bad"+string(rune('a'+i))+".yaml", tt.yaml)
			args := append([]string{"agent", "--config", cfg, "--admin", "127.0.0.1:0"}, tt.args...)
			e.fails(2, tt.want, args...)
		})
	}

	// Every setting from the file, the trust root and the data dir
	// included; the command line wins over it.
	write("origin.yaml", "role: origin\ntrust: trust.json\ndata-dir: from-file\npoll: 10s\nlisten: [/ip4/127.0.0.1/tcp/0]\nadmin: 127.0.0.1:1\n")
	cmd := exec.Command(patchctlBin, "agent", "--config", "origin.yaml", "--admin", "127.0.0.1:0")
	cmd.Dir = e.dir
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("agent after SIGTERM: %v\n%s", err, out.String())
		}
	}()
	var info AgentInfo
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(e.dir, "from-file", agentInfoFile))
		if err == nil && json.Unmarshal(b, &info) == nil && info.PID == cmd.Process.Pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent configured from its file did not start in its data dir: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if info.Role != "origin" || strings.HasSuffix(info.Admin, ":1") {
		t.Errorf("agent info %+v: want an origin on the admin address of the command line", info)
	}
	if fi, err := os.Stat(filepath.Join(e.dir, "from-file", adminTokenFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the admin token: %v, mode %v; want it made with mode 600", err, fi.Mode())
	}
}
