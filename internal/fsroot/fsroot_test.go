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
	"time"

	"golang.org/x/sys/unix"
)

// tree makes a root with a canary directory beside it and returns both.
// The root holds: dir/, dir/file, up -> ../.., abs -> /, etcl -> /etc,
// dot -> ., loop -> loop, dangling -> /missing/dir, kd -> /kaniko,
// kaniko/.docker/config.json.
func tree(t *testing.T) (root, canary string) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "root")
	canary = filepath.Join(base, "canary")
	for _, d := range []string{root, canary, root + "/dir", root + "/etc", root + "/kaniko/.docker"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "dir/file"), []byte("inside"), 0o644)
	os.WriteFile(filepath.Join(root, "kaniko/.docker/config.json"), []byte("creds"), 0o600)
	os.WriteFile(filepath.Join(canary, "passwd"), []byte("host"), 0o600)
	links := map[string]string{
		"up": "../..", "abs": "/", "etcl": "/etc", "dot": ".", "loop": "loop",
		"dangling": "/missing/dir", "kd": "/kaniko", "dir/esc": "../../canary",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	return root, canary
}

// unchanged fails the test when the canary directory changed.
func unchanged(t *testing.T, canary string) {
	t.Helper()
	ents, err := os.ReadDir(canary)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "passwd" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("the directory beside the root changed: %v", names)
	}
	if data, _ := os.ReadFile(filepath.Join(canary, "passwd")); string(data) != "host" {
		t.Fatalf("the file beside the root changed: %q", data)
	}
}

type protect map[string]bool

func (p protect) Ignored(q string) bool {
	for q != "" {
		if p[q] {
			return true
		}
		i := strings.LastIndexByte(q, '/')
		if i < 0 {
			break
		}
		q = q[:i]
	}
	return false
}

func (p protect) HoldsIgnored(q string) bool {
	for k := range p {
		if strings.HasPrefix(k, q+"/") || q == "" {
			return true
		}
	}
	return false
}

func TestResolveStaysInside(t *testing.T) {
	root, canary := tree(t)
	r, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, tc := range []struct {
		in, real string
	}{
		{"dir/esc", ""}, // dangling: ../../canary from /dir is /canary, missing
		{"dir/esc/passwd", ""},
		{"missing/x", ""},
		{"/dir/file", "dir/file"},
		{"up/dir/file", "dir/file"},
		{"abs/abs/up/dir", "dir"},
		{"/../../../dir", "dir"},
		{"etcl/x", "etc/x"},
		{"dot/dot/dir", "dir"},
		{"missing", "missing"},
	} {
		got, err := r.Real(tc.in)
		if tc.real == "" {
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Real(%q) = %q, %v; want not-exist", tc.in, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Real(%q): %v", tc.in, err)
			continue
		}
		if got != tc.real {
			t.Errorf("Real(%q) = %q, want %q", tc.in, got, tc.real)
		}
	}
	if _, err := r.OpenFile("dir/esc/passwd"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("reading through an escaping link: %v, want not-exist", err)
	}
	if _, err := r.OpenDir("loop"); err == nil {
		t.Error("a symlink loop resolved")
	}
	// Writes through every escaping link land inside.
	for _, p := range []string{"up/new1", "abs/new2", "dir/esc/new3", "up/up/canary/new4"} {
		d, name, err := r.Parent(p)
		if err != nil {
			// dir/esc leads to /canary, which is missing inside the root.
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			t.Fatalf("Parent(%q): %v", p, err)
		}
		if err := d.WriteFile(name, strings.NewReader("x"), 0o644); err != nil {
			t.Fatalf("writing %s: %v", p, err)
		}
		d.Close()
	}
	if _, err := r.MkdirAll("dir/esc/made", MkdirOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "canary/made")); err != nil {
		t.Errorf("MkdirAll through dir/esc: %v, want /canary/made inside the root", err)
	}
	unchanged(t, canary)
}

