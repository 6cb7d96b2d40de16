package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// canary is a host directory the build must never touch: it holds a
// root-only secret and a victim file in a subdirectory.
type canary struct {
	dir, before string
}

const canarySecret = "host-secret-5d1c"

func newCanary(t *testing.T) *canary {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "b"), 0o700)
	os.WriteFile(filepath.Join(dir, "secret"), []byte(canarySecret), 0o600)
	os.WriteFile(filepath.Join(dir, "b/victim"), []byte("victim"), 0o600)
	os.Chmod(dir, 0o700)
	c := &canary{dir: dir}
	c.before = describe(t, dir)
	return c
}

// check fails the test when anything in or of the canary changed.
func (c *canary) check(t *testing.T) {
	t.Helper()
	if after := describe(t, c.dir); after != c.before {
		t.Errorf("the host directory %s changed:\nbefore:\n%s\nafter:\n%s", c.dir, c.before, after)
	}
}

// describe lists a tree: names, types, modes, owners, sizes, times and
// contents, the directory itself included.
func describe(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", p, err)
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&b, "%s %v %d:%d %d mtime=%d ctime=%d", strings.TrimPrefix(p, dir), fi.Mode(), st.Uid, st.Gid, fi.Size(), fi.ModTime().UnixNano(), st.Ctim.Nano())
		if fi.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			if len(data) > 256 {
				sum := sha256.Sum256(data)
				fmt.Fprintf(&b, " sha256:%x", sum)
			} else {
				fmt.Fprintf(&b, " %q", data)
			}
		}
		b.WriteString("\n")
		return nil
	})
	return b.String()
}

// cacheDirName is the directory kiln keeps a RUN cache mount of id in.
func cacheDirName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:8])
}

// TestHostileMountChain is the security issue's finding 1: a bind mount
// brings in a symlink, a later mount target passes through it to cover
// kiln's own run-cache directory, and a cache mount's source then leads
// to any host directory. Every target must be resolved inside the root,
// through the mounts made before it, at the moment it is mounted; every
// source before anything is mounted. Tried with the sources in the
// context and with the sources made by an earlier stage.
func TestHostileMountChain(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:hostile"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	const id = "pwn"
	long := "/" + strings.Repeat("c", 200) // mounted after the chain: targets go shortest first
	for _, tc := range []struct {
		name, dockerfile string
		context          func(ctx, host string)
	}{{
		name: "context sources",
		dockerfile: `ARG BASE
FROM $BASE
ARG WORK
RUN --mount=type=bind,source=d,target=/m --mount=type=bind,source=f,target=/m/x${WORK}/run-cache --mount=type=cache,id=` + id + `,target=` + long + ` \
    cat ` + long + `/secret > /leak 2>&1; touch ` + long + `/planted; echo done > /ran
`,
		context: func(ctx, host string) {
			os.MkdirAll(filepath.Join(ctx, "d"), 0o755)
			os.Symlink(strings.Repeat("../", 30), filepath.Join(ctx, "d", "x"))
			os.MkdirAll(filepath.Join(ctx, "f"), 0o755)
			os.Symlink(host, filepath.Join(ctx, "f", cacheDirName(id)))
		},
	}, {
		name: "stage sources",
		dockerfile: `ARG BASE
FROM $BASE AS evil
ARG HOST
RUN mkdir -p /d /f && ln -s ../../../../../../../../../../../../../../../.. /d/x && ln -s $HOST /f/` + cacheDirName(id) + `
FROM $BASE
ARG WORK
RUN --mount=type=bind,from=evil,source=/d,target=/m --mount=type=bind,from=evil,source=/f,target=/m/x${WORK}/run-cache --mount=type=cache,id=` + id + `,target=` + long + ` \
    cat ` + long + `/secret > /leak 2>&1; touch ` + long + `/planted; echo done > /ran
`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			host := newCanary(t)
			kd := t.TempDir()
			ctx := t.TempDir()
			os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte(tc.dockerfile), 0o644)
			if tc.context != nil {
				tc.context(ctx, host.dir)
			}
			dest := reg + "/kiln/hostile-mounts:" + strings.ReplaceAll(tc.name, " ", "-")
			r := kiln(t, nil, "--context", ctx, "-d", dest, "--insecure", "--insecure-pull", "--isolation", "chroot",
				"--kaniko-dir", kd, "--build-arg", "BASE="+base, "--build-arg", "WORK="+filepath.Join(kd, "work"),
				"--build-arg", "HOST="+host.dir)
			host.check(t)
			if r.code != 0 {
				t.Fatalf("build failed (%d):\n%s", r.code, r.stderr)
			}
			fs := imagetest.Flatten(t, pull(t, dest))
			if fs["ran"].Content != "done\n" {
				t.Fatalf("the RUN did not run: %+v", fs["ran"])
			}
			if strings.Contains(fs["leak"].Content, canarySecret) {
				t.Errorf("the RUN read the host's secret: %q", fs["leak"].Content)
			}
			if _, err := os.Stat(filepath.Join(kd, "work", "run-cache", cacheDirName(id), "planted")); err != nil {
				t.Errorf("the cache mount is not kiln's own cache directory: %v", err)
			}
		})
	}
}

