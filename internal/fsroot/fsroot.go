// Package fsroot does file system work inside a directory tree that
// untrusted input shaped — an image's root, a build context, an unpacked
// archive — without ever leaving it. Every path is resolved inside the
// tree at the moment of use, into a handle (openat2 with RESOLVE_IN_ROOT;
// on kernels without it github.com/cyphar/filepath-securejoin's safe
// O_PATH walk), and every change is made relative to
// a directory handle with the *at system calls, never through a host path
// string built earlier.
//
// A Root may protect paths (an in-place build's ignore list): a change
// whose resolved location is protected fails with a *ProtectedError,
// whatever symlinks led there.
package fsroot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/cyphar/filepath-securejoin/pathrs-lite/procfs"
	"golang.org/x/sys/unix"
)

// Protector says which image paths (clean, without a leading slash) a
// Root must never change.
type Protector interface {
	// Ignored reports whether p or one of its parents is protected.
	Ignored(p string) bool
	// HoldsIgnored reports whether a protected path lies strictly below p.
	HoldsIgnored(p string) bool
}

// ErrNotRegular is the error (wrapped) of an open for reading refused
// because the path names a directory, a symlink, a fifo, a device or a
// socket.
var ErrNotRegular = errors.New("not a regular file")

// ProtectedError is a change refused because its resolved location is
// protected.
type ProtectedError struct {
	// Path is the resolved image path, with a leading slash.
	Path string
}

func (e *ProtectedError) Error() string {
	return fmt.Sprintf("%s is protected: kiln never changes it", e.Path)
}

// IsProtected reports whether err is (or wraps) a *ProtectedError.
func IsProtected(err error) bool {
	var pe *ProtectedError
	return errors.As(err, &pe)
}

// Root is a directory tree opened for confined work.
type Root struct {
	path string // as given, for messages
	real string // the directory's real path, as /proc/self/fd shows it
	// origin and sub: the directory given to Open and this root's real
	// image path inside it ("" for a root Open made).
	origin, sub string
	dir         *Dir
	protect     Protector
}

// Option configures Open.
type Option func(*Root)

// WithProtector makes the root refuse changes to the paths p protects.
func WithProtector(p Protector) Option { return func(r *Root) { r.protect = p } }

// Open opens the directory dir as a root.
func Open(dir string, opts ...Option) (*Root, error) {
	f, err := os.OpenFile(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening root %s: %w", dir, err)
	}
	real, err := procfs.ProcSelfFdReadlink(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening root %s: %w", dir, err)
	}
	r := &Root{path: dir, real: real, origin: dir}
	for _, o := range opts {
		o(r)
	}
	r.dir = &Dir{root: r, f: f}
	return r, nil
}

// Close releases the root's handle. Dirs obtained from it stay usable
// until they are closed themselves.
func (r *Root) Close() error {
	if r == nil || r.dir == nil {
		return nil
	}
	return r.dir.Close()
}

// Path is the root's host path, as given to Open (for a root OpenRoot
// made, its parent's joined with where it resolved to). It is for
// messages and for matching paths spelled by an operator: work in the
// root goes through its handle.
func (r *Root) Path() string { return r.path }

// Origin is the directory given to Open, and this root's real image path
// inside it ("" for a root Open made): what a process that cannot share
// the handle (a sandbox's mount setup) resolves again, inside origin, at
// the moment of use.
func (r *Root) Origin() (dir, sub string) { return r.origin, r.sub }

// OpenRoot resolves the image path p inside the root as OpenDir does and
// returns a root at the directory it names. The new root holds its own
// handle: later lookups in it never resolve p again, so p's parents
// swapped for symlinks meanwhile lead nowhere. It shares nothing with r,
// which may be closed first; "" gives a second handle on r itself. A root
// that protects paths has none to give (they are its own image paths).
func (r *Root) OpenRoot(p string) (*Root, error) {
	if r.protect != nil {
		return nil, fmt.Errorf("opening root %s inside %s: it protects paths", "/"+Clean(p), r.path)
	}
	d, err := r.OpenDir(p)
	if err != nil {
		return nil, err
	}
	// OpenDir read the handle's real path: its image path inside r.
	nr := &Root{path: filepath.Join(r.path, filepath.FromSlash(d.img)), real: path.Join(r.real, d.img),
		origin: r.origin, sub: path.Join(r.sub, d.img)}
	d.root, d.img = nr, "" // the new root's own root
	nr.dir = d
	return nr, nil
}

