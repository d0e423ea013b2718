package agent

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// stateFile is the agent's database under its data dir.
const stateFile = "state.db"

// Buckets of the state database. Values are JSON.
var (
	// bucketInstalled: release name → InstallRecord, on nodes.
	bucketInstalled = []byte("installed")
	// bucketRetired: release name → InstallRecord with Retired set.
	bucketRetired = []byte("retired")
	// bucketReleases: release name → releaseProgress, on nodes: the
	// lifecycle state that must survive a restart (failed with its
	// reason, install requested, retries acted on).
	bucketReleases = []byte("releases")
	// bucketSites: site name → fleet.SiteStatus, on proxies and the origin:
	// the latest status of every site below.
	bucketSites = []byte("sites")
	// bucketRetries: release name → []fleet.RetryOrder, on the origin.
	bucketRetries = []byte("retries")
	// bucketMembers: peer ID → fleet.NodeStatus, on proxies: the site's
	// nodes as they last reported.
	bucketMembers = []byte("members")
	// bucketRoots: version (8 bytes, big-endian) → trust root envelope:
	// the chain of roots the agent followed, oldest first.
	bucketRoots = []byte("roots")
)

// InstallRecord is what a node keeps of an installed release, and of a
// retired one.
type InstallRecord struct {
	Name        string    `json:"name"`
	CID         string    `json:"cid"`
	InstalledAt time.Time `json:"installed_at"`
	Log         string    `json:"log,omitempty"` // the install's log file
	// RestartRequired: the release takes effect when the machine
	// restarts; cleared once the agent runs in another boot than BootID,
	// the one it was installed in.
	RestartRequired bool      `json:"restart_required,omitempty"`
	BootID          string    `json:"boot_id,omitempty"`
	RetiredAt       time.Time `json:"retired_at,omitzero"`
	RetiredBy       string    `json:"retired_by,omitempty"`
	// UninstalledAt: the release was withdrawn and its uninstall command
	// ran then; the record moved to retired.
	UninstalledAt time.Time `json:"uninstalled_at,omitzero"`
	UninstallLog  string    `json:"uninstall_log,omitempty"`
}

// releaseProgress is a node's lasting state of one release.
type releaseProgress struct {
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// InstallRequested: an operator asked for the install of an
	// available release.
	InstallRequested bool `json:"install_requested,omitempty"`
	// Retry is the last retry generation acted on.
	Retry uint64 `json:"retry,omitempty"`
}

// stateDB is the agent's crash-safe state: bbolt commits each update with
// an fsync, so a kill -9 leaves either the old or the new value.
type stateDB struct {
	db *bolt.DB
}

func openStateDB(dataDir string) (*stateDB, error) {
	db, err := bolt.Open(filepath.Join(dataDir, stateFile), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state: %w (is another agent running on this data dir?)", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketInstalled, bucketRetired, bucketReleases, bucketSites, bucketRetries, bucketMembers, bucketRoots} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open state: %w", err)
	}
	return &stateDB{db: db}, nil
}

func (s *stateDB) Close() error { return s.db.Close() }

// put stores v under key in bucket.
func (s *stateDB) put(bucket []byte, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), b) })
}

// get loads key of bucket into v and reports whether it was there.
func (s *stateDB) get(bucket []byte, key string, v any) (bool, error) {
	var found bool
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket).Get([]byte(key))
		if b == nil {
			return nil
		}
		found = true
		return json.Unmarshal(b, v)
	})
	return found, err
}

// putRaw stores value as it is under key in bucket.
func (s *stateDB) putRaw(bucket []byte, key string, value []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), value) })
}

// clear empties bucket.
func (s *stateDB) clear(bucket []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucket); err != nil {
			return err
		}
		_, err := tx.CreateBucket(bucket)
		return err
	})
}

func (s *stateDB) delete(bucket []byte, key string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Delete([]byte(key)) })
}

// each calls fn with every key and value of bucket, in key order.
func (s *stateDB) each(bucket []byte, fn func(key string, value []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error { return fn(string(k), v) })
	})
}

// retire moves the install records of names to the retired bucket in one
// transaction, so a crash never leaves a release both installed and
// retired, or neither.
func (s *stateDB) retire(names []string, by string, at time.Time) ([]InstallRecord, error) {
	var moved []InstallRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		inst, ret := tx.Bucket(bucketInstalled), tx.Bucket(bucketRetired)
		for _, name := range names {
			raw := inst.Get([]byte(name))
			if raw == nil {
				continue
			}
			var rec InstallRecord
			if err := json.Unmarshal(raw, &rec); err != nil {
				return err
			}
			rec.RetiredAt, rec.RetiredBy, rec.RestartRequired = at, by, false
			b, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			if err := ret.Put([]byte(name), b); err != nil {
				return err
			}
			if err := inst.Delete([]byte(name)); err != nil {
				return err
			}
			moved = append(moved, rec)
		}
		return nil
	})
	return moved, err
}

// uninstalled moves the install record of name to the retired bucket,
// marked uninstalled at at with the command's log, in one transaction.
func (s *stateDB) uninstalled(name string, at time.Time, log string) (InstallRecord, error) {
	var rec InstallRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		inst, ret := tx.Bucket(bucketInstalled), tx.Bucket(bucketRetired)
		raw := inst.Get([]byte(name))
		if raw == nil {
			return fmt.Errorf("no install record of %s", name)
		}
		if err := json.Unmarshal(raw, &rec); err != nil {
			return err
		}
		rec.UninstalledAt, rec.UninstallLog, rec.RetiredAt, rec.RetiredBy, rec.RestartRequired = at, log, at, "withdrawn (uninstalled)", false
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := ret.Put([]byte(name), b); err != nil {
			return err
		}
		return inst.Delete([]byte(name))
	})
	return rec, err
}

// records returns the install records of bucket.
func (s *stateDB) records(bucket []byte) ([]InstallRecord, error) {
	var out []InstallRecord
	err := s.each(bucket, func(_ string, v []byte) error {
		var rec InstallRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	return out, err
}
