package release

import (
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// index makes a two-platform index whose images hold files (each with
// the architecture in its content) and the given entrypoint.
func index(t *testing.T, entrypoint string, files ...string) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, arch := range []string{"amd64", "arm64"} {
		var fs []imagetest.File
		for _, f := range files {
			if target, ok := strings.CutPrefix(f, "->"); ok {
				p, link, _ := strings.Cut(target, "=")
				fs = append(fs, imagetest.Symlink(p, link))
				continue
			}
			fs = append(fs, imagetest.Reg(f, f+" for "+arch, 0o755, 0, 0))
		}
		img := imagetest.Image(t, true, func(cf *v1.ConfigFile) {
			cf.Architecture = arch
			cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin:/ko-app", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
			if entrypoint != "" {
				cf.Config.Entrypoint = []string{entrypoint}
			}
		}, fs)
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
}

func TestDebugImage(t *testing.T) {
	build := index(t, "/ko-app/build", "etc/ssl/certs/ca-certificates.crt", "ko-app/build")
	shell := index(t, "/busybox/sh", "busybox/busybox", "->busybox/sh=busybox", "bin/not-wanted", "etc/passwd")
	emit := index(t, "/ko-app/emit-results", "ko-app/emit-results", "var/run/ko/not-wanted")
	debug, err := DebugImage(build, shell, emit)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := debug.IndexManifest()
	if len(im.Manifests) != 2 {
		t.Fatalf("%d platforms, want 2", len(im.Manifests))
	}
	for _, d := range im.Manifests {
		arch := d.Platform.Architecture
		img, _ := debug.Image(d.Digest)
		fs := imagetest.Flatten(t, img)
		for _, p := range []string{"ko-app/build", "ko-app/emit-results", "busybox/busybox", "etc/ssl/certs/ca-certificates.crt"} {
			if e, ok := fs[p]; !ok || e.Content != p+" for "+arch {
				t.Errorf("%s: %s = %q, want that platform's file", arch, p, e.Content)
			}
		}
		if e := fs["busybox/sh"]; e.Header.Linkname != "busybox" {
			t.Errorf("%s: busybox/sh %+v, want a link to busybox", arch, e.Header)
		}
		for _, p := range []string{"bin/not-wanted", "etc/passwd", "var/run/ko/not-wanted"} {
			if _, ok := fs[p]; ok {
				t.Errorf("%s: %s was copied from a source image", arch, p)
			}
		}
		cf, _ := img.ConfigFile()
		if strings.Join(cf.Config.Entrypoint, " ") != "/ko-app/build" || cf.Architecture != arch {
			t.Errorf("%s: entrypoint %v, architecture %s", arch, cf.Config.Entrypoint, cf.Architecture)
		}
		if want := "PATH=/usr/local/bin:/usr/bin:/bin:/ko-app:/busybox"; cf.Config.Env[0] != want {
			t.Errorf("%s: env %v, want %s", arch, cf.Config.Env, want)
		}
		if n := len(cf.History); n != 3 || cf.History[1].Comment != "debug" {
			t.Errorf("%s: history %+v", arch, cf.History)
		}
		m, _ := img.Manifest()
		ls, _ := img.Layers()
		for i := 1; i < 3; i++ {
			if lmt, _ := ls[i].MediaType(); m.Layers[i].MediaType != types.OCILayer || lmt != types.OCILayer {
				t.Errorf("%s: added layer %d has media type %s (manifest %s), want the base's OCI", arch, i, lmt, m.Layers[i].MediaType)
			}
		}
	}
}

func TestDebugImageErrors(t *testing.T) {
	build := index(t, "/ko-app/build", "ko-app/build")
	noShell := index(t, "", "bin/sh")
	if _, err := DebugImage(build, noShell); err == nil || !strings.Contains(err.Error(), "nothing under /busybox") {
		t.Errorf("shell without /busybox: %v", err)
	}
	oneArch := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add:        imagetest.Image(t, true, nil, []imagetest.File{imagetest.Reg("busybox/busybox", "x", 0o755, 0, 0)}),
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
	})
	if _, err := DebugImage(build, oneArch); err == nil || !strings.Contains(err.Error(), "no image for linux/arm64") {
		t.Errorf("shell lacking a platform: %v", err)
	}
}

func TestIndexOf(t *testing.T) {
	img := imagetest.Image(t, true, func(cf *v1.ConfigFile) { cf.Architecture, cf.Variant = "arm", "v7" }, []imagetest.File{imagetest.Reg("x", "x", 0o644, 0, 0)})
	idx, err := IndexOf(img)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Platform.String() != "linux/arm/v7" {
		t.Errorf("index %+v", im.Manifests)
	}
	if _, err := forPlatform(idx, v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}); err != nil {
		t.Error(err)
	}
}