// TestHostileStubRemoval is finding 2: after the RUN, kiln removes the
// mount points it created. A RUN that replaces a mount point's parent with
// a symlink to a host directory must not make kiln (host root) delete a
// host file of the mount point's name, nor change that directory's times.
func TestHostileStubRemoval(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:stubs"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	host := newCanary(t)
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte(`ARG BASE
FROM $BASE
ARG HOST
RUN --mount=type=tmpfs,target=/a/b/victim mv /a /moved && ln -s $HOST /a && echo done > /ran
RUN --mount=type=tmpfs,target=/p/secret rm -rf /p; ln -s $HOST /p; echo again > /ran2
`), 0o644)
	dest := reg + "/kiln/hostile-stubs:1"
	r := kiln(t, nil, "--context", ctx, "-d", dest, "--insecure", "--insecure-pull", "--isolation", "chroot",
		"--build-arg", "BASE="+base, "--build-arg", "HOST="+host.dir)
	host.check(t)
	if r.code != 0 {
		t.Fatalf("build failed (%d):\n%s", r.code, r.stderr)
	}
	fs := imagetest.Flatten(t, pull(t, dest))
	if fs["ran"].Content != "done\n" || fs["ran2"].Content != "again\n" {
		t.Fatalf("the RUNs did not run: %+v %+v", fs["ran"], fs["ran2"])
	}
	if fs["a"].Header.Linkname != host.dir {
		t.Errorf("/a: %+v, want the RUN's symlink", fs["a"].Header)
	}
}

