package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patchctl/patchctl/testnet/packgen"
)

// TestPublishExplainsNewMembers: the second of two ZIP service packs stores
// its changed members and headers, says so, and lists exactly the changed
// members; it extracts byte for byte; --chunking cdc cuts without members.
func TestPublishExplainsNewMembers(t *testing.T) {
	e := newEnv(t)
	tree := packgen.Tree{Seed: 9, Files: 200, Size: 4 << 20, Changed: 3}
	for v := 1; v <= 2; v++ {
		f, err := os.Create(filepath.Join(e.dir, "SP-S04100000"+string(rune('0'+v))+".zip"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tree.WriteZip(f, v); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	e.publish("SP-S041000001.zip")
	out := e.ok("publish", "--json", "--explain", "--key", "release.key", "SP-S041000002.zip")
	var p struct {
		TotalBytes     int64  `json:"total_bytes"`
		NewFileBytes   int64  `json:"new_file_bytes"`
		ReusedBytes    int64  `json:"reused_bytes"`
		Chunking       string `json:"chunking"`
		Archives       int    `json:"archives"`
		Members        int    `json:"members"`
		MembersChanged int    `json:"members_changed"`
		Changed        []struct {
			File         string `json:"file"`
			Member       string `json:"member"`
			NewDataBytes int64  `json:"new_data_bytes"`
		} `json:"changed_members"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if p.Chunking != "archive" || p.Archives != 1 || p.MembersChanged != 3 || len(p.Changed) != 3 ||
		p.NewFileBytes+p.ReusedBytes != p.TotalBytes || p.ReusedBytes < p.TotalBytes/2 {
		t.Fatalf("publish --explain: %s", out)
	}
	for _, m := range p.Changed {
		if m.File != "SP-S041000002.zip" || !strings.HasPrefix(m.Member, "product-4.32.0/") || m.NewDataBytes == 0 {
			t.Errorf("changed member %+v", m)
		}
	}
	text := e.ok("publish", "--explain", "--key", "release.key", "--name", "SP-S041000003", "SP-S041000002.zip")
	for _, want := range []string{"reused ", "archives     1: ", "members with new data: 0 of "} {
		if !strings.Contains(text, want) {
			t.Errorf("publish output lacks %q:\n%s", want, text)
		}
	}
	e.ok("extract", "--trust", "trust.json", "SP-S041000002", "out")
	a, _ := os.ReadFile(filepath.Join(e.dir, "SP-S041000002.zip"))
	b, err := os.ReadFile(filepath.Join(e.dir, "out", "SP-S041000002.zip"))
	if err != nil || string(a) != string(b) {
		t.Fatalf("extracted pack differs (%v)", err)
	}
	cdc := e.ok("publish", "--json", "--chunking", "cdc", "--key", "release.key", "--name", "SP-S041000004", "SP-S041000002.zip")
	if !strings.Contains(cdc, `"chunking":"cdc"`) || !strings.Contains(cdc, `"members":0`) {
		t.Errorf("publish --chunking cdc: %s", cdc)
	}
	e.fails(2, "--chunking", "publish", "--chunking", "fastest", "--key", "release.key", "SP-S041000002.zip")
}
