package run

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if IsSandbox() {
		os.Exit(SandboxMain())
	}
	os.Exit(m.Run())
}

// root makes a root directory holding only busybox.
func root(t *testing.T) string {
	t.Helper()
	r := t.TempDir()
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is required: %v", err)
	}
	os.MkdirAll(filepath.Join(r, "bin"), 0o755)
	os.WriteFile(filepath.Join(r, "bin", "busybox"), data, 0o755)
	for _, a := range []string{"sh", "echo", "cat", "ls", "id", "test", "sleep"} {
		os.Symlink("busybox", filepath.Join(r, "bin", a))
	}
	old := time.Unix(1600000000, 0)
	os.Chtimes(r, old, old)
	return r
}

func TestRun(t *testing.T) {
	r := root(t)
	var lines []string
	err := Run(context.Background(), Spec{
		Root: r, Args: []string{"/bin/sh", "-c", "echo one; echo two >&2; id -u; test -c /dev/null && test -e /proc/self/status && echo devices"},
		Env: []string{"PATH=/bin"}, UID: 4321, GID: 4321,
	}, Options{WorkDir: t.TempDir(), Output: func(l string) { lines = append(lines, l) }})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(lines, ","); got != "one,two,4321,devices" {
		t.Errorf("output %q", got)
	}
	// Mount points created for the run are gone, and "/" keeps its time.
	ents, _ := os.ReadDir(r)
	if len(ents) != 1 || ents[0].Name() != "bin" {
		t.Errorf("root holds %v after the run", ents)
	}
	if fi, _ := os.Stat(r); fi.ModTime().Unix() != 1600000000 {
		t.Errorf("root mtime changed to %v", fi.ModTime())
	}
}

func TestRunFailures(t *testing.T) {
	r := root(t)
	err := Run(context.Background(), Spec{Root: r, Args: []string{"/bin/sh", "-c", "echo last words; exit 42"}, Env: []string{"PATH=/bin"}},
		Options{WorkDir: t.TempDir()})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 42 || len(ee.Tail) != 1 || ee.Tail[0] != "last words" {
		t.Errorf("err = %#v", err)
	}
	err = Run(context.Background(), Spec{Root: r, Args: []string{"nosuch"}, Env: []string{"PATH=/bin"}}, Options{WorkDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "nosuch: executable file not found") {
		t.Errorf("missing program: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = Run(ctx, Spec{Root: r, Args: []string{"/bin/sleep", "30"}, Env: []string{"PATH=/bin"}}, Options{WorkDir: t.TempDir()})
	if err == nil || time.Since(start) > 10*time.Second {
		t.Errorf("cancelled run: %v after %v", err, time.Since(start))
	}
}

func TestDirectRefusesAnotherRoot(t *testing.T) {
	err := Direct(context.Background(), Spec{Root: t.TempDir(), Args: []string{"true"}}, nil, Options{})
	if err == nil || !strings.Contains(err.Error(), "runs with / as root") {
		t.Errorf("err = %v", err)
	}
}
