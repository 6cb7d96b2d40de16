package engine

import (
	"archive/tar"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/option"
)

func TestConfigInstructions(t *testing.T) {
	f := newFixture(t)
	df := `FROM REG/base:oci
ENV A=1 B="two words"
ENV C=${A}-${B:+set}-${NOPE:-dflt}
LABEL version="1.0" maintainer=me
USER app
WORKDIR /home/app/work
WORKDIR sub
EXPOSE 80 53/udp 9000-9001
VOLUME ["/data", "/cache"]
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
CMD echo $A
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --timeout=2s --start-period=1s --start-interval=3s --retries=4 CMD ["check", "--fast"]
ONBUILD COPY trigger.txt /trigger.txt
`
	fs, cf, img := f.mustRun(buildSpec{dockerfile: df})
	c := cf.Config
	if d := cmp.Diff([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1", "B=two words", "C=1-set-dflt"}, c.Env); d != "" {
		t.Errorf("Env (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]string{"version": "1.0", "maintainer": "me"}, c.Labels); d != "" {
		t.Errorf("Labels:\n%s", d)
	}
	if c.User != "app" || c.WorkingDir != "/home/app/work/sub" || c.StopSignal != "SIGQUIT" {
		t.Errorf("User %q WorkingDir %q StopSignal %q", c.User, c.WorkingDir, c.StopSignal)
	}
	if d := cmp.Diff(map[string]struct{}{"80/tcp": {}, "53/udp": {}, "9000/tcp": {}, "9001/tcp": {}}, c.ExposedPorts); d != "" {
		t.Errorf("ExposedPorts:\n%s", d)
	}
	if d := cmp.Diff(map[string]struct{}{"/data": {}, "/cache": {}}, c.Volumes); d != "" {
		t.Errorf("Volumes:\n%s", d)
	}
	if d := cmp.Diff([]string{"/bin/bash", "-o", "pipefail", "-c", "echo $A"}, c.Cmd); d != "" {
		t.Errorf("Cmd:\n%s", d)
	}
	if d := cmp.Diff([]string{"/bin/bash", "-o", "pipefail", "-c"}, c.Shell); d != "" {
		t.Errorf("Shell:\n%s", d)
	}
	wantHC := &v1.HealthConfig{Test: []string{"CMD", "check", "--fast"}, Interval: 5 * time.Second, Timeout: 2 * time.Second, StartPeriod: time.Second, Retries: 4}
	if d := cmp.Diff(wantHC, c.Healthcheck); d != "" {
		t.Errorf("Healthcheck:\n%s", d)
	}
	raw, _ := img.RawConfigFile()
	if !strings.Contains(string(raw), `"StartInterval":3000000000`) {
		t.Errorf("HEALTHCHECK --start-interval missing from the config: %s", raw)
	}
	if err := validate.Image(img); err != nil {
		t.Errorf("image with a patched config is invalid: %v", err)
	}
	if d := cmp.Diff([]string{"COPY trigger.txt /trigger.txt"}, c.OnBuild); d != "" {
		t.Errorf("OnBuild:\n%s", d)
	}
	// WORKDIR created the directories owned by USER app.
	checkFiles(t, fs, map[string]want{
		"home/app/work":     {typ: tar.TypeDir, uid: 1000, gid: 1001, owner: true, mode: 0o755},
		"home/app/work/sub": {typ: tar.TypeDir, uid: 1000, gid: 1001, owner: true},
	}, nil)
	// History: one entry per instruction, empty_layer except the WORKDIRs.
	hist := cf.History[1:]
	if len(hist) != 13 {
		t.Fatalf("history has %d new entries, want 13: %+v", len(hist), hist)
	}
	for i, h := range hist {
		wantEmpty := !strings.HasPrefix(h.CreatedBy, "WORKDIR")
		if h.EmptyLayer != wantEmpty {
			t.Errorf("history %d %q: empty_layer %v", i, h.CreatedBy, h.EmptyLayer)
		}
	}
	if got := len(cf.RootFS.DiffIDs); got != 3 {
		t.Errorf("%d layers, want base + 2 WORKDIR layers", got)
	}
}

func TestEntrypointResetsInheritedCmd(t *testing.T) {
	f := newFixture(t)
	f.push("withcmd:1", imagetest.Image(t, true, func(cf *v1.ConfigFile) { cf.Config.Cmd = []string{"inherited"} }, imagetest.BaseFiles()))
	for _, tc := range []struct {
		df      string
		wantCmd []string
		wantEP  []string
	}{
		{"FROM REG/withcmd:1\nENTRYPOINT [\"/ep\"]\n", nil, []string{"/ep"}},
		{"FROM REG/withcmd:1\nCMD [\"own\"]\nENTRYPOINT /ep arg\n", []string{"own"}, []string{"/bin/sh", "-c", "/ep arg"}},
		{"FROM REG/withcmd:1\nLABEL a=b\n", []string{"inherited"}, nil},
	} {
		_, cf, _ := f.mustRun(buildSpec{dockerfile: tc.df})
		if d := cmp.Diff(tc.wantCmd, cf.Config.Cmd); d != "" {
			t.Errorf("%q Cmd:\n%s", tc.df, d)
		}
		if d := cmp.Diff(tc.wantEP, cf.Config.Entrypoint); d != "" {
			t.Errorf("%q Entrypoint:\n%s", tc.df, d)
		}
	}
}

func TestHealthcheckStartIntervalInherited(t *testing.T) {
	f := newFixture(t)
	_, _, img := f.mustRun(buildSpec{
		dockerfile: "FROM REG/base:oci AS a\nHEALTHCHECK --start-interval=2s CMD [\"x\"]\nFROM a\nLABEL b=c\n",
		opts:       func(o *Options) { o.Labels = []string{"from=flag"} },
	})
	raw, _ := img.RawConfigFile()
	if !strings.Contains(string(raw), `"StartInterval":2000000000`) || !strings.Contains(string(raw), `"from":"flag"`) {
		t.Errorf("config %s", raw)
	}
}

func TestHealthcheckNone(t *testing.T) {
	f := newFixture(t)
	_, cf, _ := f.mustRun(buildSpec{dockerfile: "FROM REG/base:oci\nHEALTHCHECK NONE\n"})
	if d := cmp.Diff([]string{"NONE"}, cf.Config.Healthcheck.Test); d != "" {
		t.Error(d)
	}
}

func TestOnbuildTriggersRun(t *testing.T) {
	f := newFixture(t)
	parent := imagetest.Image(t, true, func(cf *v1.ConfigFile) {
		cf.Config.OnBuild = []string{"COPY trigger.txt /from-trigger", "LABEL triggered=yes"}
	}, imagetest.BaseFiles())
	f.push("parent:1", parent)
	fs, cf, _ := f.mustRun(buildSpec{dockerfile: "FROM REG/parent:1\nLABEL own=1\n", files: map[string]string{"trigger.txt": "T"}})
	checkFiles(t, fs, map[string]want{"from-trigger": {content: str("T")}}, nil)
	if cf.Config.Labels["triggered"] != "yes" || cf.Config.Labels["own"] != "1" {
		t.Errorf("labels %v", cf.Config.Labels)
	}
	if len(cf.Config.OnBuild) != 0 {
		t.Errorf("triggers inherited by the child: %v", cf.Config.OnBuild)
	}
}

func TestArgs(t *testing.T) {
	f := newFixture(t)
	f.push("envbase:1", imagetest.Image(t, true, func(cf *v1.ConfigFile) {
		cf.Config.Env = append(cf.Config.Env, "FROMBASE=base")
	}, imagetest.BaseFiles()))
	tests := []struct {
		name   string
		df     string
		args   []string
		env    map[string]string
		labels map[string]string
		envOut []string // extra config env checked, if set
	}{{
		name:   "meta ARG in FROM, default and override",
		df:     "ARG TAG=oci\nARG REPO\nFROM REG/base:${TAG}\nARG TAG\nARG REPO=dflt\nLABEL tag=$TAG repo=$REPO\n",
		args:   []string{"REPO=given"},
		labels: map[string]string{"tag": "oci", "repo": "given"},
	}, {
		name:   "build-arg from the environment",
		df:     "FROM REG/base:oci\nARG FROMENV\nARG MISSING\nLABEL v=${FROMENV} m=${MISSING:-unset}\n",
		args:   []string{"FROMENV", "MISSING"},
		env:    map[string]string{"FROMENV": "env-value"},
		labels: map[string]string{"v": "env-value", "m": "unset"},
	}, {
		name:   "ARG scoped to its stage",
		df:     "FROM REG/base:oci AS one\nARG X=1\nFROM REG/base:oci\nLABEL x=${X:-none}\n",
		labels: map[string]string{"x": "none"},
	}, {
		name:   "ARG after inherited ENV is overridden by the build-arg",
		df:     "FROM REG/envbase:1\nARG FROMBASE\nLABEL seen=$FROMBASE\n",
		args:   []string{"FROMBASE=cli"},
		labels: map[string]string{"seen": "cli"},
		envOut: []string{"FROMBASE=base"},
	}, {
		name:   "ENV after ARG wins",
		df:     "FROM REG/base:oci\nARG V=arg\nENV V=env\nLABEL v=$V\n",
		args:   []string{"V=cli"},
		labels: map[string]string{"v": "env"},
	}, {
		name:   "platform ARGs",
		df:     "FROM REG/base:oci\nARG TARGETPLATFORM\nARG TARGETARCH\nARG BUILDOS\nLABEL p=$TARGETPLATFORM a=$TARGETARCH b=$BUILDOS undeclared=${TARGETOS:-no}\n",
		labels: map[string]string{"p": "linux/amd64", "a": "amd64", "b": "linux", "undeclared": "no"},
	}, {
		name:   "escape directive",
		df:     "# escape=`\nFROM REG/base:oci\nARG W=x\nLABEL a=`$W b=$W\n",
		labels: map[string]string{"a": "$W", "b": "x"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, cf, _ := f.mustRun(buildSpec{dockerfile: tt.df, env: tt.env, opts: func(o *Options) { o.BuildArgs = tt.args }})
			for k, v := range tt.labels {
				if got := cf.Config.Labels[k]; got != v {
					t.Errorf("label %s = %q, want %q", k, got, v)
				}
			}
			for _, e := range tt.envOut {
				found := false
				for _, g := range cf.Config.Env {
					found = found || g == e
				}
				if !found {
					t.Errorf("config env %v lacks %s", cf.Config.Env, e)
				}
			}
			for _, h := range cf.History {
				if strings.Contains(h.CreatedBy, "given") || strings.Contains(h.CreatedBy, "cli") {
					t.Errorf("build-arg value leaked into history: %q", h.CreatedBy)
				}
			}
		})
	}
}

func TestStages(t *testing.T) {
	f := newFixture(t)
	f.push("other:1", imagetest.Image(t, false, nil, []imagetest.File{imagetest.Dir("pkg", 0o755, 3, 4), imagetest.Reg("pkg/lib.so", "LIB", 0o755, 3, 4)}))
	df := `FROM REG/base:oci AS Builder
COPY a.txt /out/a.txt
COPY --chown=app b.txt /out/b.txt

FROM builder AS second
LABEL stage=second

FROM scratch
COPY --from=BUILDER /out/ /from-name/
COPY --from=0 /out/a.txt /from-index
COPY --from=REG/other:1 /pkg/lib.so /lib.so
COPY --from=second /etc/passwd /passwd
`
	fs, cf, img := f.mustRun(buildSpec{dockerfile: df, files: map[string]string{"a.txt": "A", "b.txt": "B"}})
	checkFiles(t, fs, map[string]want{
		"from-name/a.txt": {content: str("A")},
		"from-name/b.txt": {uid: 1000, gid: 1001, owner: true},
		"from-index":      {content: str("A")},
		"lib.so":          {content: str("LIB"), uid: 3, gid: 4, owner: true, mode: 0o755},
		"passwd":          {},
	}, []string{"etc/passwd", "usr"})
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("scratch platform %s/%s", cf.OS, cf.Architecture)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("scratch-based image media type %s, want OCI", mt)
	}
}

func TestFromDigest(t *testing.T) {
	f := newFixture(t)
	img := imagetest.Image(t, true, nil, []imagetest.File{imagetest.Reg("pinned", "yes", 0o644, 0, 0)})
	f.push("pinned:1", img)
	d, _ := img.Digest()
	fs, _, _ := f.mustRun(buildSpec{dockerfile: "FROM REG/pinned@" + d.String() + "\nLABEL a=b\n"})
	checkFiles(t, fs, map[string]want{"pinned": {content: str("yes")}}, nil)
}

func TestTargetAndSkipUnused(t *testing.T) {
	f := newFixture(t)
	df := "FROM REG/busybox:1 AS broken\nRUN false\nFROM REG/base:oci AS dep\nCOPY a /a\nFROM REG/base:oci AS final\nCOPY --from=dep /a /b\nFROM final AS after\nLABEL after=1\n"
	files := map[string]string{"a": "A"}
	// kaniko's default builds every stage up to the target, so RUN fails.
	if _, err := f.run(buildSpec{dockerfile: df, files: files, opts: func(o *Options) { o.Target = "final" }}); err == nil || !strings.Contains(err.Error(), "exit code 1") || !strings.Contains(err.Error(), "Dockerfile:2") {
		t.Errorf("without --skip-unused-stages: err = %v", err)
	}
	fs, cf, _ := f.mustRun(buildSpec{dockerfile: df, files: files, opts: func(o *Options) { o.Target = "FINAL"; o.SkipUnusedStages = true }})
	checkFiles(t, fs, map[string]want{"b": {content: str("A")}}, nil)
	if cf.Config.Labels["after"] != "" {
		t.Error("stage after the target was built")
	}
	if _, err := f.run(buildSpec{dockerfile: df, files: files, opts: func(o *Options) { o.Target = "nosuch" }}); err == nil || !strings.Contains(err.Error(), `option Target "nosuch"`) {
		t.Errorf("unknown target: err = %v", err)
	}
}

func TestMediaTypesAndCompression(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		base, compression string
		wantManifest      types.MediaType
		wantLayer         types.MediaType
		wantErr           string
	}{
		{"oci", "", types.OCIManifestSchema1, types.OCILayer, ""},
		{"docker", "", types.DockerManifestSchema2, types.DockerLayer, ""},
		{"oci", "zstd", types.OCIManifestSchema1, types.OCILayerZStd, ""},
		{"docker", "zstd", "", "", "needs an OCI base"},
	}
	for _, tt := range tests {
		t.Run(tt.base+"-"+tt.compression, func(t *testing.T) {
			res, err := f.run(buildSpec{
				dockerfile: "FROM REG/base:" + tt.base + "\nCOPY a /a\n", files: map[string]string{"a": "A"},
				opts: func(o *Options) { o.Compression = layerCompression(tt.compression); o.CompressionLevel = 3 },
			})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m, _ := res.Image.Manifest()
			if m.MediaType != tt.wantManifest {
				t.Errorf("manifest %s, want %s", m.MediaType, tt.wantManifest)
			}
			last := m.Layers[len(m.Layers)-1]
			if last.MediaType != tt.wantLayer {
				t.Errorf("layer %s, want %s", last.MediaType, tt.wantLayer)
			}
			fs := imagetest.Flatten(t, res.Image)
			checkFiles(t, fs, map[string]want{"a": {content: str("A")}}, nil)
		})
	}
}

