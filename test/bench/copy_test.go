package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/internal/engine"
)

// BenchmarkCopyDeepTree copies a context that is one chain of nested
// directories (the security issue's finding 9: COPY time grew with the
// cube of the depth). kiln's whole build of FROM scratch + COPY against
// tar -czf of the same context; the ratio must not grow with the depth
// faster than tar's own cost does.
func BenchmarkCopyDeepTree(b *testing.B) {
	for _, depth := range []int{100, 300} {
		dir := b.TempDir()
		p := filepath.Join(dir, strings.TrimSuffix(strings.Repeat("d/", depth), "/"))
		if err := os.MkdirAll(p, 0o755); err != nil {
			b.Fatal(err)
		}
		os.WriteFile(filepath.Join(p, "f"), []byte("deep\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY . /x/\n"), 0o644)
		work := b.TempDir()
		b.Run(fmt.Sprintf("depth=%d/kiln", depth), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				res, err := engine.Build(context.Background(), engine.Options{
					Context: dir, Dockerfile: filepath.Join(dir, "Dockerfile"), WorkDir: work,
					Isolation: "chroot", Reproducible: true,
				})
				if err != nil {
					b.Fatal(err)
				}
				res.Close()
			}
		})
		b.Run(fmt.Sprintf("depth=%d/tar", depth), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				tarGzip(b, dir, filepath.Join(work, "baseline.tgz"))
			}
		})
	}
}
