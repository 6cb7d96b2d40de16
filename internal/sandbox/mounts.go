package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/fsroot"
)

// secbitNoSetuidFixup keeps a thread's capabilities when its file system
// uid changes between zero and non-zero (capabilities(7)).
const secbitNoSetuidFixup = 1 << 2

// mountIndexKiln marks a mount kiln made from nothing (proc, tmpfs): mount
// points created inside one vanish with it.
const mountIndexKiln = -2

// setup is the sandbox init's mount work, done in its own mount namespace
// before it enters the root. Sources are opened before anything is
// mounted; every target is resolved inside the root, through the mounts
// made before it, at the moment it is mounted, and the mount is attached
// to that handle. Nothing is resolved in the host's view of the tree.
type setup struct {
	spec   *Spec
	userns int // the user namespace to id-map with, -1 for none
	root   *fsroot.Root
	// anchor, where "/" is not a mount point, is where the root is
	// attached instead of over its own directory (see privateAnchor).
	anchor string
	stubs  []Stub
	// mounted are the mounts made so far, by the real image path of
	// their target, for telling where a mount point is created.
	mounted []mounted
	// timed are the directories whose times a stub already recorded;
	// pendingTimes are the times noted for the next stub.
	timed        map[string]bool
	pendingTimes *[2]int64
}

type mounted struct {
	img   string
	index int // into spec.Mounts, or mountIndexKiln
}

// tree is a detached mount, ready to attach.
type tree struct {
	fd     int
	dir    bool
	mapped bool // id-mapped
}

func (t tree) close() {
	if t.fd >= 0 {
		unix.Close(t.fd)
	}
}

func (sb *setup) mountAll() error {
	s := sb.spec
	sb.timed = map[string]bool{}
	// 1. Every source, opened and cloned before anything is mounted.
	sources := make([]tree, len(s.Mounts))
	for i := range sources {
		sources[i].fd = -1
	}
	defer func() {
		for _, t := range sources {
			t.close()
		}
	}()
	for i, m := range s.Mounts {
		switch m.Type {
		case "bind":
			t, err := sb.openBind(m)
			if err != nil {
				return err
			}
			sources[i] = t
		case "tmpfs":
		default:
			return fmt.Errorf("unknown mount type %q", m.Type)
		}
	}
	devs := map[string]tree{}
	defer func() {
		for _, t := range devs {
			t.close()
		}
	}()
	for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		t, err := cloneTree(unix.AT_FDCWD, "/dev/"+d, 0, -1, 0)
		if err != nil {
			return err
		}
		devs[d] = t
	}
	files := map[string]tree{}
	defer func() {
		for _, t := range files {
			t.close()
		}
	}()
	for target, src := range map[string]string{"/etc/hosts": s.HostsFile, "/etc/resolv.conf": s.ResolvFile} {
		if src == "" {
			src = target
		}
		if _, err := os.Stat(src); err != nil {
			continue
		}
		t, err := cloneTree(unix.AT_FDCWD, src, 0, -1, unix.MOUNT_ATTR_RDONLY)
		if err != nil {
			return err
		}
		files[target] = t
	}

	// 2. The root: a mount of its own (id-mapped in a user namespace),
	// attached over its own directory, so that it can be pivoted into.
	// Without a user namespace, RUN's root could make device nodes in the
	// root and open them (the host's disks): nodev. In one, it cannot make
	// them at all.
	var rootAttrs uint64
	if sb.userns < 0 {
		rootAttrs = unix.MOUNT_ATTR_NODEV
	}
	rt, err := cloneTree(unix.AT_FDCWD, s.Root, 0, sb.userns, rootAttrs)
	if err != nil {
		return err
	}
	if sb.userns >= 0 && !rt.mapped {
		rt.close()
		return fmt.Errorf("id-mapping the root %s: the file system does not support it", s.Root)
	}
	at := s.Root
	if sb.anchor != "" {
		at = sb.anchor
	}
	err = unix.MoveMount(rt.fd, "", unix.AT_FDCWD, at, unix.MOVE_MOUNT_F_EMPTY_PATH)
	rt.close()
	if err != nil {
		return fmt.Errorf("mounting the root %s: %w", s.Root, err)
	}
	if sb.root, err = fsroot.Open(at); err != nil {
		return err
	}

	// 3. The mounts, in order, each target resolved as it is mounted.
	owner := map[string]string{}
	if s.IDMap != nil {
		id := fmt.Sprint(s.IDMap.HostID)
		owner = map[string]string{"uid": id, "gid": id}
	}
	if err := sb.mountFS("/proc", "proc", nil, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC, nil); err != nil {
		return err
	}
	devOpts := map[string]string{"mode": "755", "size": "65536k"}
	for k, v := range owner {
		devOpts[k] = v
	}
	if err := sb.mountFS("/dev", "tmpfs", devOpts, unix.MOUNT_ATTR_NOSUID, func(dev int) error {
		return populateDev(dev, devs, s.Scripts, owner)
	}); err != nil {
		return err
	}
	for _, target := range []string{"/etc/hosts", "/etc/resolv.conf"} {
		t, ok := files[target]
		if !ok {
			continue
		}
		if err := sb.attach(target, t, mountIndexKiln); err != nil {
			return err
		}
	}
	order := make([]int, len(s.Mounts))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return len(s.Mounts[order[a]].Target) < len(s.Mounts[order[b]].Target) })
	for _, i := range order {
		m := s.Mounts[i]
		switch m.Type {
		case "tmpfs":
			opts := map[string]string{"mode": "755"}
			for k, v := range owner {
				opts[k] = v
			}
			if m.Size > 0 {
				opts["size"] = fmt.Sprint(m.Size)
			}
			if err := sb.mountFS(m.Target, "tmpfs", opts, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV, nil); err != nil {
				return err
			}
		case "bind":
			if err := sb.attach(m.Target, sources[i], i); err != nil {
				return err
			}
		}
	}
	return nil
}

