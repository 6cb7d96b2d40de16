package tekton

import (
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestKoReadsKoYAML builds a step image with ko (a tool dependency of this
// module) through KO_CONFIG_PATH=ko.yaml, against a local registry holding
// a two-platform base the test provides (nothing comes from the internet),
// and checks ko.yaml's settings took effect.
func TestKoReadsKoYAML(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	var adds []mutate.IndexAddendum
	for _, arch := range []string{"amd64", "arm64"} {
		img, _ := random.Image(64, 1)
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", arch
		img, _ = mutate.ConfigFile(img, cf)
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: gcrv1.Descriptor{Platform: &gcrv1.Platform{OS: "linux", Architecture: arch}}})
	}
	base := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	baseRef, _ := name.ParseReference(reg + "/base:static")
	if err := remote.WriteIndex(baseRef, base); err != nil {
		t.Fatal(err)
	}
	ko := filepath.Join(t.TempDir(), "ko")
	build := exec.Command("go", "build", "-o", ko, "github.com/google/ko")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building ko: %v\n%s", err, out)
	}
	cmd := exec.Command(ko, "build", "--bare", "./cmd/emit-results")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "KO_CONFIG_PATH=ko.yaml", "KO_DOCKER_REPO="+reg+"/kiln/emit-results",
		"KO_DEFAULTBASEIMAGE="+reg+"/base:static", "HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ko build: %v\n%s", err, out)
	}
	ref, err := name.ParseReference(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("ko printed %q: %v", out, err)
	}
	idx, err := remote.Index(ref)
	if err != nil {
		t.Fatalf("ko did not push an index (ko.yaml's defaultPlatforms): %v", err)
	}
	im, _ := idx.IndexManifest()
	var platforms []string
	for _, m := range im.Manifests {
		if m.Platform != nil {
			platforms = append(platforms, m.Platform.OS+"/"+m.Platform.Architecture)
		}
	}
	if strings.Join(platforms, ",") != "linux/amd64,linux/arm64" {
		t.Errorf("platforms %v, want ko.yaml's linux/amd64 and linux/arm64", platforms)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	if len(cf.Config.Entrypoint) == 0 || cf.Config.Entrypoint[0] != "/ko-app/emit-results" {
		t.Errorf("entrypoint %v", cf.Config.Entrypoint)
	}
}