// TestHostileBaseInPlace is findings 3 and 4: in place, in runc with
// Docker's default capabilities, base layers whose whiteouts name "." or
// ".." are refused before anything is removed, and base-layer symlinks
// never carry a write into kiln's directory, the workspace or a volume.
func TestHostileBaseInPlace(t *testing.T) {
	reg := imagetest.Registry(t)
	busybox := imagetest.BusyboxFiles(t)
	for _, tc := range []struct {
		name    string
		layer   []imagetest.File
		wantErr string
	}{
		{name: "whiteout of dotdot", layer: []imagetest.File{imagetest.Reg(".wh..", "", 0, 0, 0)}, wantErr: "a whiteout that names no file"},
		{name: "nested whiteout of dotdot", layer: []imagetest.File{imagetest.Dir("x", 0o755, 0, 0), imagetest.Reg("x/.wh..", "", 0, 0, 0)}, wantErr: "a whiteout that names no file"},
		{name: "links into protected paths", layer: []imagetest.File{
			imagetest.Symlink("kd", "/kaniko"),
			imagetest.Reg("kd/.docker/config.json", `{"auths":{"attacker.example":{"auth":"eDp5"}}}`, 0o644, 0, 0),
			imagetest.Reg("kd/build", "#!/bin/sh\necho owned\n", 0o755, 0, 0),
			imagetest.Symlink("ws", "/workspace"),
			imagetest.Reg("ws/planted", "for the next step", 0o755, 0, 0),
			imagetest.Symlink("vl", "../../vol"),
			imagetest.Reg("vl/data", "overwritten", 0o644, 0, 0),
			imagetest.Reg("vl/.wh.keep", "", 0, 0, 0),
			imagetest.File{Path: "stolen", Type: '1', Link: "kd/.docker/config.json"},
			imagetest.Reg("ok", "the rest of the layer", 0o644, 0, 0),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := reg + "/hostile/base:" + strings.ReplaceAll(tc.name, " ", "-")
			pushTo(t, base, imagetest.Image(t, true, nil, busybox, tc.layer))
			rootfs := t.TempDir()
			os.MkdirAll(filepath.Join(rootfs, "kaniko", ".docker"), 0o755)
			bin, _ := os.ReadFile(filepath.Join(binDir, "build"))
			os.WriteFile(filepath.Join(rootfs, "kaniko", "build"), bin, 0o755)
			os.WriteFile(filepath.Join(rootfs, "kaniko", ".docker", "config.json"), []byte(`{"auths":{}}`), 0o600)
			kaniko := describe(t, filepath.Join(rootfs, "kaniko", ".docker")) + describe(t, filepath.Join(rootfs, "kaniko", "build"))
			ctx := t.TempDir()
			os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM "+base+"\nRUN cat /ok > /copied\n"), 0o644)
			workspace := describe(t, ctx)
			vol := newCanary(t)
			os.WriteFile(filepath.Join(vol.dir, "data"), []byte("volume"), 0o644)
			os.WriteFile(filepath.Join(vol.dir, "keep"), []byte("keep"), 0o644)
			vol.before = describe(t, vol.dir)
			dest := reg + "/hostile/inplace:" + strings.ReplaceAll(tc.name, " ", "-")
			r := runContainer(t, container{
				rootfs: rootfs,
				args: []string{"/kaniko/build", "--context", "/workspace", "-d", dest, "--insecure", "--insecure-pull",
					"--isolation", "in-place", "--log-format", "text"},
				binds: []bind{{ctx, "/workspace"}, {vol.dir, "/vol"}},
				env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "container=oci", "HOME=/root"},
			})
			if after := describe(t, filepath.Join(rootfs, "kaniko", ".docker")) + describe(t, filepath.Join(rootfs, "kaniko", "build")); after != kaniko {
				t.Errorf("kiln's directory changed:\nbefore:\n%s\nafter:\n%s", kaniko, after)
			}
			if after := describe(t, ctx); after != workspace {
				t.Errorf("the workspace changed:\nbefore:\n%s\nafter:\n%s", workspace, after)
			}
			vol.check(t)
			if tc.wantErr != "" {
				if r.code == 0 || !strings.Contains(r.stderr, tc.wantErr) {
					t.Fatalf("exit %d, want a failure naming %q:\n%s", r.code, tc.wantErr, r.stderr)
				}
				if _, err := pullErr(dest); err == nil {
					t.Error("a refused build pushed a tag")
				}
				return
			}
			if r.code != 0 {
				t.Fatalf("build failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			fs := imagetest.Flatten(t, pull(t, dest))
			if fs["copied"].Content != "the rest of the layer" {
				t.Errorf("the RUN saw /ok as %+v", fs["copied"])
			}
		})
	}
}

// TestMultiLineSecretNotLogged is finding 5: a secret of several lines (a
// PEM key) printed by a RUN, line by line, never reaches the log or the
// error report in clear, nor a layer.
func TestMultiLineSecretNotLogged(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:secrets"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	key := "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIGlhZ2VuZXJhdGVkLWZvci1raWxuLXRlc3RzLW9ubHktMTIzNDU2Nzg5\noAoGCCqGSM49AwEHoUQDQgAEc2VjcmV0LWxpbmUtdGhyZWUtb2YtdGhlLWtleS0x\n-----END EC PRIVATE KEY-----\n"
	file := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(file, []byte(key), 0o600)
	for _, tc := range []struct{ name, run string }{
		{"printed", "cat /run/secrets/key; sed -n 2p /run/secrets/key >&2"},
		{"failing", "cat /run/secrets/key; exit 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.TempDir()
			os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM "+base+"\nRUN --mount=type=secret,id=key "+tc.run+"\n"), 0o644)
			dest := reg + "/kiln/secret:" + strings.ReplaceAll(tc.name, " ", "-")
			for _, format := range []string{"text", "json"} {
				r := kiln(t, nil, "--context", ctx, "-d", dest, "--insecure", "--insecure-pull", "--secret", "id=key,src="+file,
					"--log-format", format)
				for _, line := range strings.Split(key, "\n") {
					if line != "" && strings.Contains(r.stderr+r.stdout, line) {
						t.Errorf("%s log shows the secret's line %q:\n%s", format, line, r.stderr)
					}
				}
				if !strings.Contains(r.stderr, "***") {
					t.Errorf("%s log: the masked output is missing:\n%s", format, r.stderr)
				}
			}
			if tc.name != "printed" {
				return
			}
			img := pull(t, dest)
			ls, _ := img.Layers()
			for _, l := range ls {
				for _, name := range imagetest.LayerNames(t, l) {
					if strings.Contains(name, "secrets/key") {
						t.Errorf("the secret's mount point is in a layer: %s", name)
					}
				}
			}
		})
	}
}

