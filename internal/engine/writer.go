package engine

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	mode "github.com/tonistiigi/dchapes-mode"

	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/rootfs"
)

// writerOptions say who owns what a writer creates.
type writerOptions struct {
	// chown, when set, owns everything copied and every directory created.
	chown *rootfs.IDs
	// chmod, when set, gives everything copied its mode (not links).
	chmod *chmodSpec
	// createOwner owns created parent directories when chown is not set.
	createOwner rootfs.IDs
	// preserveOwner keeps source owners (stages, images); otherwise copied
	// files belong to 0:0, as Docker does for the build context.
	preserveOwner bool
	// stream, when set, is the source tree the files copied are read from
	// for the layer, instead of being written into the root: the layer
	// then joins the layers not yet in the root (see copyHandler.apply),
	// and only directories are made in the root.
	stream *fsroot.Root
}

// chmodSpec is a COPY/ADD --chmod: an octal mode, or a symbolic one
// ("u=rwX,go=rX") applied to each source's own mode, as BuildKit does.
type chmodSpec struct {
	octal *fs.FileMode
	sym   *mode.Set
}

// parseChmod parses a --chmod value, octal or symbolic.
func parseChmod(s string) (*chmodSpec, error) {
	if n, err := strconv.ParseUint(s, 8, 32); err == nil {
		if n > 0o7777 {
			return nil, fmt.Errorf("--chmod=%s: an octal mode is at most 07777", s)
		}
		m := rootfs.ModeFromTar(int64(n))
		return &chmodSpec{octal: &m}, nil
	}
	set, err := mode.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("--chmod=%s: want an octal mode (0755) or a symbolic one (u=rwX,go=rX): %v", s, err)
	}
	return &chmodSpec{sym: &set}, nil
}

// apply gives the mode for a source whose own mode (type bits included)
// is m.
func (c *chmodSpec) apply(m fs.FileMode) fs.FileMode {
	if c.octal != nil {
		return *c.octal
	}
	return c.sym.Apply(m) &^ fs.ModeType
}

// dirMode is the mode of the parent directories a COPY creates: an octal
// --chmod's (BuildKit's fsutil creates them so), else 0755.
func (w *writer) dirMode() int64 {
	if w.o.chmod != nil && w.o.chmod.octal != nil {
		return tarMode(*w.o.chmod.octal)
	}
	return 0o755
}

type fileKey struct{ dev, ino uint64 }

// maxWriterDirs bounds the directory handles a writer keeps.
const maxWriterDirs = 1024

// writer changes a stage's root and records every change as a layer
// entry, in the order made. Every change goes through handles resolved
// inside the root (fsroot): symlinks in the image never lead a COPY out
// of it, and in place nothing protected is touched.
type writer struct {
	root       *fsroot.Root
	o          writerOptions
	now        time.Time
	list       layer.List
	index      map[string]int
	links      map[fileKey]string // source inode -> image path copied to
	dirs       map[string]*fsroot.Dir
	createdAny bool
	canChown   bool
	// reader opens the files written, for the layer, keeping the last
	// directory's handle (sourceReader the files streamed from the
	// source); left counts the openers not called yet, the last of which
	// releases them.
	reader, sourceReader *fsroot.EntryOpener
	left                 atomic.Int64
	// streamedAny says files were left out of the root; streamedLinks are
	// the image paths of those other names link to.
	streamedAny   bool
	streamedLinks map[string]bool
}

func (b *builder) newWriter(st *stage, o writerOptions) *writer {
	return &writer{
		root: st.root.fs, o: o, now: b.now, index: map[string]int{}, links: map[fileKey]string{},
		dirs: map[string]*fsroot.Dir{}, canChown: os.Geteuid() == 0,
	}
}

// close releases the writer's directory handles.
func (w *writer) close() {
	for k, d := range w.dirs {
		d.Close()
		delete(w.dirs, k)
	}
}

