package build

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
}

// source is where a COPY reads from.
type source struct {
	root  string
	what  string                // "build context", "stage x", "image y"
	ctx   *buildcontext.Context // ignore rules, for the build context only
	owner bool                  // keep source owners
}

func (b *builder) copySource(ctx context.Context, st *stage, from string) (*source, error) {
	if from == "" {
		return &source{root: b.ctxDir.Dir, what: "build context", ctx: b.ctxDir}, nil
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
		return &source{root: prev.root, what: "stage " + ref, owner: true}, nil
	}
	if i := b.df.StageIndex(ref, len(b.df.Stages)); i >= 0 {
		return nil, fmt.Errorf("--from=%s: stage %d is not defined before stage %d (circular or forward reference)", ref, i, st.ps.Index)
	}
	root, ok := b.images[ref]
	if !ok {
		img, err := b.fromImage(ctx, ref, st.platform)
		if err != nil {
			if !strings.ContainsAny(ref, "/:@") {
				return nil, fmt.Errorf("--from=%s: no stage named %q before this one, and pulling it as an image failed: %w", ref, ref, err)
			}
			return nil, fmt.Errorf("--from=%s: %w", ref, err)
		}
		root = filepath.Join(b.work, "image-"+strconv.Itoa(len(b.images)))
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, err
		}
		if err := b.unpack(ctx, root, img, ref); err != nil {
			return nil, fmt.Errorf("--from=%s: %w", ref, err)
		}
		b.images[ref] = root
	}
	return &source{root: root, what: "image " + ref, owner: true}, nil
}

// parseChmod parses an octal --chmod value.
func parseChmod(s string) (*fs.FileMode, error) {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o7777 {
		return nil, fmt.Errorf("--chmod=%s: want an octal mode such as 0755", s)
	}
	m := rootfs.ModeFromTar(int64(n))
	return &m, nil
}

func hasMeta(p string) bool { return strings.ContainsAny(p, "*?[") }

func isURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

func isGit(s string) bool {
	return strings.HasPrefix(s, "git@") || strings.HasPrefix(s, "git://") ||
		(isURL(s) && strings.Contains(strings.SplitN(s, "#", 2)[0], ".git"))
}