// TestIgnoredFilesStayOut is finding 6: a .dockerignore'd file must not
// reach the image through a symlink in the context (alias -> .env,
// dl -> .), nor through RUN --mount=type=bind: the build sees the context
// as BuildKit sends it, filtered.
func TestIgnoredFilesStayOut(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:ignore"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	const secret = "DB_PASSWORD=ignored-7f3e"
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, ".env"), []byte(secret), 0o600)
	os.MkdirAll(filepath.Join(ctx, "private"), 0o755)
	os.WriteFile(filepath.Join(ctx, "private", "key"), []byte(secret), 0o600)
	os.WriteFile(filepath.Join(ctx, "app.txt"), []byte("app"), 0o644)
	os.WriteFile(filepath.Join(ctx, ".dockerignore"), []byte(".env\nprivate\n"), 0o644)
	os.Symlink(".env", filepath.Join(ctx, "alias"))
	os.Symlink(".", filepath.Join(ctx, "dl"))
	os.Symlink("private", filepath.Join(ctx, "pl"))
	good := "FROM " + base + `
COPY . /all/
COPY dl/ /viadl/
COPY dl/app.txt p* /some/
RUN --mount=type=bind,target=/ctx cat /ctx/.env /ctx/alias /ctx/dl/.env /ctx/private/key > /bind-leak 2>&1; ls -a /ctx > /ctx-list; true
RUN --mount=type=bind,source=dl,target=/dl cat /dl/.env > /bind-leak2 2>&1; true
`
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte(good), 0o644)
	dest := reg + "/kiln/ignore:good"
	r := kiln(t, nil, "--context", ctx, "-d", dest, "--insecure", "--insecure-pull")
	if r.code != 0 {
		t.Fatalf("build failed (%d):\n%s", r.code, r.stderr)
	}
	img := pull(t, dest)
	ls, _ := img.Layers()
	for i, l := range ls {
		rc, _ := l.Uncompressed()
		data, _ := io.ReadAll(rc)
		rc.Close()
		if strings.Contains(string(data), "ignored-7f3e") {
			t.Errorf("layer %d holds the ignored file's content", i)
		}
	}
	fs := imagetest.Flatten(t, img)
	if fs["all/app.txt"].Content != "app" || fs["viadl/app.txt"].Content != "app" || fs["some/app.txt"].Content != "app" {
		t.Errorf("the context's other files were not copied: %v %v %v", fs["all/app.txt"], fs["viadl/app.txt"], fs["some/app.txt"])
	}
	for _, p := range []string{"all/.env", "viadl/.env", "all/private", "some/key", "some/private"} {
		if _, ok := fs[p]; ok {
			t.Errorf("%s is in the image", p)
		}
	}
	if strings.Contains(fs["ctx-list"].Content, ".env") || strings.Contains(fs["ctx-list"].Content, "private") {
		t.Errorf("the bind-mounted context lists ignored files:\n%s", fs["ctx-list"].Content)
	}
	// Naming an ignored file, however, is an error.
	for _, df := range []string{
		"COPY alias /x",
		"COPY dl/.env /x",
		"COPY pl/key /x",
		"RUN --mount=type=bind,source=alias,target=/s cat /s",
	} {
		os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM "+base+"\n"+df+"\n"), 0o644)
		r := kiln(t, nil, "--context", ctx, "--no-push")
		if r.code == 0 || strings.Contains(r.stderr, "ignored-7f3e") {
			t.Errorf("%s: exit %d, want a failure:\n%s", df, r.code, r.stderr)
		} else if !strings.Contains(r.stderr, "Dockerfile:2") {
			t.Errorf("%s: the error does not name the line:\n%s", df, r.stderr)
		}
	}
}

