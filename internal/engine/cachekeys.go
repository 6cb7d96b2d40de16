package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/fsroot"
)

// instructionKey computes an instruction's cache key, chained from the
// stage's current key, and whether its result may come from the cache.
// The key covers the instruction after expansion, the variables it can
// see (for RUN, ENV and the stage's ARGs: a build arg the stage never
// declares changes nothing), what it reads (context file contents, --from stages and images, bind
// mount sources) and the settings that shape layers. Secret values never
// enter it.
func (b *builder) instructionKey(ctx context.Context, st *stage, cmd instructions.Command, text string) (string, bool, error) {
	k := cache.NewKey(st.key)
	c := st.cfg.Config
	cacheable := false
	switch cmd := cmd.(type) {
	case *instructions.RunCommand:
		// RUN sees every variable in scope, so all of them count.
		cacheable = b.o.CacheRunLayers
		k.Add("instruction", text).AddEnv("env", st.env.List())
		k.Add("user", c.User).Add("workdir", c.WorkingDir).Add("shell", strings.Join(c.Shell, "\x00"))
		for _, f := range cmd.Files {
			k.Add("heredoc", f.Name+"\x00"+f.Data)
		}
		for _, m := range instructions.GetMounts(cmd) {
			if m.Type != instructions.MountTypeBind {
				continue // cache and tmpfs mounts start from anything; secrets stay out
			}
			d, err := b.readDigest(ctx, st, m.From, []string{m.Source}, nil)
			if err != nil {
				return "", false, err
			}
			k.Add("bind "+m.Target, d)
		}
	case *instructions.CopyCommand:
		// COPY sees variables only through its expanded words.
		cacheable = b.o.CacheCopyLayers
		k.Add("copy", strings.Join([]string{strings.Join(cmd.SourcePaths, "\x00"), cmd.DestPath, cmd.From, cmd.Chown, cmd.Chmod,
			strings.Join(cmd.ExcludePatterns, "\x00"), fmt.Sprint(cmd.Parents, cmd.Link), c.WorkingDir}, "\x01"))
		for _, sc := range cmd.SourceContents {
			k.Add("heredoc", sc.Path+"\x00"+sc.Data)
		}
		d, err := b.readDigest(ctx, st, cmd.From, cmd.SourcePaths, cmd.ExcludePatterns)
		if err != nil {
			return "", false, err
		}
		k.Add("sources", d)
	case *instructions.AddCommand:
		cacheable = b.o.CacheCopyLayers
		k.Add("add", strings.Join([]string{strings.Join(cmd.SourcePaths, "\x00"), cmd.DestPath, cmd.Chown, cmd.Chmod, cmd.Checksum,
			strings.Join(cmd.ExcludePatterns, "\x00"), fmt.Sprint(cmd.Unpack != nil && *cmd.Unpack, cmd.Link), c.WorkingDir}, "\x01"))
		for _, s := range cmd.SourcePaths {
			if isURL(s) || isGit(s) {
				cacheable = false // the remote content is unknown until fetched
			}
		}
		for _, sc := range cmd.SourceContents {
			k.Add("heredoc", sc.Path+"\x00"+sc.Data)
		}
		if cacheable {
			d, err := b.readDigest(ctx, st, "", cmd.SourcePaths, cmd.ExcludePatterns)
			if err != nil {
				return "", false, err
			}
			k.Add("sources", d)
		}
	case *instructions.WorkdirCommand:
		k.Add("workdir", cmd.Path).Add("user", c.User).Add("from", c.WorkingDir)
	default:
		// Metadata instructions change the config; what later
		// instructions see of them (ENV) is in their own keys.
		k.Add("instruction", text)
	}
	return k.String(), cacheable, nil
}

