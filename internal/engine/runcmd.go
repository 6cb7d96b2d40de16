package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/rootfs"
	"github.com/kilnbuild/kiln/internal/sandbox"
	"github.com/kilnbuild/kiln/internal/snapshot"
)

// Secret is a build secret given with --secret: a file or an environment
// variable's value.
type Secret struct {
	// File is the secret's file on the host.
	File string
	// Env names the environment variable holding the secret.
	Env string
}

// runArgs turns a RUN instruction into the argv to execute, following
// BuildKit for heredocs: a lone heredoc with a #! line becomes a script
// run directly, a lone heredoc otherwise becomes the shell's command, and
// heredocs inside a longer line are passed to the shell as written.
func (st *stage) runArgs(c *instructions.RunCommand) ([]string, []sandbox.Script, error) {
	args := c.CmdLine
	var scripts []sandbox.Script
	if len(c.Files) > 0 {
		if len(args) != 1 || !c.PrependShell {
			return nil, nil, fmt.Errorf("parsing produced an invalid run command: %v", args)
		}
		if hd := parser.MustParseHeredoc(args[0]); hd != nil {
			data := c.Files[0].Data
			if c.Files[0].Chomp {
				data = parser.ChompHeredocContent(data)
			}
			if strings.HasPrefix(data, "#!") {
				name := path.Base(c.Files[0].Name)
				scripts = append(scripts, sandbox.Script{Name: name, Data: data})
				return []string{"/dev/pipes/" + name}, scripts, nil
			}
			args = []string{data}
		} else {
			var b strings.Builder
			b.WriteString(args[0])
			for _, f := range c.Files {
				b.WriteByte('\n')
				b.WriteString(f.Data)
				b.WriteString(f.Name)
			}
			args = []string{b.String()}
		}
	}
	return st.CommandLine(instructions.ShellDependantCmdLine{CmdLine: args, PrependShell: c.PrependShell}), scripts, nil
}

// runEnv is what RUN sees: the image env, the stage's ARGs, the proxy
// ARGs given, a PATH when none is set and, as runc gives it, HOME from
// the user's passwd entry ("/" without one) when none is set.
func (b *builder) runEnv(st *stage) []string {
	env := st.Env.Merge(b.args.ProxyArgs())
	if _, ok := env.Get("PATH"); !ok {
		env.Set("PATH", defaultPath)
	}
	if _, ok := env.Get("HOME"); !ok {
		env.Set("HOME", rootfs.HomeDir(st.root.fs, st.Config.Config.User))
	}
	return env.List()
}

// defaultPath is the PATH of RUN without one, and of FROM scratch images
// (BuildKit's dockerfile2llb).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// runHistory is BuildKit's created_by for RUN: "|N K=V ... argv".
func runHistory(st *stage, argv []string) string {
	var b strings.Builder
	b.WriteString("RUN ")
	if keys := st.Args.Keys(); len(keys) > 0 {
		fmt.Fprintf(&b, "|%d ", len(keys))
		for _, k := range keys {
			v, _ := st.Args.Get(k)
			b.WriteString(k + "=" + v + " ")
		}
	}
	b.WriteString(strings.Join(argv, " "))
	return b.String()
}

// runHandler is RUN.
type runHandler struct {
	b *builder
	c *instructions.RunCommand
}

// key: RUN sees every variable in scope, so all of them count, and it
// reads its bind mounts' sources. Cache and tmpfs mounts start from
// anything; secret values never enter the key.
func (h runHandler) key(ctx context.Context, st *stage, k *cache.Key) (bool, error) {
	c := st.Config.Config
	k.Add("instruction", sourceText(h.c)).AddEnv("env", st.Env.List())
	k.Add("user", c.User).Add("workdir", c.WorkingDir).Add("shell", strings.Join(c.Shell, "\x00"))
	for _, f := range h.c.Files {
		k.Add("heredoc", f.Name+"\x00"+f.Data)
	}
	for _, m := range instructions.GetMounts(h.c) {
		if m.Type != instructions.MountTypeBind {
			continue
		}
		d, err := h.b.readDigest(ctx, st, m.From, []string{m.Source}, nil)
		if err != nil {
			return false, err
		}
		k.Add("bind "+m.Target, d)
	}
	return h.b.o.CacheRunLayers, nil
}

func (h runHandler) root(*stage) (rootNeed, error) { return wholeRoot, nil }

// createdBy is RUN's history text: the command with the stage's ARGs, as
// Docker writes it.
func (h runHandler) createdBy(st *stage) string {
	argv, _, err := st.runArgs(h.c)
	if err != nil {
		return ""
	}
	return runHistory(st, argv)
}

