package build

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
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/rootfs"
)

// writerOptions say who owns what a writer creates.
type writerOptions struct {
	// chown, when set, owns everything copied and every directory created.
	chown *rootfs.IDs
	// chmod, when set, is the mode of everything copied (not of links).
	chmod *fs.FileMode
	// createOwner owns created parent directories when chown is not set.
	createOwner rootfs.IDs
	// preserveOwner keeps source owners (stages, images); otherwise copied
	// files belong to 0:0, as Docker does for the build context.
	preserveOwner bool
}

type fileKey struct{ dev, ino uint64 }

// writer changes a stage's root directory and records every change as a
// layer entry, in the order made.
type writer struct {
	root       string
	o          writerOptions
	now        time.Time
	list       []layer.Entry
	index      map[string]int
	links      map[fileKey]string // source inode -> image path copied to
	createdAny bool
	canChown   bool
}

func (b *builder) newWriter(st *stage, o writerOptions) *writer {
	return &writer{
		root: st.root, o: o, now: b.now, index: map[string]int{}, links: map[fileKey]string{},
		canChown: os.Geteuid() == 0,
	}
}

// entries returns the recorded changes.
func (w *writer) entries() []layer.Entry { return w.list }

func (w *writer) record(img string, h tar.Header, source string) {
	h.Name = img
	e := layer.Entry{Header: h, Source: source}
	if i, ok := w.index[img]; ok {
		w.list[i] = e
		return
	}
	w.index[img] = len(w.list)
	w.list = append(w.list, e)
}

// tarMode converts an fs.FileMode's permission and special bits to tar's.
func tarMode(m fs.FileMode) int64 {
	out := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		out |= 04000
	}
	if m&fs.ModeSetgid != 0 {
		out |= 02000
	}
	if m&fs.ModeSticky != 0 {
		out |= 01000
	}
	return out
}

func ownerOf(fi fs.FileInfo) rootfs.IDs {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return rootfs.IDs{UID: int(st.Uid), GID: int(st.Gid)}
	}
	return rootfs.IDs{}
}

// recordExisting records an existing directory with its own metadata.
func (w *writer) recordExisting(img, host string) error {
	if _, ok := w.index[img]; ok || img == "" {
		return nil
	}
	fi, err := os.Lstat(host)
	if err != nil {
		return err
	}
	ids := ownerOf(fi)
	w.record(img, tar.Header{Typeflag: tar.TypeDir, Mode: tarMode(fi.Mode()), Uid: ids.UID, Gid: ids.GID, ModTime: fi.ModTime()}, "")
	return nil
}

// mkdirAll makes sure the image directory dir exists, creating missing
// elements owned by the writer's create owner (or chown), and records the
// whole chain. Existing directories keep their mode and owner. It returns
// the directory's host path.
func (w *writer) mkdirAll(dir string) (string, error) {
	clean := path.Clean("/" + dir)
	if clean == "/" {
		return w.root, nil
	}
	elems := splitPath(clean)
	cur := "/"
	host := w.root
	for _, e := range elems {
		cur = path.Join(cur, e)
		h, err := rootfs.Resolve(w.root, cur, true)
		if err != nil {
			return "", err
		}
		img, err := rootfs.Rel(w.root, h)
		if err != nil {
			return "", err
		}
		fi, err := os.Lstat(h)
		switch {
		case err == nil && fi.IsDir():
			if err := w.recordExisting(img, h); err != nil {
				return "", err
			}
		case err == nil:
			return "", fmt.Errorf("%s is not a directory", cur)
		case errors.Is(err, fs.ErrNotExist):
			owner := w.o.createOwner
			if w.o.chown != nil {
				owner = *w.o.chown
			}
			if err := os.Mkdir(h, 0o755); err != nil {
				return "", fmt.Errorf("creating %s: %w", cur, err)
			}
			if err := w.setMeta(h, tar.TypeDir, owner, 0o755, w.now); err != nil {
				return "", err
			}
			w.record(img, tar.Header{Typeflag: tar.TypeDir, Mode: 0o755, Uid: owner.UID, Gid: owner.GID, ModTime: w.now}, "")
			w.createdAny = true
		default:
			return "", err
		}
		host = h
	}
	return host, nil
}

func splitPath(p string) []string {
	var out []string
	for _, e := range strings.Split(p, "/") {
		if e != "" {
			out = append(out, e)
		}
	}
	return out
}