// readDigest identifies what an instruction reads: the key of a --from
// stage, the digest of a --from image, or a digest of the context files
// matching sources after .dockerignore (names, modes and contents; not
// times or owners, which COPY does not keep).
func (b *builder) readDigest(ctx context.Context, st *stage, from string, sources, exclude []string) (string, error) {
	if from != "" {
		ref, err := b.plan.Meta.Expander(b.df.Escape)(from)
		if err != nil {
			return "", err
		}
		if i := b.df.StageIndex(ref, st.ps.Index); i >= 0 {
			prev, ok := b.stages[i]
			if !ok {
				return "", fmt.Errorf("--from=%s: stage was not built", ref)
			}
			return "stage:" + prev.key + "\x00" + strings.Join(sources, "\x00"), nil
		}
		img, err := b.fromImage(ctx, ref, st.platform)
		if err != nil {
			return "", fmt.Errorf("--from=%s: %w", ref, err)
		}
		d, err := img.Digest()
		if err != nil {
			return "", err
		}
		return "image:" + d.String() + "\x00" + strings.Join(sources, "\x00"), nil
	}
	h := sha256.New()
	src := &source{fs: b.ctxDir.FS, ctx: b.ctxDir}
	for _, sp := range sources {
		pattern := strings.TrimPrefix(path.Clean("/"+strings.ReplaceAll(sp, "/./", "/")), "/")
		matches := []string{pattern}
		if hasMeta(pattern) {
			var err error
			if matches, err = glob(src.fs, pattern); err != nil {
				return "", err
			}
		}
		fmt.Fprintf(h, "source %q\n", sp)
		for _, m := range matches {
			if err := hashTree(h, src, m, exclude); err != nil {
				return "", err
			}
		}
	}
	return "context:" + hex.EncodeToString(h.Sum(nil)), nil
}

// hashTree writes the names, modes, link targets and contents of what
// the context path rel names (its symlinks followed inside the context),
// leaving out what .dockerignore excludes.
func hashTree(w io.Writer, src *source, rel string, exclude []string) error {
	real, err := src.fs.Real(rel)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && (src.excluded(rel) || src.excluded(real))) {
		fmt.Fprintf(w, "missing %s\n", rel)
		return nil
	}
	if err != nil {
		return err
	}
	entry := func(name string, parent *fsroot.Dir, base string, info fs.FileInfo) error {
		for _, pat := range exclude {
			if ok, _ := path.Match(pat, path.Base(name)); ok {
				return nil
			}
		}
		fmt.Fprintf(w, "%s %o %d\n", name, info.Mode(), info.Size())
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			t, _ := parent.Readlink(base)
			fmt.Fprintf(w, "-> %s\n", t)
		case info.Mode().IsRegular():
			f, err := parent.Open(base)
			if err != nil {
				return err
			}
			_, err = io.Copy(w, f)
			f.Close()
			return err
		}
		return nil
	}
	fi, err := src.fs.Lstat(real)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		parent, base, err := src.fs.Parent(real)
		if err != nil {
			return err
		}
		defer parent.Close()
		return entry(rel, parent, base, fi)
	}
	fmt.Fprintf(w, "%s %o %d\n", rel, fi.Mode(), fi.Size())
	return walkTree(src.fs, real, func(sub string, parent *fsroot.Dir, base string, info fs.FileInfo) (bool, error) {
		if src.excluded(path.Join(real, sub)) {
			return info.IsDir() && src.ctx.MayInclude(), nil
		}
		return true, entry(path.Join(rel, sub), parent, base, info)
	})
}

// cacheHit takes the instruction's result from the cache, if it is there:
// its layer is appended without running anything or unpacking it.
func (b *builder) cacheHit(ctx context.Context, st *stage, key, text, createdBy string) bool {
	e, err := b.o.CacheStore.Get(ctx, key)
	if err != nil {
		b.log.Info("cache miss", "instruction", text, "key", key[:12])
		b.log.Debug("cache miss detail", "error", err)
		return false
	}
	b.log.Info("cache hit", "instruction", text, "key", key[:12])
	h := historyEntry(b.now, createdBy)
	if e.Layer == nil {
		h.EmptyLayer = true
	} else {
		mt, err := e.Layer.MediaType()
		if err != nil {
			return false
		}
		st.addenda = append(st.addenda, mutate.Addendum{Layer: e.Layer, MediaType: mt})
		st.pending = append(st.pending, e.Layer)
		st.snapshot = nil
	}
	st.history = append(st.history, h)
	st.key = key
	return true
}

// cachePut stores an instruction's result alongside the build; a failure
// is a warning, not a failed build.
func (b *builder) cachePut(ctx context.Context, key string, st *stage, addendaBefore int) {
	e := cache.Entry{Created: time.Now().UTC()}
	if len(st.addenda) > addendaBefore {
		e.Layer = st.addenda[len(st.addenda)-1].Layer
	}
	b.cacheWG.Add(1)
	go func() {
		defer b.cacheWG.Done()
		if err := b.o.CacheStore.Put(ctx, key, e); err != nil {
			b.log.Warn("storing a cache layer failed; the build goes on", "key", key[:12], "error", err)
		}
	}()
}
