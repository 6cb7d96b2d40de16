package tasks

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"sigs.k8s.io/yaml"
)

// Tekton bundle annotations, one set per layer.
const (
	annotationName       = "dev.tekton.image.name"
	annotationKind       = "dev.tekton.image.kind"
	annotationAPIVersion = "dev.tekton.image.apiVersion"
)

// Bundle packs the catalog's Tekton resources as a Tekton bundle: an image
// with one layer per resource, each annotated with the resource's name,
// lower-case kind and apiVersion, as `tkn bundle push` makes them. pins
// are as for Catalog.
func Bundle(pins map[string]string) (v1.Image, error) {
	files, err := Catalog(pins)
	if err != nil {
		return nil, err
	}
	var names []string
	for p := range files {
		if strings.HasSuffix(p, ".yaml") && !strings.Contains(p, "/samples/") {
			names = append(names, p)
		}
	}
	sort.Strings(names)
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, p := range names {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(files[p], &meta); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		jsonDoc, err := yaml.YAMLToJSON(files[p])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		kind := strings.ToLower(meta.Kind)
		l, err := resourceLayer(kind+"-"+meta.Metadata.Name, jsonDoc)
		if err != nil {
			return nil, err
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer: l, MediaType: types.OCILayer,
			Annotations: map[string]string{
				annotationName: meta.Metadata.Name, annotationKind: kind,
				annotationAPIVersion: path.Base(meta.APIVersion),
			},
		})
		if err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: time.Unix(0, 0)}
	return mutate.ConfigFile(img, cf)
}

// resourceLayer is a layer holding one file, the resource's JSON.
func resourceLayer(name string, data []byte) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return nil, err
	}
	tw.Write(data)
	tw.Close()
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}
