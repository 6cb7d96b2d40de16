package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/patternmatcher"

	"github.com/kilnbuild/kiln/internal/buildcontext"
	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/rootfs"
)

// copyRequest is a COPY or ADD after expansion.
type copyRequest struct {
	name       string // COPY or ADD
	sources    instructions.SourcesAndDest
	from       string
	chown      string
	chmod      string
	exclude    []string
	parents    bool
	checksum   string
	add        bool
	unpack     bool
	unpackSet  bool
	keepGitDir bool
	// stream reads the files copied from the source for the layer
	// instead of writing them into the root (writerOptions.stream).
	stream bool
}

// source is where a COPY reads from: a tree read through handles
// resolved inside it.
type source struct {
	fs    *fsroot.Root
	what  string                // "build context", "stage x", "image y"
	ctx   *buildcontext.Context // ignore rules, for the build context only
	owner bool                  // keep source owners
}

// excluded reports whether the real path p of the source is left out of
// the build (the context's .dockerignore): such a file is not there for
// the build, whatever path or symlink names it.
func (s *source) excluded(p string) bool { return s.ctx.Excluded(p) }

func (b *builder) copySource(ctx context.Context, st *stage, from string) (*source, error) {
	if from == "" {
		return &source{fs: b.ctxDir.FS, what: "build context", ctx: b.ctxDir}, nil
	}
	ref, err := b.plan.Meta.Expander(b.df.Escape)(from)
	if err != nil {
		return nil, fmt.Errorf("--from=%s: %w", from, err)
	}
	if i := b.df.StageIndex(ref, st.ps.Index); i >= 0 {
		prev, ok := b.stages[i]
		if !ok {
			return nil, fmt.Errorf("--from=%s: stage was not built", ref)
		}
		if err := b.materialize(ctx, prev); err != nil {
			return nil, err
		}
		return &source{fs: prev.root.fs, what: "stage " + ref, owner: true}, nil
	}
	if i := b.df.StageIndex(ref, len(b.df.Stages)); i >= 0 {
		return nil, fmt.Errorf("--from=%s: stage %d is not defined before stage %d (circular or forward reference)", ref, i, st.ps.Index)
	}
	fr, ok := b.images[ref]
	if !ok {
		img, err := b.fromImage(ctx, ref, st.platform)
		if err != nil {
			if !strings.ContainsAny(ref, "/:@") {
				return nil, fmt.Errorf("--from=%s: no stage named %q before this one, and pulling it as an image failed: %w", ref, ref, err)
			}
			return nil, fmt.Errorf("--from=%s: %w", ref, err)
		}
		root := filepath.Join(b.work, "image-"+strconv.Itoa(len(b.images)))
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, err
		}
		if fr, err = fsroot.Open(root); err != nil {
			return nil, err
		}
		if err := b.unpack(ctx, &stageRoot{dir: root, fs: fr}, img, ref, true); err != nil {
			fr.Close()
			return nil, fmt.Errorf("--from=%s: %w", ref, err)
		}
		b.images[ref] = fr
	}
	return &source{fs: fr, what: "image " + ref, owner: true}, nil
}

func hasMeta(p string) bool { return strings.ContainsAny(p, "*?[") }

func isURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

func isGit(s string) bool {
	return strings.HasPrefix(s, "git@") || strings.HasPrefix(s, "git://") ||
		(isURL(s) && strings.Contains(strings.SplitN(s, "#", 2)[0], ".git"))
}

// copy runs COPY or ADD and returns the entries it changed, and whether
// some of them are not in the root (streamed from the source).
func (b *builder) copy(ctx context.Context, st *stage, r copyRequest) (*layer.List, bool, error) {
	entries, w, err := b.copyWith(ctx, st, r)
	return entries, w != nil && w.streamedAny, err
}

