// Package bench measures RUN's cost in kiln's engine against tar of the
// same files, in the same run. See run.sh for the ratios.
package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/sandbox"
	"github.com/kilnbuild/kiln/internal/snapshot"
)

func TestMain(m *testing.M) {
	if sandbox.IsSandbox() {
		os.Exit(sandbox.SandboxMain())
	}
	os.Exit(m.Run())
}

// newRoot makes a root with busybox as /bin/sh and n small files under
// /data (100 per directory).
func newRoot(b *testing.B, n int) string {
	b.Helper()
	root := b.TempDir()
	bin := filepath.Join(root, "bin")
	os.MkdirAll(bin, 0o755)
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		b.Fatalf("busybox-static is required: %v", err)
	}
	os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755)
	for _, a := range []string{"sh", "mkdir", "seq", "xargs", "touch", "echo", "rm"} {
		os.Symlink("busybox", filepath.Join(bin, a))
	}
	for i := 0; i < n; i++ {
		dir := filepath.Join(root, "data", fmt.Sprintf("d%04d", i/100))
		if i%100 == 0 {
			os.MkdirAll(dir, 0o755)
		}
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", i%100)), []byte("some file content, 32 bytes....\n"), 0o644)
	}
	return root
}

// runInstruction is what kiln does for one RUN: snapshot, execute in the
// sandbox, find the changes, write the layer. Only kiln's part is timed.
func runInstruction(b *testing.B, root, work, script string) int {
	ctx := context.Background()
	before, err := snapshot.Take(ctx, root, snapshot.Options{})
	if err != nil {
		b.Fatal(err)
	}
	// The command's own cost is the user's, not kiln's: it is not timed.
	b.StopTimer()
	err = sandbox.Run(ctx, sandbox.Spec{Root: root, Args: []string{"/bin/sh", "-c", script}, Env: []string{"PATH=/bin"}, Dir: "/"}, sandbox.Options{WorkDir: work})
	b.StartTimer()
	if err != nil {
		b.Fatal(err)
	}
	changes, _, err := before.Diff(ctx, snapshot.Options{})
	if err != nil {
		b.Fatal(err)
	}
	entries, err := snapshot.Entries(root, changes)
	if err != nil {
		b.Fatal(err)
	}
	l, err := layer.New(ctx, work, entries, layer.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := l.Digest(); err != nil {
		b.Fatal(err)
	}
	return entries.Len()
}

// tarGzip is the baseline: GNU tar with gzip over dir.
func tarGzip(b *testing.B, dir, out string) {
	cmd := exec.Command("tar", "-czf", out, "-C", dir, ".")
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("tar: %v\n%s", err, o)
	}
}

// createScript creates n files under /out, 100 per directory.
func createScript(n int) string {
	return fmt.Sprintf("mkdir -p /out && cd /out && for d in $(seq 0 %d); do mkdir d$d; (cd d$d && seq 0 99 | xargs touch); done", n/100-1)
}

func BenchmarkRunCreate(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		root := newRoot(b, 0)
		work := b.TempDir()
		b.Run(fmt.Sprintf("files=%d/kiln", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				os.RemoveAll(filepath.Join(root, "out"))
				b.StartTimer()
				if got := runInstruction(b, root, work, createScript(n)); got < n {
					b.Fatalf("%d entries, want at least %d", got, n)
				}
			}
		})
		b.Run(fmt.Sprintf("files=%d/tar", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				tarGzip(b, filepath.Join(root, "out"), filepath.Join(work, "baseline.tgz"))
			}
		})
	}
}

func BenchmarkRunChangeOne(b *testing.B) {
	const n = 100000
	root := newRoot(b, n)
	work := b.TempDir()
	b.Run(fmt.Sprintf("files=%d/kiln", n), func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if got := runInstruction(b, root, work, fmt.Sprintf("echo %d > /data/d0500/f050", i)); got != 3 {
				b.Fatalf("%d entries, want data, data/d0500 and the file", got)
			}
		}
	})
	b.Run(fmt.Sprintf("files=%d/tar", n), func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			tarGzip(b, root, filepath.Join(work, "baseline.tgz"))
		}
	})
}

// BenchmarkSnapshotUnchanged is the snapshot after a RUN that changed
// nothing in a 100k-file root: the walk and the comparison with the
// snapshot before it, which is all of kiln's work such a RUN costs.
func BenchmarkSnapshotUnchanged(b *testing.B) {
	const n = 100000
	ctx := context.Background()
	root := newRoot(b, n)
	work := b.TempDir()
	b.Run(fmt.Sprintf("files=%d/kiln", n), func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			before, err := snapshot.Take(ctx, root, snapshot.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if err := sandbox.Run(ctx, sandbox.Spec{Root: root, Args: []string{"/bin/sh", "-c", "true"}, Env: []string{"PATH=/bin"}, Dir: "/"}, sandbox.Options{WorkDir: work}); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			changes, _, err := before.Diff(ctx, snapshot.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if len(changes.Changed)+len(changes.Deleted) != 0 {
				b.Fatalf("a RUN of true changed %v, deleted %v", changes.Changed, changes.Deleted)
			}
		}
	})
	b.Run(fmt.Sprintf("files=%d/tar", n), func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			tarGzip(b, root, filepath.Join(work, "baseline.tgz"))
		}
	})
}
