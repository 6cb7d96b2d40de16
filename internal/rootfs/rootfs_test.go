package rootfs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/imagetest"
)

func apply(t *testing.T, root string, files ...imagetest.File) error {
	t.Helper()
	return ApplyTar(root, bytes.NewReader(imagetest.Tar(files...)), UnpackOptions{})
}

func TestApplyTarLayers(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(apply(t, root,
		imagetest.Dir("a", 0o750, 1, 2),
		imagetest.Reg("a/f", "one", 0o4755, 1, 2),
		imagetest.Reg("a/g", "g", 0o644, 0, 0),
		imagetest.Dir("keep", 0o755, 0, 0),
		imagetest.Reg("keep/old", "old", 0o644, 0, 0),
		imagetest.Symlink("link", "a/f"),
		imagetest.File{Path: "hard", Type: tar.TypeLink, Link: "a/f"},
		imagetest.File{Path: "dev/null", Type: tar.TypeChar},
	))
	// The second layer deletes a/g, makes keep opaque and adds keep/new.
	must(apply(t, root,
		imagetest.Reg("a/.wh.g", "", 0, 0, 0),
		imagetest.Dir("keep", 0o755, 0, 0),
		imagetest.Reg("keep/.wh..wh..opq", "", 0, 0, 0),
		imagetest.Reg("keep/new", "new", 0o644, 0, 0),
	))
	fi, err := os.Stat(filepath.Join(root, "a/f"))
	must(err)
	if fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("a/f mode %v", fi.Mode())
	}
	// test/run runs the suite as root, which the owners need.
	if uid, gid := ownerIDs(fi); uid != 1 || gid != 2 {
		t.Errorf("a/f owner %d:%d, want 1:2 (as root)", uid, gid)
	}
	if _, err := os.Lstat(filepath.Join(root, "a/g")); !os.IsNotExist(err) {
		t.Errorf("whiteout a/g not applied: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "keep/old")); !os.IsNotExist(err) {
		t.Errorf("opaque dir kept keep/old")
	}
	if b, _ := os.ReadFile(filepath.Join(root, "keep/new")); string(b) != "new" {
		t.Errorf("keep/new = %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(root, "link")); l != "a/f" {
		t.Errorf("link -> %q", l)
	}
	hf, _ := os.Stat(filepath.Join(root, "hard"))
	if !os.SameFile(fi, hf) {
		t.Error("hard is not a hard link to a/f")
	}
	if _, err := os.Lstat(filepath.Join(root, "dev/null")); !os.IsNotExist(err) {
		t.Error("device node created")
	}
}

func TestApplyTarRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	tests := []struct {
		name    string
		files   []imagetest.File
		wantErr string
	}{
		{"dotdot name", []imagetest.File{imagetest.Reg("../escape", "x", 0o644, 0, 0)}, "escapes"},
		{"nested dotdot", []imagetest.File{imagetest.Reg("a/../../escape", "x", 0o644, 0, 0)}, "escapes"},
		{"hard link out", []imagetest.File{{Path: "h", Type: tar.TypeLink, Link: "../../etc/passwd"}}, "escapes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			err := apply(t, root, tt.files...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
	// A symlink to outside, then a file through it: the file lands inside.
	root := t.TempDir()
	err := apply(t, root,
		imagetest.Symlink("evil", outside),
		imagetest.Reg("evil/planted", "x", 0o644, 0, 0),
		imagetest.Symlink("abs", "/"),
		imagetest.Reg("abs/tmp-planted", "x", 0o644, 0, 0),
	)
	if err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("a file was written outside the root: %v", ents)
	}
	if _, err := os.Stat(filepath.Join(root, outside, "planted")); err != nil {
		t.Errorf("the file through the symlink is not inside the root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "tmp-planted")); err != nil {
		t.Errorf("abs/tmp-planted not resolved to the root: %v", err)
	}
}

func TestLookup(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nappgrp:x:1001:\nstaff:x:50:app\n"), 0o644)
	tests := []struct {
		spec    string
		chown   bool
		want    IDs
		wantErr string
	}{
		{"app", false, IDs{1000, 1001}, ""},
		{"app", true, IDs{1000, 1001}, ""},
		{"1000", false, IDs{1000, 1001}, ""},
		{"1000", true, IDs{1000, 1000}, ""},
		{"4242", false, IDs{4242, 0}, ""},
		{"4242", true, IDs{4242, 4242}, ""},
		{"app:staff", true, IDs{1000, 50}, ""},
		{"app:77", false, IDs{1000, 77}, ""},
		{"ghost", true, IDs{}, "unable to find user ghost"},
		{"app:nogroup", true, IDs{}, "unable to find group nogroup"},
	}
	for _, tt := range tests {
		f := LookupUser
		if tt.chown {
			f = LookupChown
		}
		fr, err := fsroot.Open(root)
		if err != nil {
			t.Fatal(err)
		}
		got, err := f(fr, tt.spec)
		fr.Close()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: err = %v", tt.spec, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q chown=%v: got %v, %v; want %v", tt.spec, tt.chown, got, err, tt.want)
		}
	}
}

