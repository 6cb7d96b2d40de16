package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/fsroot"
)

// File is a file placed in the root for one in-place run and removed
// afterwards (how in-place isolation provides secrets).
type File struct {
	Path     string // absolute, inside the root
	Data     string
	Mode     os.FileMode
	UID, GID int
}

var subreaper sync.Once

// Direct runs spec.Args in-place: the root is this container's own "/",
// so there are no namespaces, no chroot and no mounts (kaniko's model,
// which needs no capability beyond a container runtime's defaults).
// Orphaned processes are reaped. files are written before the command and
// removed after it.
func Direct(ctx context.Context, spec Spec, files []File, o Options) error {
	if len(spec.Args) == 0 {
		return errors.New("empty command")
	}
	if spec.Root != "/" {
		return fmt.Errorf("in-place isolation runs with / as root, not %s", spec.Root)
	}
	if len(spec.Mounts) > 0 {
		return errors.New("RUN --mount=type=bind|cache|tmpfs needs mount namespaces: use chroot isolation")
	}
	if spec.Network == NetworkNone || spec.Network == NetworkSlirp {
		return errors.New("RUN --network=none needs a network namespace: use chroot isolation")
	}
	subreaper.Do(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
	var opts []fsroot.Option
	if o.Protect != nil {
		opts = append(opts, fsroot.WithProtector(o.Protect))
	}
	root, err := fsroot.Open("/", opts...)
	if err != nil {
		return err
	}
	defer root.Close()
	stubs, err := placeFiles(root, files)
	defer func() {
		for i := len(stubs) - 1; i >= 0; i-- {
			removeStub(root, stubs[i])
		}
	}()
	if err != nil {
		return err
	}
	args := append([]string(nil), spec.Args...)
	if len(spec.Scripts) > 0 {
		// As in BuildKit, inline scripts live in /dev/pipes: /dev belongs to
		// the container runtime, is never snapshotted, and any user can
		// reach it.
		dir, err := os.MkdirTemp("/dev", "pipes-")
		if err != nil {
			return fmt.Errorf("placing the RUN heredoc script: %w", err)
		}
		defer os.RemoveAll(dir)
		os.Chmod(dir, 0o755)
		for _, sc := range spec.Scripts {
			p := filepath.Join(dir, filepath.Base(sc.Name))
			if err := os.WriteFile(p, []byte(sc.Data), 0o755); err != nil {
				return err
			}
			if args[0] == "/dev/pipes/"+sc.Name {
				args[0] = p
			}
		}
	}
	prog := args[0]
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range spec.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	if !strings.Contains(prog, "/") {
		p, err := lookPath(prog, path)
		if err != nil {
			return err
		}
		prog = p
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/"
	}
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	cmd := exec.CommandContext(ctx, prog, args[1:]...)
	cmd.Args[0] = args[0]
	cmd.Env, cmd.Dir, cmd.Stdin = spec.Env, dir, devnull
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: spec.UID, Gid: spec.GID, Groups: spec.Groups},
		Setpgid:    true,
	}
	err = execute(cmd, cmd.Start, o, nil)
	// Reap orphans the command left behind (we are their subreaper).
	for {
		var ws syscall.WaitStatus
		pid, werr := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || werr != nil {
			break
		}
	}
	return err
}

// lookPath finds prog in a PATH list.
func lookPath(prog, path string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, prog)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: executable file not found in $PATH", prog)
}

// placeFiles writes files into root (resolved inside it, never into a
// protected path), creating missing directories; it returns what it
// created, as stubs to remove after the run.
func placeFiles(root *fsroot.Root, files []File) ([]Stub, error) {
	var stubs []Stub
	timed := map[string]bool{}
	var pending *[2]int64
	noteTimes := func(d *fsroot.Dir) {
		if timed[d.Path()] {
			return
		}
		timed[d.Path()] = true
		if fi, err := d.Stat(); err == nil {
			st := fi.Sys().(*syscall.Stat_t)
			pending = &[2]int64{st.Atim.Sec*1e9 + st.Atim.Nsec, st.Mtim.Sec*1e9 + st.Mtim.Nsec}
		}
	}
	note := func(d *fsroot.Dir, name string, dir bool) {
		s := Stub{Mount: stubRoot, Path: path.Join(d.Path(), name), Dir: dir, Times: pending}
		pending = nil
		if fi, err := d.Lstat(name); err == nil {
			st := fi.Sys().(*syscall.Stat_t)
			s.Dev, s.Ino = uint64(st.Dev), st.Ino
		}
		stubs = append(stubs, s)
	}
	for _, f := range files {
		if _, err := root.Lstat(f.Path); err == nil {
			return stubs, fmt.Errorf("%s already exists in the image; in-place isolation cannot place a secret there", f.Path)
		}
		parent, err := root.MkdirAll(path.Dir(path.Clean("/"+f.Path)), fsroot.MkdirOptions{
			Before:  func(d *fsroot.Dir, _ string) error { noteTimes(d); return nil },
			Created: func(d *fsroot.Dir, name string) error { note(d, name, true); return nil },
		})
		if err != nil {
			return stubs, fmt.Errorf("placing %s: %w", f.Path, err)
		}
		name := path.Base(path.Clean("/" + f.Path))
		noteTimes(parent)
		err = parent.WriteFile(name, strings.NewReader(f.Data), 0o400)
		if err == nil {
			note(parent, name, false)
			parent.Lchown(name, f.UID, f.GID)
			if f.Mode != 0 {
				parent.Chmod(name, f.Mode)
			}
		}
		parent.Close()
		if err != nil {
			return stubs, fmt.Errorf("placing %s: %w", f.Path, err)
		}
	}
	return stubs, nil
}
