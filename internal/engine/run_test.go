package engine

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// lastLayer returns the entries of the image's last layer by path.
func lastLayer(t *testing.T, img v1.Image) map[string]imagetest.Entry {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[len(ls)-1].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	return imagetest.ReadTar(t, rc)
}

func TestRun(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name   string
		df     string
		args   []string
		want   map[string]want
		absent []string
		layer  func(t *testing.T, l map[string]imagetest.Entry) // checks on the last layer
	}{{
		name: "shell form, modes, setuid",
		df:   "FROM REG/busybox:1\nRUN echo hi > /hello && chmod 4750 /hello && mkdir -p /a/b && chown 7:8 /a/b\n",
		want: map[string]want{
			"hello": {content: str("hi\n"), mode: 0o4750, owner: true},
			"a/b":   {typ: tar.TypeDir, uid: 7, gid: 8, owner: true},
		},
	}, {
		name: "exec form and SHELL",
		df:   "FROM REG/busybox:1\nRUN [\"/bin/sh\", \"-c\", \"echo exec > /ex\"]\nSHELL [\"/bin/sh\", \"-e\", \"-c\"]\nRUN echo $0 $- > /shell\n",
		want: map[string]want{"ex": {content: str("exec\n")}, "shell": {content: str("/bin/sh ce\n")}},
	}, {
		name: "USER, groups and WORKDIR",
		df:   "FROM REG/busybox:1\nUSER app\nWORKDIR /home/app/w\nRUN id -u > uid && id -g > gid && pwd > pwd && touch owned\nUSER 4242\nRUN id -u > /tmp/numeric && id -g >> /tmp/numeric\n",
		want: map[string]want{
			"home/app/w/uid":   {content: str("1000\n")},
			"home/app/w/gid":   {content: str("1001\n")},
			"home/app/w/pwd":   {content: str("/home/app/w\n")},
			"home/app/w/owned": {uid: 1000, gid: 1001, owner: true},
			"tmp/numeric":      {content: str("4242\n0\n"), uid: 4242, gid: 0, owner: true},
		},
	}, {
		name: "ARG and ENV visible, ARG not persisted",
		df:   "FROM REG/busybox:1\nARG A=one\nENV B=two\nRUN echo \"$A-$B\" > /ab\n",
		args: []string{"A=cli"},
		want: map[string]want{"ab": {content: str("cli-two\n")}},
	}, {
		name:   "deletions are whiteouts",
		df:     "FROM REG/busybox:1\nRUN rm -rf /usr/bin/tool /opt/data\n",
		absent: []string{"usr/bin/tool", "opt/data"},
		want:   map[string]want{"opt": {typ: tar.TypeDir, mode: 0o750}},
		layer: func(t *testing.T, l map[string]imagetest.Entry) {
			for _, p := range []string{"usr/bin/.wh.tool", "opt/.wh.data"} {
				if _, ok := l[p]; !ok {
					t.Errorf("layer lacks whiteout %s: %v", p, keys(l))
				}
			}
		},
	}, {
		name:   "directory deleted and recreated is opaque",
		df:     "FROM REG/busybox:1\nRUN rm -rf /opt && mkdir /opt && echo new > /opt/new\n",
		want:   map[string]want{"opt/new": {content: str("new\n")}, "opt": {typ: tar.TypeDir, mode: 0o755}},
		absent: []string{"opt/data"},
		layer: func(t *testing.T, l map[string]imagetest.Entry) {
			if _, ok := l["opt/.wh..wh..opq"]; !ok {
				t.Errorf("no opaque marker: %v", keys(l))
			}
		},
	}, {
		name: "hard links stay links",
		df:   "FROM REG/busybox:1\nRUN echo x > /h1 && ln /h1 /h2 && ln -s h1 /s1\n",
		want: map[string]want{
			"h1": {content: str("x\n")},
			"h2": {typ: tar.TypeLink, link: "h1"},
			"s1": {typ: tar.TypeSymlink, link: "h1"},
		},
	}, {
		name: "metadata-only change",
		df:   "FROM REG/busybox:1\nRUN chmod 600 /etc/passwd\n",
		want: map[string]want{"etc/passwd": {mode: 0o600}},
		layer: func(t *testing.T, l map[string]imagetest.Entry) {
			if len(l) != 2 { // etc/ and etc/passwd
				t.Errorf("layer %v, want etc and etc/passwd", keys(l))
			}
		},
	}, {
		name:   "heredocs",
		df:     "FROM REG/busybox:1\nRUN <<EOF\necho a > /hd1\necho b >> /hd1\nEOF\nRUN <<EOF\n#!/bin/sh\necho script > /hd2\nEOF\nRUN cat <<EOF > /hd3\nx=$((1+1))\nEOF\n",
		want:   map[string]want{"hd1": {content: str("a\nb\n")}, "hd2": {content: str("script\n")}, "hd3": {content: str("x=2\n")}},
		absent: []string{"dev/pipes"},
	}, {
		name:   "sandbox devices and proc leave nothing behind",
		df:     "FROM REG/busybox:1\nRUN echo x > /dev/null && test -e /proc/self/status && test -c /dev/zero && cat /etc/hosts > /dev/null && echo ok > /ok\n",
		want:   map[string]want{"ok": {content: str("ok\n")}},
		absent: []string{"proc", "dev", "etc/hosts", "etc/resolv.conf"},
	}, {
		name: "network none",
		df:   "FROM REG/busybox:1\nRUN --network=none cat /proc/net/dev | wc -l > /lines\n",
		want: map[string]want{"lines": {content: str("3\n")}},
	}, {
		name:   "tmpfs mount leaves nothing",
		df:     "FROM REG/busybox:1\nRUN --mount=type=tmpfs,target=/scratch touch /scratch/x && echo done > /done\n",
		want:   map[string]want{"done": {}},
		absent: []string{"scratch", "scratch/x"},
	}, {
		name:   "bind mount from a stage",
		df:     "FROM REG/busybox:1 AS src\nRUN echo from-stage > /payload\nFROM REG/busybox:1\nRUN --mount=type=bind,from=src,source=/payload,target=/mnt/p cp /mnt/p /copied\n",
		want:   map[string]want{"copied": {content: str("from-stage\n")}},
		absent: []string{"mnt/p", "payload"},
	}, {
		// An orphan that exits is a zombie until the sandbox's init reaps
		// it: the RUN counts zombies in its pid namespace after one.
		name: "orphans are reaped",
		df:   "FROM REG/busybox:1\nRUN (true &) ; sleep 0.5; cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' > /zombies || true\n",
		want: map[string]want{"zombies": {content: str("0\n")}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, cf, img := f.mustRun(buildSpec{dockerfile: tt.df, opts: func(o *Options) { o.BuildArgs = tt.args }})
			checkFiles(t, fs, tt.want, tt.absent)
			if tt.layer != nil {
				tt.layer(t, lastLayer(t, img))
			}
			for _, e := range cf.Config.Env {
				if strings.HasPrefix(e, "A=") {
					t.Errorf("ARG persisted in the config: %s", e)
				}
			}
		})
	}
}