func TestIgnoreListAndClear(t *testing.T) {
	l := NewIgnoreList("/kaniko", "/var/run", "/workspace/src/")
	for p, want := range map[string]bool{
		"kaniko": true, "/kaniko/work/x": true, "var/run": true, "var/run/x": true, "var": false,
		"var/lib": false, "workspace": false, "workspace/src/a": true, "kanikox": false,
	} {
		if got := l.Ignored(p); got != want {
			t.Errorf("Ignored(%q) = %v", p, got)
		}
	}
	root := t.TempDir()
	for _, p := range []string{"kaniko/keep", "var/run/keep", "var/lib/gone", "etc/gone", "workspace/src/keep", "workspace/other"} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), nil, 0o644)
	}
	if err := Clear(root, l); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"kaniko/keep", "var/run/keep", "workspace/src/keep"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s removed", p)
		}
	}
	for _, p := range []string{"var/lib", "etc", "workspace/other"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s kept", p)
		}
	}
	// Unpacking skips ignored paths and their whiteouts.
	data := imagetest.Tar(imagetest.Reg("kaniko/evil", "x", 0o644, 0, 0), imagetest.Reg("kaniko/.wh.keep", "", 0, 0, 0), imagetest.Reg("usr/ok", "y", 0o644, 0, 0))
	if err := ApplyTar(root, bytes.NewReader(data), UnpackOptions{Ignore: l}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "kaniko/evil")); err == nil {
		t.Error("unpacked into an ignored path")
	}
	if _, err := os.Stat(filepath.Join(root, "kaniko/keep")); err != nil {
		t.Error("a whiteout removed an ignored file")
	}
	if _, err := os.Stat(filepath.Join(root, "usr/ok")); err != nil {
		t.Error("usr/ok not unpacked")
	}
}

func TestMountPoints(t *testing.T) {
	f := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(f, []byte("22 1 0:21 / / rw - overlay overlay rw\n23 22 0:5 / /proc rw - proc proc rw\n24 22 8:1 /x /workspace\\040dir rw - ext4 /dev/sda1 rw\n"), 0o644)
	got, err := MountPoints(f)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "/proc,/workspace dir" {
		t.Errorf("mount points %v", got)
	}
}

