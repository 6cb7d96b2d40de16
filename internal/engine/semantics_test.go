package engine

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// The tests in this file are the semantics issue's thirteen differences
// from BuildKit v0.34.2, each with the Dockerfile and the image read back.

// TestRunHome: RUN gets HOME from the user's passwd entry when ENV has
// none, "/" when the user has no entry; an ENV HOME wins (item 1).
func TestRunHome(t *testing.T) {
	f := newFixture(t)
	fs, cf, _ := f.mustRun(buildSpec{dockerfile: `FROM REG/busybox:1
RUN echo $HOME > /root-home
USER app
RUN echo $HOME > /tmp/app-home
USER 4242
RUN echo $HOME > /tmp/anon-home
USER root
ENV HOME=/custom
RUN echo $HOME > /custom-home
`})
	checkFiles(t, fs, map[string]want{
		"root-home": {content: str("/root\n")}, "tmp/app-home": {content: str("/home/app\n")},
		"tmp/anon-home": {content: str("/\n")}, "custom-home": {content: str("/custom\n")},
	}, nil)
	for _, e := range cf.Config.Env {
		if strings.HasPrefix(e, "HOME=") && e != "HOME=/custom" {
			t.Errorf("RUN's HOME reached the config: %v", cf.Config.Env)
		}
	}
}

// TestDefaultPath: FROM scratch, and any base without PATH, get
// BuildKit's default PATH in the config (item 2).
func TestDefaultPath(t *testing.T) {
	f := newFixture(t)
	f.push("nopath:1", imagetest.Image(t, true, func(cf *v1.ConfigFile) { cf.Config.Env = []string{"A=1"} }, imagetest.BaseFiles()))
	for _, df := range []string{"FROM scratch\nLABEL a=b\n", "FROM REG/nopath:1\nLABEL a=b\n"} {
		_, cf, _ := f.mustRun(buildSpec{dockerfile: df})
		found := false
		for _, e := range cf.Config.Env {
			found = found || e == "PATH="+defaultPath
		}
		if !found {
			t.Errorf("%q: config env %v, want PATH=%s", df, cf.Config.Env, defaultPath)
		}
	}
}

// TestLayersAlignWithHistory: RUN, COPY, ADD and WORKDIR other than /
// commit a layer even when they change nothing; metadata instructions do
// not; every history entry that is not empty has its layer (item 3).
func TestLayersAlignWithHistory(t *testing.T) {
	f := newFixture(t)
	_, cf, img := f.mustRun(buildSpec{dockerfile: `FROM REG/busybox:1
RUN true
COPY missing* /x/
ADD missing* /y/
WORKDIR /
WORKDIR /etc
ENV A=1
LABEL b=2
`})
	ls, _ := img.Layers()
	var nonEmpty int
	for _, h := range cf.History {
		if !h.EmptyLayer {
			nonEmpty++
		}
	}
	if len(ls) != 5 || nonEmpty != len(ls) {
		t.Fatalf("%d layers and %d non-empty history entries, want 5 of each (base, RUN, COPY, ADD, WORKDIR /etc)", len(ls), nonEmpty)
	}
	var created []string
	for _, h := range cf.History[1:] {
		if !h.EmptyLayer {
			created = append(created, strings.Fields(h.CreatedBy)[0])
		}
	}
	if strings.Join(created, " ") != "RUN COPY ADD WORKDIR" {
		t.Errorf("instructions with layers: %v", created)
	}
}

// TestCopySeveralSourcesToAFile: each source is its own copy; an empty
// wildcard copies nothing, so one file lands on the destination (item 4).
func TestCopySeveralSourcesToAFile(t *testing.T) {
	f := newFixture(t)
	fs, _, _ := f.mustRun(buildSpec{dockerfile: "FROM REG/base:oci\nCOPY missing* foo /hello\n", files: map[string]string{"foo": "foo"}})
	checkFiles(t, fs, map[string]want{"hello": {content: str("foo")}}, nil)
}