// entries returns the recorded changes.
func (w *writer) entries() *layer.List {
	n := int64(0)
	for e := range w.list.All() {
		if e.Open != nil {
			n++
		}
	}
	if w.left.Store(n); n == 0 {
		w.release()
	}
	return &w.list
}

// release closes the readers of the layer's contents.
func (w *writer) release() {
	if w.reader != nil {
		w.reader.Close()
	}
	if w.sourceReader != nil {
		w.sourceReader.Close()
	}
}

func (w *writer) record(img string, h layer.Header, open func() (*os.File, error)) {
	h.Name = img
	e := layer.Entry{Header: h, Open: open}
	if i, ok := w.index[img]; ok {
		*w.list.At(i) = e
		return
	}
	w.index[img] = w.list.Append(e)
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

// cache keeps a directory handle under its real image path.
func (w *writer) cache(d *fsroot.Dir) {
	if old, ok := w.dirs[d.Path()]; ok {
		old.Close()
	}
	if len(w.dirs) >= maxWriterDirs {
		w.close()
	}
	w.dirs[d.Path()] = d
}

// mkdirAll makes sure the image directory dir exists, creating missing
// elements owned by the writer's create owner (or chown), and records the
// chain of real directories leading to it. Existing directories keep
// their mode and owner. The handle belongs to the writer.
func (w *writer) mkdirAll(dir string) (*fsroot.Dir, error) {
	clean := fsroot.Clean(dir)
	if d, ok := w.dirs[clean]; ok {
		return d, nil
	}
	owner := w.o.createOwner
	if w.o.chown != nil {
		owner = *w.o.chown
	}
	dm := w.dirMode()
	d, err := w.root.MkdirAll(clean, fsroot.MkdirOptions{Created: func(p *fsroot.Dir, name string) error {
		if err := w.setMeta(p, name, tar.TypeDir, owner, dm, w.now); err != nil {
			return err
		}
		w.record(path.Join(p.Path(), name), layer.Header{Typeflag: tar.TypeDir, Mode: dm, Uid: owner.UID, Gid: owner.GID, ModTime: w.now}, nil)
		w.createdAny = true
		return nil
	}})
	if err != nil {
		return nil, err
	}
	// The real chain, recorded with its own metadata where not created.
	cur := ""
	for _, e := range strings.Split(d.Path(), "/") {
		if e == "" {
			continue
		}
		cur = path.Join(cur, e)
		if _, ok := w.index[cur]; ok {
			continue
		}
		fi, err := w.root.Lstat(cur)
		if err != nil {
			d.Close()
			return nil, err
		}
		ids := ownerOf(fi)
		w.record(cur, layer.Header{Typeflag: tar.TypeDir, Mode: tarMode(fi.Mode()), Uid: ids.UID, Gid: ids.GID, ModTime: fi.ModTime()}, nil)
	}
	w.cache(d)
	if clean != d.Path() {
		// Reached through a symlink: keep it under the asked path too.
		if d2, err := w.root.OpenDir(d.Path()); err == nil {
			w.dirs[clean] = d2
		}
	}
	return d, nil
}

// setMeta applies owner, mode and mtime to name in parent.
func (w *writer) setMeta(parent *fsroot.Dir, name string, typ byte, owner rootfs.IDs, mode int64, mtime time.Time) error {
	if err := parent.Lchown(name, owner.UID, owner.GID); err != nil && (w.canChown || fsroot.IsProtected(err)) {
		return err
	}
	if typ == tar.TypeSymlink {
		parent.Chtimes(name, mtime, mtime)
		return nil
	}
	if err := parent.Chmod(name, rootfs.ModeFromTar(mode)); err != nil {
		return err
	}
	return parent.Chtimes(name, mtime, mtime)
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
		m.mode = tarMode(w.o.chmod.apply(fi.Mode()))
	}
	return m
}