// apply executes RUN and commits a layer of exactly its changes.
func (h runHandler) apply(ctx context.Context, st *stage) error {
	b, c := h.b, h.c
	argv, scripts, err := st.runArgs(c)
	if err != nil {
		return err
	}
	if sec := instructions.GetSecurity(c); sec != "" && sec != "sandbox" {
		return fmt.Errorf("RUN --security=%s is not supported", sec)
	}
	spec := sandbox.Spec{Root: st.root.dir, Args: argv, Env: b.runEnv(st), Scripts: scripts, Network: b.network}
	switch instructions.GetNetwork(c) {
	case instructions.NetworkNone:
		spec.Network = sandbox.NetworkNone
	case instructions.NetworkHost:
		if b.network != sandbox.NetworkHost {
			// A Dockerfile is not granted the host's network.
			b.log.Warn("RUN --network=host: the RUN keeps the build's network", "network", b.network)
		}
	case instructions.NetworkDefault:
	}
	user := st.Config.Config.User
	if user != "" {
		ids, err := rootfs.LookupUser(st.root.fs, user)
		if err != nil {
			return fmt.Errorf("USER %s: %w", user, err)
		}
		spec.UID, spec.GID = uint32(ids.UID), uint32(ids.GID)
		if name := rootfs.UserName(st.root.fs, user); name != "" {
			groups, err := rootfs.SupplementaryGroups(st.root.fs, name)
			if err != nil {
				return err
			}
			for _, g := range groups {
				spec.Groups = append(spec.Groups, uint32(g))
			}
		}
	}
	wd := st.Config.Config.WorkingDir
	if wd == "" {
		wd = "/"
	}
	spec.Dir = wd

	snapOpts := b.snapshotOptions(st)
	before := st.snapshot
	if before == nil && !st.imageless {
		stop := b.clock(phaseSnapshot)
		before, err = snapshot.Take(ctx, st.root.dir, snapOpts)
		stop()
		if err != nil {
			return err
		}
	}
	// RUN in a missing working directory creates it, as BuildKit does.
	if _, err := st.root.fs.Stat(wd); errors.Is(err, fs.ErrNotExist) {
		d, err := st.root.fs.MkdirAll(wd, fsroot.MkdirOptions{})
		if err != nil {
			return fmt.Errorf("creating working directory %s: %w", wd, err)
		}
		d.Close()
	}
	secrets, cleanup, err := b.runMounts(ctx, st, c, &spec)
	defer cleanup()
	if err != nil {
		return err
	}
	label := stageLabel(st.ps)
	ro := sandbox.Options{
		WorkDir:     b.work,
		Slirp4netns: b.slirp,
		Protect:     secretPlaces{b.ignore},
		Output:      func(stream, line string) { b.runOutput(label, stream, b.redact(line)) },
	}
	stopRun := b.clock(phaseRun)
	err = b.iso.run(ctx, spec, secrets, ro)
	stopRun()
	if err != nil {
		var ee *sandbox.ExitError
		if errors.As(err, &ee) {
			for i := range ee.Tail {
				ee.Tail[i] = b.redact(ee.Tail[i])
			}
			return fmt.Errorf("RUN %s: %w", strings.Join(argv, " "), ee)
		}
		return fmt.Errorf("RUN: %w", err)
	}
	if st.imageless {
		return b.commit(ctx, st, runHistory(st, argv), nil, true)
	}
	stop := b.clock(phaseSnapshot)
	changes, after, err := before.Diff(ctx, snapOpts)
	if err != nil {
		stop()
		return err
	}
	entries, err := snapshot.Entries(st.root.dir, changes)
	stop()
	if err != nil {
		return err
	}
	if err := b.commit(ctx, st, runHistory(st, argv), entries, true); err != nil {
		return err
	}
	st.snapshot = after
	return nil
}

func (b *builder) snapshotMode() snapshot.Mode {
	if b.o.SnapshotMode == "" {
		return snapshot.Full
	}
	return b.o.SnapshotMode
}

// runOutput passes a line a RUN printed on: as the command wrote it, to
// the build's own stdout or stderr (kaniko's behaviour), or, for a JSON
// log, as a record that keeps the stream's name.
func (b *builder) runOutput(stage, stream, line string) {
	w := b.o.RunStdout
	if stream == "stderr" {
		w = b.o.RunStderr
	}
	if w == nil {
		b.log.Info(line, "stage", stage, "stream", stream)
		return
	}
	io.WriteString(w, line+"\n")
}

// redact hides secret values in a line of output.
func (b *builder) redact(line string) string { return b.secrets.redact(line) }

