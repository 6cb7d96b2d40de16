package engine

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/output"
	"github.com/kilnbuild/kiln/internal/record"
	"github.com/kilnbuild/kiln/internal/sandbox"
)

// pushBusyboxIndex stores a linux/amd64 + linux/arm64 busybox index
// (Debian's busybox-static of each architecture) as busybox:multi.
func (f *fixture) pushBusyboxIndex() {
	f.t.Helper()
	pushIndex(f.t, f.reg+"/busybox:multi", imagetest.BusyboxIndex(f.t, "amd64", "arm64"))
}

// foreignArch is the architecture of the two that this machine is not.
func foreignArch() string {
	if runtime.GOARCH == "arm64" {
		return "amd64"
	}
	return "arm64"
}

// TestBuildPlatforms builds one Dockerfile for linux/amd64 and linux/arm64,
// RUN executing each platform's busybox (the foreign one through qemu's
// binfmt_misc handler), and reads the pushed index, the layout, the digest
// file and the build record back per platform.
func TestBuildPlatforms(t *testing.T) {
	if _, err := sandbox.CanRun(v1.Platform{OS: "linux", Architecture: foreignArch()}, sandbox.BinfmtDir); err != nil {
		t.Fatalf("this test runs RUN for linux/%s through qemu-user-static (test/run installs and registers it): %v", foreignArch(), err)
	}
	f := newFixture(t)
	f.pushBusyboxIndex()
	dest, _ := name.ParseReference(f.reg+"/app:multi", name.Insecure)
	out := t.TempDir()
	s := buildSpec{dockerfile: `FROM --platform=$BUILDPLATFORM REG/busybox:multi AS tool
ARG TARGETARCH BUILDARCH
RUN echo "built on $BUILDARCH for $TARGETARCH" > /note && uname -m > /tool-uname
FROM REG/busybox:multi
ARG TARGETARCH TARGETPLATFORM
LABEL arch=$TARGETARCH platform=$TARGETPLATFORM
RUN uname -m > /uname
COPY --from=tool /note /tool-uname /
`}
	o, ctx := f.options(s)
	j := Job{Build: o, Platforms: []string{"linux/amd64", "linux/arm64"}, Output: output.Options{
		Destinations: []name.Reference{dest}, OCILayoutPath: filepath.Join(out, "layout"),
		DigestFile: filepath.Join(out, "digest"), BuildRecord: filepath.Join(out, "build.json"),
	}}
	res, err := Execute(ctx, j)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(dest)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	if d != res.Digest {
		t.Errorf("pushed index %s, result %s", d, res.Digest)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "digest")); string(got) != d.String() {
		t.Errorf("--digest-file %q, want the index digest %s", got, d)
	}
	if mt, _ := idx.MediaType(); mt != types.OCIImageIndex {
		t.Errorf("index media type %s", mt)
	}
	m, _ := idx.IndexManifest()
	uname := map[string]string{"amd64": "x86_64\n", "arm64": "aarch64\n"}
	host := uname[runtime.GOARCH]
	var rec record.Build
	data, _ := os.ReadFile(filepath.Join(out, "build.json"))
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Digest != d.String() || rec.Platform != "linux/amd64,linux/arm64" || len(rec.Manifests) != 2 || rec.MediaType != string(types.OCIImageIndex) {
		t.Errorf("build record %s", data)
	}
	if len(m.Manifests) != 2 {
		t.Fatalf("%d manifests, want 2", len(m.Manifests))
	}
	for i, desc := range m.Manifests {
		arch := []string{"amd64", "arm64"}[i]
		if desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != arch {
			t.Errorf("entry %d platform %v, want linux/%s", i, desc.Platform, arch)
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		if cf.Architecture != arch || cf.OS != "linux" {
			t.Errorf("%s: config says %s/%s", arch, cf.OS, cf.Architecture)
		}
		if cf.Config.Labels["arch"] != arch || cf.Config.Labels["platform"] != "linux/"+arch {
			t.Errorf("%s: labels %v", arch, cf.Config.Labels)
		}
		fs := imagetest.Flatten(t, img)
		if got := fs["uname"].Content; got != uname[arch] {
			t.Errorf("%s: RUN uname -m wrote %q, want %q", arch, got, uname[arch])
		}
		// The BUILDPLATFORM stage ran on this machine's busybox.
		if got := fs["tool-uname"].Content; got != host {
			t.Errorf("%s: the $BUILDPLATFORM stage ran %q", arch, got)
		}
		if got, want := fs["note"].Content, "built on "+runtime.GOARCH+" for "+arch+"\n"; got != want {
			t.Errorf("%s: note %q, want %q", arch, got, want)
		}
		if rec.Manifests[i].Digest != desc.Digest.String() || rec.Manifests[i].Platform != "linux/"+arch {
			t.Errorf("build record manifest %d %+v, want %s %s", i, rec.Manifests[i], arch, desc.Digest)
		}
	}
	// The layout holds the same index.
	p, err := layout.FromPath(filepath.Join(out, "layout"))
	if err != nil {
		t.Fatal(err)
	}
	li, _ := p.ImageIndex()
	lm, _ := li.IndexManifest()
	if len(lm.Manifests) != 1 || lm.Manifests[0].Digest != d || !lm.Manifests[0].MediaType.IsIndex() {
		t.Errorf("layout index.json %+v, want the index %s", lm.Manifests, d)
	}
}

