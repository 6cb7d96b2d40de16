package engine

import (
	"os"
	"testing"

	"github.com/kilnbuild/kiln/internal/sandbox"
)

func TestMain(m *testing.M) {
	// RUN re-executes this binary as the sandbox's init.
	if sandbox.IsSandbox() {
		os.Exit(sandbox.SandboxMain())
	}
	os.Exit(m.Run())
}