// TestApplyTarHostileInPlace unpacks hostile base layers over a root that
// stands for an in-place build's "/": kiln's directory, the workspace and
// a volume are on the ignore list, and no entry may change them, whatever
// symlinks, hard links or whiteouts it uses (security issue, findings 3
// and 4).
func TestApplyTarHostileInPlace(t *testing.T) {
	tests := []struct {
		name    string
		files   []imagetest.File
		wantErr string
	}{
		{"whiteout of ..", []imagetest.File{imagetest.Reg(".wh..", "", 0, 0, 0)}, "names no file"},
		{"nested whiteout of ..", []imagetest.File{imagetest.Dir("x", 0o755, 0, 0), imagetest.Reg("x/.wh..", "", 0, 0, 0)}, "names no file"},
		{"whiteout of .", []imagetest.File{imagetest.Reg("etc/.wh..", "", 0, 0, 0)}, "names no file"},
		{"empty whiteout", []imagetest.File{imagetest.Reg(".wh.", "", 0, 0, 0)}, "names no file"},
		{"write through a link to kiln's dir", []imagetest.File{
			imagetest.Symlink("kd", "/kaniko"),
			imagetest.Reg("kd/.docker/config.json", `{"auths":{"evil":{}}}`, 0o644, 0, 0),
			imagetest.Reg("kd/planted", "x", 0o644, 0, 0),
		}, ""},
		{"write through a link to the workspace", []imagetest.File{
			imagetest.Symlink("ws", "/workspace"),
			imagetest.Reg("ws/planted", "x", 0o755, 0, 0),
			imagetest.Symlink("ws2", "workspace/src"),
			imagetest.Dir("ws2/sub", 0o755, 0, 0),
		}, ""},
		{"overwrite a volume file through a relative link", []imagetest.File{
			imagetest.Dir("a", 0o755, 0, 0),
			imagetest.Symlink("a/v", "../../../vol"),
			imagetest.Reg("a/v/data", "overwritten", 0o644, 0, 0),
		}, ""},
		{"hard link to the credentials", []imagetest.File{
			imagetest.Symlink("kd", "/kaniko"),
			{Path: "stolen", Type: tar.TypeLink, Link: "kd/.docker/config.json"},
			{Path: "stolen2", Type: tar.TypeLink, Link: "kaniko/.docker/config.json"},
		}, ""},
		{"whiteouts and opaque dirs through links", []imagetest.File{
			imagetest.Symlink("kd", "/kaniko"),
			imagetest.Reg("kd/.wh..docker", "", 0, 0, 0),
			imagetest.Symlink("vl", "/vol"),
			imagetest.Reg("vl/.wh..wh..opq", "", 0, 0, 0),
			imagetest.Reg("vl/.wh.data", "", 0, 0, 0),
		}, ""},
		{"replace a protected directory", []imagetest.File{
			imagetest.Symlink("workspace", "/etc"),
			imagetest.Reg("kaniko", "not a dir", 0o644, 0, 0),
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			canaries := map[string]string{
				"kaniko/.docker/config.json": `{"auths":{"registry":{"auth":"c2VjcmV0"}}}`,
				"workspace/src/Dockerfile":   "FROM scratch",
				"vol/data":                   "volume",
				"etc/keep":                   "base",
			}
			for p, c := range canaries {
				os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
				os.WriteFile(filepath.Join(root, p), []byte(c), 0o600)
			}
			before := snapshotTree(t, root, "kaniko", "workspace", "vol")
			ignore := NewIgnoreList("/kaniko", "/workspace", "/vol")
			err := ApplyTar(root, bytes.NewReader(imagetest.Tar(tt.files...)), UnpackOptions{Ignore: ignore})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if after := snapshotTree(t, root, "kaniko", "workspace", "vol"); after != before {
				t.Errorf("protected trees changed:\nbefore %s\nafter  %s", before, after)
			}
			if _, err := os.Stat(filepath.Join(root, "etc/keep")); err != nil {
				t.Errorf("the rest of the root: %v", err)
			}
			for _, p := range []string{"stolen", "stolen2"} {
				if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
					t.Errorf("%s: a hard link to a protected file was made", p)
				}
			}
		})
	}
}

// snapshotTree describes the trees below root's dirs: names, types,
// modes, owners, sizes, times and contents.
func snapshotTree(t *testing.T, root string, dirs ...string) string {
	t.Helper()
	var b strings.Builder
	for _, d := range dirs {
		filepath.Walk(filepath.Join(root, d), func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				fmt.Fprintf(&b, "%s: %v\n", p, err)
				return nil
			}
			uid, gid := ownerIDs(fi)
			fmt.Fprintf(&b, "%s %v %d:%d %d %d", strings.TrimPrefix(p, root), fi.Mode(), uid, gid, fi.Size(), fi.ModTime().UnixNano())
			if fi.Mode().IsRegular() {
				data, _ := os.ReadFile(p)
				fmt.Fprintf(&b, " %q", data)
			}
			b.WriteString("\n")
			return nil
		})
	}
	return b.String()
}

// TestUnpackEntries: Unpack tells every entry's name, cleaned, with its
// layer's index, and a name that climbs out of the root is refused before
// anyone is told of it.
func TestUnpackEntries(t *testing.T) {
	img := imagetest.Image(t, true, nil,
		[]imagetest.File{imagetest.Dir("etc", 0o755, 0, 0), imagetest.Reg("./etc/passwd", "x", 0o644, 0, 0)},
		[]imagetest.File{imagetest.Reg("etc/.wh.passwd", "", 0o644, 0, 0)})
	var got []string
	record := func(layer int, name string) { got = append(got, fmt.Sprintf("%d:%s", layer, name)) }
	if err := Unpack(context.Background(), t.TempDir(), img, UnpackOptions{Entry: record}); err != nil {
		t.Fatal(err)
	}
	if want := "0:etc 0:etc/passwd 1:etc/.wh.passwd"; strings.Join(got, " ") != want {
		t.Errorf("entries told %q, want %q", got, want)
	}
	got = nil
	bad := imagetest.Image(t, true, nil, []imagetest.File{imagetest.Reg("../escape", "x", 0o644, 0, 0)})
	if err := Unpack(context.Background(), t.TempDir(), bad, UnpackOptions{Entry: record}); err == nil || len(got) != 0 {
		t.Errorf("a hostile entry: err %v, told %q", err, got)
	}
}