// target resolves the image path dest for writing: its parent is created
// and resolved inside the root, the last element is not followed. It
// returns the parent, the name in it and the real image path.
func (w *writer) target(dest string) (*fsroot.Dir, string, string, error) {
	clean := fsroot.Clean(dest)
	if clean == "" {
		return nil, "", "", errors.New("cannot replace the root directory")
	}
	dir, base := path.Split(clean)
	parent, err := w.mkdirAll(dir)
	if err != nil {
		return nil, "", "", err
	}
	return parent, base, path.Join(parent.Path(), base), nil
}

// clear removes what stands at name in parent unless it is a directory
// and keepDir.
func (w *writer) clear(parent *fsroot.Dir, name string, keepDir bool) (existedDir bool, err error) {
	fi, err := parent.Lstat(name)
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
		return true, fmt.Errorf("cannot replace directory /%s with a file", path.Join(parent.Path(), name))
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		// Cached directories may have been reached through it.
		defer w.dropCacheExcept(parent)
	}
	return false, parent.Remove(name)
}

// dropCacheExcept forgets every cached directory but keep.
func (w *writer) dropCacheExcept(keep *fsroot.Dir) {
	for k, d := range w.dirs {
		if d != keep {
			d.Close()
			delete(w.dirs, k)
		}
	}
}

// dir writes a directory at dest with metadata m.
func (w *writer) dir(dest string, m meta) error {
	parent, name, img, err := w.target(dest)
	if err != nil {
		return err
	}
	existed, err := w.clear(parent, name, true)
	if err != nil {
		return err
	}
	if !existed {
		if err := parent.Mkdir(name, 0o755); err != nil {
			return err
		}
	}
	if err := w.setMeta(parent, name, tar.TypeDir, m.owner, m.mode, m.mtime); err != nil {
		return err
	}
	w.record(img, layer.Header{Typeflag: tar.TypeDir, Mode: m.mode, Uid: m.owner.UID, Gid: m.owner.GID, ModTime: m.mtime}, nil)
	if d, err := parent.OpenDirAt(name); err == nil {
		w.cache(d)
	}
	return nil
}

// opener reopens a file the writer wrote, inside the root, for the layer.
func (w *writer) opener(img string) func() (*os.File, error) {
	if w.reader == nil {
		w.reader = w.root.EntryOpener()
	}
	return w.openerOf(w.reader, img)
}

func (w *writer) openerOf(reader *fsroot.EntryOpener, p string) func() (*os.File, error) {
	return func() (*os.File, error) {
		f, err := reader.Open(p)
		if w.left.Add(-1) == 0 {
			w.release()
		}
		return f, err
	}
}

