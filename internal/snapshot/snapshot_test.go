package snapshot

import (
	"archive/tar"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/layer"
)

func mkfile(t *testing.T, root, p, content string) {
	t.Helper()
	full := filepath.Join(root, p)
	os.MkdirAll(filepath.Dir(full), 0o755)
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func tree(t *testing.T) string {
	root := t.TempDir()
	for _, p := range []string{"etc/passwd", "etc/group", "usr/bin/a", "usr/bin/b", "var/lib/x/1", "var/lib/x/2", "keep/same", "opaque/old"} {
		mkfile(t, root, p, "content of "+p)
	}
	return root
}

func TestDiff(t *testing.T) {
	ctx := context.Background()
	root := tree(t)
	s, err := Take(ctx, root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1600000000, 0)
	// Content change with size and mtime kept: only the ctime tells.
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("CONTENT OF etc/passwd"), 0o644)
	os.Chtimes(filepath.Join(root, "etc/passwd"), old, old)
	s.files["etc/passwd"] = func() state { st := s.files["etc/passwd"]; st.mtime = old.UnixNano(); return st }()
	os.Chmod(filepath.Join(root, "usr/bin/a"), 0o755|os.ModeSetuid) // metadata only
	os.Remove(filepath.Join(root, "usr/bin/b"))                     // deletion
	os.RemoveAll(filepath.Join(root, "var/lib/x"))                  // deleted tree
	os.RemoveAll(filepath.Join(root, "opaque"))                     // replaced directory
	mkfile(t, root, "opaque/new", "n")                              //
	mkfile(t, root, "new/dir/file", "f")                            // addition
	os.Link(filepath.Join(root, "new/dir/file"), filepath.Join(root, "new/link"))
	os.Symlink("../etc/group", filepath.Join(root, "new/sym"))
	l, err := net.Listen("unix", filepath.Join(root, "new/sock"))
	if err == nil {
		defer l.Close()
	}
	c, _, err := s.Diff(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"usr/bin/b", "var/lib/x"}, c.Deleted); d != "" {
		t.Errorf("deleted (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"opaque"}, c.Opaque); d != "" {
		t.Errorf("opaque:\n%s", d)
	}
	entries, err := Entries(root, c)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]layer.Header{}
	var order []string
	for e := range entries.All() {
		got[e.Header.Name] = e.Header
		order = append(order, e.Header.Name)
	}
	for _, want := range []string{"etc", "etc/passwd", "usr/bin/a", "usr/bin/.wh.b", "var/lib/.wh.x", "opaque/.wh..wh..opq", "opaque/new", "new/dir/file", "new/sym"} {
		if _, ok := got[want]; !ok {
			t.Errorf("no entry %s in %v", want, order)
		}
	}
	if h := got["new/link"]; h.Typeflag != tar.TypeLink || h.Linkname != "new/dir/file" {
		if h2 := got["new/dir/file"]; !(h2.Typeflag == tar.TypeLink && h2.Linkname == "new/link") {
			t.Errorf("hard link entries: link %+v file %+v", h, h2)
		}
	}
	if h := got["usr/bin/a"]; h.Mode != 0o4755 {
		t.Errorf("usr/bin/a mode %o", h.Mode)
	}
	for _, absent := range []string{"new/sock", "etc/group", "keep", "keep/same", "var/lib/x/1"} {
		if _, ok := got[absent]; ok {
			t.Errorf("unexpected entry %s", absent)
		}
	}
	// Parents come before children.
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	if pos["new"] > pos["new/dir"] || pos["new/dir"] > pos["new/dir/file"] {
		t.Errorf("order %v", order)
	}
}

func TestModes(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		mode Mode
		want []string
	}{
		{Full, []string{"etc/group", "etc/passwd"}},
		{Redo, []string{"etc/passwd"}},
		{Time, nil},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			root := tree(t)
			s, _ := Take(ctx, root, Options{Mode: tc.mode})
			fi, _ := os.Stat(filepath.Join(root, "etc/passwd"))
			// Same size and mtime, different content: only full sees it.
			os.WriteFile(filepath.Join(root, "etc/group"), []byte("CONTENT OF etc/group"), 0o644)
			os.Chtimes(filepath.Join(root, "etc/group"), fi.ModTime(), s.mtimeOf("etc/group"))
			// Mode change with mtime kept: redo and full see it.
			os.Chmod(filepath.Join(root, "etc/passwd"), 0o600)
			c, _, err := s.Diff(ctx, Options{Mode: tc.mode})
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, c.Changed); d != "" {
				t.Errorf("changed (-want +got):\n%s", d)
			}
		})
	}
}

func TestIgnoreAndXattrs(t *testing.T) {
	ctx := context.Background()
	root := tree(t)
	s, _ := Take(ctx, root, Options{Ignore: func(p string) bool { return p == "var" }})
	mkfile(t, root, "var/cache/new", "ignored")
	mkfile(t, root, "bin/tool", "t")
	if err := unix.Lsetxattr(filepath.Join(root, "bin/tool"), "user.kiln", []byte("v"), 0); err != nil {
		t.Fatalf("user extended attributes are required in the test's temporary directory: %v", err)
	}
	c, _, _ := s.Diff(ctx, Options{Ignore: func(p string) bool { return p == "var" }})
	if d := cmp.Diff([]string{"bin", "bin/tool"}, c.Changed); d != "" {
		t.Errorf("changed:\n%s", d)
	}
	entries, _ := Entries(root, c)
	if v := entries.At(entries.Len() - 1).Header.PAXRecords["SCHILY.xattr.user.kiln"]; v != "v" {
		t.Errorf("xattr not recorded: %+v", entries.At(entries.Len()-1).Header)
	}
	if _, err := ParseMode("fast"); err == nil {
		t.Error("ParseMode accepted fast")
	}
}
