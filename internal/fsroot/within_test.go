package fsroot

import (
	"errors"
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
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadFileWithin(tt.p, 64, tt.trees...)
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
