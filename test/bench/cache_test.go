package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/engine"
	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/registry"
)

// BenchmarkCachedRebuild compares a fully cached rebuild (kiln appends the
// cached layers without unpacking anything) with extracting every layer of
// the same image with tar, which is what kaniko does on a cached rebuild.
func BenchmarkCachedRebuild(b *testing.B) {
	reg := imagetest.Registry(b)
	files := imagetest.BusyboxFiles(b)
	for i := 0; i < 20000; i++ {
		files = append(files, imagetest.Reg(fmt.Sprintf("usr/share/data/d%03d/f%03d", i/100, i%100), "some content\n", 0o644, 0, 0))
	}
	ref, _ := name.ParseReference(reg + "/base:1")
	if err := remote.Write(ref, imagetest.Image(b, true, nil, files)); err != nil {
		b.Fatal(err)
	}
	ctxDir := b.TempDir()
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM "+reg+"/base:1\n"+
		"RUN mkdir -p /opt/gen && cd /opt/gen && seq 1 2000 | xargs touch\n"+
		"COPY app.txt /opt/app.txt\nRUN echo built > /opt/built\n"), 0o644)
	os.WriteFile(filepath.Join(ctxDir, "app.txt"), []byte("app"), 0o644)
	client, _ := registry.New(registry.Options{InsecureRegistries: []string{reg}, Platform: v1.Platform{OS: "linux", Architecture: "amd64"}})
	store := &cache.Layout{Path: filepath.Join(b.TempDir(), "cache")}
	opts := engine.Options{
		Context: ctxDir, Dockerfile: filepath.Join(ctxDir, "Dockerfile"), WorkDir: b.TempDir(), Registry: client,
		Isolation: "chroot", Cache: true, CacheStore: store, CacheRunLayers: true, CacheCopyLayers: true, Reproducible: true,
	}
	first, err := engine.Build(context.Background(), opts)
	if err != nil {
		b.Fatal(err)
	}
	img := first.Image
	want := first.Digest
	defer first.Close()
	b.Run("rebuild/kiln", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			res, err := engine.Build(context.Background(), opts)
			if err != nil {
				b.Fatal(err)
			}
			if res.Digest != want {
				b.Fatalf("cached rebuild %s, want %s", res.Digest, want)
			}
			res.Close()
		}
	})
	layers, _ := img.Layers()
	blobs := b.TempDir()
	var paths []string
	for i, l := range layers {
		rc, _ := l.Compressed()
		p := filepath.Join(blobs, fmt.Sprintf("%d.tgz", i))
		f, _ := os.Create(p)
		f.ReadFrom(rc)
		f.Close()
		rc.Close()
		paths = append(paths, p)
	}
	b.Run("rebuild/tar", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			root := filepath.Join(b.TempDir(), "root")
			os.MkdirAll(root, 0o755)
			b.StartTimer()
			for _, p := range paths {
				if out, err := exec.Command("tar", "-xzf", p, "-C", root).CombinedOutput(); err != nil {
					b.Fatalf("tar: %v %s", err, out)
				}
			}
		}
	})
}
