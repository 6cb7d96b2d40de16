package engine

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/fsroot"
)

// lockSuffix names the lock file beside a build's work directory: the
// build holds it (flock) for as long as it lives.
const lockSuffix = ".lock"

// workDir is one build's directory under the work directory, with the
// lock that says it is in use.
type workDir struct {
	path string
	lock *os.File
}

// newWorkDir reclaims the directories of builds that died without
// cleaning up (their locks are free), then makes this build's, locked
// before it exists so no other build can take it for stale.
func newWorkDir(parent string, log *slog.Logger) (*workDir, error) {
	reclaim(parent, log)
	lock, err := os.CreateTemp(parent, "build-*"+lockSuffix)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		os.Remove(lock.Name())
		return nil, fmt.Errorf("locking %s: %w", lock.Name(), err)
	}
	dir := strings.TrimSuffix(lock.Name(), lockSuffix)
	if err := os.Mkdir(dir, 0o700); err != nil {
		lock.Close()
		os.Remove(lock.Name())
		return nil, err
	}
	return &workDir{path: dir, lock: lock}, nil
}

// remove deletes the directory, then releases and removes the lock.
func (w *workDir) remove() error {
	if w == nil {
		return nil
	}
	err := os.RemoveAll(w.path)
	os.Remove(w.lock.Name())
	w.lock.Close()
	return err
}

// reclaim removes the work directories whose lock no live build holds.
// Nothing is followed: os.RemoveAll removes symlinks, never their targets,
// and the mounts a dead build's RUN made died with its namespace.
func reclaim(parent string, log *slog.Logger) {
	locks, _ := filepath.Glob(filepath.Join(parent, "build-*"+lockSuffix))
	for _, l := range locks {
		f, err := os.OpenFile(l, os.O_RDWR|unix.O_NOFOLLOW, 0)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			f.Close() // a live build holds it
			continue
		}
		dir := strings.TrimSuffix(l, lockSuffix)
		if fi, err := os.Lstat(dir); err == nil && fi.IsDir() {
			log.Info("removing the work directory of a build that did not finish", "dir", dir)
			if err := os.RemoveAll(dir); err != nil {
				log.Warn("removing a stale work directory", "dir", dir, "error", err)
				f.Close()
				continue
			}
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			f.Close()
			continue
		}
		os.Remove(l)
		f.Close()
	}
}

// removeRoots starts removing the stage and image roots under the work
// directory, which a finished build no longer reads (its layers are files
// of their own), alongside whatever comes next (the push); the returned
// function waits for it. The entries two levels below each root (/usr/lib,
// /data/d0001) are removed in parallel, then those one level below: one
// large directory is removed by several workers too.
func (w *workDir) removeRoots(log *slog.Logger) (wait func()) {
	inner, top, release := w.rootEntries(log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer release()
		removeAll(inner, log)
		removeAll(top, log)
	}()
	return func() { <-done }
}

// rootEntry is a name in a directory held open: removed through the
// handle, what stands at the path by then never matters.
type rootEntry struct {
	dir  *fsroot.Dir
	name string
}

// rootEntries lists, through handles opened without following anything,
// the entries one and two levels below each root; release closes the
// handles.
func (w *workDir) rootEntries(log *slog.Logger) (inner, top []rootEntry, release func()) {
	var dirs []string
	for _, pattern := range []string{"stage-*", "image-*"} {
		m, _ := filepath.Glob(filepath.Join(w.path, pattern))
		dirs = append(dirs, m...)
	}
	var held []*fsroot.Root
	var subs []*fsroot.Dir
	release = func() {
		for _, d := range subs {
			d.Close()
		}
		for _, r := range held {
			r.Close()
		}
	}
	for _, d := range dirs {
		root := filepath.Join(d, "root") // a stage's; an image's root is d
		if _, err := os.Lstat(root); err != nil {
			root = d
		}
		r, err := fsroot.Open(root)
		if err != nil {
			log.Debug("opening a root to remove", "dir", root, "error", err)
			continue
		}
		held = append(held, r)
		names, _ := r.Dir().ReadDir()
		for _, n := range names {
			top = append(top, rootEntry{r.Dir(), n})
			sub, err := r.Dir().OpenDirAt(n) // not a symlink's target
			if err != nil {
				continue
			}
			subs = append(subs, sub)
			below, _ := sub.ReadDir()
			for _, m := range below {
				inner = append(inner, rootEntry{sub, m})
			}
		}
	}
	return inner, top, release
}

// removeAll removes the entries, in parallel; nothing is followed.
func removeAll(entries []rootEntry, log *slog.Logger) {
	work := make(chan rootEntry)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), max(len(entries), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range work {
				if err := e.dir.RemoveAll(e.name); err != nil {
					log.Debug("removing a root's files", "name", e.name, "error", err)
				}
			}
		}()
	}
	for _, e := range entries {
		work <- e
	}
	close(work)
	wg.Wait()
}
