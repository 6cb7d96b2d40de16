package engine

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStaleWorkDirsReclaimed: a build killed with -9 leaves its directory
// and unlocked lock file; the next build removes them, but never the
// directory of a build still running (its lock held), nor what a symlink
// in a dead build's tree points to.
func TestStaleWorkDirsReclaimed(t *testing.T) {
	parent := t.TempDir()
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644)
	mk := func(name string) string {
		dir := filepath.Join(parent, name)
		os.MkdirAll(filepath.Join(dir, "stage-0", "root", "etc"), 0o755)
		os.Symlink(outside, filepath.Join(dir, "stage-0", "root", "link"))
		os.WriteFile(dir+lockSuffix, nil, 0o600)
		return dir
	}
	dead := mk("build-dead")
	live := mk("build-live")
	held, err := os.Open(live + lockSuffix)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := unix.Flock(int(held.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	w, err := newWorkDir(parent, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dead); err == nil {
		t.Error("the dead build's directory is still there")
	}
	if _, err := os.Lstat(dead + lockSuffix); err == nil {
		t.Error("the dead build's lock file is still there")
	}
	if _, err := os.Stat(filepath.Join(live, "stage-0", "root", "etc")); err != nil {
		t.Errorf("the live build's directory was touched: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Errorf("a file a symlink pointed to was removed: %v", err)
	}
	// A second build does not take the first one's directory for stale.
	w2, err := newWorkDir(parent, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(w.path); err != nil {
		t.Errorf("a running build's directory was reclaimed: %v", err)
	}
	w2.remove()
	w.remove()
	ents, _ := os.ReadDir(parent)
	if len(ents) != 2 { // build-live and its lock
		t.Errorf("left after both builds: %v", ents)
	}
}

// TestRemoveRoots: the roots a finished build leaves are emptied in the
// background, symlinks removed and never followed, and its layer files
// kept for the output.
func TestRemoveRoots(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644)
	w, err := newWorkDir(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer w.remove()
	for _, root := range []string{filepath.Join(w.path, "stage-0", "root"), filepath.Join(w.path, "image-0")} {
		os.MkdirAll(filepath.Join(root, "usr", "lib", "deep"), 0o755)
		os.WriteFile(filepath.Join(root, "usr", "lib", "deep", "f"), []byte("x"), 0o644)
		os.Symlink(outside, filepath.Join(root, "link"))
		os.Symlink(outside, filepath.Join(root, "usr", "out"))
	}
	layer := filepath.Join(w.path, "layer-1.tar.gz")
	os.WriteFile(layer, []byte("layer"), 0o644)
	w.removeRoots(slog.New(slog.DiscardHandler))()
	for _, root := range []string{filepath.Join(w.path, "stage-0", "root"), filepath.Join(w.path, "image-0")} {
		if ents, err := os.ReadDir(root); err != nil || len(ents) != 0 {
			t.Errorf("%s after removal: %v %v", root, ents, err)
		}
	}
	if _, err := os.Stat(layer); err != nil {
		t.Errorf("the layer file: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "keep")); err != nil || string(b) != "keep" {
		t.Errorf("what a root's symlink points to: %q %v", b, err)
	}
}

// TestRemoveRootsAfterSwap: a directory of a root swapped for a symlink to
// outside between the listing and the removal (a build's root is never
// written by then, but removal goes through handles all the same) leads
// the removal nowhere: the entries below it are removed from the directory
// listed, where it went, and the symlink itself is removed.
func TestRemoveRootsAfterSwap(t *testing.T) {
	outside := t.TempDir()
	os.MkdirAll(filepath.Join(outside, "lib", "deep"), 0o755)
	os.WriteFile(filepath.Join(outside, "lib", "deep", "f"), []byte("keep"), 0o644)
	os.WriteFile(filepath.Join(outside, "lib", "g"), []byte("keep"), 0o644)
	log := slog.New(slog.DiscardHandler)
	w, err := newWorkDir(t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer w.remove()
	root := filepath.Join(w.path, "stage-0", "root")
	os.MkdirAll(filepath.Join(root, "usr", "lib", "deep"), 0o755)
	os.WriteFile(filepath.Join(root, "usr", "lib", "deep", "f"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(root, "usr", "g"), []byte("x"), 0o644)
	inner, top, release := w.rootEntries(log)
	if err := os.Rename(filepath.Join(root, "usr"), filepath.Join(root, "moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "usr")); err != nil {
		t.Fatal(err)
	}
	removeAll(inner, log)
	removeAll(top, log)
	release()
	for _, p := range []string{"lib/deep/f", "lib/g"} {
		if b, err := os.ReadFile(filepath.Join(outside, p)); err != nil || string(b) != "keep" {
			t.Errorf("outside %s after the removal: %q %v", p, b, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "usr")); err == nil {
		t.Error("the symlink put in the root is still there")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "moved")); len(ents) != 0 {
		t.Errorf("the listed directory still holds %v", ents)
	}
}
