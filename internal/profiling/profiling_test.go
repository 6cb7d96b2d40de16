package profiling

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestStart writes both profiles, each one pprof reads back with samples
// of its kind.
func TestStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "prof")
	stop, err := Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	sink := 0
	for i := 0; i < 3e7; i++ {
		sink += i % 7
	}
	_ = make([]byte, 1<<20)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// go tool pprof reads each back, with samples of its kind.
	for name, kind := range map[string]string{"cpu.pprof": "samples/count cpu/nanoseconds", "heap.pprof": "inuse_space/bytes"} {
		out, err := exec.Command("go", "tool", "pprof", "-raw", filepath.Join(dir, name)).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		if !strings.Contains(string(out), kind) {
			t.Errorf("%s: no %s samples:\n%.500s", name, kind, out)
		}
	}
	if stop, err := Start(""); err != nil || stop() != nil {
		t.Error("an empty directory must profile nothing")
	}
}
