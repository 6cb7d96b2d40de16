package buildcontext

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Limits bound what a context may unpack to.
type Limits struct {
	// MaxBytes is the most file content a context may hold; 0 means no limit.
	MaxBytes int64
	// MaxFiles is the most entries a context may hold; 0 means no limit.
	MaxFiles int
}

// DefaultLimits are the limits when none are given: 4 GiB in one million
// files.
var DefaultLimits = Limits{MaxBytes: 4 << 30, MaxFiles: 1_000_000}

// EntryError is a refused archive entry.
type EntryError struct {
	Entry  string
	Reason string
}

func (e *EntryError) Error() string { return fmt.Sprintf("archive entry %q: %s", e.Entry, e.Reason) }

// Extract unpacks a tar stream into dest, which must exist and be empty. It
// refuses, naming the entry, absolute names, "..", links that leave dest,
// device nodes and fifos, and stops at the limits. Owners are not kept (a
// context's files belong to whoever fetched them); modes and times are.
func Extract(r io.Reader, dest string, lim Limits) error {
	tr := tar.NewReader(r)
	var files int
	var bytes int64
	var dirs []struct {
		p string
		t time.Time
	}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading archive: %w", err)
		}
		name, err := entryName(h.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue
		}
		files++
		if lim.MaxFiles > 0 && files > lim.MaxFiles {
			return &EntryError{h.Name, fmt.Sprintf("the context has more than %d files (--max-context-files)", lim.MaxFiles)}
		}
		target := filepath.Join(dest, filepath.FromSlash(name))
		if err := checkParents(dest, name); err != nil {
			return &EntryError{h.Name, err.Error()}
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if fi, err := os.Lstat(target); err == nil && !fi.IsDir() {
				return &EntryError{h.Name, "a directory over a non-directory"}
			}
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			os.Chmod(target, os.FileMode(h.Mode&0o777)|0o700)
			dirs = append(dirs, struct {
				p string
				t time.Time
			}{target, h.ModTime})
		case tar.TypeReg, tar.TypeRegA:
			bytes += h.Size
			if lim.MaxBytes > 0 && bytes > lim.MaxBytes {
				return &EntryError{h.Name, fmt.Sprintf("the context is larger than %d bytes (--max-context-size)", lim.MaxBytes)}
			}
			os.Remove(target)
			f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, os.FileMode(h.Mode&0o777)|0o600)
			if err != nil {
				return fmt.Errorf("archive entry %q: %w", h.Name, err)
			}
			n, err := io.Copy(f, io.LimitReader(tr, h.Size))
			f.Close()
			if err == nil && n != h.Size {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				return fmt.Errorf("archive entry %q: %w", h.Name, err)
			}
			os.Chmod(target, os.FileMode(h.Mode&0o777))
			os.Chtimes(target, h.ModTime, h.ModTime)
		case tar.TypeSymlink:
			if err := linkInside(name, h.Linkname); err != nil {
				return &EntryError{h.Name, err.Error()}
			}
			os.Remove(target)
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
		case tar.TypeLink:
			ln, err := entryName(h.Linkname)
			if err != nil || ln == "" {
				return &EntryError{h.Name, fmt.Sprintf("hard link to %q leaves the context", h.Linkname)}
			}
			if err := checkParents(dest, ln); err != nil {
				return &EntryError{h.Name, err.Error()}
			}
			src := filepath.Join(dest, filepath.FromSlash(ln))
			if fi, err := os.Lstat(src); err != nil || !fi.Mode().IsRegular() {
				return &EntryError{h.Name, fmt.Sprintf("hard link to %q, which is not a file extracted before it", h.Linkname)}
			}
			os.Remove(target)
			if err := os.Link(src, target); err != nil {
				return err
			}
		case tar.TypeChar, tar.TypeBlock:
			return &EntryError{h.Name, "device nodes are not allowed in a build context"}
		case tar.TypeFifo:
			return &EntryError{h.Name, "fifos are not allowed in a build context"}
		case tar.TypeXGlobalHeader:
			continue
		default:
			return &EntryError{h.Name, fmt.Sprintf("unsupported entry type %q", string(h.Typeflag))}
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Chtimes(dirs[i].p, dirs[i].t, dirs[i].t)
	}
	return nil
}

// entryName checks an archive name: relative, without "..".
func entryName(n string) (string, error) {
	s := filepath.ToSlash(n)
	if strings.HasPrefix(s, "/") {
		return "", &EntryError{n, "absolute names are not allowed"}
	}
	for _, e := range strings.Split(s, "/") {
		if e == ".." {
			return "", &EntryError{n, "the name leaves the context (\"..\")"}
		}
	}
	c := path.Clean(s)
	if c == "." {
		return "", nil
	}
	return c, nil
}

// linkInside checks that a symlink at name pointing to target stays inside
// the context, resolved lexically from the link's directory.
func linkInside(name, target string) error {
	if target == "" {
		return errors.New("empty symlink target")
	}
	if path.IsAbs(target) {
		return fmt.Errorf("symlink to the absolute path %q leaves the context", target)
	}
	joined := path.Join(path.Dir(name), target)
	if joined == ".." || strings.HasPrefix(joined, "../") {
		return fmt.Errorf("symlink to %q leaves the context", target)
	}
	return nil
}

// checkParents refuses a name whose parent directories inside dest are
// symlinks (a link placed earlier must not redirect later entries).
func checkParents(dest, name string) error {
	dir := path.Dir(name)
	cur := dest
	for _, e := range strings.Split(dir, "/") {
		if e == "." || e == "" {
			continue
		}
		cur = filepath.Join(cur, e)
		fi, err := os.Lstat(cur)
		if err != nil {
			return nil // created below
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("its parent %q is a symlink", e)
		}
	}
	return nil
}
