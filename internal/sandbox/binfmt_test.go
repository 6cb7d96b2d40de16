package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// qemu-user-static's registrations, as the kernel lists them.
const (
	qemuAarch64 = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n"
	qemuS390x   = "enabled\ninterpreter /usr/bin/qemu-s390x-static\nflags: F\noffset 0\nmagic 7f454c4602020100000000000000000000020016\nmask ffffffffffffff00fffffffffffffffffffeffff\n"
	qemuArmOff  = "disabled\ninterpreter /usr/bin/qemu-arm-static\nflags: F\noffset 0\nmagic 7f454c4601010100000000000000000002002800\nmask ffffffffffffff00fffffffffffffffffeffffff\n"
)

func TestCanRun(t *testing.T) {
	dir := t.TempDir()
	for n, c := range map[string]string{"status": "enabled\n", "register": "", "qemu-aarch64": qemuAarch64, "qemu-s390x": qemuS390x, "qemu-arm": qemuArmOff, "python3.11": "enabled\ninterpreter /usr/bin/python3.11\nflags: \noffset 0\nmagic a70d0d0a\n"} {
		os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644)
	}
	foreign := "arm64"
	if runtime.GOARCH == "arm64" {
		foreign = "amd64"
	}
	for _, c := range []struct {
		p     v1.Platform
		dir   string
		ok    bool
		known bool
	}{
		{v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, dir, true, true},
		{v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, dir, true, true},
		{v1.Platform{OS: "linux", Architecture: "s390x"}, dir, true, true},
		{v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, dir, false, true}, // its handler is disabled
		{v1.Platform{OS: "linux", Architecture: "riscv64"}, dir, false, true},
		{v1.Platform{OS: "windows", Architecture: "amd64"}, dir, false, true},
		{v1.Platform{OS: "linux", Architecture: "riscv64"}, filepath.Join(dir, "unmounted"), true, false},
		{v1.Platform{OS: "linux", Architecture: foreign}, t.TempDir(), true, false}, // no status file: not mounted
	} {
		known, err := CanRun(c.p, c.dir)
		if (err == nil) != c.ok || known != c.known {
			t.Errorf("CanRun(%s, %s) = %v, %v; want ok %v, known %v", &c.p, c.dir, known, err, c.ok, c.known)
		}
		if err != nil && !errors.Is(err, ErrNoEmulator) {
			t.Errorf("CanRun(%s): %v is not ErrNoEmulator", &c.p, err)
		}
	}
}

// TestHostBinfmt asks this machine's own kernel: its architecture always
// runs, and where qemu's aarch64 handler is registered, so does arm64.
func TestHostBinfmt(t *testing.T) {
	if known, err := CanRun(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, BinfmtDir); err != nil || !known {
		t.Fatalf("this machine's own platform: %v, %v", known, err)
	}
	if _, err := os.Stat(filepath.Join(BinfmtDir, "qemu-aarch64")); err == nil && runtime.GOARCH == "amd64" {
		if _, err := CanRun(v1.Platform{OS: "linux", Architecture: "arm64"}, BinfmtDir); err != nil {
			t.Errorf("qemu-aarch64 is registered, yet: %v", err)
		}
	}
}
