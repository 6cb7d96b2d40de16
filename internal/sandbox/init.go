package sandbox

import (
	"bytes"
	"encoding/gob"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/rootfs"
)

// initFailure is the exit status of a sandbox that could not start the
// command; its last output line says why.
const initFailure = 125

// usernsFD is the init's descriptor of the user namespace to map with
// (Run's ExtraFiles[0]).
const usernsFD = 3

// IsSandbox reports whether this process was started as a sandbox init
// (or as a user namespace holder).
func IsSandbox() bool { return os.Getenv(specEnv) != "" || os.Getenv(holderEnv) != "" }

// SandboxMain is the sandbox init: call it first thing in main (and in
// TestMain) when IsSandbox is true; it returns the exit status.
func SandboxMain() int {
	if os.Getenv(holderEnv) != "" {
		return holdMain()
	}
	code, err := sandbox()
	if err != nil {
		fmt.Fprintf(os.Stderr, "kiln sandbox: %v\n", err)
		return initFailure
	}
	return code
}

func sandbox() (int, error) {
	// File system ids and secure bits are per thread: keep this goroutine
	// on one.
	runtime.LockOSThread()
	data, err := os.ReadFile(os.Getenv(specEnv))
	if err != nil {
		return 0, err
	}
	var s Spec
	// gob, not JSON: paths, arguments and environment are bytes, and JSON
	// would turn invalid UTF-8 into U+FFFD.
	if err := gob.NewDecoder(bytes.NewReader(data)).Decode(&s); err != nil {
		return 0, err
	}
	sb := &setup{spec: &s, userns: -1}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		if !errors.Is(err, unix.EINVAL) {
			return 0, fmt.Errorf("making mounts private: %w", err)
		}
		// "/" is not a mount point: kiln runs in a chroot.
		if sb.anchor, err = privateAnchor(); err != nil {
			return 0, err
		}
	}
	if s.IDMap != nil {
		unix.CloseOnExec(usernsFD)
		sb.userns = usernsFD
	}
	err = sb.mountAll()
	// The parent removes the mount points created, whatever happened.
	if werr := writeStubs(s.StubsFile, sb.stubs); err == nil {
		err = werr
	}
	if err != nil {
		return 0, err
	}
	if err := enterRoot(sb.root.Dir().Fd()); err != nil {
		return 0, err
	}
	dir := s.Dir
	if dir == "" {
		dir = "/"
	}
	if err := os.Chdir(dir); err != nil {
		return 0, fmt.Errorf("working directory %s: %w", dir, err)
	}
	unix.Sethostname([]byte("kiln"))
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range s.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	os.Setenv("PATH", path)
	prog := s.Args[0]
	if strings.Contains(prog, "/") {
		if _, err := os.Stat(prog); err != nil {
			return 0, fmt.Errorf("%s: no such file or directory in the image", prog)
		}
	} else {
		if prog, err = exec.LookPath(prog); err != nil {
			return 0, fmt.Errorf("%s: executable file not found in $PATH", s.Args[0])
		}
	}
	devnull, _ := os.Open("/dev/null")
	cmd := &exec.Cmd{
		Path: prog, Args: s.Args, Env: s.Env, Dir: dir,
		Stdin: devnull, Stdout: os.Stdout, Stderr: os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: s.UID, Gid: s.GID, Groups: s.Groups},
			Setsid:     true,
		},
	}
	if s.IDMap != nil {
		// A user namespace of the same mapping as the root's id-mapped
		// mount: the command's ids are the image's, its host ids are not
		// the host's users', and its capabilities end at the namespace.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = s.IDMap.idMaps()
		cmd.SysProcAttr.GidMappings = s.IDMap.idMaps()
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
	}
	if s.Network == NetworkNone || s.Network == NetworkSlirp {
		if err := loopbackUp(); err != nil {
			return 0, fmt.Errorf("bringing up the RUN network's loopback: %w", err)
		}
	}
	if s.NetReadyFD > 0 {
		// slirp4netns configures this namespace from outside; wait for it.
		ready := os.NewFile(uintptr(s.NetReadyFD), "net-ready")
		_, err := ready.Read(make([]byte, 1))
		ready.Close()
		if err != nil {
			return 0, fmt.Errorf("waiting for the RUN network: %w", err)
		}
	}
	if s.IDMap == nil {
		// Root in the RUN is the host's root: it gets Docker's default
		// capabilities, as BuildKit's RUN does, and not CAP_SYS_CHROOT where
		// the root could not be pivoted into (a chroot is no bound to it).
		if err := boundCapabilities(sb.anchor == ""); err != nil {
			return 0, err
		}
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", s.Args[0], err)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		for sig := range sigs {
			cmd.Process.Signal(sig)
		}
	}()
	code, err := reap(cmd.Process.Pid)
	if err != nil {
		return 0, fmt.Errorf("waiting for %s: %w", s.Args[0], err)
	}
	return code, nil
}

