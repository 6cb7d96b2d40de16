package release

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The paths kaniko users hard-code, which the build image provides.
const (
	// KanikoExecutor is kaniko's executor; in kiln's image it is the build
	// step's binary.
	KanikoExecutor = "/kaniko/executor"
	// KanikoCerts is kaniko's SSL_CERT_DIR: CA bundles mounted there are
	// trusted (kaniko README's kubectl example).
	KanikoCerts = "/kaniko/ssl/certs"
	// KanikoDockerConfig is kaniko's DOCKER_CONFIG.
	KanikoDockerConfig = "/kaniko/.docker"
	// systemBundle is the CA bundle of the distroless base.
	systemBundle = "etc/ssl/certs/ca-certificates.crt"
)

// KanikoLayout gives build (an index of ko-built build step images) the
// layout kaniko's image has: /kaniko/executor (the build binary),
// /kaniko/ssl/certs with the system CA bundle and SSL_CERT_DIR pointing
// there, /kaniko/.docker as DOCKER_CONFIG, /kaniko on PATH and
// /kaniko/executor as the entrypoint, so a kaniko user's script and pod
// spec work unchanged.
func KanikoLayout(build v1.ImageIndex) (v1.ImageIndex, error) {
	im, err := build.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading the build image's index: %w", err)
	}
	idx := mutate.IndexMediaType(empty.Index, im.MediaType)
	var adds []mutate.IndexAddendum
	for _, desc := range im.Manifests {
		if desc.Platform == nil {
			return nil, fmt.Errorf("build image %s names no platform", desc.Digest)
		}
		img, err := build.Image(desc.Digest)
		if err != nil {
			return nil, fmt.Errorf("build image for %s: %w", desc.Platform, err)
		}
		if img, err = kanikoPlatform(img, desc.MediaType); err != nil {
			return nil, fmt.Errorf("%s: %w", desc.Platform, err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: desc.Platform}})
	}
	return mutate.AppendManifests(idx, adds...), nil
}

func kanikoPlatform(img v1.Image, mt types.MediaType) (v1.Image, error) {
	layerType := types.OCILayer
	if mt == types.DockerManifestSchema2 {
		layerType = types.DockerLayer
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	bin := ""
	if len(cf.Config.Entrypoint) > 0 {
		bin = cf.Config.Entrypoint[0]
	}
	if bin == KanikoExecutor {
		return img, nil // already laid out
	}
	if !strings.HasPrefix(bin, "/ko-app/") {
		return nil, fmt.Errorf("the build image's entrypoint is %q, not a /ko-app binary", bin)
	}
	bundle, err := fileIn(img, systemBundle)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	entries := []*tar.Header{
		{Name: "kaniko/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "kaniko/executor", Typeflag: tar.TypeSymlink, Linkname: bin, Mode: 0o777},
		{Name: "kaniko/.docker/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "kaniko/ssl/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "kaniko/ssl/certs/", Typeflag: tar.TypeDir, Mode: 0o755},
	}
	for _, h := range entries {
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
	}
	if bundle != nil {
		if err := tw.WriteHeader(&tar.Header{Name: "kaniko/ssl/certs/ca-certificates.crt", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(bundle))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(bundle); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }, tarball.WithMediaType(layerType))
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: layerType,
		History: v1.History{CreatedBy: "kiln release: kaniko's layout (/kaniko/executor, /kaniko/ssl/certs, /kaniko/.docker)", Comment: "kaniko"}})
	if err != nil {
		return nil, err
	}
	if cf, err = img.ConfigFile(); err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Config.Env = withPath(setEnv(setEnv(cf.Config.Env, "SSL_CERT_DIR", KanikoCerts), "DOCKER_CONFIG", KanikoDockerConfig), "/kaniko")
	cf.Config.Entrypoint = []string{KanikoExecutor}
	return mutate.ConfigFile(img, cf)
}

// setEnv sets k=v in env.
func setEnv(env []string, k, v string) []string {
	out := append([]string(nil), env...)
	for i, e := range out {
		if strings.HasPrefix(e, k+"=") {
			out[i] = k + "=" + v
			return out
		}
	}
	return append(out, k+"="+v)
}

// fileIn reads the regular file p (no leading slash) of img's flattened
// file system, or nil when there is none.
func fileIn(img v1.Image, p string) ([]byte, error) {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if strings.TrimPrefix(path.Clean("/"+h.Name), "/") == p && h.Typeflag == tar.TypeReg {
			return io.ReadAll(tr)
		}
	}
}
