package build

import (
	"os"
	"testing"

	"github.com/kilnbuild/kiln/internal/run"
)

func TestMain(m *testing.M) {
	// RUN re-executes this binary as the sandbox's init.
	if run.IsSandbox() {
		os.Exit(run.SandboxMain())
	}
	os.Exit(m.Run())
}