func TestReproducible(t *testing.T) {
	f := newFixture(t)
	spec := func(now int64, epoch string) buildSpec {
		return buildSpec{
			dockerfile: "FROM REG/base:oci\nCOPY . /src/\nWORKDIR /w\nCOPY <<EOF /h\nx\nEOF\n",
			files:      map[string]string{"a": "A", "d/b": "B"},
			env:        map[string]string{"SOURCE_DATE_EPOCH": epoch},
			opts: func(o *Options) {
				o.Reproducible = true
				o.Now = func() time.Time { return time.Unix(now, 0) }
			},
		}
	}
	r1, err := f.run(spec(1, ""))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := f.run(spec(999999, ""))
	if err != nil {
		t.Fatal(err)
	}
	if r1.Digest != r2.Digest {
		t.Errorf("two reproducible builds differ: %s vs %s", r1.Digest, r2.Digest)
	}
	cf, _ := r1.Image.ConfigFile()
	if !cf.Created.Time.Equal(time.Unix(0, 0)) {
		t.Errorf("created %v, want the epoch", cf.Created)
	}
	for p, e := range imagetest.Flatten(t, r1.Image) {
		if strings.HasPrefix(p, "src") && e.Header.ModTime.Unix() != 0 {
			t.Errorf("%s mtime %v", p, e.Header.ModTime)
		}
	}
	r3, err := f.run(spec(1, "1700000000"))
	if err != nil {
		t.Fatal(err)
	}
	cf3, _ := r3.Image.ConfigFile()
	if cf3.Created.Time.Unix() != 1700000000 || r3.Digest == r1.Digest {
		t.Errorf("SOURCE_DATE_EPOCH not honoured: created %v", cf3.Created)
	}
}

