package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// TestLogsAndExitCode is the drop-in issue's items 7 and 8: a failing
// RUN's exit code is the build's; RUN's output passes through as the
// command wrote it (stdout to stdout) in text and color formats, and is
// records keeping the stream's name in JSON; colour only on a terminal;
// JSON is one object per line with time, lower-case level and msg, and
// nothing else; the failure is reported once.
func TestLogsAndExitCode(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:logs"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM "+base+"\nRUN echo out-line; echo err-line >&2; exit 42\n"), 0o644)
	for _, format := range []string{"color", "text", "json"} {
		t.Run(format, func(t *testing.T) {
			r := kiln(t, nil, "--context", ctx, "--no-push", "--insecure-pull", "--log-format", format)
			if r.code != 42 {
				t.Fatalf("exit code %d, want the RUN's 42:\n%s", r.code, r.stderr)
			}
			if strings.Contains(r.stdout+r.stderr, "\x1b[") {
				t.Errorf("escape codes without a terminal:\n%q", r.stderr)
			}
			if n := strings.Count(r.stderr, "build failed"); n != 1 {
				t.Errorf("the failure is reported %d times:\n%s", n, r.stderr)
			}
			if format != "json" {
				if !strings.Contains("\n"+r.stdout, "\nout-line\n") || strings.Contains(r.stdout, "err-line") {
					t.Errorf("RUN's stdout did not pass through to stdout: %q", r.stdout)
				}
				if !strings.Contains("\n"+r.stderr, "\nerr-line\n") {
					t.Errorf("RUN's stderr did not pass through to stderr: %q", r.stderr)
				}
				return
			}
			if r.stdout != "" {
				t.Errorf("a JSON build printed on stdout: %q", r.stdout)
			}
			streams := map[string]string{}
			for _, line := range strings.Split(strings.TrimRight(r.stderr, "\n"), "\n") {
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("not a JSON object: %q", line)
				}
				lvl, _ := rec["level"].(string)
				if _, ok := rec["time"].(string); !ok || lvl != strings.ToLower(lvl) || rec["msg"] == nil {
					t.Errorf("record without time, lower-case level and msg: %q", line)
				}
				if s, ok := rec["stream"].(string); ok {
					streams[s] += rec["msg"].(string)
				}
			}
			if streams["stdout"] != "out-line" || streams["stderr"] != "err-line" {
				t.Errorf("RUN records by stream: %v", streams)
			}
		})
	}
	// NO_COLOR is honoured (a terminal cannot be tested here; the color
	// format without one must not colour either).
	r := kiln(t, []string{"NO_COLOR=1"}, "--context", ctx, "--no-push", "--insecure-pull")
	if r.code != 42 || strings.Contains(r.stderr, "\x1b[") {
		t.Errorf("NO_COLOR: exit %d, %q", r.code, r.stderr)
	}
}
