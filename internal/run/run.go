// Package run executes RUN commands in a sandbox that emulates a
// container: new mount and pid namespaces (and a new network namespace for
// --network=none), pivoted into the stage's root directory with the host's
// tree detached, with /proc, /dev, /etc/hosts and /etc/resolv.conf
// provided, and, given a UserNS, the command in a user namespace whose
// root is an unprivileged host uid (the root id-mapped, so files keep the
// image's owners). Nothing is mounted in the caller's mount namespace, and
// nothing outside the root is written. Direct runs a command in place
// instead, kaniko's way.
package run

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kilnbuild/kiln/internal/rootfs"
)

// specEnv names the environment variable that turns a kiln binary into the
// sandbox's init process.
const specEnv = "KILN_SANDBOX_SPEC"

// Mount is a mount inside the sandbox.
type Mount struct {
	// Type is "bind" or "tmpfs".
	Type string `json:"type"`
	// Source is the host path of a bind mount.
	Source string `json:"source,omitempty"`
	// Target is the path inside the root.
	Target string `json:"target"`
	// ReadOnly makes the mount read-only.
	ReadOnly bool `json:"readonly,omitempty"`
	// Size limits a tmpfs, in bytes; 0 means the kernel default.
	Size int64 `json:"size,omitempty"`
	// File says the bind source is a file, not a directory.
	File bool `json:"file,omitempty"`
}

// Script is an inline file placed at /dev/pipes/<Name>, executable.
type Script struct {
	Name string `json:"name"`
	Data string `json:"data"`
}

// Spec is one command to run.
type Spec struct {
	// Root is the host directory that becomes "/".
	Root string `json:"root"`
	// Args is the command; Args[0] is looked up in the sandbox's PATH.
	Args []string `json:"args"`
	// Env is the command's whole environment.
	Env []string `json:"env"`
	// Dir is the working directory inside the root.
	Dir string `json:"dir"`
	// UID, GID and Groups are the credentials the command runs with.
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
	// NoNetwork gives the command a network namespace of its own.
	NoNetwork bool `json:"noNetwork,omitempty"`
	// Mounts are extra mounts (RUN --mount).
	Mounts []Mount `json:"mounts,omitempty"`
	// Scripts are inline files under /dev/pipes.
	Scripts []Script `json:"scripts,omitempty"`
	// HostsFile and ResolvFile are bound over /etc/hosts and
	// /etc/resolv.conf; empty means the host's.
	HostsFile  string `json:"hostsFile,omitempty"`
	ResolvFile string `json:"resolvFile,omitempty"`

	// IDMap, set by Run from Options.UserNS, runs the command in a user
	// namespace with this mapping, its root and bind mounts id-mapped.
	IDMap *IDMap `json:"idmap,omitempty"`

	// targets are the resolved host paths of /proc, /dev, /etc/hosts and
	// /etc/resolv.conf, filled in by Run.
	Targets map[string]string `json:"targets,omitempty"`
}

// ExitError is a command that ran and failed.
type ExitError struct {
	// Code is the exit status (128+signal for a signal).
	Code int
	// Tail is the last lines of output.
	Tail []string
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("exit code %d", e.Code)
	if len(e.Tail) > 0 {
		msg += "; last output:\n  " + strings.Join(e.Tail, "\n  ")
	}
	return msg
}

// Options configure Run.
type Options struct {
	// Output receives each line the command prints, as it is printed.
	Output func(line string)
	// WorkDir holds the spec file while the command runs.
	WorkDir string
	// Executable is the binary re-executed as sandbox init; empty means
	// this process's own binary.
	Executable string
	// TailLines is how many output lines an ExitError keeps (default 20).
	TailLines int
	// UserNS, when set, runs the command in a user namespace mapped like
	// it, so that root in a RUN is not root on the host; nil runs it with
	// the host's ids.
	UserNS *UserNS
}