func (b *builder) copyWith(ctx context.Context, st *stage, r copyRequest) (*layer.List, *writer, error) {
	src, err := b.copySource(ctx, st, r.from)
	if err != nil {
		return nil, nil, err
	}
	wo := writerOptions{preserveOwner: src.owner}
	if r.stream {
		wo.stream = src.fs
	}
	if r.chown != "" {
		ids, err := rootfs.LookupChown(st.root.fs, r.chown)
		if err != nil {
			return nil, nil, fmt.Errorf("--chown=%s: %w", r.chown, err)
		}
		wo.chown = &ids
	}
	if r.chmod != "" {
		if wo.chmod, err = parseChmod(r.chmod); err != nil {
			return nil, nil, err
		}
	}
	var exclude *patternmatcher.PatternMatcher
	if len(r.exclude) > 0 {
		if exclude, err = patternmatcher.New(r.exclude); err != nil {
			return nil, nil, fmt.Errorf("--exclude: %w", err)
		}
	}
	w := b.newWriter(st, wo)
	defer w.close()

	dest := r.sources.DestPath
	destIsDir := strings.HasSuffix(dest, "/") || strings.HasSuffix(dest, "/.") || dest == "."
	dest = path.Clean(st.Abs(dest))
	if !destIsDir {
		if fi, err := st.root.fs.Stat(dest); err == nil && fi.IsDir() {
			destIsDir = true
		}
	}
	// As BuildKit, each source is copied on its own (an empty wildcard
	// copies nothing); only several files landing on one file is an error.
	landed := map[string]string{}
	land := func(target, what string) error {
		if destIsDir {
			return nil
		}
		if prev, ok := landed[target]; ok {
			return fmt.Errorf("%s: both %s and %s land on the file %s; end the destination with / to copy them into a directory", r.name, prev, what, target)
		}
		landed[target] = what
		return nil
	}
	if r.checksum != "" {
		for _, s := range r.sources.SourcePaths {
			if !isURL(s) {
				return nil, nil, fmt.Errorf("ADD --checksum=%s: checksum can only be used with http(s) sources, not %q", r.checksum, s)
			}
		}
	}

	into := func(name string) string {
		if destIsDir {
			return path.Join(dest, name)
		}
		return dest
	}
	for _, c := range r.sources.SourceContents {
		m := meta{mode: 0o644, mtime: b.now}
		if wo.chown != nil {
			m.owner = *wo.chown
		}
		if wo.chmod != nil {
			m.mode = tarMode(wo.chmod.apply(0o644))
		}
		if err := land(into(c.Path), "<<"+c.Path); err != nil {
			return nil, nil, err
		}
		if err := w.file(into(c.Path), strings.NewReader(c.Data), m); err != nil {
			return nil, nil, fmt.Errorf("%s heredoc %s: %w", r.name, c.Path, err)
		}
	}

	for _, sp := range r.sources.SourcePaths {
		if r.add && isGit(sp) {
			return nil, nil, fmt.Errorf("ADD %s: git sources are not supported yet", redactURL(sp))
		}
		if r.add && isURL(sp) {
			if err := b.addURL(ctx, w, sp, r, destIsDir, dest); err != nil {
				return nil, nil, err
			}
			continue
		}
		if r.from == "" && isURL(sp) {
			return nil, nil, fmt.Errorf("COPY %s: COPY cannot fetch URLs, use ADD", redactURL(sp))
		}
		pivot, pattern := "", sp
		if r.parents {
			if before, after, ok := strings.Cut(sp, "/./"); ok {
				pivot, pattern = before, path.Join(before, after)
			}
		}
		pattern = strings.TrimPrefix(path.Clean("/"+pattern), "/")
		var matches []string
		wildcard := hasMeta(pattern)
		if wildcard {
			if matches, err = glob(src.fs, pattern); err != nil {
				return nil, nil, fmt.Errorf("%s %s: %w", r.name, sp, err)
			}
		} else {
			matches = []string{pattern}
		}
		for _, m := range matches {
			// What the path names, every symlink followed inside the source:
			// an ignored file is not in the context under any name.
			real, err := src.fs.Real(m)
			if errors.Is(err, fs.ErrNotExist) {
				return nil, nil, fmt.Errorf("%s %s: %q not found in the %s", r.name, sp, m, src.what)
			}
			if err != nil {
				return nil, nil, fmt.Errorf("%s %s: %w", r.name, sp, err)
			}
			if src.excluded(m) || src.excluded(real) {
				if wildcard {
					continue
				}
				return nil, nil, fmt.Errorf("%s %s: the source is excluded by %s", r.name, sp, filepath.Base(src.ctx.IgnoreFile))
			}
			fi, err := src.fs.Lstat(real)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil, nil, fmt.Errorf("%s %s: %q not found in the %s", r.name, sp, m, src.what)
				}
				return nil, nil, fmt.Errorf("%s %s: %w", r.name, sp, err)
			}
			if exclude != nil {
				if ok, _ := exclude.MatchesOrParentMatches(m); ok {
					continue
				}
			}
			target := dest
			if r.parents {
				rel := m
				if pivot != "" {
					rel = strings.TrimPrefix(strings.TrimPrefix(m, strings.TrimPrefix(path.Clean("/"+pivot), "/")), "/")
				}
				target = path.Join(dest, rel)
			}
			switch {
			case fi.IsDir():
				if err := b.copyDir(w, src, real, target, fi, exclude); err != nil {
					return nil, nil, fmt.Errorf("%s %s: %w", r.name, sp, err)
				}
			case r.add && r.unpack && fi.Mode().IsRegular() && isArchive(src.fs, real):
				f, err := src.fs.OpenFile(real)
				if err != nil {
					return nil, nil, fmt.Errorf("ADD %s: %w", sp, err)
				}
				err = b.extract(w, f, target)
				f.Close()
				if err != nil {
					return nil, nil, fmt.Errorf("ADD %s: %w", sp, err)
				}
			default:
				if !r.parents && destIsDir {
					target = path.Join(dest, path.Base(m))
				}
				if err := land(target, m); err != nil {
					return nil, nil, err
				}
				parent, name, err := src.fs.Parent(real)
				if err != nil {
					return nil, nil, fmt.Errorf("%s %s: %w", r.name, sp, err)
				}
				err = w.copyFrom(parent, name, fi, target)
				parent.Close()
				if err != nil {
					return nil, nil, fmt.Errorf("%s %s: %w", r.name, sp, err)
				}
			}
		}
	}
	return w.entries(), w, nil
}

