package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// holderEnv names the environment variable that turns a kiln binary into a
// process that only holds a user namespace open until its stdin closes.
const holderEnv = "KILN_USERNS_HOLDER"

// IDMap maps the sandbox's user and group ids 0..Size-1 to the host's
// HostID..HostID+Size-1.
type IDMap struct {
	HostID uint32 `json:"hostID"`
	Size   uint32 `json:"size"`
}

// DefaultIDMap is the mapping chroot isolation uses unless told otherwise:
// ids 0 to 2^31-2 inside (every id images use in practice) onto the host's
// upper half, which holds no host user, so root in a RUN is an
// unprivileged, unused host uid.
func DefaultIDMap() IDMap { return IDMap{HostID: 1 << 31, Size: 1<<31 - 1} }

// ParseIDMap parses "HOSTID[:SIZE]"; SIZE defaults to as many ids as fit
// below 2^32-1.
func ParseIDMap(s string) (IDMap, error) {
	host, size, hasSize := strings.Cut(s, ":")
	h, err := strconv.ParseUint(host, 10, 32)
	if err != nil || h == 0 {
		return IDMap{}, fmt.Errorf("user namespace mapping %q: want HOSTID[:SIZE] with a host id above 0", s)
	}
	n := uint64(1<<32-1) - h
	if hasSize {
		if n, err = strconv.ParseUint(size, 10, 32); err != nil || n == 0 {
			return IDMap{}, fmt.Errorf("user namespace mapping %q: SIZE must be a positive number", s)
		}
	}
	if h+n > 1<<32-1 {
		return IDMap{}, fmt.Errorf("user namespace mapping %q: host ids run past 4294967294", s)
	}
	return IDMap{HostID: uint32(h), Size: uint32(n)}, nil
}

// String is the mapping as ParseIDMap reads it.
func (m IDMap) String() string { return fmt.Sprintf("%d:%d", m.HostID, m.Size) }

func (m IDMap) idMaps() []syscall.SysProcIDMap {
	return []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(m.HostID), Size: int(m.Size)}}
}

// UserNS is a user namespace held open for sandboxes: they id-map their
// root (and their bind mounts) with it, so files keep their image owners
// on disk while RUN's processes run as the mapped, unprivileged host ids.
type UserNS struct {
	// Map is the namespace's uid and gid mapping.
	Map IDMap
	f   *os.File
}

// NewUserNS creates a user namespace with mapping m, using exe (empty
// means this process's own binary, which must call SandboxMain when
// IsSandbox) as a short-lived holder process. Close releases it.
func NewUserNS(m IDMap, exe string) (*UserNS, error) {
	if exe == "" {
		exe = "/proc/self/exe"
	}
	cmd := exec.Command(exe)
	cmd.Env = []string{holderEnv + "=1"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: m.idMaps(),
		GidMappings: m.idMaps(),
		Pdeathsig:   syscall.SIGKILL,
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("creating a user namespace (%s): %w", m, err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	in.Close()
	if werr := cmd.Wait(); err == nil && werr != nil {
		err = fmt.Errorf("user namespace holder: %w", werr)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		return nil, fmt.Errorf("creating a user namespace (%s): %w", m, err)
	}
	return &UserNS{Map: m, f: f}, nil
}

// Close releases the namespace.
func (u *UserNS) Close() error {
	if u == nil || u.f == nil {
		return nil
	}
	err := u.f.Close()
	u.f = nil
	return err
}

// Check reports whether dir's file system can be mounted id-mapped with u
// (kernel 5.12 or later, a file system that supports it, and privilege
// over it). Nothing is mounted: the trial mount is never attached.
func (u *UserNS) Check(dir string) error {
	fd, err := idmapTree(dir, int(u.f.Fd()), false)
	if err != nil {
		return err
	}
	unix.Close(fd)
	return nil
}

// idmapTree makes a detached, id-mapped copy of the mount tree at src and
// returns its file descriptor.
func idmapTree(src string, userns int, readOnly bool) (int, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return -1, fmt.Errorf("cloning the mount of %s: %w", src, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns)}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("id-mapping the mount of %s: %w", src, err)
	}
	return fd, nil
}

// holdMain is the holder process: it keeps its user namespace alive until
// its parent, having opened the namespace, closes stdin.
func holdMain() int {
	if _, err := io.Copy(io.Discard, os.Stdin); err != nil && !errors.Is(err, os.ErrClosed) {
		return 1
	}
	return 0
}