// Dir is the root directory itself. Do not close it: Root.Close does.
func (r *Root) Dir() *Dir { return r.dir }

// Clean turns an image path (absolute or not, any number of slashes and
// dots) into the form Root uses: clean, without a leading slash, "" for
// the root. ".." never climbs above the root.
func Clean(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

// Protected reports whether the image path p is protected.
func (r *Root) Protected(p string) bool {
	return r.protect != nil && r.protect.Ignored(Clean(p))
}

func (r *Root) check(img string) error {
	if r.protect != nil && r.protect.Ignored(img) {
		return &ProtectedError{Path: "/" + img}
	}
	return nil
}

// imgOf turns a handle's real host path into its image path.
func (r *Root) imgOf(f *os.File) (string, error) {
	real, err := procfs.ProcSelfFdReadlink(f)
	if err != nil {
		return "", err
	}
	if real == r.real {
		return "", nil
	}
	prefix := strings.TrimSuffix(r.real, "/") + "/"
	rel, ok := strings.CutPrefix(real, prefix)
	if !ok {
		return "", fmt.Errorf("%s resolved to %s, outside the root %s", f.Name(), real, r.path)
	}
	return rel, nil
}

// OpenDir resolves the image path p inside the root, following every
// symlink as the image would (absolute targets start at the root, ".."
// stops there), and returns a handle on the directory it names.
func (r *Root) OpenDir(p string) (*Dir, error) {
	img := Clean(p)
	if img == "" {
		return r.dir.dup()
	}
	f, err := openInRoot(r.dir.f, img)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: "/" + img, Err: unwrapPath(err)}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, &fs.PathError{Op: "stat", Path: "/" + img, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		f.Close()
		return nil, &fs.PathError{Op: "open", Path: "/" + img, Err: unix.ENOTDIR}
	}
	real, err := r.imgOf(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Dir{root: r, f: f, img: real}, nil
}

// OpenHandle resolves the image path p inside the root, following every
// symlink, and returns an O_PATH handle on what it names, whatever its
// type (nothing is opened for reading).
func (r *Root) OpenHandle(p string) (*os.File, error) {
	img := Clean(p)
	if img == "" {
		d, err := r.dir.dup()
		if err != nil {
			return nil, err
		}
		return d.f, nil
	}
	f, err := openInRoot(r.dir.f, img)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: "/" + img, Err: unwrapPath(err)}
	}
	return f, nil
}

// ImagePath is the real image path of a handle obtained from the root.
func (r *Root) ImagePath(f *os.File) (string, error) { return r.imgOf(f) }

// Parent resolves the directory holding the image path p (following
// symlinks in it) and returns it with p's last element, which is not
// followed. p must not be the root.
func (r *Root) Parent(p string) (*Dir, string, error) {
	img := Clean(p)
	if img == "" {
		return nil, "", &fs.PathError{Op: "resolve", Path: "/", Err: errors.New("the root has no parent")}
	}
	dir, base := path.Split(img)
	d, err := r.OpenDir(dir)
	if err != nil {
		return nil, "", err
	}
	return d, base, nil
}

// Lstat stats the image path p without following its last element.
func (r *Root) Lstat(p string) (fs.FileInfo, error) {
	if Clean(p) == "" {
		return r.dir.Stat()
	}
	d, name, err := r.Parent(p)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Lstat(name)
}

// Stat stats the image path p, following symlinks inside the root.
func (r *Root) Stat(p string) (fs.FileInfo, error) {
	img := Clean(p)
	if img == "" {
		return r.dir.Stat()
	}
	f, err := openInRoot(r.dir.f, img)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: "/" + img, Err: unwrapPath(err)}
	}
	defer f.Close()
	return fstat(f, path.Base(img))
}

// Real resolves the image path p, following every symlink, and returns
// where it leads: the real image path of what it names or, when only its
// last element is missing, the parent's real path joined with that
// element. A dangling symlink, or a missing parent, is fs.ErrNotExist.
func (r *Root) Real(p string) (string, error) {
	img := Clean(p)
	if img == "" {
		return "", nil
	}
	f, err := openInRoot(r.dir.f, img)
	if err == nil {
		defer f.Close()
		return r.imgOf(f)
	}
	if !errors.Is(err, unix.ENOENT) {
		return "", &fs.PathError{Op: "resolve", Path: "/" + img, Err: unwrapPath(err)}
	}
	d, name, err := r.Parent(img)
	if err != nil {
		return "", err
	}
	defer d.Close()
	if d.Exists(name) {
		return "", &fs.PathError{Op: "resolve", Path: "/" + img, Err: fmt.Errorf("dangling symlink: %w", fs.ErrNotExist)}
	}
	return path.Join(d.img, name), nil
}

