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

// TestKanikoFlags is the drop-in issue's item 6 and 9: flags and
// environment kaniko v1.28 accepts work with its meaning, or are accepted
// with a log line; nothing exits 2 that kaniko takes.
func TestKanikoFlags(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:flags"
	pushTo(t, base, imagetest.Image(t, false, nil, imagetest.BusyboxFiles(t)))
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM "+base+` AS a
RUN echo a > /a
FROM `+base+` AS b
RUN echo b > /b
FROM a AS final
COPY --from=b /b /b
`), 0o644)

	// --annotation, --image-format, deprecated and no-op flags, FF_ flags.
	dest := reg + "/kiln/flags:1"
	r := kiln(t, []string{"FF_KANIKO_COPY_AS_ROOT=1", "FF_KANIKO_RUN_VIA_TINI=1", "FF_KANIKO_MADE_UP=1"},
		"--context", ctx, "-d", dest, "--insecure", "--insecure-pull", "--annotation", "org.example/owner=team",
		"--image-format", "oci", "--force-build-metadata", "--preserve-context", "--materialize", "--pre-cleanup",
		"--push-ignore-immutable-tag-errors", "--credential-helpers", "env,google", "--use-new-run")
	if r.code != 0 {
		t.Fatalf("build failed (%d):\n%s", r.code, r.stderr)
	}
	contains(t, r.stderr, "--force-build-metadata is deprecated", "FF_KANIKO_COPY_AS_ROOT", "natively", "FF_KANIKO_RUN_VIA_TINI", "ignored", "unknown kaniko feature flag")
	img := pull(t, dest)
	m, _ := img.Manifest()
	if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.Annotations["org.example/owner"] != "team" {
		t.Errorf("manifest %s with annotations %v, want OCI with the annotation", m.MediaType, m.Annotations)
	}
	for _, l := range m.Layers {
		if !strings.HasPrefix(string(l.MediaType), "application/vnd.oci.image.layer") {
			t.Errorf("layer media type %s in an OCI image", l.MediaType)
		}
	}
	if fs := imagetest.Flatten(t, img); fs["a"].Content != "a\n" || fs["b"].Content != "b\n" {
		t.Errorf("image files %v", fs)
	}

	// --target a,b builds both, delivers the first.
	out := t.TempDir()
	r = kiln(t, nil, "--context", ctx, "--no-push", "--insecure-pull", "--target", "a,b", "--oci-layout-path", filepath.Join(out, "l"))
	if r.code != 0 {
		t.Fatalf("--target a,b (%d):\n%s", r.code, r.stderr)
	}
	contains(t, r.stderr, "stage=a", "stage=b")

	// --dryrun prints the plan and builds nothing.
	r = kiln(t, nil, "--context", ctx, "--no-push", "--insecure-pull", "--dryrun", "--digest-file", filepath.Join(out, "digest"))
	if r.code != 0 {
		t.Fatalf("--dryrun (%d):\n%s", r.code, r.stderr)
	}
	contains(t, r.stderr, "plan: build stage", "plan: RUN echo a > /a")
	mustNotExist(t, filepath.Join(out, "digest"))

	// KANIKO_NO_PUSH is parsed as kaniko does; garbage is an error.
	if r := kiln(t, []string{"KANIKO_NO_PUSH=1"}, "--context", ctx, "--insecure-pull"); r.code != 0 {
		t.Errorf("KANIKO_NO_PUSH=1 without a destination: exit %d\n%s", r.code, r.stderr)
	}
	if r := kiln(t, []string{"KANIKO_NO_PUSH=maybe"}, "--context", ctx, "--insecure-pull"); r.code == 0 || !strings.Contains(r.stderr, "KANIKO_NO_PUSH") {
		t.Errorf("KANIKO_NO_PUSH=maybe: exit %d\n%s", r.code, r.stderr)
	}
	// --image-format docker with zstd is refused, as kaniko does.
	if r := kiln(t, nil, "--context", ctx, "--no-push", "--image-format", "docker", "--compression", "zstd"); r.code != 2 {
		t.Errorf("docker + zstd: exit %d\n%s", r.code, r.stderr)
	}
	// version, and --version.
	for _, arg := range []string{"version", "--version"} {
		if r := kiln(t, nil, arg); r.code != 0 || !strings.HasPrefix(r.stdout, "kiln@") {
			t.Errorf("%s: exit %d, %q", arg, r.code, r.stdout)
		}
	}
}
