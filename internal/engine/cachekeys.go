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

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/fsroot"
)

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
	buf := make([]byte, 64<<10)
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
			if err := hashTree(h, buf, src, m, exclude); err != nil {
				return "", err
			}
		}
	}
	return "context:" + hex.EncodeToString(h.Sum(nil)), nil
}

// hashTree writes the names, modes, link targets and contents of what
// the context path rel names (its symlinks followed inside the context),
// leaving out what .dockerignore excludes.
func hashTree(w io.Writer, buf []byte, src *source, rel string, exclude []string) error {
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
			_, err = io.CopyBuffer(w, struct{ io.Reader }{f}, buf)
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
		if e.TopLevel != nil {
			st.pending = append(st.pending, knownLayer{e.Layer, e.TopLevel})
		} else {
			st.pending = append(st.pending, e.Layer)
		}
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
		if l, ok := e.Layer.(interface{ TopLevel() []string }); ok {
			e.TopLevel = l.TopLevel()
		}
	}
	b.cacheWG.Add(1)
	go func() {
		defer b.cacheWG.Done()
		if err := b.o.CacheStore.Put(ctx, key, e); err != nil {
			b.log.Warn("storing a cache layer failed; the build goes on", "key", key[:12], "error", err)
		}
	}()
}