// OpenFile opens the regular file at image path p for reading, following
// symlinks inside the root. Anything but a regular file (a fifo, a
// device, a socket) is refused without being opened for reading.
func (r *Root) OpenFile(p string) (*os.File, error) {
	img := Clean(p)
	if img == "" {
		return nil, &fs.PathError{Op: "open", Path: "/", Err: fmt.Errorf("%w (a directory)", ErrNotRegular)}
	}
	h, err := openInRoot(r.dir.f, img)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: "/" + img, Err: unwrapPath(err)}
	}
	defer h.Close()
	return reopenRegular(h, "/"+img)
}

// OpenEntry opens the regular file at image path p for reading, as
// Parent(p) then Dir.Open would: the directory holding it resolved inside
// the root (symlinks followed as the image would), p's last element not
// followed; anything but a regular file is refused without being opened
// for reading.
func (r *Root) OpenEntry(p string) (*os.File, error) {
	img := Clean(p)
	if img == "" {
		return nil, &fs.PathError{Op: "open", Path: "/", Err: errors.New("the root is a directory")}
	}
	dir, base := path.Split(img)
	dfd := r.dir.fd()
	if dir != "" {
		d, err := openInRoot(r.dir.f, dir)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: "/" + img, Err: unwrapPath(err)}
		}
		defer d.Close()
		dfd = int(d.Fd())
	}
	return openRegularAt(dfd, base, "/"+img)
}

// EntryOpener opens regular files for reading as OpenEntry does, keeping
// the handle on the last directory resolved, so that a run of files in
// one directory (a layer's entries, in order) resolves it once. The
// handle is a directory's, taken inside the root: what it names cannot
// move outside it. Close releases it.
type EntryOpener struct {
	root *Root
	mu   sync.Mutex
	dir  string
	f    *os.File
}

// EntryOpener returns an opener over the root.
func (r *Root) EntryOpener() *EntryOpener { return &EntryOpener{root: r} }

// Open is OpenEntry.
func (o *EntryOpener) Open(p string) (*os.File, error) {
	img := Clean(p)
	if img == "" {
		return nil, &fs.PathError{Op: "open", Path: "/", Err: errors.New("the root is a directory")}
	}
	dir, base := path.Split(img)
	if dir == "" {
		return openRegularAt(o.root.dir.fd(), base, "/"+img)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil || o.dir != dir {
		d, err := openInRoot(o.root.dir.f, dir)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: "/" + img, Err: unwrapPath(err)}
		}
		if o.f != nil {
			o.f.Close()
		}
		o.dir, o.f = dir, d
	}
	return openRegularAt(int(o.f.Fd()), base, "/"+img)
}

// Close releases the directory handle kept.
func (o *EntryOpener) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil {
		return nil
	}
	err := o.f.Close()
	o.f = nil
	return err
}

// openRegularAt opens name in the directory dirfd for reading without
// following it. An O_PATH look comes first, so anything but a regular file
// (a fifo, a device, a socket) is refused without being opened for
// reading; the open itself must then reach that same file. No procfs
// reopen: a file per COPY entry costs two openat calls.
func openRegularAt(dirfd int, name, show string) (*os.File, error) {
	pfd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: show, Err: err}
	}
	var st unix.Stat_t
	err = unix.Fstat(pfd, &st)
	unix.Close(pfd)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: show, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, &fs.PathError{Op: "open", Path: show, Err: fmt.Errorf("%w (%s)", ErrNotRegular, typeName(st.Mode))}
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: show, Err: err}
	}
	var st2 unix.Stat_t
	if err := unix.Fstat(fd, &st2); err != nil || st2.Dev != st.Dev || st2.Ino != st.Ino || st2.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: show, Err: errors.New("replaced while being opened")}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: show, Err: err}
	}
	return os.NewFile(uintptr(fd), show), nil
}

// scopedRetries bounds the retries of a lookup that the kernel refused
// because a rename or mount raced it (EAGAIN) or its result left the root
// (EXDEV), as securejoin bounds them: under attack the error is returned.
const scopedRetries = 128

