package engine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// In-place builds are tested here with a temporary directory standing in
// for the container's "/" and without RUN (which in place needs the real
// "/" and so runs only inside runc, in test/e2e).
func TestInPlaceWithoutRun(t *testing.T) {
	f := newFixture(t)
	root := t.TempDir()
	// What the "container" holds before the build: kiln's dir and a
	// workspace are kept, anything else goes.
	for _, p := range []string{"kaniko/keep", "leftover/file", "workspace/ctx"} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(p), 0o644)
	}
	df := "FROM REG/base:oci AS one\nCOPY a /from-one\nFROM REG/base:docker\nCOPY --from=one /from-one /copied\nCOPY a /a\n"
	fs, _, _ := f.mustRun(buildSpec{dockerfile: df, files: map[string]string{"a": "A"}, opts: func(o *Options) {
		o.Isolation, o.Root, o.Force = "in-place", root, true
		o.IgnorePaths = []string{"/kaniko", "/workspace"}
	}})
	checkFiles(t, fs, map[string]want{"copied": {content: str("A")}, "a": {content: str("A")}}, []string{"leftover", "kaniko", "workspace"})
	for _, p := range []string{"kaniko/keep", "workspace/ctx"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("ignored %s was removed", p)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "leftover")); err == nil {
		t.Error("the root was not emptied before the base was unpacked")
	}
	if b, err := os.ReadFile(filepath.Join(root, "a")); err != nil || string(b) != "A" {
		t.Errorf("the final stage is not in the root: %v", err)
	}
	// --cleanup empties it at the end.
	f.mustRun(buildSpec{dockerfile: "FROM REG/base:oci\n", opts: func(o *Options) {
		o.Isolation, o.Root, o.Force, o.Cleanup = "in-place", root, true, true
		o.IgnorePaths = []string{"/kaniko"}
	}})
	ents, _ := os.ReadDir(root)
	if len(ents) != 1 || ents[0].Name() != "kaniko" {
		t.Errorf("after --cleanup the root holds %v", ents)
	}
}

func TestInPlaceRefusedOutsideContainers(t *testing.T) {
	f := newFixture(t)
	_, err := f.run(buildSpec{dockerfile: "FROM REG/base:oci\n", opts: func(o *Options) {
		o.Isolation, o.Root = "in-place", t.TempDir()
		o.inContainer = func() bool { return false }
	}})
	if err == nil || !strings.Contains(err.Error(), "option Isolation in-place") || !strings.Contains(err.Error(), "option Force") {
		t.Errorf("err = %v", err)
	}
	// auto outside a container is chroot: the real "/" is never touched.
	_, err = f.run(buildSpec{dockerfile: "FROM REG/busybox:1\nRUN echo ok > /x\n", opts: func(o *Options) {
		o.Isolation = "auto"
		o.inContainer = func() bool { return false }
	}})
	if err != nil {
		t.Errorf("auto outside a container: %v", err)
	}
}
