package fsroot

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ReadFileWithin reads the regular file at the host path p: a path the
// operator named (a flag), in a tree the build may not trust (a checkout,
// a fetched context). When p lies, as spelled, inside one of the
// directories trees, the rest of it is resolved inside the deepest of them
// as a root, so no symlink of that tree leads out of it; elsewhere p is
// the operator's own path, followed as given. Anything but a regular file
// is refused without being opened for reading (errors.Is ErrNotRegular),
// and so is a file of more than limit bytes.
func ReadFileWithin(p string, limit int64, trees ...string) ([]byte, error) {
	return readWithin(p, limit, trees, func(i int) (*Root, func(), error) {
		r, err := Open(trees[i])
		return r, func() { r.Close() }, err
	})
}

// ReadFileIn is ReadFileWithin for trees already open as roots: p, as
// spelled, is matched against each root's Path, and the rest of it is
// resolved inside the deepest match through the handle it holds, so the
// tree's own path is not looked up again.
func ReadFileIn(p string, limit int64, roots ...*Root) ([]byte, error) {
	trees := make([]string, len(roots))
	for i, r := range roots {
		if r != nil {
			trees[i] = r.Path()
		}
	}
	return readWithin(p, limit, trees, func(i int) (*Root, func(), error) { return roots[i], func() {}, nil })
}

// readWithin reads p for ReadFileWithin and ReadFileIn: root(i) is the
// root of trees[i], and what releases it after use.
func readWithin(p string, limit int64, trees []string, root func(int) (*Root, func(), error)) ([]byte, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, err
	}
	f, err := openWithin(abs, trees, root)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: p, Err: err}
	}
	if int64(len(data)) > limit {
		return nil, &fs.PathError{Op: "read", Path: p, Err: fmt.Errorf("larger than %d bytes", limit)}
	}
	return data, nil
}

// openWithin opens the absolute path abs for readWithin.
func openWithin(abs string, trees []string, root func(int) (*Root, func(), error)) (*os.File, error) {
	tree, rel, depth := -1, "", 0
	for i, t := range trees {
		if t == "" {
			continue
		}
		t, err := filepath.Abs(t)
		if err != nil {
			continue
		}
		r, err := filepath.Rel(t, abs)
		if err != nil || r == ".." || strings.HasPrefix(r, "../") || len(t) <= depth {
			continue
		}
		tree, rel, depth = i, r, len(t)
	}
	if tree < 0 {
		h, err := os.OpenFile(abs, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		defer h.Close()
		return reopenRegular(h, abs)
	}
	r, release, err := root(tree)
	if err != nil {
		return nil, err
	}
	defer release()
	f, err := r.OpenFile(filepath.ToSlash(rel))
	var pe *fs.PathError
	if errors.As(err, &pe) {
		pe.Path = abs // the operator's name for it, not the tree's
	}
	return f, err
}