// streamFile records a regular file at dest whose content the layer reads
// from the source path src of w.o.stream; the root gets no file (it gets
// the layer's when it is brought up to date).
func (w *writer) streamFile(dest, src string, m meta, linked bool) error {
	parent, name, img, err := w.target(dest)
	if err != nil {
		return err
	}
	if fi, err := parent.Lstat(name); err == nil && fi.IsDir() {
		return fmt.Errorf("cannot replace directory /%s with a file", img)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if w.sourceReader == nil {
		w.sourceReader = w.o.stream.EntryOpener()
	}
	w.streamedAny = true
	if linked {
		if w.streamedLinks == nil {
			w.streamedLinks = map[string]bool{}
		}
		w.streamedLinks[img] = true
	}
	w.record(img, layer.Header{Typeflag: tar.TypeReg, Mode: m.mode, Uid: m.owner.UID, Gid: m.owner.GID, ModTime: m.mtime}, w.openerOf(w.sourceReader, src))
	return nil
}

// file writes r's content as a regular file at dest.
func (w *writer) file(dest string, r io.Reader, m meta) error {
	parent, name, img, err := w.target(dest)
	if err != nil {
		return err
	}
	if _, err := w.clear(parent, name, false); err != nil {
		return err
	}
	delete(w.streamedLinks, img)
	if err := parent.WriteFile(name, r, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", dest, err)
	}
	if err := w.setMeta(parent, name, tar.TypeReg, m.owner, m.mode, m.mtime); err != nil {
		return err
	}
	w.record(img, layer.Header{Typeflag: tar.TypeReg, Mode: m.mode, Uid: m.owner.UID, Gid: m.owner.GID, ModTime: m.mtime}, w.opener(img))
	return nil
}

// symlink writes a symbolic link at dest.
func (w *writer) symlink(dest, linkTarget string, m meta) error {
	parent, name, img, err := w.target(dest)
	if err != nil {
		return err
	}
	if _, err := w.clear(parent, name, false); err != nil {
		return err
	}
	if err := parent.Symlink(linkTarget, name); err != nil {
		return err
	}
	if err := w.setMeta(parent, name, tar.TypeSymlink, m.owner, 0o777, m.mtime); err != nil {
		return err
	}
	w.record(img, layer.Header{Typeflag: tar.TypeSymlink, Linkname: linkTarget, Mode: 0o777, Uid: m.owner.UID, Gid: m.owner.GID, ModTime: m.mtime}, nil)
	return nil
}

// hardlink makes dest a hard link to the image path already written at
// targetImg (a real path this writer wrote). The link's header carries the
// file's own metadata m, as BuildKit and kaniko write it: appliers such as
// containerd's chown and chmod every entry, link entries included.
func (w *writer) hardlink(dest, targetImg string, m meta) error {
	parent, name, img, err := w.target(dest)
	if err != nil {
		return err
	}
	if w.streamedLinks[targetImg] {
		// The file is not in the root: the link is the layer's only.
		if fi, err := parent.Lstat(name); err == nil && fi.IsDir() {
			return fmt.Errorf("cannot replace directory /%s with a file", img)
		}
	} else if err := w.linkInRoot(parent, name, targetImg); err != nil {
		return err
	}
	if i, ok := w.index[targetImg]; ok {
		// The file as this writer wrote it.
		t := w.list.At(i).Header
		m = meta{mode: t.Mode, owner: rootfs.IDs{UID: t.Uid, GID: t.Gid}, mtime: t.ModTime}
	}
	w.record(img, layer.Header{Typeflag: tar.TypeLink, Linkname: targetImg, Mode: m.mode, Uid: m.owner.UID, Gid: m.owner.GID, ModTime: m.mtime}, nil)
	return nil
}

// linkInRoot makes name in parent a hard link to the root's targetImg.
func (w *writer) linkInRoot(parent *fsroot.Dir, name, targetImg string) error {
	if _, err := w.clear(parent, name, false); err != nil {
		return err
	}
	td, tname, err := w.root.Parent(targetImg)
	if err != nil {
		return err
	}
	defer td.Close()
	return parent.Link(td, tname, name)
}

// copyFrom copies name in the source directory src (already lstat'ed as
// fi) to the image path dest: directories as directories, symlinks as
// links, regular files with their content, hard-linked files as hard
// links to the first copy. Fifos, devices and sockets are not copied (and
// never opened).
func (w *writer) copyFrom(src *fsroot.Dir, name string, fi fs.FileInfo, dest string) error {
	m := w.metaFor(fi)
	switch {
	case fi.IsDir():
		return w.dir(dest, m)
	case fi.Mode()&fs.ModeSymlink != 0:
		t, err := src.Readlink(name)
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
				return w.hardlink(dest, first, m)
			}
		}
		if w.o.stream != nil {
			if err := w.streamFile(dest, path.Join(src.Path(), name), m, ok && st.Nlink > 1); err != nil {
				return err
			}
		} else {
			f, err := src.Open(name)
			if err != nil {
				return err
			}
			err = w.file(dest, f, m)
			f.Close()
			if err != nil {
				return err
			}
		}
		if ok && st.Nlink > 1 {
			_, _, img, err := w.target(dest)
			if err != nil {
				return err
			}
			w.links[key] = img
		}
		return nil
	}
	return nil
}
