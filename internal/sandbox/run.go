// Package run executes RUN commands in a sandbox that emulates a
// container: new mount and pid namespaces (and a new network namespace for
// --network=none), pivoted into the stage's root directory with the host's
// tree detached, with /proc, /dev, /etc/hosts and /etc/resolv.conf
// provided, and, given a UserNS, the command in a user namespace whose
// root is an unprivileged host uid (the root id-mapped, so files keep the
// image's owners). Nothing is mounted in the caller's mount namespace, and
// nothing outside the root is written. Direct runs a command in place
// instead, kaniko's way.
package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/kilnbuild/kiln/internal/fsroot"
)

// specEnv names the environment variable that turns a kiln binary into the
// sandbox's init process.
const specEnv = "KILN_SANDBOX_SPEC"

// Mount is a mount inside the sandbox.
type Mount struct {
	// Type is "bind" or "tmpfs".
	Type string `json:"type"`
	// Source is the host directory of a bind mount: a directory kiln owns
	// (a cache directory, a copy) or a tree it reads (a stage root, the
	// context).
	Source string `json:"source,omitempty"`
	// SubPath, when set, is what to bind inside Source: resolved inside
	// Source (its symlinks never lead out of it) when the sandbox starts.
	SubPath string `json:"subPath,omitempty"`
	// Target is the path inside the root. It is resolved inside the root,
	// through the mounts made before it, at the moment it is mounted.
	Target string `json:"target"`
	// ReadOnly makes the mount read-only.
	ReadOnly bool `json:"readonly,omitempty"`
	// Size limits a tmpfs, in bytes; 0 means the kernel default.
	Size int64 `json:"size,omitempty"`
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
	// Network is the command's network: NetworkHost (this host's network
	// namespace, the default), NetworkNone (a namespace of its own with
	// only loopback) or NetworkSlirp (a namespace of its own reaching out
	// through slirp4netns, never this host's loopback).
	Network string `json:"network,omitempty"`
	// NetReadyFD, set by Run, is the init's descriptor that says the
	// network is ready.
	NetReadyFD int `json:"netReadyFD,omitempty"`
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
	// StubsFile, set by Run, is where the sandbox reports the mount points
	// it created, for Run to remove after the command.
	StubsFile string `json:"stubsFile,omitempty"`
}

// The RUN networks.
const (
	NetworkHost  = "host"
	NetworkNone  = "none"
	NetworkSlirp = "slirp4netns"
)

// ExitError is a command that ran and failed.
type ExitError struct {
	// Code is the exit status (128+signal for a signal).
	Code int
	// Tail is the last lines of output.
	Tail []string
}

// ExitCode is the command's exit status.
func (e *ExitError) ExitCode() int { return e.Code }

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("exit code %d", e.Code)
	if len(e.Tail) > 0 {
		msg += "; last output:\n  " + strings.Join(e.Tail, "\n  ")
	}
	return msg
}

// Options configure Run.
type Options struct {
	// Output receives each line the command prints, as it is printed, with
	// its stream ("stdout" or "stderr").
	Output func(stream, line string)
	// WorkDir holds the spec file while the command runs.
	WorkDir string
	// Executable is the binary re-executed as sandbox init; empty means
	// this process's own binary.
	Executable string
	// TailLines is how many output lines an ExitError keeps (default 20).
	TailLines int
	// Slirp4netns is the slirp4netns binary for NetworkSlirp.
	Slirp4netns string
	// Net, when set, is the network namespace a NetworkSlirp command joins
	// (the build's), instead of one of its own with a slirp4netns of its
	// own.
	Net *Net
	// Protect, for Direct, lists the paths of "/" kiln must never write to
	// (the in-place ignore list).
	Protect fsroot.Protector
	// UserNS, when set, runs the command in a user namespace mapped like
	// it, so that root in a RUN is not root on the host; nil runs it with
	// the host's ids.
	UserNS *UserNS
}

