package agent

import (
	"testing"
	"time"
)

func TestRetiringMovesRecordsAndSurvivesReopening(t *testing.T) {
	dir := t.TempDir()
	db, err := openStateDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	for _, name := range []string{"SP-S041000005", "HF-S041000005-001", "agent-tools"} {
		if err := db.put(bucketInstalled, name, InstallRecord{Name: name, InstalledAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	moved, err := db.retire([]string{"HF-S041000005-001", "SP-S041000005", "SP-S041000001"}, "SP-S041000006", at.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(moved) != 2 {
		t.Errorf("retired %d records, want the 2 installed ones", len(moved))
	}
	db.Close()

	db, err = openStateDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	inst, _ := db.records(bucketInstalled)
	ret, _ := db.records(bucketRetired)
	if len(inst) != 1 || inst[0].Name != "agent-tools" {
		t.Errorf("installed after reopening: %+v", inst)
	}
	if len(ret) != 2 || ret[0].RetiredBy != "SP-S041000006" || !ret[0].RetiredAt.Equal(at.Add(time.Hour)) {
		t.Errorf("retired after reopening: %+v", ret)
	}
}
