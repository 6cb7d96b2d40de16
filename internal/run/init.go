package run

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
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
	data, err := os.ReadFile(os.Getenv(specEnv))
	if err != nil {
		return 0, err
	}
	var s Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return 0, err
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return 0, fmt.Errorf("making mounts private: %w", err)
	}
	// The root becomes a mount of its own (id-mapped in a user namespace),
	// so that it can be pivoted into.
	if s.IDMap != nil {
		unix.CloseOnExec(usernsFD)
		if err := idmapMount(s.Root, s.Root, usernsFD, false); err != nil {
			return 0, err
		}
	} else if err := unix.Mount(s.Root, s.Root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return 0, fmt.Errorf("binding %s: %w", s.Root, err)
	}
	if err := setupMounts(&s); err != nil {
		return 0, err
	}
	if err := enterRoot(s.Root); err != nil {
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
	// As pid 1 of the namespace, reap every child until the command exits;
	// the kernel kills what is left when we exit.
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("waiting for %s: %w", s.Args[0], err)
		}
		if pid != cmd.Process.Pid {
			continue
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ws.ExitStatus(), nil
	}
}

// enterRoot makes root the process's "/": pivot_root, with the host's
// tree detached so no path leads back to it, or chroot where pivot_root
// is refused (an initramfs root).
func enterRoot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("entering %s: %w", root, err)
	}
	if err := unix.PivotRoot(".", "."); err == nil {
		if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
			return fmt.Errorf("detaching the host's file system: %w", err)
		}
	} else if err := unix.Chroot(root); err != nil {
		return fmt.Errorf("chroot %s: %w", root, err)
	}
	return unix.Chdir("/")
}

// setupMounts provides /proc, /dev, the hosts files and RUN's mounts. With
// a user namespace (s.IDMap) tmpfs mounts belong to its root and bind
// mounts are id-mapped like the root.
func setupMounts(s *Spec) error {
	mnt := func(src, target, fstype string, flags uintptr, data string) error {
		if err := unix.Mount(src, target, fstype, flags, data); err != nil {
			return fmt.Errorf("mounting %s on %s: %w", fstype+src, target, err)
		}
		return nil
	}
	owner := ""
	if s.IDMap != nil {
		owner = fmt.Sprintf(",uid=%d,gid=%d", s.IDMap.HostID, s.IDMap.HostID)
	}
	if err := mnt("proc", s.Targets["/proc"], "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	dev := s.Targets["/dev"]
	if err := mnt("tmpfs", dev, "tmpfs", unix.MS_NOSUID, "mode=755,size=65536k"+owner); err != nil {
		return err
	}
	for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		target := filepath.Join(dev, d)
		if f, err := os.Create(target); err == nil {
			f.Close()
		}
		if err := mnt("/dev/"+d, target, "", unix.MS_BIND, ""); err != nil {
			return err
		}
	}
	os.Mkdir(filepath.Join(dev, "shm"), 0o1777)
	mnt("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=65536k"+owner)
	os.Mkdir(filepath.Join(dev, "pts"), 0o755)
	if mnt("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") == nil {
		os.Symlink("pts/ptmx", filepath.Join(dev, "ptmx"))
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		os.Symlink(target, filepath.Join(dev, name))
	}
	if len(s.Scripts) > 0 {
		pipes := filepath.Join(dev, "pipes")
		os.Mkdir(pipes, 0o755)
		for _, sc := range s.Scripts {
			if err := os.WriteFile(filepath.Join(pipes, filepath.Base(sc.Name)), []byte(sc.Data), 0o755); err != nil {
				return err
			}
		}
	}
	for target, src := range map[string]string{"/etc/hosts": s.HostsFile, "/etc/resolv.conf": s.ResolvFile} {
		if src == "" {
			src = target
		}
		if _, err := os.Stat(src); err != nil {
			continue
		}
		if err := bindRO(src, s.Targets[target]); err != nil {
			return err
		}
	}
	for _, m := range s.Mounts {
		switch m.Type {
		case "tmpfs":
			opts := "mode=755" + owner
			if m.Size > 0 {
				opts += fmt.Sprintf(",size=%d", m.Size)
			}
			if err := mnt("tmpfs", m.Target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
				return err
			}
		case "bind":
			// A source whose file system cannot be id-mapped is bound as
			// it is: its files then show as nobody's in the namespace.
			if s.IDMap != nil && idmapMount(m.Source, m.Target, usernsFD, m.ReadOnly) == nil {
				continue
			}
			if m.ReadOnly {
				if err := bindRO(m.Source, m.Target); err != nil {
					return err
				}
			} else if err := mnt(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown mount type %q", m.Type)
		}
	}
	return nil
}

// bindRO bind-mounts src on target read-only.
func bindRO(src, target string) error {
	if err := unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding %s on %s: %w", src, target, err)
	}
	if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s read-only: %w", target, err)
	}
	return nil
}