// TestCacheMountIDIsCleaned: target=/x/ and target=/x share a cache, as
// BuildKit's default id is path.Clean(target) (item 5).
func TestCacheMountIDIsCleaned(t *testing.T) {
	f := newFixture(t)
	work := t.TempDir()
	fs, _, _ := f.mustRun(buildSpec{
		dockerfile: "FROM REG/busybox:1\nRUN --mount=type=cache,target=/x/ echo shared > /x/f\nRUN --mount=type=cache,target=/x cat /x/f > /seen\n",
		opts:       func(o *Options) { o.WorkDir = work },
	})
	checkFiles(t, fs, map[string]want{"seen": {content: str("shared\n")}}, nil)
}

// TestStageSelection: only the stages the target needs are built, those
// a base image's ONBUILD COPY --from=<stage> trigger reads included, and
// RUN --mount from=<stage> counts as a need (item 6).
func TestStageSelection(t *testing.T) {
	f := newFixture(t)
	f.push("onbuild:1", imagetest.Image(t, true, func(cf *v1.ConfigFile) {
		cf.Config.OnBuild = []string{"COPY --from=helper /made /from-helper"}
	}, imagetest.BusyboxFiles(t)))
	df := `FROM REG/busybox:1 AS broken
RUN exit 3
FROM REG/busybox:1 AS helper
RUN echo helped > /made
FROM REG/busybox:1 AS mounted
RUN echo mounted > /m
FROM REG/onbuild:1
RUN --mount=type=bind,from=mounted,source=/m,target=/mnt cp /mnt /via-mount
`
	fs, _, _ := f.mustRun(buildSpec{dockerfile: df, opts: func(o *Options) { o.SkipUnusedStages = true }})
	checkFiles(t, fs, map[string]want{"from-helper": {content: str("helped\n")}, "via-mount": {content: str("mounted\n")}}, nil)
	if _, err := f.run(buildSpec{dockerfile: df}); err == nil || !strings.Contains(err.Error(), "exit code 3") {
		t.Errorf("with every stage built, the broken one must fail the build: %v", err)
	}
}

// TestRelativeWorkdirInBase: a relative WorkingDir in the base's config
// is taken from / (item 7).
func TestRelativeWorkdirInBase(t *testing.T) {
	f := newFixture(t)
	f.push("relwd:1", imagetest.Image(t, true, func(cf *v1.ConfigFile) { cf.Config.WorkingDir = "app" }, imagetest.BusyboxFiles(t)))
	fs, cf, _ := f.mustRun(buildSpec{dockerfile: "FROM REG/relwd:1\nWORKDIR sub\nRUN pwd > /pwd\n"})
	if cf.Config.WorkingDir != "/app/sub" {
		t.Errorf("WorkingDir %q", cf.Config.WorkingDir)
	}
	checkFiles(t, fs, map[string]want{"pwd": {content: str("/app/sub\n")}}, nil)
}