// reap waits, as pid 1 of the namespace, for the command; then kills
// every process it left behind and waits for them too, so that nothing
// of the RUN is alive when the parent looks at the root.
func reap(pid int) (int, error) {
	code := -1
	for {
		var ws syscall.WaitStatus
		p, err := syscall.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if errors.Is(err, syscall.ECHILD) && code >= 0 {
			return code, nil
		}
		if err != nil {
			return 0, err
		}
		if p != pid {
			continue
		}
		code = ws.ExitStatus()
		if ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		// kill(-1) from pid 1 reaches every other process of the namespace.
		syscall.Kill(-1, syscall.SIGKILL)
	}
}

// writeStubs reports the mount points created to the parent.
func writeStubs(file string, stubs []Stub) error {
	if file == "" {
		return nil
	}
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(stubs); err != nil {
		return err
	}
	return os.WriteFile(file, buf.Bytes(), 0o600)
}

// enterRoot makes root the process's "/": pivot_root, with the host's
// tree detached so no path leads back to it, or chroot where pivot_root
// is refused (an initramfs root).
func enterRoot(root int) error {
	if err := unix.Fchdir(root); err != nil {
		return fmt.Errorf("entering the root: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err == nil {
		if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
			return fmt.Errorf("detaching the host's file system: %w", err)
		}
	} else if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

// privateAnchor, where "/" is not a mount point (kiln in a chroot, whose
// mount holding "/" cannot be named, so cannot be made private), makes
// every mount that can be named private and stacks a small tmpfs over
// /proc: the root is attached there, under private mounts only, so that
// nothing the sandbox mounts propagates out of it.
func privateAnchor() (string, error) {
	mps, err := rootfs.MountPoints("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("reading mount points: %w", err)
	}
	proc := false
	for _, mp := range mps {
		if err := unix.Mount("", mp, "", unix.MS_PRIVATE, ""); err != nil {
			return "", fmt.Errorf("making the mount at %s private: %w", mp, err)
		}
		proc = proc || mp == "/proc"
	}
	if !proc {
		return "", errors.New(`"/" is not a mount point and /proc is not mounted: RUN needs one or the other`)
	}
	const anchor = "/proc"
	if err := unix.Mount("kiln", anchor, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=64k"); err != nil {
		return "", fmt.Errorf("mounting the sandbox's anchor: %w", err)
	}
	if err := unix.Mkdir(anchor+"/root", 0o700); err != nil {
		return "", fmt.Errorf("mounting the sandbox's anchor: %w", err)
	}
	return anchor + "/root", nil
}

// dockerCaps are Docker's default capabilities (moby's
// oci/caps/defaults.go), which BuildKit's RUN has.
var dockerCaps = []uintptr{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FSETID, unix.CAP_FOWNER, unix.CAP_MKNOD,
	unix.CAP_NET_RAW, unix.CAP_SETGID, unix.CAP_SETUID, unix.CAP_SETFCAP, unix.CAP_SETPCAP,
	unix.CAP_NET_BIND_SERVICE, unix.CAP_SYS_CHROOT, unix.CAP_KILL, unix.CAP_AUDIT_WRITE,
}

// boundCapabilities drops from this thread's bounding set (which the
// command inherits) every capability but Docker's defaults, and
// CAP_SYS_CHROOT too unless chroot is kept.
func boundCapabilities(chroot bool) error {
	keep := map[uintptr]bool{}
	for _, c := range dockerCaps {
		keep[c] = c != unix.CAP_SYS_CHROOT || chroot
	}
	for c := uintptr(0); ; c++ {
		if keep[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
			if errors.Is(err, unix.EINVAL) {
				return nil // past the last capability this kernel has
			}
			return fmt.Errorf("dropping capability %d: %w", c, err)
		}
	}
}