// openBind opens a bind mount's source (SubPath resolved inside Source)
// and clones it, id-mapped where the file system allows.
func (sb *setup) openBind(m Mount) (tree, error) {
	var h *os.File
	var err error
	if m.SubPath == "" {
		h, err = os.OpenFile(m.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
	} else {
		var r *fsroot.Root
		if r, err = fsroot.Open(m.Source); err == nil {
			h, err = r.OpenHandle(m.SubPath)
			r.Close()
		}
	}
	if err != nil {
		return tree{fd: -1}, fmt.Errorf("bind mount source for %s: %w", m.Target, err)
	}
	defer h.Close()
	// A source whose file system cannot be id-mapped is bound as it is:
	// its files then show as nobody's in the namespace.
	var attrs uint64 = unix.MOUNT_ATTR_NODEV
	if m.ReadOnly {
		attrs |= unix.MOUNT_ATTR_RDONLY
	}
	t, err := cloneTree(int(h.Fd()), "", unix.AT_EMPTY_PATH, sb.userns, attrs)
	if err != nil {
		return tree{fd: -1}, fmt.Errorf("bind mount source for %s: %w", m.Target, err)
	}
	return t, nil
}

// cloneTree makes a detached copy of the mount tree at (dfd, p), read-only
// if asked and id-mapped with userns (when >= 0) where the file system
// allows it.
//
// Every clone is private: a clone of a shared mount would otherwise be a
// peer of it, and what is mounted under it would propagate out of the
// sandbox (the case when "/" is not a mount point, and so could not be
// made private first).
func cloneTree(dfd int, p string, flags uint, userns int, set uint64) (tree, error) {
	fd, err := unix.OpenTree(dfd, p, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE|flags)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return tree{fd: -1}, errors.New("chroot isolation needs Linux 5.12 or later (open_tree, mount_setattr)")
		}
		return tree{fd: -1}, fmt.Errorf("cloning the mount of %s: %w", showFD(dfd, p), err)
	}
	t := tree{fd: fd}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err == nil {
		t.dir = st.Mode&unix.S_IFMT == unix.S_IFDIR
	}
	attr := unix.MountAttr{Attr_set: set, Propagation: unix.MS_PRIVATE}
	if userns >= 0 {
		idm := attr
		idm.Attr_set |= unix.MOUNT_ATTR_IDMAP
		idm.Userns_fd = uint64(userns)
		if unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &idm) == nil {
			t.mapped = true
			return t, nil
		}
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		t.close()
		return tree{fd: -1}, fmt.Errorf("setting the attributes of the mount of %s: %w", showFD(dfd, p), err)
	}
	return t, nil
}

func showFD(dfd int, p string) string {
	if p != "" {
		return p
	}
	if s, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", dfd)); err == nil {
		return s
	}
	return "a source"
}