// Run executes spec in a sandbox and waits for it. Mount points the
// sandbox needs that do not exist in the root are created for the run and
// removed afterwards, so they never reach a snapshot.
func Run(ctx context.Context, spec Spec, o Options) error {
	if len(spec.Args) == 0 {
		return errors.New("empty command")
	}
	stubs, err := prepareStubs(&spec)
	defer removeStubs(stubs)
	if err != nil {
		return err
	}
	if o.UserNS != nil {
		if o.UserNS.f == nil {
			return errors.New("the user namespace is closed")
		}
		spec.IDMap = &o.UserNS.Map
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(o.WorkDir, "run-spec-*.json")
	if err != nil {
		return fmt.Errorf("writing sandbox spec: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing sandbox spec: %w", err)
	}
	exe := o.Executable
	if exe == "" {
		exe = "/proc/self/exe"
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = []string{specEnv + "=" + f.Name()}
	if o.UserNS != nil {
		cmd.ExtraFiles = []*os.File{o.UserNS.f} // fd 3 in the init
	}
	flags := uintptr(syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC)
	if spec.NoNetwork {
		flags |= syscall.CLONE_NEWNET
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	return execute(cmd, o)
}

// execute runs cmd with its output streamed line by line to o.Output, and
// turns a failure into an ExitError with the output's tail.
func execute(cmd *exec.Cmd, o Options) error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		if errors.Is(err, syscall.EPERM) && cmd.SysProcAttr != nil && cmd.SysProcAttr.Cloneflags != 0 {
			return fmt.Errorf("starting the RUN sandbox: %w (chroot isolation needs CAP_SYS_ADMIN; in a container without it use --isolation=in-place)", err)
		}
		return fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	pw.Close()
	n := o.TailLines
	if n <= 0 {
		n = 20
	}
	var tail []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			if o.Output != nil {
				o.Output(line)
			}
			tail = append(tail, line)
			if len(tail) > n {
				tail = tail[1:]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err = cmd.Wait()
	wg.Wait()
	pr.Close()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code := ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
			if code == initFailure && len(tail) > 0 && strings.HasPrefix(tail[len(tail)-1], "kiln sandbox: ") {
				return errors.New(strings.TrimPrefix(tail[len(tail)-1], "kiln sandbox: "))
			}
			return &ExitError{Code: code, Tail: tail}
		}
		return fmt.Errorf("running %s: %w", cmd.Path, err)
	}
	return nil
}

// stub is a mount point created for one run, with the times of the
// directory it was created in, restored when it is removed.
type stub struct {
	path         string
	dir          bool
	atime, mtime time.Time
}

func newStub(path string, dir bool) stub {
	s := stub{path: path, dir: dir}
	var st syscall.Stat_t
	if syscall.Lstat(filepath.Dir(path), &st) == nil {
		s.atime = time.Unix(st.Atim.Sec, st.Atim.Nsec)
		s.mtime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	}
	return s
}

// prepareStubs resolves every mount target inside the root, rewriting the
// spec's targets to host paths, and creates missing mount points.
func prepareStubs(spec *Spec) ([]stub, error) {
	var stubs []stub
	ensure := func(target string, dir bool) (string, error) {
		host, err := rootfs.Resolve(spec.Root, target, true)
		if err != nil {
			return "", err
		}
		if _, err := os.Lstat(host); err == nil {
			return host, nil
		}
		// Create missing parents, remembering each as a stub.
		var missing []string
		for p := filepath.Dir(host); p != spec.Root && strings.HasPrefix(p, spec.Root); p = filepath.Dir(p) {
			if _, err := os.Lstat(p); err == nil {
				break
			}
			missing = append(missing, p)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			st := newStub(missing[i], true)
			if err := os.Mkdir(missing[i], 0o755); err != nil {
				return "", err
			}
			stubs = append(stubs, st)
		}
		st := newStub(host, dir)
		if dir {
			err = os.Mkdir(host, 0o755)
		} else {
			var f *os.File
			if f, err = os.OpenFile(host, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return "", fmt.Errorf("creating mount point %s: %w", target, err)
		}
		stubs = append(stubs, st)
		return host, nil
	}
	fixed := []struct {
		target string
		dir    bool
	}{{"/proc", true}, {"/dev", true}, {"/etc/hosts", false}, {"/etc/resolv.conf", false}}
	spec.Targets = map[string]string{}
	for _, m := range fixed {
		host, err := ensure(m.target, m.dir)
		if err != nil {
			return stubs, err
		}
		spec.Targets[m.target] = host
	}
	for i, m := range spec.Mounts {
		host, err := ensure(m.Target, !m.File)
		if err != nil {
			return stubs, err
		}
		spec.Mounts[i].Target = host
	}
	return stubs, nil
}

// removeStubs removes created mount points, deepest first, then gives
// the directories they were created in their original times; a directory
// something was written into stays.
func removeStubs(stubs []stub) {
	parents := firstTimes(stubs)
	sorted := append([]stub(nil), stubs...)
	sort.SliceStable(sorted, func(i, j int) bool { return len(sorted[i].path) > len(sorted[j].path) })
	for _, s := range sorted {
		if s.dir {
			os.Remove(s.path) // fails, as wanted, when not empty
		} else if fi, err := os.Lstat(s.path); err == nil && fi.Mode().IsRegular() && fi.Size() == 0 {
			os.Remove(s.path)
		}
	}
	restoreTimes(parents)
}

// firstTimes maps each stub's parent directory to its times before the
// first stub was created in it.
func firstTimes(stubs []stub) map[string]stub {
	out := map[string]stub{}
	for _, s := range stubs {
		dir := filepath.Dir(s.path)
		if _, ok := out[dir]; !ok && !s.mtime.IsZero() {
			out[dir] = s
		}
	}
	return out
}

// restoreTimes sets directories' times back, deepest first.
func restoreTimes(parents map[string]stub) {
	dirs := make([]string, 0, len(parents))
	for d := range parents {
		dirs = append(dirs, d)
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		os.Chtimes(d, parents[d].atime, parents[d].mtime)
	}
}
