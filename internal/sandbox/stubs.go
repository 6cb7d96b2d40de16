package sandbox

import (
	"bytes"
	"encoding/gob"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/internal/fsroot"
)

// stubRoot is Stub.Mount for a mount point created in the root itself.
const stubRoot = -1

// Stub is a mount point the sandbox created for one run.
type Stub struct {
	// Mount says where it was created: stubRoot for the root, else the
	// index in Spec.Mounts of the bind mount whose Source holds it.
	Mount int `json:"mount"`
	// Path is its path inside the root or that Source, without a leading
	// slash.
	Path string `json:"path"`
	// Dir says it is a directory (else a file kiln wrote: an empty mount
	// point, or an in-place secret).
	Dir bool `json:"dir,omitempty"`
	// Dev and Ino identify it: anything else found there is left alone.
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
	// Times, on the first stub created in a directory, are that
	// directory's access and modification times before it (Unix ns).
	Times *[2]int64 `json:"times,omitempty"`
}

// removeStubs removes the mount points the sandbox reported in file, the
// last created first, each looked up again inside the root (or its mount
// source) and removed only if it is still the object created and still
// empty; then the directories they were created in get their times back.
// The sandbox's processes are all gone by now, and nothing is followed out
// of the tree.
func removeStubs(spec Spec, file string) error {
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the sandbox's mount points: %w", err)
	}
	var stubs []Stub
	if err := gob.NewDecoder(bytes.NewReader(data)).Decode(&stubs); err != nil {
		return fmt.Errorf("reading the sandbox's mount points: %w", err)
	}
	roots := map[int]*fsroot.Root{}
	defer func() {
		for _, r := range roots {
			r.Close()
		}
	}()
	open := func(m int) (*fsroot.Root, error) {
		if r, ok := roots[m]; ok {
			return r, nil
		}
		dir := spec.Root
		if m != stubRoot {
			if m < 0 || m >= len(spec.Mounts) {
				return nil, fmt.Errorf("mount point in unknown mount %d", m)
			}
			dir = spec.Mounts[m].Source
		}
		r, err := fsroot.Open(dir)
		if err != nil {
			return nil, err
		}
		roots[m] = r
		return r, nil
	}
	var firstErr error
	for i := len(stubs) - 1; i >= 0; i-- {
		s := stubs[i]
		r, err := open(s.Mount)
		if err == nil {
			err = removeStub(r, s)
		}
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("removing mount point /%s: %w", s.Path, err)
		}
	}
	return firstErr
}

func removeStub(r *fsroot.Root, s Stub) error {
	d, name, err := r.Parent(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // the command moved or removed what held it
	}
	if err != nil {
		return err
	}
	defer d.Close()
	if d.Path() != fsroot.Clean(path.Dir("/"+s.Path)) {
		return nil // a symlink now stands where its directory was
	}
	if fi, err := d.Lstat(name); err == nil {
		st := fi.Sys().(*syscall.Stat_t)
		same := uint64(st.Dev) == s.Dev && st.Ino == s.Ino
		switch {
		case !same:
		case s.Dir && fi.IsDir():
			d.Remove(name) // refused, as wanted, when something was put in it
		case !s.Dir && fi.Mode().IsRegular():
			d.Remove(name)
		}
	}
	if s.Times != nil {
		return d.SetTimes(time.Unix(0, s.Times[0]), time.Unix(0, s.Times[1]))
	}
	return nil
}
