package buildcontext

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/fsroot"
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
// device nodes and fifos, and stops at the limits. Every entry is written
// through handles inside dest, and never through a symlink an earlier
// entry made. Owners are not kept (a context's files belong to whoever
// fetched them); modes and times are.
func Extract(r io.Reader, dest string, lim Limits) error {
	root, err := fsroot.Open(dest)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var files int
	var bytes int64
	type dirTime struct {
		p string
		t time.Time
	}
	var dirs []dirTime
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
		parent, err := mkdirNoFollow(root, path.Dir(name))
		if err != nil {
			var ee *EntryError
			if errors.As(err, &ee) {
				ee.Entry = h.Name
				return ee
			}
			return fmt.Errorf("archive entry %q: %w", h.Name, err)
		}
		base := path.Base(name)
		err = extractEntry(tr, h, parent, base, &bytes, lim)
		parent.Close()
		if err != nil {
			return err
		}
		if h.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirTime{name, h.ModTime})
		}
		if h.Typeflag == tar.TypeLink {
			ln, _ := entryName(h.Linkname)
			src, sname, err := parentNoFollow(root, ln)
			if err != nil {
				return &EntryError{h.Name, fmt.Sprintf("hard link to %q: %v", h.Linkname, err)}
			}
			fi, err := src.Lstat(sname)
			if err != nil || !fi.Mode().IsRegular() {
				src.Close()
				return &EntryError{h.Name, fmt.Sprintf("hard link to %q, which is not a file extracted before it", h.Linkname)}
			}
			parent, err := mkdirNoFollow(root, path.Dir(name))
			if err == nil {
				parent.RemoveAll(base)
				err = parent.Link(src, sname, base)
				parent.Close()
			}
			src.Close()
			if err != nil {
				return err
			}
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if d, err := root.OpenDir(dirs[i].p); err == nil {
			d.SetTimes(dirs[i].t, dirs[i].t)
			d.Close()
		}
	}
	return nil
}

// extractEntry writes one entry (all but hard links) as base in parent.
func extractEntry(tr io.Reader, h *tar.Header, parent *fsroot.Dir, base string, bytes *int64, lim Limits) error {
	switch h.Typeflag {
	case tar.TypeDir:
		if fi, err := parent.Lstat(base); err == nil && !fi.IsDir() {
			return &EntryError{h.Name, "a directory over a non-directory"}
		} else if err != nil {
			if err := parent.Mkdir(base, 0o755); err != nil {
				return err
			}
		}
		parent.Chmod(base, fs.FileMode(h.Mode&0o777)|0o700)
	case tar.TypeReg, tar.TypeRegA:
		*bytes += h.Size
		if lim.MaxBytes > 0 && *bytes > lim.MaxBytes {
			return &EntryError{h.Name, fmt.Sprintf("the context is larger than %d bytes (--max-context-size)", lim.MaxBytes)}
		}
		if err := parent.RemoveAll(base); err != nil {
			return err
		}
		f, err := parent.Create(base, fs.FileMode(h.Mode&0o777)|0o600)
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
		parent.Chmod(base, fs.FileMode(h.Mode&0o777))
		parent.Chtimes(base, h.ModTime, h.ModTime)
	case tar.TypeSymlink:
		if err := linkInside(path.Join(parent.Path(), base), h.Linkname); err != nil {
			return &EntryError{h.Name, err.Error()}
		}
		if err := parent.RemoveAll(base); err != nil {
			return err
		}
		return parent.Symlink(h.Linkname, base)
	case tar.TypeLink:
		ln, err := entryName(h.Linkname)
		if err != nil || ln == "" {
			return &EntryError{h.Name, fmt.Sprintf("hard link to %q leaves the context", h.Linkname)}
		}
	case tar.TypeChar, tar.TypeBlock:
		return &EntryError{h.Name, "device nodes are not allowed in a build context"}
	case tar.TypeFifo:
		return &EntryError{h.Name, "fifos are not allowed in a build context"}
	case tar.TypeXGlobalHeader:
	default:
		return &EntryError{h.Name, fmt.Sprintf("unsupported entry type %q", string(h.Typeflag))}
	}
	return nil
}

// mkdirNoFollow makes sure dir exists in root, never following a symlink
// (a link an earlier entry placed must not redirect later ones).
func mkdirNoFollow(root *fsroot.Root, dir string) (*fsroot.Dir, error) {
	cur, err := root.OpenDir("")
	if err != nil {
		return nil, err
	}
	for _, e := range strings.Split(fsroot.Clean(dir), "/") {
		if e == "" {
			continue
		}
		fi, err := cur.Lstat(e)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := cur.Mkdir(e, 0o755); err != nil {
				cur.Close()
				return nil, err
			}
		case err != nil:
			cur.Close()
			return nil, err
		case fi.Mode()&fs.ModeSymlink != 0:
			cur.Close()
			return nil, &EntryError{Reason: fmt.Sprintf("its parent %q is a symlink", e)}
		}
		next, err := cur.OpenDirAt(e)
		cur.Close()
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

// parentNoFollow returns the directory holding name, its parents not
// followed, and name's last element.
func parentNoFollow(root *fsroot.Root, name string) (*fsroot.Dir, string, error) {
	d, err := mkdirNoFollow(root, path.Dir(name))
	if err != nil {
		return nil, "", err
	}
	return d, path.Base(name), nil
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

// CheckLinks applies kiln's one symlink policy for contexts to the tree
// at dir, whatever it came from (an archive, git, a bucket): every symlink
// must stay inside it, resolved as the kernel would follow it, through
// the other links (x/l1 -> .., then l2 -> x/l1/.. leaves). Absolute links
// are refused. A link that leads nowhere is allowed only when its own
// target stays inside.
func CheckLinks(dir string) error {
	root, err := fsroot.Open(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	top, err := os.OpenFile(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer top.Close()
	var walk func(d *fsroot.Dir) error
	walk = func(d *fsroot.Dir) error {
		names, err := d.ReadDir()
		if err != nil {
			return err
		}
		for _, n := range names {
			fi, err := d.Lstat(n)
			if err != nil {
				return err
			}
			p := path.Join(d.Path(), n)
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := d.Readlink(n)
				if err != nil {
					return err
				}
				if err := linkInside(p, target); err != nil {
					return &EntryError{p, err.Error()}
				}
				if err := beneath(top, p); err != nil {
					return &EntryError{p, fmt.Sprintf("symlink to %q %v", target, err)}
				}
			case fi.IsDir():
				sub, err := d.OpenDirAt(n)
				if err != nil {
					return err
				}
				err = walk(sub)
				sub.Close()
				if err != nil {
					return err
				}
			}
		}
		return nil
	}
	d, err := root.OpenDir("")
	if err != nil {
		return err
	}
	defer d.Close()
	return walk(d)
}

// beneath follows p from top as the kernel would, refusing to leave top
// (openat2 with RESOLVE_BENEATH).
func beneath(top *os.File, p string) error {
	fd, err := unix.Openat2(int(top.Fd()), p, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch {
	case err == nil:
		unix.Close(fd)
		return nil
	case errors.Is(err, unix.EXDEV):
		return errors.New("leaves the context through another symlink")
	case errors.Is(err, unix.ELOOP):
		return errors.New("is a symlink loop")
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return nil // leads nowhere; its own target was checked
	case errors.Is(err, unix.ENOSYS):
		return errors.New("cannot be checked: this kernel lacks openat2 (Linux 5.6)")
	}
	return err
}
