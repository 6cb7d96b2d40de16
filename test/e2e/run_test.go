package e2e

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

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

// TestRunWhereRootIsNotAMountPoint: kiln run inside a chroot (schroot's
// model: "/" is a plain directory, not a mount point) runs RUN in chroot
// isolation. The mount holding "/" is shared with the namespace around the
// chroot, so everything the sandbox mounts would appear there if it
// propagated: the test counts that namespace's mounts before and after.
// Without a user namespace (the kernel refuses one in a chroot), RUN's
// root has Docker's default capabilities less CAP_SYS_CHROOT, and device
// nodes in the root cannot be opened.
func TestRunWhereRootIsNotAMountPoint(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("chroot and mount need root: run the tests as root (test/run, .ci/run)")
	}
	jail := t.TempDir()
	for _, d := range []string{"bin", "proc", "dev", "tmp", "ctx", "out"} {
		if err := os.Mkdir(filepath.Join(jail, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	exe, err := os.ReadFile(filepath.Join(binDir, "build"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(jail, "bin", "build"), exe, 0o755)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("Debian's busybox-static is required (apt-get install busybox-static; test/run installs it): %v", err)
	}
	os.WriteFile(filepath.Join(jail, "ctx", "busybox"), bb, 0o755)
	os.WriteFile(filepath.Join(jail, "ctx", "Dockerfile"), []byte(`FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin"]
RUN echo hi > /x && mkdir /mnt && (mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo refused) > /mount && \
    mknod /null c 1 3 && (cat /null 2>/dev/null && echo opened || echo refused) > /node && \
    (chroot / true 2>/dev/null && echo chrooted || echo refused) > /chroot && ls /proc/self/ >/dev/null && echo ok > /proc-ok
`), 0o644)
	script := `set -e
mount -t proc proc "$1/proc"
mount --rbind /dev "$1/dev"
before=$(wc -l < /proc/self/mountinfo)
chroot "$1" /bin/build --context /ctx --no-push --tar-path /out/img.tar --isolation chroot
echo "mounts $before $(wc -l < /proc/self/mountinfo)"
`
	cmd := exec.Command("unshare", "--mount", "--propagation", "shared", "sh", "-c", script, "sh", jail)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp", "TMPDIR=/tmp"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build in a chroot: %v\n%s", err, out)
	}
	var before, after int
	for _, l := range strings.Split(string(out), "\n") {
		if _, err := fmt.Sscanf(l, "mounts %d %d", &before, &after); err == nil {
			break
		}
	}
	if before == 0 || after != before {
		t.Errorf("the namespace around the chroot had %d mounts before the build and %d after: the sandbox's mounts propagated out\n%s", before, after, out)
	}
	img, err := tarball.ImageFromPath(filepath.Join(jail, "out", "img.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	files := imagetest.Flatten(t, img)
	for name, want := range map[string]string{"x": "hi\n", "mount": "refused\n", "node": "refused\n", "chroot": "refused\n", "proc-ok": "ok\n"} {
		if got := files[name].Content; got != want {
			t.Errorf("/%s = %q, want %q", name, got, want)
		}
	}
	if h := files["null"].Header; h.Typeflag != tar.TypeChar || h.Devmajor != 1 || h.Devminor != 3 {
		t.Errorf("/null in the layer: %+v", h)
	}
}