func TestPlatformFromIndex(t *testing.T) {
	f := newFixture(t)
	amd := imagetest.Image(t, true, nil, []imagetest.File{imagetest.Reg("arch", "amd64", 0o644, 0, 0)})
	arm := imagetest.Image(t, true, func(cf *v1.ConfigFile) { cf.Architecture = "arm64"; cf.Variant = "v8" }, []imagetest.File{imagetest.Reg("arch", "arm64", 0o644, 0, 0)})
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	ref := f.reg + "/multi:1"
	pushIndex(t, ref, idx)
	for _, tc := range []struct{ platform, df, want string }{
		{"linux/amd64", "FROM REG/multi:1\nARG TARGETARCH\nLABEL a=$TARGETARCH\n", "amd64"},
		{"linux/arm64/v8", "FROM REG/multi:1\nARG TARGETARCH\nLABEL a=$TARGETARCH\n", "arm64"},
		{"linux/amd64", "FROM --platform=linux/arm64/v8 REG/multi:1\nLABEL a=pinned\n", "arm64"},
	} {
		fs, cf, _ := f.mustRun(buildSpec{dockerfile: tc.df, opts: func(o *Options) { o.Platform = tc.platform }})
		if got := fs["arch"].Content; got != tc.want {
			t.Errorf("%s %q: got the %s image", tc.platform, tc.df, got)
		}
		if cf.Architecture != tc.want {
			t.Errorf("config architecture %s, want %s", cf.Architecture, tc.want)
		}
	}
}