// copy runs COPY or ADD and returns the entries it changed.
func (b *builder) copy(ctx context.Context, st *stage, r copyRequest) ([]layer.Entry, error) {
	src, err := b.copySource(ctx, st, r.from)
	if err != nil {
		return nil, err
	}
	wo := writerOptions{preserveOwner: src.owner}
	if r.chown != "" {
		ids, err := rootfs.LookupChown(st.root, r.chown)
		if err != nil {
			return nil, fmt.Errorf("--chown=%s: %w", r.chown, err)
		}
		wo.chown = &ids
	}
	if r.chmod != "" {
		if wo.chmod, err = parseChmod(r.chmod); err != nil {
			return nil, err
		}
	}
	var exclude *patternmatcher.PatternMatcher
	if len(r.exclude) > 0 {
		if exclude, err = patternmatcher.New(r.exclude); err != nil {
			return nil, fmt.Errorf("--exclude: %w", err)
		}
	}
	w := b.newWriter(st, wo)

	dest := r.sources.DestPath
	destIsDir := strings.HasSuffix(dest, "/") || strings.HasSuffix(dest, "/.") || dest == "."
	if !path.IsAbs(dest) {
		wd := st.cfg.Config.WorkingDir
		if wd == "" {
			wd = "/"
		}
		dest = path.Join(wd, dest)
	}
	dest = path.Clean(dest)
	if !destIsDir {
		if h, err := rootfs.Resolve(st.root, dest, true); err == nil {
			if fi, err := os.Stat(h); err == nil && fi.IsDir() {
				destIsDir = true
			}
		}
	}
	if n := len(r.sources.SourcePaths) + len(r.sources.SourceContents); n > 1 && !destIsDir {
		return nil, fmt.Errorf("when using %s with more than one source file, the destination must be a directory and end with a /", r.name)
	}
	if r.checksum != "" {
		for _, s := range r.sources.SourcePaths {
			if !isURL(s) {
				return nil, fmt.Errorf("ADD --checksum=%s: checksum can only be used with http(s) sources, not %q", r.checksum, s)
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
			m.mode = tarMode(*wo.chmod)
		}
		if err := w.file(into(c.Path), strings.NewReader(c.Data), m); err != nil {
			return nil, fmt.Errorf("%s heredoc %s: %w", r.name, c.Path, err)
		}
	}

	for _, sp := range r.sources.SourcePaths {
		if r.add && isGit(sp) {
			return nil, fmt.Errorf("ADD %s: git sources are not supported yet", redactURL(sp))
		}
		if r.add && isURL(sp) {
			if err := b.addURL(ctx, w, sp, r, destIsDir, dest); err != nil {
				return nil, err
			}
			continue
		}
		if r.from == "" && isURL(sp) {
			return nil, fmt.Errorf("COPY %s: COPY cannot fetch URLs, use ADD", redactURL(sp))
		}
		pivot, pattern := "", sp
		if r.parents {
			if before, after, ok := strings.Cut(sp, "/./"); ok {
				pivot, pattern = before, path.Join(before, after)
			}
		}
		pattern = strings.TrimPrefix(path.Clean("/"+pattern), "/")
		var matches []string
		if hasMeta(pattern) {
			if matches, err = glob(src.root, pattern); err != nil {
				return nil, fmt.Errorf("%s %s: %w", r.name, sp, err)
			}
			kept := matches[:0]
			for _, m := range matches {
				if !src.ctx.Excluded(m) {
					kept = append(kept, m)
				}
			}
			matches = kept
		} else {
			if src.ctx.Excluded(pattern) {
				return nil, fmt.Errorf("%s %s: the source is excluded by %s", r.name, sp, filepath.Base(src.ctx.IgnoreFile))
			}
			matches = []string{pattern}
		}
		toDir := destIsDir || len(matches) > 1
		for _, m := range matches {
			host, err := rootfs.Resolve(src.root, m, true)
			if err != nil {
				return nil, err
			}
			fi, err := os.Lstat(host)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil, fmt.Errorf("%s %s: %q not found in the %s", r.name, sp, m, src.what)
				}
				return nil, fmt.Errorf("%s %s: %w", r.name, sp, err)
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
				if err := b.copyDir(w, src, host, m, target, fi, exclude); err != nil {
					return nil, fmt.Errorf("%s %s: %w", r.name, sp, err)
				}
			case r.add && r.unpack && isArchive(host):
				if err := b.extract(w, host, target); err != nil {
					return nil, fmt.Errorf("ADD %s: %w", sp, err)
				}
			default:
				if !r.parents && toDir {
					target = path.Join(dest, path.Base(m))
				}
				if err := w.copyFrom(host, fi, target); err != nil {
					return nil, fmt.Errorf("%s %s: %w", r.name, sp, err)
				}
			}
		}
	}
	return w.entries(), nil
}

// copyDir copies the contents of the directory host (image path rel in the
// source) into the image directory dest.
func (b *builder) copyDir(w *writer, src *source, host, rel, dest string, fi fs.FileInfo, exclude *patternmatcher.PatternMatcher) error {
	th, err := rootfs.Resolve(w.root, dest, true)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(th); errors.Is(err, fs.ErrNotExist) {
		// A directory the COPY creates takes the source directory's metadata.
		if err := w.copyFrom(host, fi, dest); err != nil {
			return err
		}
	} else if _, err := w.mkdirAll(dest); err != nil {
		return err
	}
	return filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == host {
			return nil
		}
		sub, err := filepath.Rel(host, p)
		if err != nil {
			return err
		}
		sub = filepath.ToSlash(sub)
		ctxRel := path.Join(rel, sub)
		if src.ctx.Excluded(ctxRel) || (exclude != nil && matches(exclude, sub)) {
			if d.IsDir() && !src.ctx.MayInclude() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return w.copyFrom(p, info, path.Join(dest, sub))
	})
}

func matches(pm *patternmatcher.PatternMatcher, p string) bool {
	ok, err := pm.MatchesOrParentMatches(p)
	return err == nil && ok
}

// glob matches a slash pattern inside root element by element, listing
// directories through root-relative symlink resolution so it never leaves
// root. It returns image paths without a leading slash, sorted.
func glob(root, pattern string) ([]string, error) {
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
			h, err := rootfs.Resolve(root, c, true)
			if err != nil {
				return nil, err
			}
			ents, err := os.ReadDir(h)
			if err != nil {
				continue
			}
			for _, e := range ents {
				if ok, _ := path.Match(elem, e.Name()); ok {
					next = append(next, path.Join(c, e.Name()))
				}
			}
		}
		cur = next
	}
	var out []string
	for _, c := range cur {
		h, err := rootfs.Resolve(root, c, false)
		if err != nil {
			return nil, err
		}
		if _, err := os.Lstat(h); err == nil {
			out = append(out, c)
		}
	}
	return out, nil
}