// openInRoot resolves img (clean, not "") inside the tree dir holds,
// following every symlink as the image would (absolute targets start at the
// root, ".." stops there), and returns an O_PATH handle named by the image
// path. The kernel does the confinement (openat2 with RESOLVE_IN_ROOT and
// RESOLVE_NO_MAGICLINKS); where openat2 is missing or refused it is
// securejoin's O_PATH walk. This is securejoin's own openat2 path without
// its procfs readlink, which only names the handle and cost more than the
// lookup itself (a file per directory in a COPY).
func openInRoot(dir *os.File, img string) (*os.File, error) {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	for tries := 0; ; tries++ {
		fd, err := unix.Openat2(int(dir.Fd()), img, &how)
		runtime.KeepAlive(dir)
		switch {
		case err == nil:
			return os.NewFile(uintptr(fd), "/"+img), nil
		case err == unix.EINTR || ((err == unix.EAGAIN || err == unix.EXDEV) && tries < scopedRetries):
			continue
		case err == unix.ENOSYS || err == unix.EPERM:
			// No openat2, or a seccomp profile older than it that refuses
			// it (Docker's and containerd's once answered EPERM): a lookup
			// never fails with EPERM otherwise, as O_PATH checks no
			// permission of what it names.
			return pathrs.OpenatInRoot(dir, img)
		}
		return nil, &fs.PathError{Op: "openat2", Path: "/" + img, Err: err}
	}
}

// reopenRegular upgrades an O_PATH handle on a regular file to one open
// for reading.
func reopenRegular(h *os.File, name string) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(h.Fd()), &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fmt.Errorf("%w (%s)", ErrNotRegular, typeName(st.Mode))}
	}
	f, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: unwrapPath(err)}
	}
	return f, nil
}

// MkdirOptions say how MkdirAll creates the directories that are missing.
type MkdirOptions struct {
	// Mode is the permission of created directories (0755 when zero).
	Mode fs.FileMode
	// Before, when set, is called before each directory is created, with
	// its parent and name.
	Before func(parent *Dir, name string) error
	// Created, when set, is called for each directory created, with its
	// parent and name, before anything is created in it: the place to set
	// its owner and record it.
	Created func(parent *Dir, name string) error
}

// MkdirAll makes sure the image path p is a directory, creating what is
// missing (following symlinks inside the root as the image would), and
// returns a handle on it. A symlink whose target is missing has its
// target created, as BuildKit's copy does; a non-directory in the way is
// refused.
func (r *Root) MkdirAll(p string, o MkdirOptions) (*Dir, error) {
	if o.Mode == 0 {
		o.Mode = 0o755
	}
	links := 0
	return r.mkdirAll(Clean(p), o, &links)
}

// maxLinks bounds the symlinks one MkdirAll follows to missing targets,
// as the kernel's ELOOP does.
const maxLinks = 40

func (r *Root) mkdirAll(img string, o MkdirOptions, links *int) (*Dir, error) {
	cur, err := r.dir.dup()
	if err != nil {
		return nil, err
	}
	for _, name := range strings.Split(img, "/") {
		if name == "" {
			continue
		}
		next, err := cur.mkdirStep(name, o, links)
		cur.Close()
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

// mkdirStep returns the directory name in d, creating it if missing and
// following it inside the root if it is a symlink.
func (d *Dir) mkdirStep(name string, o MkdirOptions, links *int) (*Dir, error) {
	st, err := d.lstat(name)
	switch {
	case errors.Is(err, unix.ENOENT):
		if o.Before != nil {
			if err := o.Before(d, name); err != nil {
				return nil, err
			}
		}
		if err := d.Mkdir(name, o.Mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		} else if err == nil && o.Created != nil {
			if err := o.Created(d, name); err != nil {
				return nil, err
			}
		}
		return d.OpenDirAt(name)
	case err != nil:
		return nil, &fs.PathError{Op: "lstat", Path: d.show(name), Err: err}
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return d.OpenDirAt(name)
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		next, err := d.root.OpenDir(path.Join(d.img, name))
		if !errors.Is(err, fs.ErrNotExist) {
			return next, err
		}
		// A dangling symlink: create what it points to, inside the root.
		if *links++; *links > maxLinks {
			return nil, &fs.PathError{Op: "mkdir", Path: d.show(name), Err: unix.ELOOP}
		}
		target, err := d.Readlink(name)
		if err != nil {
			return nil, err
		}
		if !path.IsAbs(target) {
			target = path.Join("/"+d.img, target)
		}
		return d.root.mkdirAll(Clean(target), o, links)
	default:
		return nil, &fs.PathError{Op: "mkdir", Path: d.show(name), Err: unix.ENOTDIR}
	}
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "a fifo"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFLNK:
		return "a symlink"
	case unix.S_IFDIR:
		return "a directory"
	}
	return "a file"
}