// copyDir copies the contents of the source directory at the real path
// dir into the image directory dest.
func (b *builder) copyDir(w *writer, src *source, dir, dest string, fi fs.FileInfo, exclude *patternmatcher.PatternMatcher) error {
	if _, err := w.root.Stat(dest); errors.Is(err, fs.ErrNotExist) {
		// A directory the COPY creates takes the source directory's metadata.
		if err := w.dir(dest, w.metaFor(fi)); err != nil {
			return err
		}
	} else if _, err := w.mkdirAll(dest); err != nil {
		return err
	}
	return walkTree(src.fs, dir, func(sub string, parent *fsroot.Dir, name string, info fs.FileInfo) (bool, error) {
		if src.excluded(path.Join(dir, sub)) || (exclude != nil && matches(exclude, sub)) {
			// An excluded directory is entered only when "!" patterns may
			// bring back something below it.
			return info.IsDir() && src.ctx.MayInclude(), nil
		}
		return true, w.copyFrom(parent, name, info, path.Join(dest, sub))
	})
}

// walkTree calls fn for everything below the real directory dir of root,
// depth first in name order, with the directory holding it: nothing is
// followed, and a directory is entered only when fn says so.
func walkTree(root *fsroot.Root, dir string, fn func(sub string, parent *fsroot.Dir, name string, fi fs.FileInfo) (bool, error)) error {
	d, err := root.OpenDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return walkDir(d, "", fn)
}

