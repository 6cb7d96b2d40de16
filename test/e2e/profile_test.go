package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestProfile: --profile (and KILN_PROFILE) writes CPU and heap profiles
// of the build, which go tool pprof reads.
func TestProfile(t *testing.T) {
	for _, viaEnv := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "prof")
		args := []string{"--context", "../../examples/hello", "--no-push"}
		var env []string
		if viaEnv {
			env = []string{"KILN_PROFILE=" + dir}
		} else {
			args = append(args, "--profile", dir)
		}
		r := kiln(t, env, args...)
		if r.code != 0 {
			t.Fatalf("build failed:\n%s", r.stderr)
		}
		contains(t, r.stderr, "stage summary")
		for _, name := range []string{"cpu.pprof", "heap.pprof"} {
			out, err := exec.Command("go", "tool", "pprof", "-raw", filepath.Join(dir, name)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Samples:") {
				t.Errorf("%s (env %v): %v\n%.300s", name, viaEnv, err, out)
			}
		}
	}
}
