package e2e

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/rootfs"
)

const secretValue = "tok-3f9a-never-in-a-layer"

// checkRunImage asserts what testdata/run must produce.
func checkRunImage(t *testing.T, img v1.Image, log string) {
	t.Helper()
	fs := imagetest.Flatten(t, img)
	type w struct {
		typ      byte
		mode     int64
		uid, gid int
		content  string
	}
	for p, want := range map[string]w{
		"opt/tool.txt":         {tar.TypeReg, 0o644, 0, 0, "built-in-tools\n"},
		"srv/www":              {tar.TypeDir, 0o2750, 1000, 1001, ""},
		"srv/www/hard.html":    {tar.TypeReg, 0o644, 1000, 1001, "hola\n"}, // the first name in the layer holds the content
		"token-length":         {tar.TypeReg, 0o644, 0, 0, "25\n"},
		"home/app/whoami":      {tar.TypeReg, 0o644, 1000, 1001, "app\n"},
		"home/app/made-by-app": {tar.TypeReg, 0o644, 1000, 1001, ""},
		"home/app/script.out":  {tar.TypeReg, 0o644, 1000, 1001, "script ran\n"},
	} {
		e, ok := fs[p]
		if !ok {
			t.Errorf("%s missing", p)
			continue
		}
		h := e.Header
		if h.Typeflag != want.typ || h.Mode&0o7777 != want.mode || h.Uid != want.uid || h.Gid != want.gid || (want.content != "" && e.Content != want.content) {
			t.Errorf("%s: type %q mode %o owner %d:%d content %q; want %q %o %d:%d %q", p, h.Typeflag, h.Mode&0o7777, h.Uid, h.Gid, e.Content, want.typ, want.mode, want.uid, want.gid, want.content)
		}
	}
	if h := fs["srv/www/index.html"].Header; h.Typeflag != tar.TypeLink || h.Linkname != "srv/www/hard.html" {
		t.Errorf("srv/www/index.html: %+v, want a hard link to srv/www/hard.html", h)
	}
	for _, p := range []string{"opt/data", "usr/bin/tool", "run/secrets/token", "proc/self", "dev/null"} {
		if _, ok := fs[p]; ok {
			t.Errorf("%s should not be in the image", p)
		}
	}
	// Hard links share an inode once unpacked.
	root := t.TempDir()
	ls, _ := img.Layers()
	for _, l := range ls {
		rc, _ := l.Uncompressed()
		if err := rootfs.ApplyTar(root, rc, rootfs.UnpackOptions{}); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
	a, err1 := os.Stat(filepath.Join(root, "srv/www/index.html"))
	b, err2 := os.Stat(filepath.Join(root, "srv/www/hard.html"))
	if err1 != nil || err2 != nil || !os.SameFile(a, b) {
		t.Errorf("index.html and hard.html are not one inode after unpacking (%v %v)", err1, err2)
	}
	// The secret is in no layer, not in the config or history, not in the log.
	for i, l := range ls {
		rc, _ := l.Uncompressed()
		var buf bytes.Buffer
		buf.ReadFrom(rc)
		rc.Close()
		if bytes.Contains(buf.Bytes(), []byte(secretValue)) {
			t.Errorf("layer %d holds the secret", i)
		}
	}
	raw, _ := img.RawConfigFile()
	if strings.Contains(string(raw), secretValue) {
		t.Error("config holds the secret")
	}
	if strings.Contains(log, secretValue) {
		t.Error("log holds the secret")
	}
	cf, _ := img.ConfigFile()
	if cf.Config.User != "app" || strings.Contains(strings.Join(cf.Config.Env, " "), "GREETING") {
		t.Errorf("config user %q env %v", cf.Config.User, cf.Config.Env)
	}
}

func TestRunChroot(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:1"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	ctx := copyTree(t, "testdata/run")
	secret := filepath.Join(t.TempDir(), "token")
	os.WriteFile(secret, []byte(secretValue), 0o600)
	out := t.TempDir()
	dest := reg + "/kiln/run:1"
	r := kiln(t, nil, "--context", ctx, "-d", dest, "--insecure", "--insecure-pull", "--isolation", "chroot",
		"--build-arg", "BASE="+base, "--build-arg", "GREETING=hola", "--secret", "id=token,src="+secret,
		"--digest-file", filepath.Join(out, "digest"), "--verbosity", "debug")
	if r.code != 0 {
		t.Fatalf("build failed:\n%s", r.stderr)
	}
	checkRunImage(t, pull(t, dest), r.stderr)
	// RUN's root is not the host's: a user namespace maps it (where
	// permitted, as on this machine kind).
	contains(t, r.stderr, "RUN runs in a user namespace", "2147483648:2147483647")

	// A failing RUN leaves nothing behind.
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "Dockerfile"), []byte("FROM "+base+"\nRUN echo partial > /p\nRUN echo about to fail; exit 7\n"), 0o644)
	fail := t.TempDir()
	r = kiln(t, nil, "--context", bad, "-d", reg+"/kiln/fail:1", "--insecure", "--insecure-pull",
		"--digest-file", filepath.Join(fail, "digest"), "--oci-layout-path", filepath.Join(fail, "layout"))
	if r.code == 0 {
		t.Fatal("failing RUN succeeded")
	}
	contains(t, r.stderr, "Dockerfile:3", "exit code 7", "about to fail")
	mustNotExist(t, filepath.Join(fail, "digest"), filepath.Join(fail, "layout"))
	if _, err := pullErr(reg + "/kiln/fail:1"); err == nil {
		t.Error("a failed build pushed a tag")
	}
}