func keys(m map[string]imagetest.Entry) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestRunUnchangedAddsAnEmptyLayer: as BuildKit, a RUN that changes
// nothing still commits a layer, an empty one, so layers and history align
// as Docker's do (semantics issue, item 3).
func TestRunUnchangedAddsAnEmptyLayer(t *testing.T) {
	f := newFixture(t)
	_, cf, img := f.mustRun(buildSpec{dockerfile: "FROM REG/busybox:1\nRUN true\nRUN echo x > /dev/null\n"})
	ls, _ := img.Layers()
	if len(ls) != 3 {
		t.Fatalf("%d layers, want the base's and one per RUN", len(ls))
	}
	for _, l := range ls[1:] {
		if names := imagetest.LayerNames(t, l); len(names) != 0 {
			t.Errorf("a RUN that changed nothing wrote %v", names)
		}
	}
	hist := cf.History[1:]
	if len(hist) != 2 || hist[0].EmptyLayer || hist[1].EmptyLayer || !strings.HasPrefix(hist[0].CreatedBy, "RUN /bin/sh -c true") {
		t.Errorf("history %+v", hist)
	}
}

func TestRunFailure(t *testing.T) {
	f := newFixture(t)
	_, err := f.run(buildSpec{dockerfile: "FROM REG/busybox:1\nCOPY <<EOF /x\nx\nEOF\nRUN echo first; echo boom >&2; exit 3\n"})
	if err == nil {
		t.Fatal("build succeeded")
	}
	for _, w := range []string{"Dockerfile:5", "exit code 3", "boom", "first"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

func TestRunCacheMountPersists(t *testing.T) {
	f := newFixture(t)
	work := t.TempDir()
	df := "FROM REG/busybox:1\nRUN --mount=type=cache,target=/var/cache/app,id=app echo run >> /var/cache/app/log && cat /var/cache/app/log > /seen\n"
	for _, seen := range []string{"run\n", "run\nrun\n"} {
		fs, _, _ := f.mustRun(buildSpec{dockerfile: df, opts: func(o *Options) { o.WorkDir = work }})
		checkFiles(t, fs, map[string]want{"seen": {content: str(seen)}}, []string{"var/cache/app/log"})
	}
}

func TestRunSecret(t *testing.T) {
	f := newFixture(t)
	const value = "hunter2-very-secret"
	secretFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(secretFile, []byte(value), 0o600)
	var logs bytes.Buffer
	df := `FROM REG/busybox:1
RUN --mount=type=secret,id=token test "$(wc -c < /run/secrets/token)" = "19" && echo checked > /checked
RUN --mount=type=secret,id=envtok,env=TOKEN echo "token is $TOKEN" && test -n "$TOKEN" && echo ok > /env-ok
RUN --mount=type=secret,id=token,target=/etc/app/token,mode=0440,uid=1000 stat -c '%a %u' /etc/app/token > /stat
`
	res, err := f.run(buildSpec{dockerfile: df, env: map[string]string{"ENVSECRET": value}, opts: func(o *Options) {
		o.Secrets = map[string]Secret{"token": {File: secretFile}, "envtok": {Env: "ENVSECRET"}}
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}})
	if err != nil {
		t.Fatal(err)
	}
	fs := imagetest.Flatten(t, res.Image)
	checkFiles(t, fs, map[string]want{"checked": {}, "env-ok": {}, "stat": {content: str("440 1000\n")}},
		[]string{"run/secrets/token", "run/secrets", "etc/app/token"})
	ls, _ := res.Image.Layers()
	for i, l := range ls {
		rc, _ := l.Uncompressed()
		for name, e := range imagetest.ReadTar(t, rc) {
			if strings.Contains(e.Content, value) || strings.Contains(name, value) {
				t.Errorf("layer %d holds the secret in %s", i, name)
			}
		}
		rc.Close()
	}
	cfgRaw, _ := res.Image.RawConfigFile()
	if strings.Contains(string(cfgRaw), value) {
		t.Error("the config or history holds the secret")
	}
	if strings.Contains(logs.String(), value) {
		t.Errorf("the log holds the secret:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "token is ***") {
		t.Errorf("RUN output not logged with the secret masked:\n%s", logs.String())
	}
	_, err = f.run(buildSpec{dockerfile: "FROM REG/busybox:1\nRUN --mount=type=secret,id=missing,required=true true\n"})
	if err == nil || !strings.Contains(err.Error(), `secret "missing" is required`) {
		t.Errorf("missing required secret: %v", err)
	}
}

func TestRunHistoryAndSingleSnapshot(t *testing.T) {
	f := newFixture(t)
	_, cf, img := f.mustRun(buildSpec{
		dockerfile: "FROM REG/busybox:1\nARG V=1\nRUN echo $V > /v\nCOPY <<EOF /c\nc\nEOF\nRUN rm /c && echo w > /w\n",
		opts:       func(o *Options) { o.SingleSnapshot = true },
	})
	ls, _ := img.Layers()
	if len(ls) != 2 {
		t.Fatalf("%d layers, want base + 1", len(ls))
	}
	l := lastLayer(t, img)
	if d := cmp.Diff([]string{"v", "w"}, sortedKeys(l)); d != "" {
		t.Errorf("single snapshot layer (-want +got):\n%s", d)
	}
	if got := cf.History[2].CreatedBy; got != "RUN |1 V=1 /bin/sh -c echo $V > /v" {
		t.Errorf("history created_by %q", got)
	}
}

func sortedKeys(m map[string]imagetest.Entry) []string {
	out := keys(m)
	sortStrings(out)
	return out
}

func TestRunSupplementaryGroupsAndProxyArgs(t *testing.T) {
	f := newFixture(t)
	img := imagetest.Image(t, true, func(cf *v1.ConfigFile) {}, append(imagetest.BusyboxFiles(t),
		imagetest.Reg("etc/group", "root:x:0:\nappgrp:x:1001:\nstaff:x:50:app\naudio:x:63:nobody,app\n", 0o644, 0, 0)))
	f.push("busybox:groups", img)
	fs, cf, _ := f.mustRun(buildSpec{
		dockerfile: "FROM REG/busybox:groups\nUSER app\nRUN id -G > /tmp/groups && echo \"$HTTP_PROXY\" > /tmp/proxy\n",
		opts:       func(o *Options) { o.BuildArgs = []string{"HTTP_PROXY=http://proxy.local:3128"} },
	})
	checkFiles(t, fs, map[string]want{
		"tmp/groups": {content: str("1001 50 63\n")},
		"tmp/proxy":  {content: str("http://proxy.local:3128\n")},
	}, nil)
	for _, h := range cf.History {
		if strings.Contains(h.CreatedBy, "proxy.local") {
			t.Errorf("proxy ARG in history: %q", h.CreatedBy)
		}
	}
}

// TestRunUserNamespace: chroot isolation runs RUN in a user namespace by
// default (root inside is an unused host uid, with no privilege over the
// host's mounts), and --userns chooses the mapping or turns it off.
func TestRunUserNamespace(t *testing.T) {
	f := newFixture(t)
	const df = `FROM REG/busybox:1
RUN read a b c < /proc/self/uid_map && echo $a $b $c > /map && mkdir /mnt && (mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo refused) > /mount
RUN --mount=type=cache,target=/cache,uid=1000,gid=1001 chown 1000:1001 /map && su app -c 'echo $(id -u) > /cache/who && cat /cache/who' > /who
`
	tests := []struct {
		userns, wantMap, wantMount string
	}{
		{"", "0 2147483648 2147483647\n", "refused\n"},
		{"auto", "0 2147483648 2147483647\n", "refused\n"},
		{"100000:65536", "0 100000 65536\n", "refused\n"},
		{"none", "0 0 4294967295\n", "refused\n"}, // Docker's default capabilities: no CAP_SYS_ADMIN
	}
	for _, tt := range tests {
		t.Run("userns="+tt.userns, func(t *testing.T) {
			u, err := ParseUserNS(tt.userns)
			if err != nil {
				t.Fatal(err)
			}
			fs, _, _ := f.mustRun(buildSpec{dockerfile: df, opts: func(o *Options) { o.UserNS = u }})
			checkFiles(t, fs, map[string]want{
				"map":   {content: str(tt.wantMap), uid: 1000, gid: 1001, owner: true},
				"mount": {content: str(tt.wantMount)},
				"who":   {content: str("1000\n")},
			}, []string{"cache", "cache/who"})
		})
	}
	for _, bad := range []string{"0:10", "x", "4294967290:100"} {
		if _, err := ParseUserNS(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseUserNS(%q): %v", bad, err)
		}
	}
}

// TestRunUserNamespaceFallback: where the work directory's file system
// cannot be id-mapped (ramfs), auto builds without a user namespace and
// says so, and an explicit mapping is a clear error.
func TestRunUserNamespaceFallback(t *testing.T) {
	f := newFixture(t)
	work := filepath.Join(t.TempDir(), "ramfs")
	os.Mkdir(work, 0o700)
	if err := unix.Mount("none", work, "ramfs", 0, "mode=0700"); err != nil {
		t.Fatalf("mounting a ramfs work directory: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(work, unix.MNT_DETACH) })
	const df = "FROM REG/busybox:1\nRUN read a b c < /proc/self/uid_map && echo $a $b $c > /map\n"
	var logs bytes.Buffer
	fs, _, _ := f.mustRun(buildSpec{dockerfile: df, opts: func(o *Options) {
		o.WorkDir = work
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}})
	checkFiles(t, fs, map[string]want{"map": {content: str("0 0 4294967295\n")}}, nil)
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "--userns=required") {
		t.Errorf("the fallback is not a warning naming --userns=required:\n%s", logs.String())
	}
	for _, userns := range []string{"100000:65536", "required"} {
		u, err := ParseUserNS(userns)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.run(buildSpec{dockerfile: df, opts: func(o *Options) { o.WorkDir = work; o.UserNS = u }})
		if err == nil || !strings.Contains(err.Error(), "option UserNS "+userns) || !strings.Contains(err.Error(), "id-mapping") {
			t.Errorf("--userns %s on ramfs: %v", userns, err)
		}
	}
}

// TestRunCacheMountSharing: while another build holds a cache mount,
// sharing=shared uses it too, private takes an instance of its own and
// locked waits for it.
func TestRunCacheMountSharing(t *testing.T) {
	f := newFixture(t)
	work := t.TempDir()
	sum := sha256.Sum256([]byte("deps"))
	dir := filepath.Join(work, "run-cache", hex.EncodeToString(sum[:8]))
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "seeded"), []byte("x"), 0o644)
	other, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	df := func(sharing string) string {
		return "FROM REG/busybox:1\nRUN --mount=type=cache,id=deps,target=/c,sharing=" + sharing + " ls /c > /seen && touch /c/" + sharing + "\n"
	}
	build := func(ctx context.Context, sharing string) (map[string]imagetest.Entry, error) {
		res, err := f.run(buildSpec{dockerfile: df(sharing), ctx: ctx, opts: func(o *Options) { o.WorkDir = work }})
		if err != nil {
			return nil, err
		}
		return imagetest.Flatten(t, res.Image), nil
	}

	unix.Flock(int(other.Fd()), unix.LOCK_SH)
	fs, err := build(context.Background(), "shared")
	if err != nil {
		t.Fatal(err)
	}
	checkFiles(t, fs, map[string]want{"seen": {content: str("seeded\n")}}, nil)

	unix.Flock(int(other.Fd()), unix.LOCK_EX)
	if fs, err = build(context.Background(), "private"); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, fs, map[string]want{"seen": {content: str("")}}, nil)
	if _, err := os.Stat(dir + "-1/private"); err != nil {
		t.Errorf("private instance not kept: %v", err)
	}
	if _, err := os.Stat(dir + "/private"); err == nil {
		t.Error("a private mount wrote into the instance another build holds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := build(ctx, "locked"); err == nil || !strings.Contains(err.Error(), "another build holds") {
		t.Errorf("locked while held: %v", err)
	}
	unix.Flock(int(other.Fd()), unix.LOCK_UN)
	if fs, err = build(context.Background(), "locked"); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, fs, map[string]want{"seen": {content: str("seeded\nshared\n")}}, nil)
}

// TestContextSubPathSwapped performs the attack of a process that swaps
// the --context-sub-path directory for a link out of the context once the
// build has resolved it: a RUN's bind mount of the context and a later
// COPY never read the outside tree, and the build is refused. The swap is
// made when the first RUN asks for its secret, after the context was
// opened.
func TestContextSubPathSwapped(t *testing.T) {
	f := newFixture(t)
	const canary = "CANARY-OUTSIDE"
	outside := t.TempDir()
	write(t, outside, "f", canary)
	tests := []struct {
		name, df string
		wantErr  string          // "" for a build that must succeed
		want     map[string]want // files of the image
	}{
		{
			// The sandbox resolves the mount's source inside the context
			// directory, where the link's target is not.
			name:    "RUN bind mount",
			df:      "FROM REG/busybox:1\nRUN --mount=type=secret,id=s --mount=type=bind,target=/m cat /m/f > /seen\n",
			wantErr: "bind mount source for /m",
		},
		{
			// The context's handle moved with the directory, which is
			// no longer where the build opened it.
			name:    "COPY after the swap",
			df:      "FROM REG/busybox:1\nRUN --mount=type=secret,id=s true\nCOPY f /copied\n",
			wantErr: "outside the root",
		},
		{
			name: "no swap",
			df:   "FROM REG/busybox:1\nRUN --mount=type=bind,target=/m cat /m/f > /seen\nCOPY f /copied\n",
			want: map[string]want{"seen": {content: str("inside")}, "copied": {content: str("inside")}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := buildSpec{dockerfile: "unused", files: map[string]string{"app/Dockerfile": strings.ReplaceAll(tt.df, "REG/", f.reg+"/"), "app/f": "inside"}}
			s.opts = func(o *Options) {
				o.ContextSubPath, o.Dockerfile = "app", filepath.Join(o.Context, "app", "Dockerfile")
				o.Secrets = map[string]Secret{"s": {Env: "SWAP"}}
				ctxDir := o.Context
				o.LookupEnv = func(k string) (string, bool) {
					if k != "SWAP" {
						return "", false
					}
					if err := os.Rename(filepath.Join(ctxDir, "app"), filepath.Join(ctxDir, "app.moved")); err != nil {
						t.Error(err)
					}
					if err := os.Symlink(outside, filepath.Join(ctxDir, "app")); err != nil {
						t.Error(err)
					}
					return "v", true
				}
			}
			res, err := f.run(s)
			if err != nil && strings.Contains(err.Error(), canary) {
				t.Fatalf("the error shows the outside file: %v", err)
			}
			if tt.wantErr != "" {
				if err == nil {
					seen := imagetest.Flatten(t, res.Image)["seen"]
					t.Fatalf("build succeeded, /seen = %q; want %q", seen.Content, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			checkFiles(t, imagetest.Flatten(t, res.Image), tt.want, nil)
		})
	}
}