// Run executes spec in a sandbox and waits for it. Run itself does no
// work in the root: the sandbox resolves every mount target inside it,
// creating the mount points that are missing, and Run removes those
// afterwards (each looked up again inside the root or mount source, and
// only if it is still the one created), so they never reach a snapshot.
func Run(ctx context.Context, spec Spec, o Options) error {
	if len(spec.Args) == 0 {
		return errors.New("empty command")
	}
	if o.UserNS != nil {
		if o.UserNS.f == nil {
			return errors.New("the user namespace is closed")
		}
		spec.IDMap = &o.UserNS.Map
	}
	dir, err := os.MkdirTemp(o.WorkDir, "run-")
	if err != nil {
		return fmt.Errorf("writing sandbox spec: %w", err)
	}
	defer os.RemoveAll(dir)
	spec.StubsFile = filepath.Join(dir, "stubs")
	var extra []*os.File
	if o.UserNS != nil {
		extra = append(extra, o.UserNS.f) // fd 3 in the init
	}
	var slirp *slirpNet
	shared := spec.Network == NetworkSlirp && o.Net != nil
	switch {
	case spec.Network == "", spec.Network == NetworkHost, spec.Network == NetworkNone:
	case shared:
		if spec.ResolvFile == "" {
			spec.ResolvFile = o.Net.slirp.resolv
		}
	case spec.Network == NetworkSlirp:
		if slirp, err = newSlirp(o.Slirp4netns, dir, true); err != nil {
			return err
		}
		defer slirp.close()
		extra = append(extra, slirp.goR)
		spec.NetReadyFD = 2 + len(extra)
		if spec.ResolvFile == "" {
			spec.ResolvFile = slirp.resolv
		}
	default:
		return fmt.Errorf("unknown RUN network %q", spec.Network)
	}
	var data bytes.Buffer
	if err := gob.NewEncoder(&data).Encode(spec); err != nil {
		return err
	}
	specFile := filepath.Join(dir, "spec")
	if err := os.WriteFile(specFile, data.Bytes(), 0o600); err != nil {
		return fmt.Errorf("writing sandbox spec: %w", err)
	}
	exe := o.Executable
	if exe == "" {
		exe = "/proc/self/exe"
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = []string{specEnv + "=" + specFile}
	cmd.ExtraFiles = extra
	flags := uintptr(syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC)
	if (spec.Network == NetworkNone || spec.Network == NetworkSlirp) && !shared {
		flags |= syscall.CLONE_NEWNET
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	start := cmd.Start
	if shared {
		start = func() error { return startIn(o.Net.ns, cmd) }
	}
	var started func(int) error
	if slirp != nil {
		started = slirp.start
	}
	err = execute(cmd, start, o, started)
	if rerr := removeStubs(spec, spec.StubsFile); err == nil && rerr != nil {
		err = rerr
	}
	return err
}

// execute runs cmd (start starts it) with its output streamed line by
// line to o.Output, and turns a failure into an ExitError with the
// output's tail. started, when set, runs once the process exists; its
// failure kills it.
func execute(cmd *exec.Cmd, start func() error, o Options, started func(pid int) error) error {
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	if err := start(); err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		if errors.Is(err, syscall.EPERM) && cmd.SysProcAttr != nil && cmd.SysProcAttr.Cloneflags != 0 {
			return fmt.Errorf("starting the RUN sandbox: %w (chroot isolation needs CAP_SYS_ADMIN; in a container without it use in-place isolation)", err)
		}
		return fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	outW.Close()
	errW.Close()
	defer outR.Close()
	defer errR.Close()
	if started != nil {
		if err := started(cmd.Process.Pid); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return err
		}
	}
	n := o.TailLines
	if n <= 0 {
		n = 20
	}
	var (
		mu       sync.Mutex
		tail     []string
		lastErr  string // the last line on stderr: a sandbox failure says why there
		wg       sync.WaitGroup
		readLine = func(stream string, r io.Reader) {
			defer wg.Done()
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 64*1024), 1024*1024)
			for sc.Scan() {
				line := sc.Text()
				mu.Lock()
				if o.Output != nil {
					o.Output(stream, line)
				}
				tail = append(tail, line)
				if len(tail) > n {
					tail = tail[1:]
				}
				if stream == "stderr" {
					lastErr = line
				}
				mu.Unlock()
			}
			io.Copy(io.Discard, r)
		}
	)
	wg.Add(2)
	go readLine("stdout", outR)
	go readLine("stderr", errR)
	err = cmd.Wait()
	wg.Wait()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code := ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
			if code == initFailure && strings.HasPrefix(lastErr, "kiln sandbox: ") {
				return errors.New(strings.TrimPrefix(lastErr, "kiln sandbox: "))
			}
			return &ExitError{Code: code, Tail: tail}
		}
		return fmt.Errorf("running %s: %w", cmd.Path, err)
	}
	return nil
}
