package imageindex

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/record"
	"github.com/kilnbuild/kiln/internal/registry"
)

// pushImage pushes a random image for platform (os/arch[/variant]; ""
// leaves the config without one) to ref and returns ref@digest.
func pushImage(t *testing.T, ref, platform string, docker bool) string {
	t.Helper()
	img, _ := random.Image(64, 1)
	if docker {
		img = mutate.MediaType(img, types.DockerManifestSchema2)
	} else {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = "", "", ""
	if platform != "" {
		p, err := v1.ParsePlatform(platform)
		if err != nil {
			t.Fatal(err)
		}
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	}
	img, _ = mutate.ConfigFile(img, cf)
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return r.Context().Name() + "@" + d.String()
}

func options(t *testing.T, dests ...string) Options {
	t.Helper()
	c, err := registry.New(registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Registry: c, Pusher: c}
	for _, d := range dests {
		r, err := name.ParseReference(d)
		if err != nil {
			t.Fatal(err)
		}
		o.Output.Destinations = append(o.Output.Destinations, r)
	}
	return o
}

// TestJoin joins two images pushed apart (one in another repository, one
// named by a bare digest, one through a build record) and reads the index
// back: platforms from the configs, the annotation, the record and files.
func TestJoin(t *testing.T) {
	reg := imagetest.Registry(t)
	amd := pushImage(t, reg+"/app/amd64:1", "linux/amd64", false)
	arm := pushImage(t, reg+"/app:arm64-build", "linux/arm64/v8", false)
	s390 := pushImage(t, reg+"/app:s390x-build", "linux/s390x", false)
	out := t.TempDir()
	recPath := filepath.Join(out, "records", "s390x.json")
	os.MkdirAll(filepath.Dir(recPath), 0o755)
	_, s390Digest, _ := strings.Cut(s390, "@")
	rec, _ := (&record.Build{Digest: s390Digest, Pushed: true, Images: []record.Image{{Ref: reg + "/app:s390x-build", Digest: s390Digest}}}).Marshal()
	os.WriteFile(recPath, rec, 0o644)
	_, armDigest, _ := strings.Cut(arm, "@")

	o := options(t, reg+"/app:1.0", reg+"/mirror/app:1.0")
	o.Images = []string{`["` + amd + `", "` + armDigest + `"]`}
	o.Records = []string{filepath.Join(out, "records", "*.json")}
	o.Annotations = map[string]string{"org.opencontainers.image.source": "https://example.com/app"}
	o.Output.DigestFile = filepath.Join(out, "digest")
	o.Output.BuildRecord = filepath.Join(out, "build.json")
	res, err := Push(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{reg + "/app:1.0", reg + "/mirror/app:1.0"} {
		r, _ := name.ParseReference(dst)
		idx, err := remote.Index(r)
		if err != nil {
			t.Fatalf("%s: %v", dst, err)
		}
		d, _ := idx.Digest()
		if d != res.Digest {
			t.Errorf("%s holds %s, want %s", dst, d, res.Digest)
		}
		m, _ := idx.IndexManifest()
		if m.MediaType != types.OCIImageIndex || m.Annotations["org.opencontainers.image.source"] != "https://example.com/app" {
			t.Errorf("%s: media type %s, annotations %v", dst, m.MediaType, m.Annotations)
		}
		want := []string{"linux/amd64", "linux/arm64/v8", "linux/s390x"}
		if len(m.Manifests) != len(want) {
			t.Fatalf("%s: %d entries", dst, len(m.Manifests))
		}
		for i, desc := range m.Manifests {
			if desc.Platform == nil || desc.Platform.String() != want[i] {
				t.Errorf("%s entry %d: platform %v, want %s", dst, i, desc.Platform, want[i])
			}
			// Every image is in the index's repository.
			if _, err := remote.Image(r.Context().Digest(desc.Digest.String())); err != nil {
				t.Errorf("%s: image %s is not in the repository: %v", dst, desc.Digest, err)
			}
		}
	}
	if got, _ := os.ReadFile(o.Output.DigestFile); string(got) != res.Digest.String() {
		t.Errorf("--digest-file %q", got)
	}
	var br record.Build
	data, _ := os.ReadFile(o.Output.BuildRecord)
	if err := json.Unmarshal(data, &br); err != nil {
		t.Fatal(err)
	}
	if br.Digest != res.Digest.String() || len(br.Manifests) != 3 || br.Manifests[1].Digest != armDigest || br.Platform != "linux/amd64,linux/arm64/v8,linux/s390x" || len(br.Images) != 2 {
		t.Errorf("record %s", data)
	}

	// The index joins again, with a fourth platform: an index among the
	// inputs contributes its images.
	riscv := pushImage(t, reg+"/app:riscv", "linux/riscv64", false)
	o2 := options(t, reg+"/app:1.1")
	o2.Images = []string{reg + "/app@" + res.Digest.String(), riscv}
	res2, err := Push(context.Background(), o2)
	if err != nil {
		t.Fatal(err)
	}
	if len(res2.Manifests) != 4 || res2.Manifests[3].Platform != "linux/riscv64" {
		t.Errorf("joined again: %+v", res2.Manifests)
	}
}

// TestDockerImagesMakeAManifestList: Docker manifests join as a Docker
// manifest list, as docker buildx imagetools does.
func TestDockerImagesMakeAManifestList(t *testing.T) {
	reg := imagetest.Registry(t)
	o := options(t, reg+"/d:1")
	o.Images = []string{pushImage(t, reg+"/d:a", "linux/amd64", true), pushImage(t, reg+"/d:b", "linux/arm64", true)}
	res, err := Push(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := res.Index.MediaType(); mt != types.DockerManifestList {
		t.Errorf("media type %s", mt)
	}
}

// TestRefusals: each bad input is refused, naming it, with nothing pushed
// or written.
func TestRefusals(t *testing.T) {
	reg := imagetest.Registry(t)
	amd := pushImage(t, reg+"/r:amd", "linux/amd64", false)
	amd2 := pushImage(t, reg+"/r:amd2", "linux/amd64", false)
	none := pushImage(t, reg+"/r:none", "", false)
	idx := mutate.AppendManifests(empty.Index)
	ir, _ := name.ParseReference(reg + "/r:emptyindex")
	remote.WriteIndex(ir, idx)
	dir := t.TempDir()
	noPush, _ := (&record.Build{Digest: strings.Split(amd, "@")[1], Pushed: false}).Marshal()
	os.WriteFile(filepath.Join(dir, "nopush.json"), noPush, 0o644)
	for _, c := range []struct {
		name    string
		images  []string
		records []string
		want    string
	}{
		{"no platform", []string{amd, none}, nil, "no platform in its config"},
		{"two images for one platform", []string{amd, amd2}, nil, "are both for linux/amd64"},
		{"a tag, not a digest", []string{reg + "/r:amd"}, nil, "name the image by digest"},
		{"a missing digest", []string{amd, reg + "/r@sha256:" + strings.Repeat("0", 64)}, nil, "sha256:000"},
		{"a bad digest", []string{reg + "/r@sha256:xyz"}, nil, "--image"},
		{"a --no-push record", nil, []string{filepath.Join(dir, "nopush.json")}, "pushed no image"},
		{"a missing record", nil, []string{filepath.Join(dir, "absent.json")}, "absent.json"},
		{"a pattern matching nothing", nil, []string{filepath.Join(dir, "none-*.json")}, "no file matches"},
		{"nothing", nil, nil, "no image to join"},
		{"a bad list", []string{`["sha256:1", 2]`}, nil, "JSON array of strings"},
		{"an empty index", []string{reg + "/r@" + digestOf(t, idx)}, nil, "nothing to join"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			o := options(t, reg+"/r:index")
			o.Images, o.Records = c.images, c.records
			o.Output.DigestFile = filepath.Join(out, "digest")
			_, err := Push(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("left %v", ents)
			}
			r, _ := name.ParseReference(reg + "/r:index")
			if _, err := remote.Head(r); err == nil {
				t.Error("the index tag was pushed")
			}
		})
	}
}

func digestOf(t *testing.T, idx v1.ImageIndex) string {
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}
