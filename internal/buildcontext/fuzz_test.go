package buildcontext

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// FuzzIgnore matches arbitrary .dockerignore patterns against arbitrary
// paths: never a panic, and without "!" exceptions whatever lies below an
// excluded path is excluded too (the build relies on it to skip a whole
// excluded directory).
func FuzzIgnore(f *testing.F) {
	f.Add(".env\nprivate/\n**/*.key\n!keep.key", "private/a/b.key")
	f.Add("*\n!src/**\nsrc/*.tmp", "src/x.tmp")
	f.Add("../x\n/abs\n[a-", "abs/y")
	f.Fuzz(func(t *testing.T, patterns, p string) {
		if len(patterns) > 1024 || len(p) > 256 {
			return
		}
		pm, err := patternmatcher.New(strings.Split(patterns, "\n"))
		if err != nil {
			return
		}
		c := &Context{pm: pm}
		if c.Excluded(p) && !c.MayInclude() && !c.Excluded(p+"/child") {
			t.Fatalf("%q excluded but %q/child not, with no exceptions in %q", p, p, patterns)
		}
		c.Excluded("/" + p)
		c.Excluded("../" + p)
	})
}

// FuzzExtract unpacks arbitrary context archives: nothing outside the
// destination changes, and when the archive is accepted every symlink in
// it stays inside (checked here from the outside, lexically, through the
// other links).
func FuzzExtract(f *testing.F) {
	for _, files := range [][]imagetest.File{
		{imagetest.Dir("x", 0o755, 0, 0), imagetest.Symlink("x/l1", ".."), imagetest.Symlink("l2", "x/l1/..")},
		{imagetest.Symlink("a", "b/c"), imagetest.Symlink("b", "..")},
		{imagetest.Dir("d", 0o755, 0, 0), imagetest.Symlink("s", "d"), imagetest.Reg("s/f", "x", 0o644, 0, 0)},
		{{Path: "h", Type: tar.TypeLink, Link: "../../etc/passwd"}},
		{imagetest.Reg("a", "1", 0o644, 0, 0), {Path: "b", Type: tar.TypeLink, Link: "a"}, imagetest.Symlink("c", "./b")},
	} {
		f.Add(imagetest.Tar(files...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tr := tar.NewReader(bytes.NewReader(data))
		for n := 0; ; n++ {
			h, err := tr.Next()
			if err != nil {
				break
			}
			if h.Size > 1<<16 || n > 64 {
				return
			}
		}
		base := t.TempDir()
		dest, canary := filepath.Join(base, "ctx"), filepath.Join(base, "canary")
		os.MkdirAll(dest, 0o755)
		os.MkdirAll(canary, 0o755)
		os.WriteFile(filepath.Join(canary, "f"), []byte("host"), 0o644)
		err := Extract(bytes.NewReader(data), dest, Limits{MaxBytes: 1 << 20, MaxFiles: 100})
		if err == nil {
			err = CheckLinks(dest)
		}
		if ents, _ := os.ReadDir(canary); len(ents) != 1 {
			t.Fatalf("the directory beside the destination changed: %v", ents)
		}
		if ents, _ := os.ReadDir(base); len(ents) != 2 {
			t.Fatalf("entries appeared beside the destination: %v", ents)
		}
		if err != nil {
			return
		}
		filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.Mode()&os.ModeSymlink == 0 {
				return nil
			}
			if real, err := filepath.EvalSymlinks(p); err == nil {
				if rel, err := filepath.Rel(dest, real); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
					t.Fatalf("accepted %s, which leads to %s", p, real)
				}
			}
			return nil
		})
	})
}
