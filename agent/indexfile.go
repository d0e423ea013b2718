package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Files of an agent's state under its data dir.
const (
	// IndexFile is the signed index an agent follows. An origin that is
	// running also adopts a newer one written there by `patchctl index
	// add` on its machine (see EditIndexFile).
	IndexFile     = "index.envelope"
	indexLockFile = "index.lock"
	installedDir  = "installed"
	retiredDir    = "retired"
	logsDir       = "logs"
	hooksDir      = "hooks"
)

// indexFile is the data dir's index file. Whoever writes it holds an
// exclusive lock of indexLockFile meanwhile, so that a running origin and
// `patchctl index add` never both sign a version built on the same one.
type indexFile struct{ dir string }

// read returns the file's envelope, or nil if there is none.
func (f indexFile) read() ([]byte, error) {
	env, err := os.ReadFile(filepath.Join(f.dir, IndexFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return env, err
}

// write replaces the file's envelope, atomically; the lock is held.
func (f indexFile) write(env []byte) error {
	return writeFileAtomic(filepath.Join(f.dir, IndexFile), env, 0o644)
}

// locked runs fn holding the lock, which another process may hold: flock
// waits for it. The lock is the kernel's, so a writer killed with it held
// frees it.
func (f indexFile) locked(fn func() error) error {
	lf, err := os.OpenFile(filepath.Join(f.dir, indexLockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("lock the index: %w", err)
	}
	defer lf.Close()
	if err := flock(lf, unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock the index: %w", err)
	}
	defer flock(lf, unix.LOCK_UN)
	return fn()
}

// flock applies how to f, retrying when a signal interrupts the wait.
func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// EditIndexFile replaces the index file of the data dir dir with what edit
// makes of the one there (nil if none), holding the lock that a running
// origin also takes, which adopts the new index at its next poll. edit
// returns the signed envelope to write. It does not verify it; the agents
// that take it do.
func EditIndexFile(dir string, edit func(held []byte) ([]byte, error)) error {
	f := indexFile{dir: dir}
	return f.locked(func() error {
		held, err := f.read()
		if err != nil {
			return err
		}
		env, err := edit(held)
		if err != nil {
			return err
		}
		return f.write(env)
	})
}