// attach mounts the detached tree t at target, resolved inside the root.
func (sb *setup) attach(target string, t tree, index int) error {
	h, img, err := sb.ensureTarget(target, t.dir)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := unix.MoveMount(t.fd, "", int(h.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("mounting on %s: %w", target, err)
	}
	sb.mounted = append(sb.mounted, mounted{img: img, index: index})
	return nil
}

// mountFS mounts a new file system of type fstype at target, resolved
// inside the root; then, with the new mount's root as a handle, fill.
func (sb *setup) mountFS(target, fstype string, opts map[string]string, attrs int, fill func(fd int) error) error {
	mfd, err := newFS(fstype, opts, attrs)
	if err != nil {
		return fmt.Errorf("mounting %s on %s: %w", fstype, target, err)
	}
	defer unix.Close(mfd)
	if err := sb.attach(target, tree{fd: mfd, dir: true}, mountIndexKiln); err != nil {
		return err
	}
	if fill != nil {
		return fill(mfd)
	}
	return nil
}

// newFS creates a detached mount of a new file system.
func newFS(fstype string, opts map[string]string, attrs int) (int, error) {
	fsfd, err := unix.Fsopen(fstype, unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, err
	}
	defer unix.Close(fsfd)
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := unix.FsconfigSetString(fsfd, k, opts[k]); err != nil {
			return -1, fmt.Errorf("option %s=%s: %w", k, opts[k], err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return -1, err
	}
	return unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
}

// populateDev fills the sandbox's new /dev (the tmpfs whose root is dev):
// the host's harmless devices, shm, pts, the fd links and RUN's scripts.
func populateDev(dev int, devs map[string]tree, scripts []Script, owner map[string]string) error {
	for _, name := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		fd, err := unix.Openat(dev, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o666)
		if err != nil {
			return fmt.Errorf("creating /dev/%s: %w", name, err)
		}
		unix.Close(fd)
		if err := unix.MoveMount(devs[name].fd, "", dev, name, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("mounting /dev/%s: %w", name, err)
		}
	}
	shmOpts := map[string]string{"mode": "1777", "size": "65536k"}
	for k, v := range owner {
		shmOpts[k] = v
	}
	if err := unix.Mkdirat(dev, "shm", 0o1777); err == nil {
		if fd, err := newFS("tmpfs", shmOpts, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV); err == nil {
			unix.MoveMount(fd, "", dev, "shm", unix.MOVE_MOUNT_F_EMPTY_PATH)
			unix.Close(fd)
		}
	}
	if err := unix.Mkdirat(dev, "pts", 0o755); err == nil {
		if fd, err := newFS("devpts", map[string]string{"ptmxmode": "0666", "mode": "0620"}, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NOEXEC); err == nil {
			if unix.MoveMount(fd, "", dev, "pts", unix.MOVE_MOUNT_F_EMPTY_PATH) == nil {
				unix.Symlinkat("pts/ptmx", dev, "ptmx")
			}
			unix.Close(fd)
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		unix.Symlinkat(target, dev, name)
	}
	if len(scripts) > 0 {
		if err := unix.Mkdirat(dev, "pipes", 0o755); err != nil {
			return fmt.Errorf("creating /dev/pipes: %w", err)
		}
		pipes, err := unix.Openat(dev, "pipes", unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(pipes)
		for _, sc := range scripts {
			name := path.Base("/" + sc.Name)
			if name == "/" || name == "." || name == ".." {
				return fmt.Errorf("heredoc script name %q", sc.Name)
			}
			fd, err := unix.Openat(pipes, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o755)
			if err != nil {
				return fmt.Errorf("writing /dev/pipes/%s: %w", name, err)
			}
			f := os.NewFile(uintptr(fd), name)
			_, err = f.WriteString(sc.Data)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("writing /dev/pipes/%s: %w", name, err)
			}
		}
	}
	return nil
}

// ensureTarget resolves target inside the root (through the mounts made
// so far), creating the missing directories and the mount point itself
// (a directory, or an empty file for a file mount), each recorded as a
// stub. It returns an O_PATH handle on the target and its real image path.
func (sb *setup) ensureTarget(target string, dir bool) (*os.File, string, error) {
	img := fsroot.Clean(target)
	if img == "" {
		return nil, "", fmt.Errorf("mount target %s: cannot mount over the root", target)
	}
	var h *os.File
	var real string
	err := sb.asImageRoot(func() error {
		parent, err := sb.root.MkdirAll(path.Dir("/"+img), fsroot.MkdirOptions{
			Before:  func(p *fsroot.Dir, name string) error { return sb.noteTimes(p) },
			Created: func(p *fsroot.Dir, name string) error { return sb.noteStub(p, name, true) },
		})
		if err != nil {
			return err
		}
		defer parent.Close()
		name := path.Base("/" + img)
		if h, err = sb.root.OpenHandle(img); err == nil {
			var st unix.Stat_t
			if err := unix.Fstat(int(h.Fd()), &st); err != nil {
				return err
			}
			switch isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR; {
			case dir && !isDir:
				return errors.New("it is not a directory")
			case !dir && isDir:
				return errors.New("it is a directory, and the source is a file")
			}
			real, err = sb.root.ImagePath(h)
			return err
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if parent.Exists(name) {
			return errors.New("it is a symlink to a missing path")
		}
		if err := sb.noteTimes(parent); err != nil {
			return err
		}
		if dir {
			err = parent.Mkdir(name, 0o755)
		} else {
			var f *os.File
			if f, err = parent.Create(name, 0o644); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return err
		}
		if err := sb.noteStub(parent, name, dir); err != nil {
			return err
		}
		fd, err := unix.Openat(parent.Fd(), name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		h = os.NewFile(uintptr(fd), "/"+img)
		real = path.Join(parent.Path(), name)
		return nil
	})
	if err != nil {
		if h != nil {
			h.Close()
		}
		return nil, "", fmt.Errorf("mount target %s: %w", target, err)
	}
	return h, real, nil
}

// where tells which mount holds the image path img: its index
// (stubRoot for the root itself) and img's path inside its source.
func (sb *setup) where(img string) (int, string, error) {
	best := -1
	for i, m := range sb.mounted {
		if img == m.img || strings.HasPrefix(img, m.img+"/") {
			if best < 0 || len(m.img) > len(sb.mounted[best].img) {
				best = i
			}
		}
	}
	if best < 0 {
		return stubRoot, img, nil
	}
	m := sb.mounted[best]
	rel := strings.TrimPrefix(strings.TrimPrefix(img, m.img), "/")
	if m.index == mountIndexKiln {
		return mountIndexKiln, rel, nil
	}
	if sb.spec.Mounts[m.index].SubPath != "" {
		return 0, "", fmt.Errorf("cannot create a mount point inside the mount at /%s", m.img)
	}
	return m.index, rel, nil
}

// noteTimes records, once per directory, its times before a mount point
// is created in it; they go with the next stub created there.
func (sb *setup) noteTimes(d *fsroot.Dir) error {
	if sb.timed[d.Path()] {
		return nil
	}
	fi, err := d.Stat()
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	sb.timed[d.Path()] = true
	sb.pendingTimes = &[2]int64{st.Atim.Sec*1e9 + st.Atim.Nsec, st.Mtim.Sec*1e9 + st.Mtim.Nsec}
	return nil
}

// noteStub records a mount point just created as name in d.
func (sb *setup) noteStub(d *fsroot.Dir, name string, dir bool) error {
	times := sb.pendingTimes
	sb.pendingTimes = nil
	img := path.Join(d.Path(), name)
	index, rel, err := sb.where(img)
	if err != nil || index == mountIndexKiln {
		return err
	}
	fi, err := d.Lstat(name)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	sb.stubs = append(sb.stubs, Stub{Mount: index, Path: rel, Dir: dir, Dev: uint64(st.Dev), Ino: st.Ino, Times: times})
	return nil
}

// asImageRoot runs fn with the file system ids that are the image's root
// through the id-mapped root, keeping the capabilities, so that what fn
// creates there belongs to 0:0 in the image (host root has no id in the
// mapping, and the kernel refuses its creations with EOVERFLOW).
func (sb *setup) asImageRoot(fn func() error) error {
	if sb.spec.IDMap == nil {
		return fn()
	}
	old, err := unix.PrctlRetInt(unix.PR_GET_SECUREBITS, 0, 0, 0, 0)
	if err != nil {
		return fmt.Errorf("reading secure bits: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_SECUREBITS, uintptr(old|secbitNoSetuidFixup), 0, 0, 0); err != nil {
		return fmt.Errorf("setting secure bits: %w", err)
	}
	id := int(sb.spec.IDMap.HostID)
	unix.Setfsgid(id)
	unix.Setfsuid(id)
	defer func() {
		unix.Setfsuid(0)
		unix.Setfsgid(0)
		unix.Prctl(unix.PR_SET_SECUREBITS, uintptr(old), 0, 0, 0)
	}()
	return fn()
}
