package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kilnbuild/kiln/internal/fsroot"
)

// describeTree lists a tree: names, types, modes and directory times.
func describeTree(dir string) string {
	var b strings.Builder
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&b, "%s %v %d", strings.TrimPrefix(p, dir), fi.Mode(), st.Mtim.Nano())
		if fi.Mode()&os.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			fmt.Fprintf(&b, " -> %s", l)
		}
		b.WriteString("\n")
		return nil
	})
	return b.String()
}

// FuzzMountTargets resolves arbitrary mount targets in a root laid out
// with arbitrary symlinks, the way the sandbox does before it mounts:
// every target lands inside the root, nothing beside it changes, and
// removing the reported mount points gives the root back exactly as it
// was (names, types, modes and directory times).
func FuzzMountTargets(f *testing.F) {
	f.Add("m=../../..\nm2=/", "/m/x/run-cache", "/proc")
	f.Add("a=b\nb=a", "/a/x", "/etc/hosts")
	f.Add("etc=/srv\nsrv/x=../../..", "/etc/resolv.conf", "/srv/x/y")
	f.Add("d=/dev\ndev=d", "/dev/shm/x", "/d/null")
	f.Fuzz(func(t *testing.T, links, t1, t2 string) {
		if len(links) > 512 || len(t1)+len(t2) > 512 || strings.ContainsRune(links+t1+t2, 0) {
			return
		}
		base := t.TempDir()
		root, canary := filepath.Join(base, "root"), filepath.Join(base, "canary")
		os.MkdirAll(filepath.Join(root, "etc"), 0o755)
		os.MkdirAll(canary, 0o755)
		for _, line := range strings.Split(links, "\n") {
			name, target, ok := strings.Cut(line, "=")
			name = fsroot.Clean(name)
			if !ok || name == "" || strings.Count(name, "/") > 2 {
				continue
			}
			os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o755)
			os.Symlink(target, filepath.Join(root, name))
		}
		before, beside := describeTree(root), describeTree(canary)
		r, err := fsroot.Open(root)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		spec := &Spec{Root: root}
		sb := &setup{spec: spec, userns: -1, root: r, timed: map[string]bool{}}
		for i, target := range []string{t1, t2} {
			h, img, err := sb.ensureTarget(target, i == 0)
			if err != nil {
				continue
			}
			if got, err := r.ImagePath(h); err != nil || got != img {
				t.Fatalf("target %q: handle at %q (%v), reported %q", target, got, err, img)
			}
			h.Close() // nothing is mounted here: later targets go through the root
		}
		file := filepath.Join(base, "stubs.json")
		if err := writeStubs(file, sb.stubs); err != nil {
			t.Fatal(err)
		}
		if err := removeStubs(*spec, file); err != nil {
			t.Fatalf("removing mount points: %v", err)
		}
		if after := describeTree(root); after != before {
			t.Fatalf("the root is not as it was:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if describeTree(canary) != beside {
			t.Fatal("the directory beside the root changed")
		}
	})
}