func walkDir(d *fsroot.Dir, rel string, fn func(sub string, parent *fsroot.Dir, name string, fi fs.FileInfo) (bool, error)) error {
	names, err := d.ReadDir()
	if err != nil {
		return err
	}
	for _, n := range names {
		fi, err := d.Lstat(n)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		sub := path.Join(rel, n)
		descend, err := fn(sub, d, n, fi)
		if err != nil {
			return err
		}
		if descend && fi.IsDir() {
			child, err := d.OpenDirAt(n)
			if err != nil {
				return err
			}
			err = walkDir(child, sub, fn)
			child.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func matches(pm *patternmatcher.PatternMatcher, p string) bool {
	ok, err := pm.MatchesOrParentMatches(p)
	return err == nil && ok
}

// glob matches a slash pattern inside root element by element, listing
// directories through handles resolved inside root. It returns image
// paths without a leading slash, sorted.
func glob(root *fsroot.Root, pattern string) ([]string, error) {
	cur := []string{""}
	for _, elem := range strings.Split(pattern, "/") {
		var next []string
		for _, c := range cur {
			if !hasMeta(elem) {
				next = append(next, path.Join(c, elem))
				continue
			}
			if _, err := path.Match(elem, ""); err != nil {
				return nil, fmt.Errorf("bad pattern %q: %w", pattern, err)
			}
			d, err := root.OpenDir(c)
			if err != nil {
				continue
			}
			names, err := d.ReadDir()
			d.Close()
			if err != nil {
				continue
			}
			for _, n := range names {
				if ok, _ := path.Match(elem, n); ok {
					next = append(next, path.Join(c, n))
				}
			}
		}
		cur = next
	}
	var out []string
	for _, c := range cur {
		if _, err := root.Lstat(c); err == nil {
			out = append(out, c)
		}
	}
	return out, nil
}

// copyHandler is COPY.
type copyHandler struct {
	b *builder
	c *instructions.CopyCommand
}

// key: COPY sees variables only through its expanded words; it reads the
// files of its sources.
func (h copyHandler) key(ctx context.Context, st *stage, k *cache.Key) (bool, error) {
	c := h.c
	k.Add("copy", strings.Join([]string{strings.Join(c.SourcePaths, "\x00"), c.DestPath, c.From, c.Chown, c.Chmod,
		strings.Join(c.ExcludePatterns, "\x00"), fmt.Sprint(c.Parents, c.Link), st.Config.Config.WorkingDir}, "\x01"))
	for _, sc := range c.SourceContents {
		k.Add("heredoc", sc.Path+"\x00"+sc.Data)
	}
	d, err := h.b.readDigest(ctx, st, c.From, c.SourcePaths, c.ExcludePatterns)
	if err != nil {
		return false, err
	}
	k.Add("sources", d)
	return h.b.o.CacheCopyLayers, nil
}

// root: --parents and a --chown by name read the root.
func (h copyHandler) root(st *stage) (rootNeed, error) {
	c := h.c
	return h.b.rootFor(st, c, c.DestPath, c.Parents || (c.Chown != "" && !numericOwner.MatchString(c.Chown)))
}

func (h copyHandler) apply(ctx context.Context, st *stage) error {
	c := h.c
	entries, streamed, err := h.b.copy(ctx, st, copyRequest{
		sources: c.SourcesAndDest, from: c.From, chown: c.Chown, chmod: c.Chmod,
		exclude: c.ExcludePatterns, parents: c.Parents, name: "COPY", stream: h.b.streams(st, c),
	})
	if err != nil {
		return err
	}
	return h.b.commitCopy(ctx, st, sourceText(c), entries, streamed)
}

// addHandler is ADD.
type addHandler struct {
	b *builder
	c *instructions.AddCommand
}

// key: as COPY's; a remote source's content is unknown until fetched, so
// such an ADD is never taken from the cache.
func (h addHandler) key(ctx context.Context, st *stage, k *cache.Key) (bool, error) {
	c := h.c
	cacheable := h.b.o.CacheCopyLayers
	k.Add("add", strings.Join([]string{strings.Join(c.SourcePaths, "\x00"), c.DestPath, c.Chown, c.Chmod, c.Checksum,
		strings.Join(c.ExcludePatterns, "\x00"), fmt.Sprint(c.Unpack != nil && *c.Unpack, c.Link), st.Config.Config.WorkingDir}, "\x01"))
	for _, s := range c.SourcePaths {
		if isURL(s) || isGit(s) {
			cacheable = false
		}
	}
	for _, sc := range c.SourceContents {
		k.Add("heredoc", sc.Path+"\x00"+sc.Data)
	}
	if cacheable {
		d, err := h.b.readDigest(ctx, st, "", c.SourcePaths, c.ExcludePatterns)
		if err != nil {
			return false, err
		}
		k.Add("sources", d)
	}
	return cacheable, nil
}

// root: a --chown by name reads the root.
func (h addHandler) root(st *stage) (rootNeed, error) {
	c := h.c
	return h.b.rootFor(st, c, c.DestPath, c.Chown != "" && !numericOwner.MatchString(c.Chown))
}

func (h addHandler) apply(ctx context.Context, st *stage) error {
	c := h.c
	unpack := true
	if c.Unpack != nil {
		unpack = *c.Unpack
	}
	entries, streamed, err := h.b.copy(ctx, st, copyRequest{
		sources: c.SourcesAndDest, chown: c.Chown, chmod: c.Chmod, exclude: c.ExcludePatterns,
		checksum: c.Checksum, add: true, unpack: unpack, unpackSet: c.Unpack != nil,
		keepGitDir: c.KeepGitDir != nil, name: "ADD", stream: h.b.streams(st, c),
	})
	if err != nil {
		return err
	}
	return h.b.commitCopy(ctx, st, sourceText(c), entries, streamed)
}

// streams says whether a COPY or ADD reads the files it copies from their
// source for its layer instead of writing them into the root: where the
// root may lag behind the stage's layers (not the live "/", not
// --single-snapshot), the stage has layers (its root is not all that is
// read of it) and no RUN later in the stage needs them there. The
// layer then joins the layers not in the root yet, applied when an
// instruction or a later stage needs them (COPY --from, a COPY that
// touches them).
func (b *builder) streams(st *stage, cmd instructions.Command) bool {
	return st.root.live == nil && !b.o.SingleSnapshot && !st.imageless && !runsLater(st, cmd)
}

// commitCopy commits a COPY or ADD's layer; a layer of streamed files is
// not in the root, so it joins the layers pending there.
func (b *builder) commitCopy(ctx context.Context, st *stage, createdBy string, entries *layer.List, streamed bool) error {
	n := len(st.addenda)
	if err := b.commit(ctx, st, createdBy, entries, true); err != nil {
		return err
	}
	if !streamed || len(st.addenda) == n {
		return nil
	}
	if st.own == nil {
		st.own = newPathIndex()
	}
	for e := range entries.All() {
		st.own.add(e.Header.Name)
	}
	st.pending = append(st.pending, ownLayer{st.addenda[len(st.addenda)-1].Layer})
	return nil
}