func TestSingleSnapshot(t *testing.T) {
	f := newFixture(t)
	_, cf, img := f.mustRun(buildSpec{
		dockerfile: "FROM REG/base:oci\nCOPY a /a\nCOPY a /b\nLABEL x=y\n", files: map[string]string{"a": "A"},
		opts: func(o *Options) { o.SingleSnapshot = true },
	})
	ls, _ := img.Layers()
	if len(ls) != 2 {
		t.Fatalf("%d layers, want base + 1", len(ls))
	}
	if got := imagetest.LayerNames(t, ls[1]); !cmp.Equal(got, []string{"a", "b"}) {
		t.Errorf("snapshot layer %v", got)
	}
	if n := len(cf.History); n != 5 {
		t.Errorf("%d history entries, want 5", n)
	}
}

// TestMissingContextOrDockerfile: a context that is not there is blamed,
// not the Dockerfile looked for in it; a Dockerfile missing from a context
// that is there is blamed itself.
func TestMissingContextOrDockerfile(t *testing.T) {
	f := newFixture(t)
	missing := filepath.Join(t.TempDir(), "nowhere")
	tests := []struct {
		name, context, dockerfile string
		wantOption, wantValue     string
	}{
		{"missing context, default Dockerfile", missing, "", "Context", `"` + missing + `"`},
		{"missing dir:// context, relative Dockerfile", "dir://" + missing, "sub/Containerfile", "Context", `"dir://` + missing + `"`},
		{"missing Dockerfile", t.TempDir(), "", "Dockerfile", "Dockerfile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.run(buildSpec{dockerfile: "FROM scratch\n", opts: func(o *Options) {
				o.Context, o.Dockerfile = tt.context, tt.dockerfile
			}})
			var oe *option.Error
			if !errors.As(err, &oe) || oe.Option != tt.wantOption || oe.Value != tt.wantValue {
				t.Fatalf("err = %v, want one naming option %s %s", err, tt.wantOption, tt.wantValue)
			}
		})
	}
}