// runMounts turns RUN --mount options into sandbox mounts, and secrets
// into the files the isolation places for the run. The returned function
// removes temporary files; call it after the run.
func (b *builder) runMounts(ctx context.Context, st *stage, c *instructions.RunCommand, spec *sandbox.Spec) ([]sandbox.File, func(), error) {
	var secrets []sandbox.File
	var temps []string
	var releases []func()
	cleanup := func() {
		for _, t := range temps {
			os.RemoveAll(t)
		}
		for _, r := range releases {
			r()
		}
	}
	for _, m := range instructions.GetMounts(c) {
		target := m.Target
		if target != "" && !path.IsAbs(target) {
			target = path.Join(spec.Dir, target)
		}
		switch m.Type {
		case instructions.MountTypeTmpfs:
			spec.Mounts = append(spec.Mounts, sandbox.Mount{Type: "tmpfs", Target: target, Size: m.SizeLimit})
		case instructions.MountTypeCache:
			id := m.CacheID
			if id == "" {
				id = path.Clean(target) // as BuildKit: /x/ and /x share a cache
			}
			if m.From != "" {
				return nil, cleanup, fmt.Errorf("--mount=type=cache,from=%s is not supported yet", m.From)
			}
			sum := sha256.Sum256([]byte(id))
			caches := filepath.Join(b.o.WorkDir, "run-cache")
			if err := os.MkdirAll(caches, 0o700); err != nil {
				return nil, cleanup, err
			}
			dir, release, err := cacheMountDir(ctx, filepath.Join(caches, hex.EncodeToString(sum[:8])), m.CacheSharing)
			if err != nil {
				return nil, cleanup, fmt.Errorf("--mount=type=cache,id=%s: %w", id, err)
			}
			releases = append(releases, release)
			if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
				mode := os.FileMode(0o755)
				if m.Mode != nil {
					mode = os.FileMode(*m.Mode)
				}
				if err := os.MkdirAll(dir, 0o755); err != nil {
					return nil, cleanup, err
				}
				os.Chmod(dir, mode)
				uid, gid := 0, 0
				if m.UID != nil {
					uid = int(*m.UID)
				}
				if m.GID != nil {
					gid = int(*m.GID)
				}
				os.Chown(dir, uid, gid)
			}
			spec.Mounts = append(spec.Mounts, sandbox.Mount{Type: "bind", Source: dir, Target: target, ReadOnly: m.ReadOnly})
		case instructions.MountTypeBind:
			src := &source{fs: b.ctxDir.FS, ctx: b.ctxDir, what: "build context"}
			if m.From != "" {
				var err error
				if src, err = b.copySource(ctx, st, m.From); err != nil {
					return nil, cleanup, err
				}
			}
			// The sandbox resolves the source again, inside the directory
			// the source's root was opened from, never through a path of
			// its parents looked up before.
			dir, sub := src.fs.Origin()
			real, err := src.fs.Real(m.Source)
			if err == nil && (src.excluded(m.Source) || src.excluded(real)) {
				err = fmt.Errorf("excluded by %s: %w", filepath.Base(src.ctx.IgnoreFile), fs.ErrNotExist)
			}
			if err != nil {
				return nil, cleanup, fmt.Errorf("--mount=type=bind,source=%s: %w", m.Source, err)
			}
			mount := sandbox.Mount{Type: "bind", Source: dir, SubPath: path.Join(sub, real), Target: target, ReadOnly: m.ReadOnly}
			if !m.ReadOnly || src.ctx.Excludes() {
				// A read-write bind mount's writes are discarded, and the
				// context is seen without what .dockerignore excludes:
				// give it a copy.
				tmp, err := os.MkdirTemp(b.work, "bind-")
				if err != nil {
					return nil, cleanup, err
				}
				temps = append(temps, tmp)
				name, err := copyTree(src, real, tmp)
				if err != nil {
					return nil, cleanup, fmt.Errorf("--mount=type=bind,source=%s: %w", m.Source, err)
				}
				mount.Source, mount.SubPath = filepath.Join(tmp, name), ""
				if name == "file" {
					mount.Source, mount.SubPath = tmp, name
				}
			}
			spec.Mounts = append(spec.Mounts, mount)
		case instructions.MountTypeSecret:
			id := m.CacheID
			if id == "" {
				id = path.Base(target)
			}
			if target == "" {
				target = "/run/secrets/" + id
			}
			sec, ok := b.o.Secrets[id]
			if !ok {
				if m.Required {
					return nil, cleanup, fmt.Errorf("secret %q is required but was not given (give it with option Secrets id=%s,...)", id, id)
				}
				continue
			}
			value, err := b.secretValue(sec)
			if err != nil {
				return nil, cleanup, fmt.Errorf("secret %q: %w", id, err)
			}
			if m.Env != nil {
				name := *m.Env
				if name == "" {
					name = id
				}
				spec.Env = append(spec.Env, name+"="+value)
				if m.Target == "" {
					continue
				}
			}
			uid, gid := 0, 0
			if m.UID != nil {
				uid = int(*m.UID)
			}
			if m.GID != nil {
				gid = int(*m.GID)
			}
			f := sandbox.File{Path: target, Data: value, UID: uid, GID: gid}
			if m.Mode != nil {
				f.Mode = os.FileMode(*m.Mode)
			}
			secrets = append(secrets, f)
		case instructions.MountTypeSSH:
			return nil, cleanup, errors.New("--mount=type=ssh is not supported yet")
		default:
			return nil, cleanup, fmt.Errorf("--mount type %q is not supported", m.Type)
		}
	}
	sortMounts(spec.Mounts)
	return secrets, cleanup, nil
}

