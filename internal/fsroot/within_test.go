package fsroot

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestReadFileWithin(t *testing.T) {
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	sub := filepath.Join(tree, "sub")
	for _, d := range []string{sub, filepath.Join(tree, "etc")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, content := range map[string]string{"f": "inside", "etc/x": "tree's /etc/x", "big": strings.Repeat("x", 65)} {
		if err := os.WriteFile(filepath.Join(tree, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		"abs":      secret,
		"up":       "../../../../../../../.." + secret,
		"dir":      outside,
		"rooted":   "/etc/x",
		"rel":      "f",
		"sub/up":   "../f",
		"sub/deep": "../../../../../../.." + secret,
	} {
		if err := os.Symlink(target, filepath.Join(tree, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(tree, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	outLink := filepath.Join(t.TempDir(), "operator-link")
	if err := os.Symlink(secret, outLink); err != nil {
		t.Fatal(err)
	}
	in := func(p string) string { return filepath.Join(tree, p) }
	tests := []struct {
		name  string
		p     string
		trees []string
		want  string
		isErr error
	}{
		{"regular file", in("f"), []string{tree}, "inside", nil},
		{"absolute link out", in("abs"), []string{tree}, "", fs.ErrNotExist},
		{"../ link out", in("up"), []string{tree}, "", fs.ErrNotExist},
		{"through a linked directory", in("dir/secret"), []string{tree}, "", fs.ErrNotExist},
		{"absolute link resolves in the tree", in("rooted"), []string{tree}, "tree's /etc/x", nil},
		{"relative link", in("rel"), []string{tree}, "inside", nil},
		{"deepest tree: the subdirectory is the root", in("sub/up"), []string{tree, sub}, "", fs.ErrNotExist},
		{"deepest tree, whatever the order", in("sub/up"), []string{sub, tree}, "", fs.ErrNotExist},
		{"outer tree only", in("sub/up"), []string{tree}, "inside", nil},
		{"deep link from a subdirectory", in("sub/deep"), []string{tree}, "", fs.ErrNotExist},
		{"spelled with ..", in("sub/../f"), []string{tree}, "inside", nil},
		{"fifo refused unopened", in("fifo"), []string{tree}, "", ErrNotRegular},
		{"directory", in("sub"), []string{tree}, "", ErrNotRegular},
		{"the tree itself", tree, []string{tree}, "", ErrNotRegular},
		{"over the limit", in("big"), []string{tree}, "", nil},
		{"outside every tree: the operator's own link", outLink, []string{tree}, "host secret", nil},
		{"no trees", in("abs"), nil, "host secret", nil},
		{"empty tree names are skipped", in("abs"), []string{""}, "host secret", nil},
	}
	readIn := func(p string, limit int64, trees ...string) ([]byte, error) {
		var roots []*Root
		for _, tr := range trees {
			if tr == "" {
				roots = append(roots, nil)
				continue
			}
			r, err := Open(tr)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			roots = append(roots, r)
		}
		return ReadFileIn(p, limit, roots...)
	}
	for _, tt := range tests {
		for fn, read := range map[string]func(string, int64, ...string) ([]byte, error){"Within": ReadFileWithin, "In": readIn} {
			t.Run(fn+"/"+tt.name, func(t *testing.T) {
				got, err := read(tt.p, 64, tt.trees...)
				switch {
				case tt.name == "over the limit":
					if err == nil || !strings.Contains(err.Error(), "larger than 64 bytes") {
						t.Fatalf("err = %v, want the size refused", err)
					}
				case tt.isErr != nil:
					if !errors.Is(err, tt.isErr) {
						t.Fatalf("= %q, %v; want %v", got, err, tt.isErr)
					}
					if err != nil && strings.Contains(err.Error(), "host secret") {
						t.Fatalf("the error shows the outside file: %v", err)
					}
					var pe *fs.PathError
					if !errors.As(err, &pe) || pe.Path != filepath.Clean(tt.p) {
						t.Errorf("err = %v, want it to name %s", err, tt.p)
					}
				case err != nil || string(got) != tt.want:
					t.Fatalf("= %q, %v; want %q", got, err, tt.want)
				}
			})
		}
	}
}

// TestOpenRoot performs the attack of a directory, once opened as a root
// inside another, swapped for a link out of the outer root: lookups in
// the new root keep to the directory it was opened on, the paths it gives
// are its own, and ReadFileIn of a path spelled through it reads through
// its handle, not the link now at that path.
func TestOpenRoot(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "f"), []byte("CANARY-OUTSIDE"), 0o644); err != nil {
		t.Fatal(err)
	}
	top := t.TempDir()
	if err := os.MkdirAll(filepath.Join(top, "a", "b", "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(top, "a", "b", "f"), []byte("inside"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a/b", filepath.Join(top, "link")); err != nil {
		t.Fatal(err)
	}
	outer, err := Open(top)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := outer.OpenRoot("link")
	outer.Close() // the new root does not need it
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if got, want := sub.Path(), filepath.Join(top, "a", "b"); got != want {
		t.Errorf("Path() = %q, want %q", got, want)
	}
	if dir, p := sub.Origin(); dir != top || p != "a/b" {
		t.Errorf("Origin() = %q, %q; want %q, a/b", dir, p, top)
	}
	same, err := sub.OpenRoot("")
	if err != nil {
		t.Fatal(err)
	}
	if got := same.Path(); got != sub.Path() {
		t.Errorf("OpenRoot(\"\").Path() = %q", got)
	}
	same.Close()
	if d, err := sub.OpenDir("d"); err != nil || d.Path() != "d" {
		t.Errorf("OpenDir(d) = %v, %v; want the image path d", d, err)
	} else {
		d.Close()
	}
	// The swap: a/b moves aside and a link out takes its place.
	if err := os.Rename(filepath.Join(top, "a"), filepath.Join(top, "a.moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(top, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(top, "a", "b")); err != nil {
		t.Fatal(err)
	}
	for name, read := range map[string]func() ([]byte, error){
		"OpenFile": func() ([]byte, error) {
			f, err := sub.OpenFile("f")
			if err != nil {
				return nil, err
			}
			defer f.Close()
			return io.ReadAll(f)
		},
		"ReadFileIn": func() ([]byte, error) { return ReadFileIn(filepath.Join(top, "a", "b", "f"), 64, sub) },
	} {
		got, err := read()
		if err == nil && string(got) != "inside" || err != nil && strings.Contains(err.Error(), "CANARY") {
			t.Errorf("%s after the swap = %q, %v; want the held directory's file", name, got, err)
		}
		if err != nil {
			t.Errorf("%s after the swap: %v", name, err)
		}
	}
	p, err := Open(top, WithProtector(protect{"kaniko": true}))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.OpenRoot("a.moved"); err == nil {
		t.Error("OpenRoot of a root that protects paths succeeded")
	}
}