// setMeta applies owner, mode and mtime to a host path.
func (w *writer) setMeta(host string, typ byte, owner rootfs.IDs, mode int64, mtime time.Time) error {
	if err := os.Lchown(host, owner.UID, owner.GID); err != nil && w.canChown {
		return fmt.Errorf("chown %s: %w", host, err)
	}
	if typ == tar.TypeSymlink {
		ts := []unix.Timespec{unix.NsecToTimespec(mtime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
		unix.UtimesNanoAt(unix.AT_FDCWD, host, ts, unix.AT_SYMLINK_NOFOLLOW)
		return nil
	}
	if err := os.Chmod(host, rootfs.ModeFromTar(mode)); err != nil {
		return err
	}
	return os.Chtimes(host, mtime, mtime)
}

// meta is the owner, mode and time of an entry being written.
type meta struct {
	owner rootfs.IDs
	mode  int64
	mtime time.Time
}

// metaFor derives a copied entry's metadata from its source.
func (w *writer) metaFor(fi fs.FileInfo) meta {
	m := meta{mode: tarMode(fi.Mode()), mtime: fi.ModTime()}
	if w.o.preserveOwner {
		m.owner = ownerOf(fi)
	}
	if w.o.chown != nil {
		m.owner = *w.o.chown
	}
	if w.o.chmod != nil && fi.Mode()&fs.ModeSymlink == 0 {
		m.mode = tarMode(*w.o.chmod)
	}
	return m
}

// target resolves the image path dest for writing: its parent is created
// and resolved, the last element is not followed. It returns host and
// image paths.
func (w *writer) target(dest string) (string, string, error) {
	dir, base := path.Split(path.Clean("/" + dest))
	parent, err := w.mkdirAll(dir)
	if err != nil {
		return "", "", err
	}
	host := filepath.Join(parent, base)
	img, err := rootfs.Rel(w.root, host)
	if err != nil {
		return "", "", err
	}
	return host, img, nil
}

// clear removes what stands at host unless it is a directory and keepDir.
func clear(host string, keepDir bool) (existedDir bool, err error) {
	fi, err := os.Lstat(host)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if fi.IsDir() {
		if keepDir {
			return true, nil
		}
		return true, fmt.Errorf("cannot replace directory %s with a file", host)
	}
	return false, os.Remove(host)
}

// dir writes a directory at dest with metadata m.
func (w *writer) dir(dest string, m meta) error {
	host, img, err := w.target(dest)
	if err != nil {
		return err
	}
	existed, err := clear(host, true)
	if err != nil {
		return err
	}
	if !existed {
		if err := os.Mkdir(host, 0o755); err != nil {
			return err
		}
	}
	if err := w.setMeta(host, tar.TypeDir, m.owner, m.mode, m.mtime); err != nil {
		return err
	}
	w.record(img, tar.Header{Typeflag: tar.TypeDir, Mode: m.mode, Uid: m.owner.UID, Gid: m.owner.GID, ModTime: m.mtime}, "")
	return nil
}

// file writes r's content as a regular file at dest.
func (w *writer) file(dest string, r io.Reader, m meta) error {
	host, img, err := w.target(dest)
	if err != nil {
		return err
	}
	if _, err := clear(host, false); err != nil {
		return err
	}
	f, err := os.OpenFile(host, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", dest, err)
	}
	if err := w.setMeta(host, tar.TypeReg, m.owner, m.mode, m.mtime); err != nil {
		return err
	}
	w.record(img, tar.Header{Typeflag: tar.TypeReg, Mode: m.mode, Uid: m.owner.UID, Gid: m.owner.GID, ModTime: m.mtime}, host)
	return nil
}

// symlink writes a symbolic link at dest.
func (w *writer) symlink(dest, linkTarget string, m meta) error {
	host, img, err := w.target(dest)
	if err != nil {
		return err
	}
	if _, err := clear(host, false); err != nil {
		return err
	}
	if err := os.Symlink(linkTarget, host); err != nil {
		return err
	}
	if err := w.setMeta(host, tar.TypeSymlink, m.owner, 0o777, m.mtime); err != nil {
		return err
	}
	w.record(img, tar.Header{Typeflag: tar.TypeSymlink, Linkname: linkTarget, Mode: 0o777, Uid: m.owner.UID, Gid: m.owner.GID, ModTime: m.mtime}, "")
	return nil
}

// hardlink makes dest a hard link to the image path already written at
// targetImg.
func (w *writer) hardlink(dest, targetImg string) error {
	host, img, err := w.target(dest)
	if err != nil {
		return err
	}
	if _, err := clear(host, false); err != nil {
		return err
	}
	if err := os.Link(filepath.Join(w.root, filepath.FromSlash(targetImg)), host); err != nil {
		return err
	}
	w.record(img, tar.Header{Typeflag: tar.TypeLink, Linkname: targetImg}, "")
	return nil
}

// copyFrom copies the host file system object src (already lstat'ed as fi)
// to the image path dest: directories as directories, symlinks as links,
// regular files with their content, hard-linked files as hard links to the
// first copy.
func (w *writer) copyFrom(src string, fi fs.FileInfo, dest string) error {
	m := w.metaFor(fi)
	switch {
	case fi.IsDir():
		return w.dir(dest, m)
	case fi.Mode()&fs.ModeSymlink != 0:
		t, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return w.symlink(dest, t, m)
	case fi.Mode().IsRegular():
		var key fileKey
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok && st.Nlink > 1 {
			key = fileKey{uint64(st.Dev), st.Ino}
			if first, seen := w.links[key]; seen {
				return w.hardlink(dest, first)
			}
		}
		f, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := w.file(dest, f, m); err != nil {
			return err
		}
		if ok && st.Nlink > 1 {
			host, _, err := w.target(dest)
			if err != nil {
				return err
			}
			img, err := rootfs.Rel(w.root, host)
			if err != nil {
				return err
			}
			w.links[key] = img
		}
		return nil
	}
	return nil // sockets, devices and fifos are not copied
}