// TestBuildPlatformsRefusals: each refusal names the platform and leaves
// no output.
func TestBuildPlatformsRefusals(t *testing.T) {
	f := newFixture(t)
	f.pushBusyboxIndex()
	noEmulator := t.TempDir()
	os.WriteFile(filepath.Join(noEmulator, "status"), []byte("enabled\n"), 0o644)
	foreign := "linux/" + foreignArch()
	for _, c := range []struct {
		name, df  string
		platforms []string
		want      []string
	}{
		{"base lacks the platform", "FROM REG/busybox:1\nCOPY a /a\n", []string{"linux/amd64", "linux/s390x"}, []string{"linux/s390x", "the image is for linux/amd64 only", "busybox:1"}},
		{"index lacks the platform", "FROM REG/busybox:multi\nCOPY a /a\n", []string{"linux/amd64", "linux/riscv64"}, []string{"linux/riscv64", "it has linux/amd64, linux/arm64"}},
		{"no emulator", "FROM REG/busybox:multi\nRUN true\n", []string{"linux/" + runtime.GOARCH, foreign}, []string{foreign, "Dockerfile:1", "no binfmt_misc handler", "qemu-user-static"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			o, ctx := f.options(buildSpec{dockerfile: c.df, files: map[string]string{"a": "A"}})
			o.binfmtDir = noEmulator
			_, err := Execute(ctx, Job{Build: o, Platforms: c.platforms, Output: output.Options{NoPush: true, DigestFile: filepath.Join(out, "digest")}})
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want it to say %q", err, w)
				}
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("a refused build left %v", ents)
			}
		})
	}
}

