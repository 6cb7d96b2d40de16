package tasks

import (
	"encoding/json"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// TestBundle pushes the bundle to a registry and reads it back as Tekton's
// bundle resolver would: one layer per resource, found by annotations.
func TestBundle(t *testing.T) {
	img, err := Bundle(nil)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(imagetest.Registry(t) + "/tekton/kiln:0.1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := got.Manifest()
	found := map[string]string{}
	for _, d := range m.Layers {
		a := d.Annotations
		found[a["dev.tekton.image.kind"]+"/"+a["dev.tekton.image.name"]] = a["dev.tekton.image.apiVersion"]
		l, err := got.LayerByDigest(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := l.Uncompressed()
		entries := imagetest.ReadTar(t, rc)
		rc.Close()
		if len(entries) != 1 {
			t.Errorf("layer %s has %d files", d.Digest, len(entries))
		}
		for _, e := range entries {
			var doc map[string]any
			if err := json.Unmarshal([]byte(e.Content), &doc); err != nil || doc["kind"] == nil {
				t.Errorf("layer file %s is not a resource: %v", e.Header.Name, err)
			}
		}
	}
	want := map[string]string{"task/kiln-build": "v1", "stepaction/kiln-build": "v1beta1"}
	for k, v := range want {
		if found[k] != v {
			t.Errorf("bundle entries %v, want %s at %s", found, k, v)
		}
	}
}