// TestFifoInContext is finding 8: ADD (and COPY) of a fifo in the context
// must neither hang nor ignore SIGTERM: a fifo is never opened.
func TestFifoInContext(t *testing.T) {
	ctx := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(ctx, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ctx, "f"), []byte("f"), 0o644)
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM scratch\nADD pipe /added\nCOPY . /all/\n"), 0o644)
	out := t.TempDir()
	cmdCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cmdCtx, filepath.Join(binDir, "build"), "--context", ctx, "--no-push", "--oci-layout-path", filepath.Join(out, "layout"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "TMPDIR=" + t.TempDir()}
	data, err := cmd.CombinedOutput()
	if cmdCtx.Err() != nil {
		t.Fatalf("the build hung on a fifo:\n%s", data)
	}
	if err != nil {
		t.Fatalf("build failed: %v\n%s", err, data)
	}
	idx, err := layout.ImageIndexFromPath(filepath.Join(out, "layout"))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := idx.IndexManifest()
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	fs := imagetest.Flatten(t, img)
	if _, ok := fs["added"]; ok {
		t.Error("the fifo was added")
	}
	if _, ok := fs["all/pipe"]; ok {
		t.Error("the fifo was copied")
	}
	if fs["all/f"].Content != "f" {
		t.Errorf("all/f = %+v", fs["all/f"])
	}
}

