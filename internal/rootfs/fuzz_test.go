package rootfs

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// FuzzApplyTar applies arbitrary layer tars over a root whose kiln
// directory is protected: whatever the entries (links, whiteouts, opaque
// directories, modes), nothing beside the root and nothing protected
// changes.
func FuzzApplyTar(f *testing.F) {
	seeds := [][]imagetest.File{
		{imagetest.Reg(".wh..", "", 0, 0, 0)},
		{imagetest.Symlink("kd", "/kaniko"), imagetest.Reg("kd/.docker/config.json", "x", 0o644, 0, 0)},
		{imagetest.Symlink("up", "../.."), imagetest.Reg("up/canary/passwd", "x", 0o644, 0, 0)},
		{imagetest.Dir("a", 0o755, 0, 0), imagetest.Symlink("a/b", "../../canary"), imagetest.Reg("a/b/.wh.passwd", "", 0, 0, 0)},
		{imagetest.Symlink("kd", "kaniko"), {Path: "h", Type: tar.TypeLink, Link: "kd/.docker/config.json"}},
		{imagetest.Symlink("x", "/"), imagetest.Reg("x/.wh..wh..opq", "", 0, 0, 0), imagetest.Reg("kaniko", "f", 0o644, 0, 0)},
		{imagetest.Dir("d", 0o4777, 5, 6), imagetest.Reg("d/f", "y", 0o6755, 7, 8), imagetest.Reg("d/.wh.f", "", 0, 0, 0)},
	}
	for _, s := range seeds {
		f.Add(imagetest.Tar(s...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// Big (or sparse) entries only cost time here.
		tr := tar.NewReader(bytes.NewReader(data))
		for n := 0; ; n++ {
			h, err := tr.Next()
			if err != nil {
				break
			}
			if h.Size > 1<<16 || n > 64 {
				return
			}
		}
		base := t.TempDir()
		root, canary := filepath.Join(base, "root"), filepath.Join(base, "canary")
		os.MkdirAll(filepath.Join(root, "kaniko/.docker"), 0o755)
		os.MkdirAll(canary, 0o755)
		os.WriteFile(filepath.Join(root, "kaniko/.docker/config.json"), []byte("creds"), 0o600)
		os.WriteFile(filepath.Join(canary, "passwd"), []byte("host"), 0o600)
		before := snapshotTree(t, base, "canary", "root/kaniko")
		ApplyTar(root, bytes.NewReader(data), UnpackOptions{Ignore: NewIgnoreList("/kaniko")})
		if after := snapshotTree(t, base, "canary", "root/kaniko"); after != before {
			t.Fatalf("outside or protected paths changed:\nbefore %s\nafter  %s", before, after)
		}
	})
}
