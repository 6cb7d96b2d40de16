package fsroot

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Dir is a handle on a directory inside a Root. Its operations take a
// single name (no slashes, not "." or ".."), which is never followed when
// it is a symlink, and act on the directory the handle holds, wherever it
// has been moved since.
type Dir struct {
	root *Root
	f    *os.File // O_PATH
	img  string   // real image path when opened, "" for the root
}

// Close releases the handle.
func (d *Dir) Close() error {
	if d == nil || d.f == nil {
		return nil
	}
	err := d.f.Close()
	d.f = nil
	return err
}

// Path is the directory's real image path without a leading slash, as it
// was when the handle was opened ("" for the root).
func (d *Dir) Path() string { return d.img }

// Fd is the handle's file descriptor (an O_PATH descriptor).
func (d *Dir) Fd() int { return int(d.f.Fd()) }

func (d *Dir) fd() int { return int(d.f.Fd()) }

func (d *Dir) dup() (*Dir, error) {
	fd, err := unix.FcntlInt(d.f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &Dir{root: d.root, f: os.NewFile(uintptr(fd), d.f.Name()), img: d.img}, nil
}

// show is name's image path for messages.
func (d *Dir) show(name string) string { return "/" + path.Join(d.img, name) }

// checkName refuses names that are not a single element.
func (d *Dir) checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return &fs.PathError{Op: "resolve", Path: d.show(name), Err: fmt.Errorf("%q is not a single path element", name)}
	}
	return nil
}

// writable refuses a change to name when its location is protected.
func (d *Dir) writable(name string) error {
	if err := d.checkName(name); err != nil {
		return err
	}
	return d.root.check(path.Join(d.img, name))
}

func (d *Dir) lstat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := d.checkName(name); err != nil {
		return st, err
	}
	err := unix.Fstatat(d.fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// Lstat stats name without following it.
func (d *Dir) Lstat(name string) (fs.FileInfo, error) {
	st, err := d.lstat(name)
	if err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: d.show(name), Err: err}
	}
	return newInfo(name, &st), nil
}

// Stat stats the directory itself.
func (d *Dir) Stat() (fs.FileInfo, error) { return fstat(d.f, path.Base("/"+d.img)) }

func fstat(f *os.File, name string) (fs.FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	return newInfo(name, &st), nil
}

// OpenDirAt opens the directory name (not following a symlink).
func (d *Dir) OpenDirAt(name string) (*Dir, error) {
	if err := d.checkName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(d.fd(), name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			err = unix.ENOTDIR
		}
		return nil, &fs.PathError{Op: "open", Path: d.show(name), Err: err}
	}
	return &Dir{root: d.root, f: os.NewFile(uintptr(fd), d.show(name)), img: path.Join(d.img, name)}, nil
}

// Open opens the regular file name for reading (not following a symlink;
// refusing fifos, devices and sockets without opening them for reading).
func (d *Dir) Open(name string) (*os.File, error) {
	if err := d.checkName(name); err != nil {
		return nil, err
	}
	return openRegularAt(d.fd(), name, d.show(name))
}

// ReadDir lists the directory's entry names, sorted.
func (d *Dir) ReadDir() ([]string, error) {
	fd, err := unix.Openat(d.fd(), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: "/" + d.img, Err: err}
	}
	f := os.NewFile(uintptr(fd), "/"+d.img)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: "/" + d.img, Err: err}
	}
	slices.Sort(names)
	return names, nil
}

