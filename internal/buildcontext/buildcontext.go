// Package buildcontext opens build contexts and applies .dockerignore rules
// to them without deleting anything.
package buildcontext

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"

	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/option"
)

// Context is a build context directory with its ignore rules.
type Context struct {
	// Dir is the context's directory on disk.
	Dir string
	// IgnoreFile is the .dockerignore file read, or "".
	IgnoreFile string
	// FS reads the context through handles resolved inside it: its
	// symlinks never lead out of it. Close releases it.
	FS *fsroot.Root
	pm *patternmatcher.PatternMatcher
}

// Close releases the context's handle.
func (c *Context) Close() error {
	if c == nil {
		return nil
	}
	return c.FS.Close()
}

// Excludes reports whether the ignore file leaves anything out.
func (c *Context) Excludes() bool { return c != nil && c.pm != nil && len(c.pm.Patterns()) > 0 }

// Dir is the directory a local context source (a bare path or a dir://
// URI) names, or an error naming the context when that is not an existing
// directory.
func Dir(source string) (string, error) {
	dir := source
	if scheme, rest, ok := strings.Cut(source, "://"); ok {
		if scheme != "dir" {
			return "", option.Errorf("Context", strconv.Quote(source), "the %s:// context source is not supported yet (use a local directory or dir://)", scheme)
		}
		dir = rest
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return "", option.New("Context", strconv.Quote(source), err)
	}
	if !fi.IsDir() {
		return "", option.Errorf("Context", strconv.Quote(source), "not a directory")
	}
	return dir, nil
}

// MaxFileSize bounds the Dockerfile and ignore files read from a context or
// a checkout: a hostile one's huge (or sparse) file is refused, not read
// whole.
const MaxFileSize = 16 << 20

// Open opens a local context directory. source may be a bare path or a
// dir:// URI; other kaniko context schemes are not supported yet. It is
// OpenRoot of the directory.
func Open(source, dockerfile string) (*Context, error) {
	dir, err := Dir(source)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, option.New("Context", strconv.Quote(source), err)
	}
	root, err := fsroot.Open(abs)
	if err != nil {
		return nil, option.New("Context", strconv.Quote(source), err)
	}
	return OpenRoot(root, dockerfile)
}

// OpenRoot makes a context of the directory root holds, which it takes
// over (Close releases it; a failed OpenRoot already has); its Path must
// be absolute. dockerfile is the Dockerfile's host path ("" or a URL for
// none beside the context): a "<Dockerfile>.dockerignore" beside it wins
// over the context's ".dockerignore", as in BuildKit. Both are read with
// fsroot.ReadFileIn, inside the context's handle or the other untrusted
// trees' (the working directory the Dockerfile was found in): a symlink
// in them never leads out, and the context's path is not looked up
// again.
func OpenRoot(root *fsroot.Root, dockerfile string, trees ...*fsroot.Root) (*Context, error) {
	c := &Context{Dir: root.Path(), FS: root}
	trees = append([]*fsroot.Root{root}, trees...)
	candidates := []string{filepath.Join(c.Dir, ".dockerignore")}
	if dockerfile != "" && !strings.Contains(dockerfile, "://") {
		candidates = append([]string{dockerfile + ".dockerignore"}, candidates...)
	}
	for _, f := range candidates {
		if err := c.readIgnore(f, trees); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			root.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *Context) readIgnore(file string, trees []*fsroot.Root) error {
	data, err := fsroot.ReadFileIn(file, MaxFileSize, trees...)
	if err != nil {
		return err
	}
	patterns, err := ignorefile.ReadAll(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("reading %s: %w", file, err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	c.IgnoreFile, c.pm = file, pm
	return nil
}

// Excluded reports whether the context-relative slash path rel is excluded
// by the ignore file.
func (c *Context) Excluded(rel string) bool {
	if c == nil || c.pm == nil {
		return false
	}
	rel = strings.TrimPrefix(path.Clean("/"+filepath.ToSlash(rel)), "/")
	if rel == "" {
		return false
	}
	ok, err := c.pm.MatchesOrParentMatches(rel)
	return err == nil && ok
}

// MayInclude reports whether an excluded directory can still hold included
// files because of "!" exception patterns, so a walk must descend into it.
func (c *Context) MayInclude() bool {
	return c != nil && c.pm != nil && c.pm.Exclusions()
}
