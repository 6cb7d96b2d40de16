package e2e

import (
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// TestWarmCache runs kaniko's warmer invocation and then builds with the
// warmed directory as kaniko does (--cache --cache-dir): a moved tag is
// resolved in the registry and never served stale, and with the registry
// gone the stored image is used.
func TestWarmCache(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	host := strings.TrimPrefix(srv.URL, "http://")
	base := host + "/busybox:warm"
	withFile := func(content string) []imagetest.File {
		return append(imagetest.BusyboxFiles(t), imagetest.Reg("etc/base", content, 0o644, 0, 0))
	}
	pushTo(t, base, imagetest.Image(t, true, nil, withFile("warmed")))
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("ARG BASE\nFROM ${BASE}\nRUN cat /etc/base > /w\n"), 0o644)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	r := step(t, "warm-cache", nil, "--dockerfile", filepath.Join(ctx, "Dockerfile"), "--build-arg", "BASE="+base,
		"--cache-dir", cacheDir, "--insecure-pull")
	if r.code != 0 {
		t.Fatalf("warm-cache failed:\n%s", r.stderr)
	}
	// kaniko's layout: <cache-dir>/sha256:<digest>, an OCI layout.
	ents, _ := filepath.Glob(filepath.Join(cacheDir, "sha256:*", "index.json"))
	if len(ents) != 1 {
		t.Fatalf("cache directory entries %v, want one sha256:<digest>/index.json", ents)
	}
	build := func(name string) string {
		t.Helper()
		out := t.TempDir()
		r := kiln(t, nil, "--context", ctx, "--build-arg", "BASE="+base, "--cache-dir", cacheDir, "--no-push",
			"--cache", "--cache-repo", "oci:"+filepath.Join(out, "layers"), "--insecure-pull",
			"--tar-path", filepath.Join(out, "img.tar"), "--isolation", "chroot")
		if r.code != 0 {
			t.Fatalf("%s: build failed:\n%s", name, r.stderr)
		}
		img, err := tarball.ImageFromPath(filepath.Join(out, "img.tar"), nil)
		if err != nil {
			t.Fatal(err)
		}
		return imagetest.Flatten(t, img)["w"].Content
	}
	if got := build("warmed"); got != "warmed" {
		t.Errorf("built from the warmed image: /w = %q", got)
	}
	pushTo(t, base, imagetest.Image(t, true, nil, withFile("moved")))
	if got := build("moved tag"); got != "moved" {
		t.Errorf("the tag moved after warming: /w = %q, want the new image's", got)
	}
	srv.Close() // the registry is gone from here on
	if got := build("registry gone"); got != "warmed" {
		t.Errorf("registry gone: /w = %q, want the warmed image's", got)
	}
	r = step(t, "warm-cache", nil, "--cache-dir", cacheDir)
	if r.code != 2 || !strings.Contains(r.stderr, "--image or --dockerfile") {
		t.Errorf("warm-cache without images: %d %s", r.code, r.stderr)
	}
}

func TestCacheRepoEndToEnd(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:1"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("ARG BASE\nFROM ${BASE}\nCOPY f /f\nRUN cat /f > /g\n"), 0o644)
	os.WriteFile(filepath.Join(ctx, "f"), []byte("F"), 0o644)
	for _, repo := range []string{reg + "/kiln/cache", "oci:" + filepath.Join(t.TempDir(), "cache")} {
		t.Run(repo[:3], func(t *testing.T) {
			var digests []string
			for i, want := range []string{"cache miss", "cache hit"} {
				out := t.TempDir()
				r := kiln(t, nil, "--context", ctx, "-d", reg+"/kiln/cached:1", "--insecure", "--insecure-pull",
					"--build-arg", "BASE="+base, "--cache", "--cache-repo", repo, "--cache-copy-layers", "--reproducible",
					"--digest-file", filepath.Join(out, "digest"), "--isolation", "chroot")
				if r.code != 0 {
					t.Fatalf("build %d failed:\n%s", i, r.stderr)
				}
				if strings.Count(r.stderr, want) != 2 {
					t.Errorf("build %d: want two %q lines:\n%s", i, want, r.stderr)
				}
				d, _ := os.ReadFile(filepath.Join(out, "digest"))
				digests = append(digests, string(d))
			}
			if digests[0] != digests[1] {
				t.Errorf("cached rebuild digest %s differs from %s", digests[1], digests[0])
			}
		})
	}
}