// Readlink reads the symlink name.
func (d *Dir) Readlink(name string) (string, error) {
	if err := d.checkName(name); err != nil {
		return "", err
	}
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(d.fd(), name, buf)
		if err != nil {
			return "", &fs.PathError{Op: "readlink", Path: d.show(name), Err: err}
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

// Mkdir creates the directory name.
func (d *Dir) Mkdir(name string, perm fs.FileMode) error {
	if err := d.writable(name); err != nil {
		return err
	}
	if err := unix.Mkdirat(d.fd(), name, uint32(perm.Perm())); err != nil {
		return &fs.PathError{Op: "mkdir", Path: d.show(name), Err: err}
	}
	return nil
}

// Create creates the regular file name, which must not exist, for
// writing.
func (d *Dir) Create(name string, perm fs.FileMode) (*os.File, error) {
	if err := d.writable(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(d.fd(), name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return nil, &fs.PathError{Op: "create", Path: d.show(name), Err: err}
	}
	return os.NewFile(uintptr(fd), d.show(name)), nil
}

// WriteFile creates the regular file name (which must not exist) holding
// r's content.
func (d *Dir) WriteFile(name string, r io.Reader, perm fs.FileMode) error {
	f, err := d.Create(name, perm)
	if err != nil {
		return err
	}
	if src, ok := r.(*os.File); ok {
		_, err = io.Copy(f, src) // copy_file_range where the kernel can
	} else {
		// A stream (a tar entry): through a pooled buffer, not the 32 KiB
		// one os.File.ReadFrom's fallback allocates for every file.
		bp := copyBuffers.Get().(*[]byte)
		_, err = io.CopyBuffer(writerOnly{f}, r, *bp)
		copyBuffers.Put(bp)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", d.show(name), err)
	}
	return nil
}

// Symlink creates the symlink name pointing to target.
func (d *Dir) Symlink(target, name string) error {
	if err := d.writable(name); err != nil {
		return err
	}
	if err := unix.Symlinkat(target, d.fd(), name); err != nil {
		return &fs.PathError{Op: "symlink", Path: d.show(name), Err: err}
	}
	return nil
}

// Link creates name as a hard link to oldName in the directory old (not
// following a symlink). A protected file is never linked.
func (d *Dir) Link(old *Dir, oldName, name string) error {
	if err := d.writable(name); err != nil {
		return err
	}
	if err := old.writable(oldName); err != nil {
		return err
	}
	if err := unix.Linkat(old.fd(), oldName, d.fd(), name, 0); err != nil {
		return &fs.PathError{Op: "link", Path: d.show(name), Err: fmt.Errorf("to %s: %w", old.show(oldName), err)}
	}
	return nil
}

// Remove removes the file, symlink or empty directory name.
func (d *Dir) Remove(name string) error {
	if err := d.writable(name); err != nil {
		return err
	}
	err := unix.Unlinkat(d.fd(), name, 0)
	if errors.Is(err, unix.EISDIR) {
		err = unix.Unlinkat(d.fd(), name, unix.AT_REMOVEDIR)
	}
	if err != nil {
		return &fs.PathError{Op: "remove", Path: d.show(name), Err: err}
	}
	return nil
}

// RemoveAll removes name and everything below it, never following a
// symlink. Protected paths below it, and the directories leading to
// them, are kept. A missing name is not an error.
func (d *Dir) RemoveAll(name string) error {
	if err := d.checkName(name); err != nil {
		return err
	}
	img := path.Join(d.img, name)
	if err := d.root.check(img); err != nil {
		return err
	}
	st, err := d.lstat(name)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return &fs.PathError{Op: "lstat", Path: d.show(name), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return d.Remove(name)
	}
	if err := unix.Unlinkat(d.fd(), name, unix.AT_REMOVEDIR); err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	sub, err := d.OpenDirAt(name)
	if err != nil {
		return err
	}
	err = sub.Clear()
	sub.Close()
	if err != nil {
		return err
	}
	if d.root.protect != nil && d.root.protect.HoldsIgnored(img) {
		return nil
	}
	return d.Remove(name)
}

// Clear removes everything in the directory except protected paths and
// the directories leading to them.
func (d *Dir) Clear() error {
	names, err := d.ReadDir()
	if err != nil {
		return err
	}
	for _, n := range names {
		if d.root.Protected(path.Join(d.img, n)) {
			continue
		}
		if err := d.RemoveAll(n); err != nil {
			return err
		}
	}
	return nil
}

// Lchown sets the owner of name (of the link itself for a symlink).
func (d *Dir) Lchown(name string, uid, gid int) error {
	if err := d.writable(name); err != nil {
		return err
	}
	if err := unix.Fchownat(d.fd(), name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "chown", Path: d.show(name), Err: err}
	}
	return nil
}

// Chmod sets the mode of name (permission, setuid, setgid and sticky
// bits). Symlinks have no mode of their own: they are left alone.
func (d *Dir) Chmod(name string, mode fs.FileMode) error {
	if err := d.writable(name); err != nil {
		return err
	}
	m := unixMode(mode)
	err := unix.Fchmodat(d.fd(), name, m, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		// No fchmodat2 (Linux < 6.6): chmod through an O_PATH handle.
		err = d.chmodByHandle(name, m)
	}
	if err != nil {
		return &fs.PathError{Op: "chmod", Path: d.show(name), Err: err}
	}
	return nil
}

func (d *Dir) chmodByHandle(name string, m uint32) error {
	fd, err := unix.Openat(d.fd(), name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return nil
	}
	return unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), m)
}

