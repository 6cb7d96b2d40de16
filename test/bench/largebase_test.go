package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kilnbuild/kiln/internal/engine"
	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/registry"
)

// BenchmarkLargeBase builds on a base whose layer holds n files in n/100
// directories (the engine issue's scale cases): a COPY of one file, which
// needs nothing of the base, and a RUN writing one file, which needs all
// of it; against tar -xzf of the base layer, the least a builder that
// unpacks the base does. From 10k to 100k files kiln's time must grow no
// faster than linearly (compare the kiln/tar ratios of the two sizes).
func BenchmarkLargeBase(b *testing.B) {
	reg := imagetest.Registry(b)
	client, _ := registry.New(registry.Options{InsecureRegistries: []string{reg}, Platform: v1.Platform{OS: "linux", Architecture: "amd64"}})
	for _, n := range []int{10000, 100000} {
		files := imagetest.BusyboxFiles(b)
		for i := 0; i < n; i++ {
			files = append(files, imagetest.Reg(fmt.Sprintf("usr/share/data/d%04d/f%03d", i/100, i%100), "some file content\n", 0o644, 0, 0))
		}
		img := imagetest.Image(b, true, nil, files)
		ref := fmt.Sprintf("%s/base:%d", reg, n)
		r, _ := name.ParseReference(ref)
		if err := remote.Write(r, img); err != nil {
			b.Fatal(err)
		}
		ls, _ := img.Layers()
		blob := filepath.Join(b.TempDir(), "layer.tgz")
		rc, _ := ls[len(ls)-1].Compressed()
		f, _ := os.Create(blob)
		io.Copy(f, rc)
		f.Close()
		rc.Close()
		for _, c := range []struct{ name, df string }{
			{"copy-one-file", "COPY one.txt /one.txt\n"},
			{"run-one-file", "RUN echo x > /one\n"},
		} {
			ctxDir := b.TempDir()
			os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM "+ref+"\n"+c.df), 0o644)
			os.WriteFile(filepath.Join(ctxDir, "one.txt"), []byte("one\n"), 0o644)
			work := b.TempDir()
			b.Run(fmt.Sprintf("files=%d/%s/kiln", n, c.name), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					res, err := engine.Build(context.Background(), engine.Options{
						Context: ctxDir, Dockerfile: filepath.Join(ctxDir, "Dockerfile"), WorkDir: work,
						Registry: client, Isolation: "chroot", Reproducible: true,
					})
					if err != nil {
						b.Fatal(err)
					}
					res.Close()
				}
			})
			b.Run(fmt.Sprintf("files=%d/%s/tar", n, c.name), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					dst := filepath.Join(work, "untar")
					os.RemoveAll(dst)
					os.MkdirAll(dst, 0o755)
					if out, err := exec.Command("tar", "-xzf", blob, "-C", dst).CombinedOutput(); err != nil {
						b.Fatalf("tar: %v\n%s", err, out)
					}
				}
			})
		}
	}
}
