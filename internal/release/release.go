// Package release composes the release images ko cannot build by itself:
// the -debug variant of the build step image, which adds a busybox shell
// under /busybox (kaniko's debug layout, which GitLab CI and Buildkite
// need) and the emit-results and index binaries beside /ko-app/build.
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

// ShellDir is where the debug image's shell lives; the in-place build
// never empties it, so a job's script keeps its shell after a build.
const ShellDir = "/busybox"

// DebugImage returns build with, for each of its platforms, a layer of the
// /busybox tree of that platform's image in shell, and a layer of the
// /ko-app tree of each extra (ko-built step images such as emit-results),
// with /busybox added to PATH. Entrypoint and everything else stay as
// build has them.
func DebugImage(build, shell v1.ImageIndex, extras ...v1.ImageIndex) (v1.ImageIndex, error) {
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
		if img, err = debugPlatform(img, *desc.Platform, desc.MediaType, shell, extras); err != nil {
			return nil, fmt.Errorf("%s: %w", desc.Platform, err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: desc.Platform}})
	}
	return mutate.AppendManifests(idx, adds...), nil
}

func debugPlatform(img v1.Image, p v1.Platform, mt types.MediaType, shell v1.ImageIndex, extras []v1.ImageIndex) (v1.Image, error) {
	layerType := types.OCILayer
	if mt == types.DockerManifestSchema2 {
		layerType = types.DockerLayer
	}
	var adds []mutate.Addendum
	sh, err := forPlatform(shell, p)
	if err != nil {
		return nil, fmt.Errorf("shell image: %w", err)
	}
	l, err := subtree(sh, strings.TrimPrefix(ShellDir, "/"), layerType)
	if err != nil {
		return nil, fmt.Errorf("shell image: %w", err)
	}
	adds = append(adds, mutate.Addendum{Layer: l, MediaType: layerType, History: v1.History{CreatedBy: "kiln release: busybox shell in " + ShellDir, Comment: "debug"}})
	for i, x := range extras {
		xi, err := forPlatform(x, p)
		if err != nil {
			return nil, fmt.Errorf("extra image %d: %w", i+1, err)
		}
		l, err := subtree(xi, "ko-app", layerType)
		if err != nil {
			return nil, fmt.Errorf("extra image %d: %w", i+1, err)
		}
		adds = append(adds, mutate.Addendum{Layer: l, MediaType: layerType, History: v1.History{CreatedBy: "kiln release: step binaries in /ko-app", Comment: "debug"}})
	}
	img, err = mutate.Append(img, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Config.Env = withPath(cf.Config.Env, ShellDir)
	return mutate.ConfigFile(img, cf)
}

// IndexOf is img as a one-platform index (the platform from its config),
// for sources pushed as a single image, as ko does for one platform.
func IndexOf(img v1.Image) (v1.ImageIndex, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	return mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: cf.Platform()}}), nil
}

// withPath appends dir to PATH in env, setting a default PATH if none.
func withPath(env []string, dir string) []string {
	out := append([]string(nil), env...)
	for i, e := range out {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			for _, d := range strings.Split(v, ":") {
				if d == dir {
					return out
				}
			}
			out[i] = e + ":" + dir
			return out
		}
	}
	return append(out, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/ko-app:"+dir)
}

// forPlatform picks p's image from idx.
func forPlatform(idx v1.ImageIndex, p v1.Platform) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.OS == p.OS && d.Platform.Architecture == p.Architecture && d.Platform.Variant == p.Variant {
			return idx.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("no image for %s", p)
}

// subtree makes a layer of the entries under dir (no leading slash) of
// img's flattened file system, of media type mt; it is an error when
// there are none.
func subtree(img v1.Image, dir string, mt types.MediaType) (v1.Layer, error) {
	rc := mutate.Extract(img)
	defer rc.Close()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tr := tar.NewReader(rc)
	n := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if name != dir && !strings.HasPrefix(name, dir+"/") {
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return nil, err
		}
		n++
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("the image has nothing under /%s", dir)
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }, tarball.WithMediaType(mt))
}