// Chtimes sets the access and modification times of name (of the link
// itself for a symlink).
func (d *Dir) Chtimes(name string, atime, mtime time.Time) error {
	if err := d.writable(name); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(d.fd(), name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "chtimes", Path: d.show(name), Err: err}
	}
	return nil
}

// SetTimes sets the directory's own access and modification times.
func (d *Dir) SetTimes(atime, mtime time.Time) error {
	if d.img != "" {
		if err := d.root.check(d.img); err != nil {
			return err
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(d.fd(), "", ts, unix.AT_EMPTY_PATH); err != nil {
		// utimensat with AT_EMPTY_PATH is recent; the handle's procfs link
		// names the same directory.
		if err2 := unix.UtimesNano(fmt.Sprintf("/proc/self/fd/%d", d.fd()), ts); err2 != nil {
			return &fs.PathError{Op: "chtimes", Path: "/" + d.img, Err: err}
		}
	}
	return nil
}

// Lsetxattr sets an extended attribute of name (of the link itself for a
// symlink).
func (d *Dir) Lsetxattr(name, attr string, value []byte) error {
	if err := d.writable(name); err != nil {
		return err
	}
	// /proc/self/fd/N is the directory the handle holds; name is looked up
	// in it and not followed.
	p := fmt.Sprintf("/proc/self/fd/%d/%s", d.fd(), name)
	if err := unix.Lsetxattr(p, attr, value, 0); err != nil {
		return &fs.PathError{Op: "setxattr", Path: d.show(name), Err: err}
	}
	return nil
}

// Exists reports whether name exists (as anything, a dangling symlink
// included).
func (d *Dir) Exists(name string) bool {
	_, err := d.lstat(name)
	return err == nil
}

func unixMode(mode fs.FileMode) uint32 {
	m := uint32(mode.Perm())
	if mode&fs.ModeSetuid != 0 {
		m |= unix.S_ISUID
	}
	if mode&fs.ModeSetgid != 0 {
		m |= unix.S_ISGID
	}
	if mode&fs.ModeSticky != 0 {
		m |= unix.S_ISVTX
	}
	return m
}

// info is an fs.FileInfo from a stat; Sys returns *syscall.Stat_t, as
// os.Lstat's does.
type info struct {
	name string
	st   syscall.Stat_t
}

func newInfo(name string, st *unix.Stat_t) *info {
	i := &info{name: name}
	i.st = syscall.Stat_t{
		Dev: st.Dev, Ino: st.Ino, Nlink: st.Nlink, Mode: st.Mode, Uid: st.Uid, Gid: st.Gid,
		Rdev: st.Rdev, Size: st.Size, Blksize: st.Blksize, Blocks: st.Blocks,
		Atim: syscall.Timespec{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec},
		Mtim: syscall.Timespec{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec},
		Ctim: syscall.Timespec{Sec: st.Ctim.Sec, Nsec: st.Ctim.Nsec},
	}
	return i
}

func (i *info) Name() string       { return i.name }
func (i *info) Size() int64        { return i.st.Size }
func (i *info) ModTime() time.Time { return time.Unix(int64(i.st.Mtim.Sec), int64(i.st.Mtim.Nsec)) }
func (i *info) IsDir() bool        { return i.Mode().IsDir() }
func (i *info) Sys() any           { return &i.st }
func (i *info) Mode() fs.FileMode {
	m := fs.FileMode(i.st.Mode & 0o777)
	switch i.st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	}
	if i.st.Mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if i.st.Mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if i.st.Mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// copyBuffers are WriteFile's copy buffers.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// writerOnly hides a file's ReadFrom, so io.CopyBuffer uses the buffer.
type writerOnly struct{ io.Writer }