// TestSymbolicChmodAndCreatedParents: --chmod accepts symbolic modes,
// applied to each source's own mode (X only where something may execute);
// an octal --chmod is also the mode of the parents a COPY creates (items 8
// and 9).
func TestSymbolicChmodAndCreatedParents(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	write(t, dir, "d/plain", "p")
	write(t, dir, "d/tool", "t")
	os.Chmod(filepath.Join(dir, "d/plain"), 0o600)
	os.Chmod(filepath.Join(dir, "d/tool"), 0o700)
	os.Chmod(filepath.Join(dir, "d"), 0o700)
	write(t, dir, "Dockerfile", "FROM "+f.reg+`/base:oci
COPY --chmod=u=rwX,go=rX d/ /sym/
COPY --chmod=a-w d/plain /ro
COPY --chmod=0700 d/plain /new/deep/f
`)
	res, err := Build(t.Context(), Options{Dockerfile: filepath.Join(dir, "Dockerfile"), Context: dir, WorkDir: t.TempDir(),
		Registry: f.client, Isolation: "chroot", Platform: "linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	fs := imagetest.Flatten(t, res.Image)
	checkFiles(t, fs, map[string]want{
		"sym":        {typ: tar.TypeDir, mode: 0o755},
		"sym/plain":  {mode: 0o644},
		"sym/tool":   {mode: 0o755},
		"ro":         {mode: 0o400},
		"new":        {typ: tar.TypeDir, mode: 0o700},
		"new/deep":   {typ: tar.TypeDir, mode: 0o700},
		"new/deep/f": {mode: 0o700},
	}, nil)
	if _, err := f.run(buildSpec{dockerfile: "FROM REG/base:oci\nCOPY --chmod=u=nonsense foo /x\n", files: map[string]string{"foo": ""}}); err == nil || !strings.Contains(err.Error(), "--chmod=u=nonsense") {
		t.Errorf("a bad symbolic mode: %v", err)
	}
}

// TestRootWithoutPasswd: USER root needs no /etc/passwd (item 10).
func TestRootWithoutPasswd(t *testing.T) {
	f := newFixture(t)
	fs, _, _ := f.mustRun(buildSpec{dockerfile: "FROM scratch\nUSER root\nWORKDIR /w\nUSER root:root\nCOPY --chown=root:root foo /w/foo\n", files: map[string]string{"foo": "x"}})
	checkFiles(t, fs, map[string]want{"w": {typ: tar.TypeDir, uid: 0, gid: 0, owner: true}, "w/foo": {uid: 0, gid: 0, owner: true}}, nil)
	if _, err := f.run(buildSpec{dockerfile: "FROM scratch\nUSER app\nWORKDIR /w\n"}); err == nil || !strings.Contains(err.Error(), "unable to find user app") {
		t.Errorf("another name without passwd: %v", err)
	}
}

// TestArgsFromBaseStageAndTargetStage: a stage built on another sees its
// ARGs; TARGETSTAGE is the target's name, "default" without --target
// (items 11 and 12).
func TestArgsFromBaseStageAndTargetStage(t *testing.T) {
	f := newFixture(t)
	df := `FROM REG/busybox:1 AS base1
ARG NAME=kiln
FROM base1 AS final
ARG NAME="$NAME-dev"
ARG TARGETSTAGE
RUN echo "$NAME $TARGETSTAGE" > /out
`
	fs, _, _ := f.mustRun(buildSpec{dockerfile: df})
	checkFiles(t, fs, map[string]want{"out": {content: str("kiln-dev default\n")}}, nil)
	fs, _, _ = f.mustRun(buildSpec{dockerfile: df, opts: func(o *Options) { o.Target = "final" }})
	checkFiles(t, fs, map[string]want{"out": {content: str("kiln-dev final\n")}}, nil)
}

// TestHardLinkHeaders: a hard link entry carries its file's own mode,
// owner and time, so appliers that chown and chmod every entry keep the
// file as it is (item 13).
func TestHardLinkHeaders(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	write(t, dir, "a", "shared")
	os.Chmod(filepath.Join(dir, "a"), 0o750)
	os.Link(filepath.Join(dir, "a"), filepath.Join(dir, "b"))
	write(t, dir, "Dockerfile", "FROM "+f.reg+"/base:oci\nCOPY --chown=7:8 a b /l/\n")
	res, err := Build(t.Context(), Options{Dockerfile: filepath.Join(dir, "Dockerfile"), Context: dir, WorkDir: t.TempDir(),
		Registry: f.client, Isolation: "chroot", Platform: "linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	ls, _ := res.Image.Layers()
	rc, _ := ls[len(ls)-1].Uncompressed()
	defer rc.Close()
	tr := tar.NewReader(rc)
	hdrs := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs[strings.TrimSuffix(h.Name, "/")] = h
	}
	file, link := hdrs["l/a"], hdrs["l/b"]
	if file == nil || link == nil || link.Typeflag != tar.TypeLink {
		t.Fatalf("entries %v", hdrs)
	}
	if link.Mode != file.Mode || link.Uid != 7 || link.Gid != 8 || !link.ModTime.Equal(file.ModTime) {
		t.Errorf("link header mode %o %d:%d %v, file %o %d:%d %v", link.Mode, link.Uid, link.Gid, link.ModTime, file.Mode, file.Uid, file.Gid, file.ModTime)
	}
}