func TestDockerfileErrors(t *testing.T) {
	f := newFixture(t)
	tests := []struct{ name, df, want string }{
		{"unknown instruction", "FROM REG/base:oci\nFROBNICATE x\n", "Dockerfile:2: unknown instruction: FROBNICATE"},
		{"malformed", "FROM REG/base:oci\nCOPY\n", "Dockerfile:2"},
		{"no FROM", "LABEL a=b\n", "Dockerfile:1: no build stage in current context"},
		{"instruction before FROM", "COPY a /a\nFROM scratch\n", "Dockerfile:1"},
		{"forward stage reference", "FROM REG/base:oci\nCOPY --from=later /a /a\nFROM scratch AS later\n", "Dockerfile:2"},
		{"RUN without a shell", "FROM REG/base:oci\nRUN echo hi\n", "Dockerfile:2: RUN: /bin/sh: no such file or directory in the image"},
		{"unreachable base", "FROM 127.0.0.1:1/nothing:here\n", "Dockerfile:1: FROM 127.0.0.1:1/nothing:here"},
		{"missing base", "FROM REG/absent:1\n", "Dockerfile:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.run(buildSpec{dockerfile: tt.df})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestContextFilesStayInTheirTree performs the attack of a hostile context
// (or checkout) whose Dockerfile or ignore files are links to a file
// outside it: the outside file is never read as either. Links inside the
// tree still work, an absolute one resolving inside it as in BuildKit.
func TestContextFilesStayInTheirTree(t *testing.T) {
	f := newFixture(t)
	const canary = "CANARY-OUTSIDE"
	outside := t.TempDir()
	write(t, outside, "Dockerfile", "FROM "+f.reg+"/base:oci\nLABEL leaked="+canary+"\n")
	write(t, outside, "ignore", "keep\n# "+canary+"\n")
	good := "FROM " + f.reg + "/base:oci\nLABEL from=context\nCOPY . /ctx/\n"
	tests := []struct {
		name       string
		dockerfile string            // Options.Dockerfile; "" for the default
		links      map[string]string // context path -> link target
		wd         map[string]string // build from a working directory holding these (target "=text": a file)
		wantErr    string            // "" for a build that must succeed
	}{
		{name: "Dockerfile absolute link", links: map[string]string{"Dockerfile": filepath.Join(outside, "Dockerfile")}, wantErr: "no such file"},
		{name: "Dockerfile ../ link", links: map[string]string{"Dockerfile": "../../../../../../../../.." + filepath.Join(outside, "Dockerfile")}, wantErr: "no such file"},
		{name: "--dockerfile naming the link", dockerfile: "CTX/Dockerfile", links: map[string]string{"Dockerfile": filepath.Join(outside, "Dockerfile")}, wantErr: "no such file"},
		{name: "link through a linked directory", dockerfile: "CTX/d/Dockerfile", links: map[string]string{"d": outside}, wantErr: "no such file"},
		{name: "Dockerfile.dockerignore link", dockerfile: "CTX/Dockerfile", links: map[string]string{"Dockerfile.dockerignore": filepath.Join(outside, "ignore")}},
		{name: ".dockerignore link", links: map[string]string{".dockerignore": filepath.Join(outside, "ignore")}},
		{name: ".dockerignore ../ link", links: map[string]string{".dockerignore": "../../../../../../../../.." + filepath.Join(outside, "ignore")}},
		{name: "working directory's Dockerfile link", wd: map[string]string{"Dockerfile": filepath.Join(outside, "Dockerfile")}},
		{name: "working directory's ignore link", wd: map[string]string{"Dockerfile": "=" + good, "Dockerfile.dockerignore": filepath.Join(outside, "ignore")}},
		{name: "link inside the context", links: map[string]string{"Dockerfile": "docker/Dockerfile"}},
		{name: "absolute link inside the context", links: map[string]string{"Dockerfile": "/docker/Dockerfile"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := buildSpec{dockerfile: good, files: map[string]string{"keep": "kept", "docker/Dockerfile": good}}
			s.opts = func(o *Options) {
				o.Dockerfile = strings.ReplaceAll(tt.dockerfile, "CTX", o.Context)
				for p, target := range tt.links {
					os.Remove(filepath.Join(o.Context, p))
					if err := os.Symlink(target, filepath.Join(o.Context, p)); err != nil {
						t.Fatal(err)
					}
				}
				if tt.wd != nil {
					wd := t.TempDir()
					for p, target := range tt.wd {
						if text, ok := strings.CutPrefix(target, "="); ok {
							write(t, wd, p, text)
						} else if err := os.Symlink(target, filepath.Join(wd, p)); err != nil {
							t.Fatal(err)
						}
					}
					t.Chdir(wd)
					o.Dockerfile = "Dockerfile" // the working directory's first, then the context's
				}
			}
			res, err := f.run(s)
			if err != nil && strings.Contains(err.Error(), canary) {
				t.Fatalf("the error shows the outside file: %v", err)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			cf, err := res.Image.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if got := cf.Config.Labels; got["leaked"] != "" || got["from"] != "context" {
				t.Errorf("labels = %v, want the context's Dockerfile's only", got)
			}
			if e, ok := imagetest.Flatten(t, res.Image)["ctx/keep"]; !ok || e.Content != "kept" {
				t.Errorf("/ctx/keep = %+v, %v: the outside file was read as an ignore file", e, ok)
			}
		})
	}
}
