package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/option"
	"github.com/kilnbuild/kiln/internal/rootfs"
	"github.com/kilnbuild/kiln/internal/sandbox"
)

// stageRoot is a directory a stage's files are built in, opened.
type stageRoot struct {
	dir string
	fs  *fsroot.Root
	// live is set for the running container's own file system (in-place
	// isolation): it lists the paths that are kiln's, the container's
	// mounts and the kernel's, which are never emptied, unpacked over or
	// snapshotted.
	live *rootfs.IgnoreList
}

// clear empties the root, but for what it must keep.
func (r *stageRoot) clear() error { return rootfs.Clear(r.dir, r.live) }

// unpackOptions are the options of unpacking a layer over the root.
func (r *stageRoot) unpackOptions(o rootfs.UnpackOptions) rootfs.UnpackOptions {
	o.Ignore = r.live
	return o
}

// isolation is how stages are kept from the system the build runs on: where
// each stage's root is and how RUN runs in it. It is chosen once, from the
// options and the host (setIsolation).
type isolation interface {
	// stageRoot is the root stage i is built in.
	stageRoot(i int) (*stageRoot, error)
	// eager says a stage's base is unpacked before its first instruction,
	// whatever the instructions need.
	eager() bool
	// finished moves a finished stage that is not the target to where
	// later stages (COPY --from, RUN --mount) can still read it.
	finished(ctx context.Context, st *stage) error
	// run runs RUN's command; secrets are its secret files.
	run(ctx context.Context, spec sandbox.Spec, secrets []sandbox.File, o sandbox.Options) error
	// begin and end run before the first stage and after the last.
	begin() error
	end(ctx context.Context, last *stage) error
}

// privateRoots is chroot isolation: each stage in a directory of its own
// under the work directory, RUN in a sandbox chrooted to it.
type privateRoots struct{ b *builder }

func (p privateRoots) stageRoot(i int) (*stageRoot, error)  { return p.b.privateStageRoot(i) }
func (privateRoots) eager() bool                            { return false }
func (privateRoots) finished(context.Context, *stage) error { return nil }
func (privateRoots) begin() error                           { return nil }
func (privateRoots) end(context.Context, *stage) error      { return nil }

// run bind-mounts each secret read-only from a file of its own in the work
// directory, removed when the command ends.
func (p privateRoots) run(ctx context.Context, spec sandbox.Spec, secrets []sandbox.File, o sandbox.Options) error {
	userns, err := p.b.runUserNS()
	if err != nil {
		return err
	}
	o.UserNS = userns
	if spec.Network == sandbox.NetworkSlirp {
		if o.Net, err = p.b.runNet(); err != nil {
			return err
		}
	}
	for _, s := range secrets {
		tmp, err := os.MkdirTemp(p.b.work, "secret-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		file := filepath.Join(tmp, "secret")
		if err := os.WriteFile(file, []byte(s.Data), 0o400); err != nil {
			return err
		}
		// Unowned (kiln without CAP_CHOWN), the file stays root's and 0400.
		_ = os.Chown(file, s.UID, s.GID)
		if s.Mode != 0 {
			if err := os.Chmod(file, s.Mode); err != nil {
				return fmt.Errorf("secret file: %w", err)
			}
		}
		spec.Mounts = append(spec.Mounts, sandbox.Mount{Type: "bind", Source: tmp, SubPath: "secret", Target: s.Path, ReadOnly: true})
	}
	sortMounts(spec.Mounts)
	return sandbox.Run(ctx, spec, o)
}

// liveRoot is in-place isolation, kaniko's model: every stage is built in
// the container's own file system, and RUN runs directly in it.
type liveRoot struct {
	b    *builder
	root *stageRoot
}

func (l liveRoot) stageRoot(int) (*stageRoot, error) { return l.root, nil }

// eager: without the cache the container's file system becomes the
// base's at once, as in kaniko, whatever the stage then does.
func (l liveRoot) eager() bool { return !l.b.cache }

// finished copies the stage out: the next stage empties the root.
func (l liveRoot) finished(ctx context.Context, st *stage) error {
	if st.ps.Index == l.b.plan.Target {
		return nil
	}
	r, err := l.b.privateStageRoot(st.ps.Index)
	if err != nil {
		return err
	}
	st.root = r
	if err := l.b.unpack(ctx, r, st.img, "stage "+stageLabel(st.ps), true); err != nil {
		return err
	}
	st.unpacked, st.pending = true, nil
	return nil
}

// run writes the secrets as files for the command's time (sandbox.Direct).
func (l liveRoot) run(ctx context.Context, spec sandbox.Spec, secrets []sandbox.File, o sandbox.Options) error {
	return sandbox.Direct(ctx, spec, secrets, o)
}

// begin is --pre-cleanup.
func (l liveRoot) begin() error {
	if !l.b.o.PreCleanup {
		return nil
	}
	if err := l.root.clear(); err != nil {
		return option.New("PreCleanup", "", err)
	}
	return nil
}

// end is --materialize, then --cleanup.
func (l liveRoot) end(ctx context.Context, last *stage) error {
	if l.b.o.Materialize && last.root == l.root {
		if err := l.b.materialize(ctx, last); err != nil {
			return option.New("Materialize", "", err)
		}
	}
	if l.b.o.Cleanup {
		if err := l.root.clear(); err != nil {
			return option.New("Cleanup", "", err)
		}
	}
	return nil
}

// privateStageRoot makes and opens stage i's root under the work directory.
func (b *builder) privateStageRoot(i int) (*stageRoot, error) {
	dir := filepath.Join(b.work, "stage-"+fmt.Sprint(i), "root")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating stage root: %w", err)
	}
	fs, err := fsroot.Open(dir)
	if err != nil {
		return nil, err
	}
	b.roots = append(b.roots, fs)
	return &stageRoot{dir: dir, fs: fs}, nil
}
