package buildopt

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

func parse(t *testing.T, env map[string]string, args ...string) (*Build, *pflag.FlagSet, error) {
	t.Helper()
	fs := pflag.NewFlagSet("build", pflag.ContinueOnError)
	var b Build
	b.AddFlags(fs, func(k string) string { return env[k] })
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	return &b, fs, b.Validate(fs)
}

func TestAliasesAndEnv(t *testing.T) {
	b, _, err := parse(t, map[string]string{"KANIKO_NO_PUSH": "true", "KANIKO_REGISTRY_MIRROR": "m1;m2", "KANIKO_DIR": "/k"},
		"--tarPath", "/o/img.tar", "--customPlatform", "linux/arm64", "--snapshotMode", "redo", "--whitelist-var-run=true",
		"-d", "r/a:1", "--destination", "r/b:2", "--build-arg", "A=1,2", "--build-arg", "B")
	if err != nil {
		t.Fatal(err)
	}
	if b.TarPath != "/o/img.tar" || b.CustomPlatform != "linux/arm64" || b.SnapshotMode != "redo" || !b.NoPush || b.KanikoDir != "/k" {
		t.Errorf("parsed %+v", b)
	}
	if d := cmp.Diff([]string{"A=1,2", "B"}, b.BuildArgs); d != "" {
		t.Errorf("build args (commas must not split): %s", d)
	}
	ro, err := b.Registry.RegistryOptions(func(string) string { return "" }, b.KanikoDir, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"m1", "m2"}, ro.Mirrors); d != "" {
		t.Errorf("split mirrors: %s", d)
	}
}

func TestRegistryFlags(t *testing.T) {
	b, _, err := parse(t, nil, "--no-push", "--registry-map", "docker.io=a.example;quay.io=b.example", "--registry-map", "docker.io=c.example",
		"--registry-certificate", "r.example=/ca.pem", "--insecure-registry", "r.example", "--image-download-retry", "3")
	if err != nil {
		t.Fatal(err)
	}
	ro, err := b.Registry.RegistryOptions(func(string) string { return "" }, "", slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string][]string{"docker.io": {"a.example", "c.example"}, "quay.io": {"b.example"}}, ro.Map); d != "" {
		t.Errorf("map: %s", d)
	}
	if ro.Certificates["r.example"] != "/ca.pem" || ro.PullRetry != 3 || ro.InsecureRegistries[0] != "r.example" {
		t.Errorf("options %+v", ro)
	}
	b, _, _ = parse(t, nil, "--no-push", "--registry-map", "nokey")
	if _, err := b.Registry.RegistryOptions(func(string) string { return "" }, "", slog.Default()); err == nil || !strings.Contains(err.Error(), "--registry-map") {
		t.Errorf("bad map: %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--no-push"}, ""},
		{[]string{}, "no --destination"},
		{[]string{"--no-push", "--ignore-var-run=false", "--ignore-path", "/x", "--isolation", "in-place"}, ""},
		{[]string{"--no-push", "--isolation", "vm"}, "--isolation"},
		{[]string{"--no-push", "--git", "depth=x"}, "--git depth=x"},
		{[]string{"--no-push", "--snapshot-mode", "fast"}, "--snapshot-mode"},
		{[]string{"--no-push", "--compression", "zstd", "--compression-level", "30"}, "--compression-level"},
		{[]string{"--no-push", "--label", "novalue"}, "--label"},
		{[]string{"--no-push", "--custom-platform", "linux"}, "--custom-platform"},
		{[]string{"--no-push", "--custom-platform", "linux/amd64, linux/arm64/v8"}, ""},
		{[]string{"--no-push", "--custom-platform", "linux/amd64,linux/arm64", "--oci-layout-path", "/o/l"}, ""},
		{[]string{"--no-push", "--custom-platform", "linux/amd64,"}, "an empty platform in the list"},
		{[]string{"--no-push", "--custom-platform", "linux/arm64,linux/amd64,linux/arm64"}, "linux/arm64 and linux/arm64 are one platform"},
		{[]string{"--no-push", "--custom-platform", "linux/amd64,linux/arm64", "--tar-path", "/o/i.tar"}, "a docker tarball cannot hold an image index"},
		{[]string{"--no-push", "--custom-platform", "linux/arm64", "--tar-path", "/o/i.tar"}, ""},
		{[]string{"--no-push", "--use-new-run", "--cleanup", "--force", "--single-snapshot"}, ""},
		{[]string{"--no-push", "--userns", "none"}, ""},
		{[]string{"--no-push", "--userns", "100000:65536", "--isolation", "chroot"}, ""},
		{[]string{"--no-push", "--userns", "0:65536"}, "--userns"},
		{[]string{"--no-push", "--userns", "100000:65536", "--isolation", "in-place"}, "needs chroot isolation"},
	}
	for _, tt := range tests {
		_, _, err := parse(t, nil, tt.args...)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
}

func TestJob(t *testing.T) {
	b, fs, err := parse(t, nil, "--context", "dir:///src", "--context-sub-path", "app", "-d", "127.0.0.1:5000/x:1", "--insecure")
	if err != nil {
		t.Fatal(err)
	}
	j, err := b.Job(fs, func(string) string { return "" }, func(string) (string, bool) { return "", false }, slog.Default(), io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Platforms) != 1 || j.Platforms[0] != "" {
		t.Errorf("platforms %q, want this machine's alone", j.Platforms)
	}
	b, fs, _ = parse(t, nil, "--no-push", "--custom-platform", "linux/amd64,linux/arm64/v8")
	if j, err := b.Job(fs, func(string) string { return "" }, func(string) (string, bool) { return "", false }, slog.Default(), io.Discard, io.Discard); err != nil || strings.Join(j.Platforms, " ") != "linux/amd64 linux/arm64/v8" || j.Build.Platform != "linux/amd64" {
		t.Errorf("two platforms: %q (%v)", j.Platforms, err)
	}
	if j.Build.Context != "dir:///src" || j.Build.ContextSubPath != "app" {
		t.Errorf("context %q sub-path %q", j.Build.Context, j.Build.ContextSubPath)
	}
	if len(j.Output.Destinations) != 1 || j.Output.Destinations[0].Context().Registry.Scheme() != "http" {
		t.Errorf("destinations %v", j.Output.Destinations)
	}
	if !strings.HasSuffix(j.Build.WorkDir, "kiln") {
		t.Errorf("work dir %q", j.Build.WorkDir)
	}
}

func TestSecrets(t *testing.T) {
	got, err := parseSecrets([]string{"id=a,src=/s/a", "id=b,env=B_VAR", "id=C"})
	if err != nil {
		t.Fatal(err)
	}
	if got["a"].File != "/s/a" || got["b"].Env != "B_VAR" || got["C"].Env != "C" {
		t.Errorf("secrets %+v", got)
	}
	for _, bad := range []string{"src=/x", "id=a,src=/x,env=Y", "id=a,color=red", "novalue"} {
		if _, err := parseSecrets([]string{bad}); err == nil || !strings.Contains(err.Error(), "--secret") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