// secretPlaces is what an in-place RUN's secret files may not be placed
// in: the ignore list, except /run/secrets, where BuildKit puts secrets
// (and which holds only other secrets, never overwritten: a target that
// exists is refused).
type secretPlaces struct{ ignore *rootfs.IgnoreList }

func (s secretPlaces) Ignored(p string) bool {
	p = fsroot.Clean(p)
	if p == "run" || p == "var/run" {
		return false // created when missing, to hold secrets
	}
	for _, dir := range []string{"run/secrets", "var/run/secrets"} {
		if p == dir || strings.HasPrefix(p, dir+"/") {
			return false
		}
	}
	return s.ignore.Ignored(p)
}

func (s secretPlaces) HoldsIgnored(p string) bool { return s.ignore.HoldsIgnored(p) }

// secretValue reads a secret and remembers its value for redaction.
func (b *builder) secretValue(s Secret) (string, error) {
	var v string
	switch {
	case s.Env != "":
		val, ok := b.lookupEnv(s.Env)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", s.Env)
		}
		v = val
	default:
		data, err := os.ReadFile(s.File)
		if err != nil {
			return "", err
		}
		v = string(data)
	}
	b.secrets.add(v)
	return v, nil
}

// copyTree copies the real path p of src (a directory or a file) into the
// empty directory dst, leaving out what the context excludes, for a bind
// mount; it returns the copy's name in dst ("tree" or "file"). Both sides
// are worked on through handles: nothing is followed.
func copyTree(src *source, p, dst string) (string, error) {
	out, err := fsroot.Open(dst)
	if err != nil {
		return "", err
	}
	defer out.Close()
	fi, err := src.fs.Lstat(p)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		parent, name, err := src.fs.Parent(p)
		if err != nil {
			return "", err
		}
		defer parent.Close()
		return "file", copyEntry(parent, name, fi, out.Dir(), "file")
	}
	if err := out.Dir().Mkdir("tree", fi.Mode().Perm()|0o700); err != nil {
		return "", err
	}
	top, err := out.Dir().OpenDirAt("tree")
	if err != nil {
		return "", err
	}
	defer top.Close()
	dirs := map[string]*fsroot.Dir{"": top}
	defer func() {
		for k, d := range dirs {
			if k != "" {
				d.Close()
			}
		}
	}()
	err = walkTree(src.fs, p, func(sub string, parent *fsroot.Dir, name string, info fs.FileInfo) (bool, error) {
		if src.excluded(path.Join(p, sub)) {
			return info.IsDir() && src.ctx.MayInclude(), nil
		}
		dir := path.Dir("/" + sub)[1:]
		to, ok := dirs[dir]
		if !ok {
			d, err := out.OpenDir(path.Join("tree", dir))
			if err != nil {
				return false, nil // below an excluded directory
			}
			if len(dirs) > 256 {
				for k, d := range dirs {
					if k != "" {
						d.Close()
						delete(dirs, k)
					}
				}
			}
			dirs[dir], to = d, d
		}
		if err := copyEntry(parent, name, info, to, name); err != nil {
			return false, err
		}
		return true, nil
	})
	return "tree", err
}

// copyEntry copies one directory (empty), symlink or regular file from
// (from, name) to (to, as); other types are skipped.
func copyEntry(from *fsroot.Dir, name string, fi fs.FileInfo, to *fsroot.Dir, as string) error {
	switch {
	case fi.IsDir():
		return to.Mkdir(as, fi.Mode().Perm()|0o700)
	case fi.Mode()&fs.ModeSymlink != 0:
		t, err := from.Readlink(name)
		if err != nil {
			return err
		}
		return to.Symlink(t, as)
	case fi.Mode().IsRegular():
		f, err := from.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := to.WriteFile(as, f, 0o600); err != nil {
			return err
		}
		return to.Chmod(as, fi.Mode().Perm())
	}
	return nil
}

// sortMounts orders mounts so that a mount inside another comes after it.
func sortMounts(m []sandbox.Mount) {
	sort.SliceStable(m, func(i, j int) bool { return len(m[i].Target) < len(m[j].Target) })
}