// TestBuildPlatformsWithoutEmulator: FROM scratch, and RUN only in a
// $BUILDPLATFORM stage, build for any platform with no emulator at all.
func TestBuildPlatformsWithoutEmulator(t *testing.T) {
	f := newFixture(t)
	f.pushBusyboxIndex()
	noEmulator := t.TempDir()
	os.WriteFile(filepath.Join(noEmulator, "status"), []byte("enabled\n"), 0o644)
	o, ctx := f.options(buildSpec{dockerfile: `FROM --platform=$BUILDPLATFORM REG/busybox:multi AS build
ARG TARGETOS TARGETARCH
RUN echo "$TARGETOS-$TARGETARCH" > /bin.txt
FROM scratch
COPY --from=build /bin.txt /
COPY a /a
`, files: map[string]string{"a": "A"}})
	o.binfmtDir = noEmulator
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := Execute(ctx, Job{Build: o, Platforms: []string{"linux/s390x", "linux/riscv64", "linux/arm/v7"}, Output: output.Options{NoPush: true, OCILayoutPath: dir}}); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, _ := p.ImageIndex()
	tm, _ := top.IndexManifest()
	idx, err := top.ImageIndex(tm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := idx.IndexManifest()
	for i, want := range []v1.Platform{{OS: "linux", Architecture: "s390x"}, {OS: "linux", Architecture: "riscv64"}, {OS: "linux", Architecture: "arm", Variant: "v7"}} {
		if got := m.Manifests[i].Platform; got == nil || !got.Equals(want) {
			t.Errorf("entry %d: %v, want %v", i, got, want)
		}
		img, _ := idx.Image(m.Manifests[i].Digest)
		if got := imagetest.Flatten(t, img)["bin.txt"].Content; got != "linux-"+want.Architecture+"\n" {
			t.Errorf("%s: bin.txt %q", want.Architecture, got)
		}
	}
}

// TestBuildPlatformsCache: the layer cache keeps each platform's RUN
// apart. The RUN writes a random value and uname -m: the cached rebuild
// reproduces both images exactly (the random value came from the cache),
// and each platform's cached layer is its own (aarch64 stays aarch64).
func TestBuildPlatformsCache(t *testing.T) {
	if _, err := sandbox.CanRun(v1.Platform{OS: "linux", Architecture: foreignArch()}, sandbox.BinfmtDir); err != nil {
		t.Fatalf("this test runs RUN for linux/%s through qemu-user-static (test/run installs and registers it): %v", foreignArch(), err)
	}
	f := newFixture(t)
	f.pushBusyboxIndex()
	store := &cache.Layout{Path: filepath.Join(t.TempDir(), "cache")}
	var digests [2][]v1.Hash
	for i := range digests {
		out := filepath.Join(t.TempDir(), "layout")
		o, ctx := f.options(buildSpec{dockerfile: "FROM REG/busybox:multi\nRUN head -c 16 /dev/urandom | od -x > /random && uname -m > /uname\n"})
		o.Cache, o.CacheStore, o.CacheRunLayers, o.Reproducible = true, store, true, true
		if _, err := Execute(ctx, Job{Build: o, Platforms: []string{"linux/amd64", "linux/arm64"}, Output: output.Options{NoPush: true, OCILayoutPath: out}}); err != nil {
			t.Fatal(err)
		}
		p, _ := layout.FromPath(out)
		top, _ := p.ImageIndex()
		tm, _ := top.IndexManifest()
		idx, _ := top.ImageIndex(tm.Manifests[0].Digest)
		m, _ := idx.IndexManifest()
		for j, desc := range m.Manifests {
			img, _ := idx.Image(desc.Digest)
			want := map[int]string{0: "x86_64\n", 1: "aarch64\n"}[j]
			if got := imagetest.Flatten(t, img)["uname"].Content; got != want {
				t.Errorf("build %d, %s: uname %q, want %q", i, desc.Platform, got, want)
			}
			digests[i] = append(digests[i], desc.Digest)
		}
	}
	for j := range digests[0] {
		if digests[0][j] != digests[1][j] {
			t.Errorf("platform %d: the cached rebuild is %s, the first build %s: its RUN was not served from the cache", j, digests[1][j], digests[0][j])
		}
	}
	if digests[0][0] == digests[0][1] {
		t.Error("both platforms have one image")
	}
}

// TestStageSummary: each stage ends with a summary record of its time by
// phase, the RUN's own time under run.
func TestStageSummary(t *testing.T) {
	f := newFixture(t)
	var logs syncBuffer
	_, err := f.run(buildSpec{dockerfile: "FROM REG/busybox:1 AS a\nRUN sleep 0.3\nFROM scratch\nCOPY --from=a /bin/busybox /b\n", opts: func(o *Options) {
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	}})
	if err != nil {
		t.Fatal(err)
	}
	var summaries []map[string]any
	for _, line := range strings.Split(logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "stage summary" {
			summaries = append(summaries, rec)
		}
	}
	if len(summaries) != 2 {
		t.Fatalf("%d stage summaries, want 2:\n%s", len(summaries), logs.String())
	}
	dur := func(rec map[string]any, k string) time.Duration {
		s, _ := rec[k].(string)
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%s = %v: %v", k, rec[k], err)
		}
		return d
	}
	a := summaries[0]
	if a["stage"] != "a" || dur(a, "run") < 300*time.Millisecond || dur(a, "total") < dur(a, "run") || dur(a, "unpack") <= 0 {
		t.Errorf("stage a: %v", a)
	}
	for _, k := range []string{"pull", "unpack", "run", "snapshot", "layer"} {
		dur(summaries[1], k)
	}
	if dur(summaries[1], "run") != 0 || dur(summaries[1], "unpack") != 0 {
		t.Errorf("the scratch stage ran or unpacked: %v", summaries[1])
	}
}