// TestOutputsAllOrNothing is finding 10: a failed second destination
// leaves no tag on the first, and an output that cannot be written
// leaves no other output and no tag behind.
func TestOutputsAllOrNothing(t *testing.T) {
	reg := imagetest.Registry(t)
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM scratch\nCOPY Dockerfile /\n"), 0o644)
	out := t.TempDir()
	r := kiln(t, nil, "--context", ctx, "-d", reg+"/first/app:1", "-d", "127.0.0.1:1/second/app:1", "--insecure",
		"--skip-push-permission-check", "--tar-path", filepath.Join(out, "img.tar"), "--digest-file", filepath.Join(out, "digest"))
	if r.code == 0 {
		t.Fatal("a push to an unreachable registry succeeded")
	}
	if _, err := pullErr(reg + "/first/app:1"); err == nil {
		t.Error("the first destination was tagged although the second failed")
	}
	mustNotExist(t, filepath.Join(out, "img.tar"), filepath.Join(out, "digest"))
	dir := t.TempDir()
	r = kiln(t, nil, "--context", ctx, "-d", reg+"/third/app:1", "--insecure", "--tar-path", filepath.Join(out, "img.tar"),
		"--digest-file", dir)
	if r.code == 0 || !strings.Contains(r.stderr, "--digest-file") {
		t.Fatalf("a digest file naming a directory: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := pullErr(reg + "/third/app:1"); err == nil {
		t.Error("tagged although an output could not be written")
	}
	mustNotExist(t, filepath.Join(out, "img.tar"))
}

// TestInPlaceInUserNamespacedPod: kiln's recommended hardening, a pod with
// hostUsers: false, is a container whose root is an unprivileged host uid
// (a user namespace of 65536 ids). The in-place build works there, RUN
// chowns files to several ids, and the image keeps those owners.
func TestInPlaceInUserNamespacedPod(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:userns"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	const hostID = 200000
	rootfs := t.TempDir()
	os.MkdirAll(filepath.Join(rootfs, "kaniko"), 0o755)
	bin, _ := os.ReadFile(filepath.Join(binDir, "build"))
	os.WriteFile(filepath.Join(rootfs, "kaniko", "build"), bin, 0o755)
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM "+base+`
RUN mkdir -p /owned && echo a > /owned/app && chown 1000:1000 /owned/app \
 && echo n > /owned/nobody && chown 65534:65534 /owned/nobody \
 && mkdir /owned/mixed && chown 123:456 /owned/mixed && id -u > /owned/whoami
COPY --chown=4242:4343 Dockerfile /copied
`), 0o644)
	out := t.TempDir()
	for _, dir := range []string{rootfs, ctx, out} {
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil {
				os.Lchown(p, hostID, hostID)
			}
			return nil
		})
		// runc reaches the bundle through the test's 0700 temporary directories.
		for p := filepath.Dir(dir); p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
			os.Chmod(p, 0o711)
		}
	}
	dest := reg + "/kiln/userns:1"
	r := runContainer(t, container{
		rootfs: rootfs,
		args: []string{"/kaniko/build", "--context", "/workspace", "-d", dest, "--insecure", "--insecure-pull",
			"--digest-file", "/out/digest", "--log-format", "text"},
		binds:  []bind{{ctx, "/workspace"}, {out, "/out"}},
		env:    []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "container=oci", "HOME=/root"},
		userns: &idRange{HostID: hostID, Size: 65536},
	})
	if r.code != 0 {
		t.Fatalf("in-place build in a user-namespaced container failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	contains(t, r.stderr, "in-place isolation")
	fs := imagetest.Flatten(t, pull(t, dest))
	for p, ids := range map[string][2]int{"owned/app": {1000, 1000}, "owned/nobody": {65534, 65534}, "owned/mixed": {123, 456}, "copied": {4242, 4343}} {
		if h := fs[p].Header; h.Uid != ids[0] || h.Gid != ids[1] {
			t.Errorf("%s owned %d:%d in the image, want %d:%d", p, h.Uid, h.Gid, ids[0], ids[1])
		}
	}
	if fs["owned/whoami"].Content != "0\n" {
		t.Errorf("RUN ran as %q, want root inside", fs["owned/whoami"].Content)
	}
	// On the host, the container's files belong to the mapped ids.
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(rootfs, "owned", "app"), &st); err != nil || st.Uid != hostID+1000 {
		t.Errorf("/owned/app on the host: uid %d (%v), want %d", st.Uid, err, hostID+1000)
	}
}

// hostAddress is a non-loopback IPv4 address of this machine, or "".
func hostAddress() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			return ipn.IP.String()
		}
	}
	return ""
}

// TestRunNetwork: in chroot isolation RUN gets the network --run-network
// names. host reaches this host's loopback services; private has only a
// loopback of its own; slirp4netns reaches out (this host's other
// addresses included) but never this host's loopback, in every RUN of
// the build (which share one namespace and one slirp4netns). A
// Dockerfile's --network=host does not widen it; its --network=none
// narrows it.
func TestRunNetwork(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:net"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "host service") })}
	go srv.Serve(l)
	defer srv.Close()
	port := fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	ext := hostAddress()
	if ext == "" {
		t.Fatal("this machine has no non-loopback IPv4 address to test with")
	}
	get := func(host string) string {
		return `printf 'GET / HTTP/1.0\r\n\r\n' | busybox nc -w 5 ` + host + " " + port + " | grep -q 'host service'"
	}
	probe := func(n string) string {
		return "busybox ip link show lo | grep -q UP && echo up > /lo" + n + "; " +
			get("127.0.0.1") + "; echo $? > /rc-loop" + n + "; " + get(ext) + "; echo $? > /rc-ext" + n + "; true"
	}
	for _, tc := range []struct {
		mode            string
		network         string // the Dockerfile's --network
		loopback, outer bool
	}{
		{"host", "", true, true},
		{"private", "", false, false},
		{"private", "--network=host ", false, false},
		{"slirp4netns", "", false, true},
		{"slirp4netns", "--network=none ", false, false},
	} {
		t.Run(tc.mode+tc.network, func(t *testing.T) {
			ctx := t.TempDir()
			// Two RUNs: the second's network (the first's namespace, with
			// slirp4netns) is the same.
			os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM "+base+"\nRUN "+tc.network+probe("")+"\nRUN "+tc.network+probe("2")+"\n"), 0o644)
			dest := reg + "/kiln/net:" + tc.mode
			r := kiln(t, nil, "--context", ctx, "-d", dest, "--insecure", "--insecure-pull", "--isolation", "chroot", "--run-network", tc.mode)
			if r.code != 0 {
				t.Fatalf("build failed (%d):\n%s", r.code, r.stderr)
			}
			fs := imagetest.Flatten(t, pull(t, dest))
			for _, n := range []string{"", "2"} {
				if fs["lo"+n].Content != "up\n" {
					t.Errorf("RUN %s: loopback is not up", n)
				}
				if got := fs["rc-loop"+n].Content == "0\n"; got != tc.loopback {
					t.Errorf("RUN %s: reached this host's loopback service: %v, want %v", n, got, tc.loopback)
				}
				if got := fs["rc-ext"+n].Content == "0\n"; got != tc.outer {
					t.Errorf("RUN %s: reached %s: %v, want %v", n, ext, got, tc.outer)
				}
			}
		})
	}
}
