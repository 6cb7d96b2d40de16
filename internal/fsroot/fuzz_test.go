package fsroot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzRoot lays out symlinks the input chooses, then resolves, creates
// and removes an input path through the root: whatever the links, nothing
// beside the root changes and every handle is inside it.
func FuzzRoot(f *testing.F) {
	f.Add("up=../..\nabs=/\ndir/esc=../../canary", "up/canary/passwd")
	f.Add("a=b\nb=a", "a/x")
	f.Add("x=/../../canary\ndir/y=../x", "dir/y/passwd")
	f.Add("l1=dir/..\ndir/l2=../l1/../..", "dir/l2/canary/new")
	f.Add("kd=/kaniko", "kd/.docker/config.json")
	f.Add("", "../../../canary/passwd")
	f.Fuzz(func(t *testing.T, links, p string) {
		if len(links) > 512 || len(p) > 256 || strings.ContainsRune(links+p, 0) {
			return
		}
		root, canary := tree(t)
		for _, line := range strings.Split(links, "\n") {
			name, target, ok := strings.Cut(line, "=")
			name = Clean(name)
			if !ok || name == "" || strings.Count(name, "/") > 2 {
				continue
			}
			if throughLink(root, name) {
				continue // the layout itself must not follow a link out
			}
			host := filepath.Join(root, name)
			os.MkdirAll(filepath.Dir(host), 0o755)
			os.Symlink(target, host)
		}
		r, err := Open(root, WithProtector(protect{"kaniko": true}))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		inside := func(d *Dir) {
			if d == nil {
				return
			}
			real, err := r.imgOf(d.f)
			if err != nil {
				t.Fatalf("handle outside the root: %v", err)
			}
			if real != d.Path() && !strings.HasSuffix(real, " (deleted)") {
				t.Fatalf("handle at %q claims %q", real, d.Path())
			}
			d.Close()
		}
		r.Real(p)
		if d, err := r.MkdirAll(p, MkdirOptions{}); err == nil {
			inside(d)
		}
		if d, name, err := r.Parent(p + "/file"); err == nil {
			if f, err := d.Create(name, 0o644); err == nil {
				f.Close()
			}
			inside(d)
		}
		if d, name, err := r.Parent(p); err == nil {
			d.Chmod(name, 0o700)
			d.RemoveAll(name)
			inside(d)
		}
		unchanged(t, canary)
		if data, err := os.ReadFile(filepath.Join(root, "kaniko/.docker/config.json")); err != nil || string(data) != "creds" {
			t.Fatalf("protected file: %q %v", data, err)
		}
	})
}

// throughLink says whether a parent of name under root is a symlink, which
// laying name out with host calls would follow.
func throughLink(root, name string) bool {
	dir := root
	parts := strings.Split(name, "/")
	for _, e := range parts[:len(parts)-1] {
		dir = filepath.Join(dir, e)
		if fi, err := os.Lstat(dir); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return true
		}
	}
	return false
}