func TestMkdirAll(t *testing.T) {
	root, canary := tree(t)
	r, _ := Open(root)
	defer r.Close()
	var made []string
	d, err := r.MkdirAll("/etcl/a/b", MkdirOptions{Mode: 0o700, Created: func(p *Dir, name string) error {
		made = append(made, p.Path()+"/"+name)
		return p.Lchown(name, 12, 34)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Path() != "etc/a/b" || strings.Join(made, ",") != "etc/a,etc/a/b" {
		t.Errorf("MkdirAll made %v, handle at %q", made, d.Path())
	}
	fi, err := os.Lstat(filepath.Join(root, "etc/a/b"))
	if err != nil || fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != 12 {
		t.Errorf("created directory: %v %v", fi, err)
	}
	if d, err := r.MkdirAll("dangling/x", MkdirOptions{}); err != nil || d.Path() != "missing/dir/x" {
		t.Errorf("MkdirAll through a dangling symlink: %v, want /missing/dir/x", err)
	}
	if _, err := r.MkdirAll("loop/x", MkdirOptions{}); !errors.Is(err, syscall.ELOOP) {
		t.Errorf("MkdirAll through a symlink loop: %v", err)
	}
	if _, err := r.MkdirAll("dir/file/x", MkdirOptions{}); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("MkdirAll through a file: %v", err)
	}
	unchanged(t, canary)
}

func TestProtected(t *testing.T) {
	root, canary := tree(t)
	r, err := Open(root, WithProtector(protect{"kaniko": true}))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// kd -> /kaniko: every change that resolves there is refused.
	d, name, err := r.Parent("kd/.docker/config.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(name); !IsProtected(err) {
		t.Errorf("removing through kd: %v", err)
	}
	if err := d.Chmod(name, 0o644); !IsProtected(err) {
		t.Errorf("chmod through kd: %v", err)
	}
	if _, err := d.Create("planted", 0o644); !IsProtected(err) {
		t.Errorf("creating through kd: %v", err)
	}
	top, _ := r.OpenDir("/")
	if err := top.Link(d, name, "stolen"); !IsProtected(err) {
		t.Errorf("hard link to a protected file: %v", err)
	}
	if _, err := r.MkdirAll("kd/new", MkdirOptions{}); !IsProtected(err) {
		t.Errorf("MkdirAll through kd: %v", err)
	}
	// Clearing the root keeps the protected tree.
	if err := top.Clear(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 1 || ents[0].Name() != "kaniko" {
		t.Errorf("after Clear the root holds %v", ents)
	}
	if data, _ := os.ReadFile(filepath.Join(root, "kaniko/.docker/config.json")); string(data) != "creds" {
		t.Errorf("protected file now %q", data)
	}
	unchanged(t, canary)
}

func TestNamesAreSingleElements(t *testing.T) {
	root, canary := tree(t)
	r, _ := Open(root)
	defer r.Close()
	d, _ := r.OpenDir("dir")
	defer d.Close()
	for _, n := range []string{"", ".", "..", "a/b", "../canary"} {
		if err := d.RemoveAll(n); err == nil {
			t.Errorf("RemoveAll(%q) accepted", n)
		}
		if _, err := d.Create(n, 0o644); err == nil {
			t.Errorf("Create(%q) accepted", n)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "dir/file")); err != nil {
		t.Error(err)
	}
	unchanged(t, canary)
}

func TestOpenRefusesSpecialFiles(t *testing.T) {
	root, _ := tree(t)
	if err := syscall.Mkfifo(filepath.Join(root, "dir/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Symlink("fifo", filepath.Join(root, "dir/tofifo"))
	r, _ := Open(root)
	defer r.Close()
	done := make(chan error, 2)
	go func() {
		_, err := r.OpenFile("dir/tofifo")
		done <- err
		d, _ := r.OpenDir("dir")
		_, err = d.Open("fifo")
		done <- err
	}()
	for i := 0; i < 2; i++ {
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "fifo") {
				t.Errorf("opening a fifo: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("opening a fifo blocked")
		}
	}
}

func TestRemoveAllDoesNotFollow(t *testing.T) {
	root, canary := tree(t)
	os.MkdirAll(filepath.Join(root, "victim"), 0o755)
	os.Symlink(canary, filepath.Join(root, "victim/out"))
	r, _ := Open(root)
	defer r.Close()
	if err := r.Dir().RemoveAll("victim"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "victim")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("victim still there")
	}
	unchanged(t, canary)
}

// TestOpenEntry opens regular files only, never following the last
// element and never opening anything else for reading (a fifo would
// block), with the parent resolved inside the root.
func TestOpenEntry(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("host"), 0o600)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "f"), []byte("inside"), 0o644)
	os.WriteFile(filepath.Join(dir, "secret"), []byte("image"), 0o644)
	os.Symlink("f", filepath.Join(dir, "d", "link"))
	os.Symlink(outside, filepath.Join(dir, "up"))
	os.Symlink("/", filepath.Join(dir, "d", "abs"))
	if err := syscall.Mkfifo(filepath.Join(dir, "d", "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, c := range []struct{ path, want, err string }{
		{"/d/f", "inside", ""},
		{"d/abs/secret", "image", ""}, // "/" is the root's
		{"/d/link", "", "not a regular file (a symlink)"},
		{"/d/fifo", "", "not a regular file"},
		{"/d", "", "not a regular file"},
		{"/up/secret", "", "no such file"}, // the absolute link resolves inside
		{"/", "", "the root is a directory"},
	} {
		f, err := r.OpenEntry(c.path)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want %q", c.path, err, c.err)
			}
			if f != nil {
				f.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		b, _ := io.ReadAll(f)
		f.Close()
		if string(b) != c.want {
			t.Errorf("%s: read %q, want %q", c.path, b, c.want)
		}
	}
}

// TestOpenInRootConfined attacks the lookup every Root method starts
// with: links and ".." that lead out of the root, and a directory moved
// out of the root and back while lookups go through it. Whatever succeeds
// must be the file inside the root named canary, never the one beside it.
func TestOpenInRootConfined(t *testing.T) {
	top := t.TempDir()
	root, away := filepath.Join(top, "root"), filepath.Join(top, "away")
	for _, d := range []string{filepath.Join(root, "dir", "sub", "deep"), away} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(root, "canary"), filepath.Join(top, "canary"), filepath.Join(away, "canary")} {
		if err := os.WriteFile(f, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range map[string]string{"abs": "/canary", "up": "../../../canary", "dir/hop": "../../abs"} {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	var inside unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "canary"), &inside); err != nil {
		t.Fatal(err)
	}
	dir, err := os.OpenFile(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	checkRefusal(t, dir)
	check := func(p string) bool {
		f, err := openInRoot(dir, p)
		if err != nil {
			return false
		}
		defer f.Close()
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino != inside.Ino || st.Dev != inside.Dev {
			t.Fatalf("%s resolved to a file outside the root (inode %d)", p, st.Ino)
		}
		return true
	}
	for _, p := range []string{"canary", "abs", "up", "dir/hop", "../canary", "dir/../../../canary", "dir/sub/deep/../../../../canary"} {
		if !check(p) {
			t.Errorf("%s: not resolved to the root's canary", p)
		}
	}

	// The race: dir/sub goes out of the root (under away/) and back while
	// a lookup climbs out of it with "..".
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		in, out := filepath.Join(root, "dir", "sub"), filepath.Join(away, "sub")
		for {
			select {
			case <-stop:
				os.Rename(out, in)
				return
			default:
			}
			os.Rename(in, out)
			os.Rename(out, in)
		}
	}()
	resolved := 0
	for i := 0; i < 3000; i++ {
		if check("dir/sub/deep/../../../canary") {
			resolved++
		}
	}
	close(stop)
	<-done
	// A lookup that only ever failed would have tested nothing.
	if resolved == 0 {
		t.Error("no lookup through the moving directory resolved: the race never ran a lookup to its end")
	}
}
