package options_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/engine"
	"github.com/kilnbuild/kiln/internal/options/buildopt"
	"github.com/kilnbuild/kiln/internal/options/warmopt"
)

// kanikoTable is the compatibility target: a copy of KANIKO-FLAGS.md
// (kaniko's executor and warmer flags, Google v1.24.0 and the
// osscontainertools fork v1.28.3, and the environment the fork reads).
const kanikoTable = "testdata/kaniko-flags.md"

// section returns the text of the document from the line starting with
// from up to the first line starting with one of until.
func section(t *testing.T, doc, from string, until ...string) string {
	t.Helper()
	i := strings.Index(doc, from)
	if i < 0 {
		t.Fatalf("%s: no %q", kanikoTable, from)
	}
	rest := doc[i+len(from):]
	end := len(rest)
	for _, u := range until {
		if j := strings.Index(rest, u); j >= 0 && j < end {
			end = j
		}
	}
	return rest[:end]
}

var (
	flagToken = regexp.MustCompile("(?:^|[\\s`(,/])(--[a-zA-Z][a-zA-Z-]*|-[a-z])(?:[\\s`=,)]|$)")
	envToken  = regexp.MustCompile("`([A-Z][A-Z0-9_]*[A-Z0-9])`")
)

// flagsIn lists the flags a part of the table names, long and short.
func flagsIn(s string) []string {
	var out []string
	for _, m := range flagToken.FindAllStringSubmatch(s, -1) {
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

// testCerts writes a CA bundle and a client certificate pair, for the
// flags that read them.
func testCerts(t *testing.T) (ca, cert, key string) {
	srv := httptest.NewTLSServer(nil)
	defer srv.Close()
	dir := t.TempDir()
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	c := srv.TLS.Certificates[0]
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
	kb, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(ca, certPEM, 0o644)
	os.WriteFile(cert, certPEM, 0o644)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600)
	return ca, cert, key
}

// job parses args and env as the build step does and builds its job.
func job(t *testing.T, env map[string]string, args ...string) (engine.Job, string, error) {
	t.Helper()
	getenv := func(k string) string { return env[k] }
	fs := pflag.NewFlagSet("build", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var b buildopt.Build
	b.AddFlags(fs, getenv)
	if err := fs.Parse(args); err != nil {
		return engine.Job{}, "", err
	}
	for k, v := range env {
		b.Environ = append(b.Environ, k+"="+v)
	}
	if err := b.Validate(fs); err != nil {
		return engine.Job{}, "", err
	}
	var logs bytes.Buffer
	j, err := b.Job(fs, getenv, func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		slog.New(slog.NewTextHandler(&logs, nil)), io.Discard, io.Discard)
	return j, logs.String(), err
}

// TestKanikoExecutorTable walks every executor flag the table names
// (Google's and the fork's) and runs it, with a value kaniko takes, through
// the build step's parsing and validation into a job: none may be refused.
// Where the flag's meaning shows in the job, it is checked.
func TestKanikoExecutorTable(t *testing.T) {
	data, err := os.ReadFile(kanikoTable)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	ca, cert, key := testCerts(t)
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM scratch\n"), 0o644)
	type check func(t *testing.T, j engine.Job, logs string)
	// One kaniko invocation per flag (short forms run the long form's).
	samples := map[string]struct {
		args  []string
		check check
	}{
		"--dockerfile":       {[]string{"--dockerfile=Dockerfile"}, func(t *testing.T, j engine.Job, _ string) { want(t, j.Build.Dockerfile, "Dockerfile") }},
		"-f":                 {[]string{"-f", "Dockerfile"}, nil},
		"--context":          {[]string{"--context=dir://" + ctx}, func(t *testing.T, j engine.Job, _ string) { want(t, j.Build.Context, "dir://"+ctx) }},
		"-c":                 {[]string{"-c", ctx}, nil},
		"--context-sub-path": {[]string{"--context-sub-path=app"}, func(t *testing.T, j engine.Job, _ string) { want(t, j.Build.ContextSubPath, "app") }},
		"--bucket":           {[]string{"--bucket=my-bucket"}, func(t *testing.T, j engine.Job, _ string) { want(t, j.Build.Context, "gs://my-bucket/context.tar.gz") }},
		"-b":                 {[]string{"-b", "my-bucket"}, nil},
		"--destination": {[]string{"--destination=registry.example/app:1"}, func(t *testing.T, j engine.Job, _ string) {
			want(t, j.Output.Destinations[0].String(), "registry.example/app:1")
		}},
		"-d":                {[]string{"-d", "registry.example/app:1"}, nil},
		"--no-push":         {[]string{"--no-push"}, func(t *testing.T, j engine.Job, _ string) { wantTrue(t, j.Output.NoPush) }},
		"--no-push-cache":   {[]string{"--no-push-cache", "--cache"}, nil},
		"--tar-path":        {[]string{"--tar-path=/out/img.tar"}, func(t *testing.T, j engine.Job, _ string) { want(t, j.Output.TarPath, "/out/img.tar") }},
		"--oci-layout-path": {[]string{"--oci-layout-path=/out/layout"}, func(t *testing.T, j engine.Job, _ string) { want(t, j.Output.OCILayoutPath, "/out/layout") }},
		"--digest-file":     {[]string{"--digest-file=/dev/termination-log"}, func(t *testing.T, j engine.Job, _ string) { want(t, j.Output.DigestFile, "/dev/termination-log") }},
		"--image-name-with-digest-file": {[]string{"--image-name-with-digest-file=/out/n"}, func(t *testing.T, j engine.Job, _ string) {
			want(t, j.Output.ImageNameWithDigestFile, "/out/n")
		}},
		"--image-name-tag-with-digest-file": {[]string{"--image-name-tag-with-digest-file=/out/nt"}, func(t *testing.T, j engine.Job, _ string) {
			want(t, j.Output.ImageNameTagWithDigestFile, "/out/nt")
		}},
		"--build-arg":                        {[]string{"--build-arg=A=1,2", "--build-arg", "B"}, nil},
		"--target":                           {[]string{"--target=app,test"}, nil},
		"--skip-unused-stages":               {[]string{"--skip-unused-stages=false"}, nil},
		"--label":                            {[]string{"--label=org.example=1"}, nil},
		"--custom-platform":                  {[]string{"--custom-platform=linux/arm64"}, nil},
		"--snapshot-mode":                    {[]string{"--snapshot-mode=redo"}, nil},
		"--single-snapshot":                  {[]string{"--single-snapshot"}, func(t *testing.T, j engine.Job, _ string) { wantTrue(t, j.Build.SingleSnapshot) }},
		"--use-new-run":                      {[]string{"--use-new-run"}, nil},
		"--reproducible":                     {[]string{"--reproducible"}, nil},
		"--ignore-var-run":                   {[]string{"--ignore-var-run=false"}, nil},
		"--ignore-path":                      {[]string{"--ignore-path=/var/cache"}, nil},
		"--cleanup":                          {[]string{"--cleanup"}, nil},
		"--kaniko-dir":                       {[]string{"--kaniko-dir=/kaniko"}, nil},
		"--force":                            {[]string{"--force"}, nil},
		"--cache":                            {[]string{"--cache=true"}, func(t *testing.T, j engine.Job, _ string) { wantTrue(t, j.Build.Cache) }},
		"--cache-repo":                       {[]string{"--cache", "--cache-repo=registry.example/cache"}, nil},
		"--cache-dir":                        {[]string{"--cache", "--cache-dir=/cache"}, func(t *testing.T, j engine.Job, _ string) { wantTrue(t, j.Build.BaseImages != nil) }},
		"--cache-ttl":                        {[]string{"--cache", "--cache-ttl=24h"}, nil},
		"--cache-copy-layers":                {[]string{"--cache", "--cache-copy-layers"}, func(t *testing.T, j engine.Job, _ string) { wantTrue(t, j.Build.CacheCopyLayers) }},
		"--cache-run-layers":                 {[]string{"--cache", "--cache-run-layers=false"}, func(t *testing.T, j engine.Job, _ string) { wantTrue(t, !j.Build.CacheRunLayers) }},
		"--compressed-caching":               {[]string{"--compressed-caching=false"}, nil},
		"--compression":                      {[]string{"--compression=zstd"}, nil},
		"--compression-level":                {[]string{"--compression=gzip", "--compression-level=9"}, nil},
		"--insecure":                         {[]string{"--insecure"}, nil},
		"--skip-tls-verify":                  {[]string{"--skip-tls-verify"}, nil},
		"--insecure-pull":                    {[]string{"--insecure-pull"}, nil},
		"--skip-tls-verify-pull":             {[]string{"--skip-tls-verify-pull"}, nil},
		"--insecure-registry":                {[]string{"--insecure-registry=registry.example"}, nil},
		"--skip-tls-verify-registry":         {[]string{"--skip-tls-verify-registry=registry.example"}, nil},
		"--registry-certificate":             {[]string{"--registry-certificate=registry.example=" + ca}, nil},
		"--registry-client-cert":             {[]string{"--registry-client-cert=registry.example=" + cert + "," + key}, nil},
		"--registry-mirror":                  {[]string{"--registry-mirror=mirror.example", "--registry-mirror=mirror2.example"}, nil},
		"--registry-map":                     {[]string{"--registry-map=index.docker.io=mirror.example;quay.io=q.example/quay"}, nil},
		"--skip-default-registry-fallback":   {[]string{"--registry-mirror=mirror.example", "--skip-default-registry-fallback"}, nil},
		"--push-retry":                       {[]string{"--push-retry=3"}, nil},
		"--image-download-retry":             {[]string{"--image-download-retry=3"}, nil},
		"--image-fs-extract-retry":           {[]string{"--image-fs-extract-retry=2"}, func(t *testing.T, j engine.Job, _ string) { want(t, j.Build.ImageFSExtractRetry, 2) }},
		"--push-ignore-immutable-tag-errors": {[]string{"--push-ignore-immutable-tag-errors"}, func(t *testing.T, j engine.Job, _ string) { wantTrue(t, j.Output.IgnoreImmutableTagErrors) }},
		"--skip-push-permission-check":       {[]string{"--skip-push-permission-check"}, func(t *testing.T, j engine.Job, _ string) { wantTrue(t, j.SkipPushPermissionCheck) }},
		"--git":                              {[]string{"--git=branch=main,single-branch=true,recurse-submodules=true,insecure-skip-tls=false,depth=1"}, nil},
		"--force-build-metadata": {[]string{"--force-build-metadata"}, func(t *testing.T, _ engine.Job, logs string) {
			contains(t, logs, "--force-build-metadata is deprecated")
		}},
		"--verbosity":         {[]string{"--verbosity=debug"}, nil},
		"-v":                  {[]string{"-v", "trace"}, nil},
		"--log-format":        {[]string{"--log-format=json"}, nil},
		"--log-timestamp":     {[]string{"--log-timestamp"}, nil},
		"--whitelist-var-run": {[]string{"--whitelist-var-run=false"}, nil},
		"--snapshotMode":      {[]string{"--snapshotMode=time"}, nil},
		"--customPlatform":    {[]string{"--customPlatform=linux/amd64"}, nil},
		"--tarPath":           {[]string{"--tarPath=/out/img.tar"}, func(t *testing.T, j engine.Job, _ string) { want(t, j.Output.TarPath, "/out/img.tar") }},
		// The fork's additions.
		"--annotation":         {[]string{"--annotation=org.opencontainers.image.source=https://example.com"}, nil},
		"--secret":             {[]string{"--secret=id=token,env=HOME"}, nil},
		"--preserve-context":   {[]string{"--preserve-context"}, nil},
		"--materialize":        {[]string{"--materialize"}, nil},
		"--pre-cleanup":        {[]string{"--pre-cleanup"}, nil},
		"--dryrun":             {[]string{"--dryrun"}, func(t *testing.T, j engine.Job, _ string) { wantTrue(t, j.Build.DryRun) }},
		"--credential-helpers": {[]string{"--credential-helpers=env,google"}, nil},
		"--image-format":       {[]string{"--image-format=docker"}, nil},
	}
	executor := section(t, doc, "## Executor", "## Environment", "## Warmer")
	var named []string
	for _, line := range strings.Split(executor, "\n") {
		if strings.HasPrefix(line, "| `") {
			first := strings.SplitN(strings.TrimPrefix(line, "| "), " | ", 2)[0]
			named = append(named, flagsIn(first)...)
		}
		if strings.HasPrefix(line, "- osscontainertools:") {
			before, _, _ := strings.Cut(line, "Subcommands")
			named = append(named, flagsIn(before)...)
		}
	}
	if len(named) < 60 {
		t.Fatalf("read only %d flags from %s: %v", len(named), kanikoTable, named)
	}
	for _, f := range named {
		s, ok := samples[f]
		if !ok {
			t.Errorf("%s names %s: add a kaniko invocation of it here", kanikoTable, f)
			continue
		}
		t.Run(f, func(t *testing.T) {
			args := append([]string{"--context=" + ctx, "-d", "registry.example/app:1"}, s.args...)
			j, logs, err := job(t, nil, args...)
			if err != nil {
				t.Fatalf("kaniko's %v refused: %v", s.args, err)
			}
			if s.check != nil {
				s.check(t, j, logs)
			}
		})
	}
}

// TestKanikoEnvironmentTable sets every variable the table says the fork
// reads: each is taken as there, or named in a log line; the booleans are
// parsed as Go's strconv.ParseBool and garbage is refused, as the fork does.
func TestKanikoEnvironmentTable(t *testing.T) {
	data, err := os.ReadFile(kanikoTable)
	if err != nil {
		t.Fatal(err)
	}
	envSection := section(t, string(data), "## Environment the fork", "Paths kaniko users")
	executorEnv := section(t, string(data), "| env only:", "\n")
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM scratch\n"), 0o644)
	type check func(t *testing.T, j engine.Job, logs string)
	bools := []string{"KANIKO_NO_PUSH", "KANIKO_CLEANUP", "KANIKO_PRE_CLEANUP", "KANIKO_PRESERVE_CONTEXT", "KANIKO_PRINT_PLAN"}
	ignored := func(name string) check {
		return func(t *testing.T, _ engine.Job, logs string) { contains(t, logs, "variable="+name) }
	}
	samples := map[string]struct {
		value string
		check check
	}{
		"DOCKER_CONFIG":             {t.TempDir(), nil},
		"DOCKER_AUTH_CONFIG":        {`{"auths":{"registry.example":{"auth":"dTpw"}}}`, nil},
		"KANIKO_NO_PUSH":            {"1", func(t *testing.T, j engine.Job, _ string) { wantTrue(t, j.Output.NoPush) }},
		"KANIKO_CLEANUP":            {"true", nil},
		"KANIKO_PRE_CLEANUP":        {"t", nil},
		"KANIKO_PRESERVE_CONTEXT":   {"TRUE", nil},
		"KANIKO_DIR":                {"/kaniko", nil},
		"KANIKO_REGISTRY_MIRROR":    {"mirror.example;mirror2.example", nil},
		"KANIKO_REGISTRY_MAP":       {"index.docker.io=mirror.example", nil},
		"KANIKO_TELEMETRY_ENDPOINT": {"http://otel.example:4318", ignored("KANIKO_TELEMETRY_ENDPOINT")},
		"KANIKO_PRINT_PLAN":         {"true", func(t *testing.T, j engine.Job, _ string) { wantTrue(t, j.Build.PrintPlan && !j.Build.DryRun) }},
		"KANIKO_IGNORE_ASSERTIONS":  {"1", ignored("KANIKO_IGNORE_ASSERTIONS")},
		"SNAPSHOT_TIMEOUT_DURATION": {"10m", ignored("SNAPSHOT_TIMEOUT_DURATION")},
		"SNAPSHOT_TIMEOUT":          {"10m", ignored("SNAPSHOT_TIMEOUT")},
		"BENCHMARK_FILE":            {"/tmp/bench", ignored("BENCHMARK_FILE")},
		"BUILDER_OUTPUT":            {"/builder/outputs", func(t *testing.T, j engine.Job, _ string) { want(t, j.Output.BuilderOutput, "/builder/outputs") }},
		"GIT_TOKEN":                 {"ghp_x", nil},
		"GIT_USERNAME":              {"u", nil},
		"GIT_PASSWORD":              {"p", nil},
		"GIT_PULL_METHOD":           {"http", nil},
		"S3_ENDPOINT":               {"http://minio.example:9000", nil},
		"S3_FORCE_PATH_STYLE":       {"true", nil},
		"AZURE_STORAGE_ACCESS_KEY":  {"a2V5", nil},
		"UPSTREAM_CLIENT_TYPE":      {"gitlab-ci", nil},
		"SSL_CERT_DIR":              {"/kaniko/ssl/certs", nil},
	}
	var named []string
	for _, m := range envToken.FindAllStringSubmatch(envSection+executorEnv, -1) {
		if v := m[1]; !strings.HasPrefix(v, "FF_KANIKO") && !slices.Contains(named, v) && strings.ToUpper(v) == v && strings.Contains(v, "_") {
			named = append(named, v)
		}
	}
	if len(named) < 20 {
		t.Fatalf("read only %d variables from %s: %v", len(named), kanikoTable, named)
	}
	for _, name := range named {
		s, ok := samples[name]
		if !ok {
			t.Errorf("%s names %s: add a value kaniko takes here", kanikoTable, name)
			continue
		}
		t.Run(name, func(t *testing.T) {
			j, logs, err := job(t, map[string]string{name: s.value}, "--context="+ctx, "-d", "registry.example/app:1")
			if err != nil {
				t.Fatalf("%s=%s refused: %v", name, s.value, err)
			}
			if s.check != nil {
				s.check(t, j, logs)
			}
			if slices.Contains(bools, name) {
				if _, _, err := job(t, map[string]string{name: "yes-please"}, "--context="+ctx, "-d", "registry.example/app:1"); err == nil || !strings.Contains(err.Error(), name) {
					t.Errorf("%s=yes-please: %v, want an error naming the variable (ParseBool, as the fork)", name, err)
				}
			}
		})
	}
	// The feature flags: each one the fork has is named in the log.
	for _, m := range regexp.MustCompile(`FF_KANIKO_[A-Z_]+[A-Z]`).FindAllString(string(data), -1) {
		_, logs, err := job(t, map[string]string{m: "true"}, "--context="+ctx, "-d", "registry.example/app:1")
		if err != nil || !strings.Contains(logs, "flag="+m) {
			t.Errorf("%s: %v, not named in the log:\n%s", m, err, logs)
		}
	}
}

// TestKanikoWarmerTable walks the warmer's flags through warm-cache's
// parsing and options.
func TestKanikoWarmerTable(t *testing.T) {
	data, err := os.ReadFile(kanikoTable)
	if err != nil {
		t.Fatal(err)
	}
	warmer := section(t, string(data), "## Warmer", "---")
	ca, cert, key := testCerts(t)
	df := filepath.Join(t.TempDir(), "Dockerfile")
	os.WriteFile(df, []byte("ARG BASE=alpine\nFROM ${BASE}\n"), 0o644)
	samples := map[string][]string{
		"--image": {"--image=alpine:3"}, "-i": {"-i", "alpine:3"}, "--cache-dir": {"--cache-dir=/cache"}, "-c": {"-c", "/cache"},
		"--force": {"--force"}, "-f": {"-f"}, "--cache-ttl": {"--cache-ttl=1h"}, "--dockerfile": {"--dockerfile=" + df},
		"-d": {"-d", df}, "--build-arg": {"--dockerfile=" + df, "--build-arg=BASE=busybox"}, "--customPlatform": {"--customPlatform=linux/arm64"},
		"--insecure-pull": {"--insecure-pull"}, "--skip-tls-verify-pull": {"--skip-tls-verify-pull"},
		"--insecure-registry": {"--insecure-registry=r.example"}, "--skip-tls-verify-registry": {"--skip-tls-verify-registry=r.example"},
		"--registry-certificate": {"--registry-certificate=r.example=" + ca}, "--registry-client-cert": {"--registry-client-cert=r.example=" + cert + "," + key},
		"--registry-map": {"--registry-map=index.docker.io=m.example"}, "--registry-mirror": {"--registry-mirror=m.example"},
		"--skip-default-registry-fallback": {"--registry-mirror=m.example", "--skip-default-registry-fallback"},
		"-v":                               {"-v", "debug"}, "--verbosity": {"--verbosity=warn"}, "--log-format": {"--log-format=json"}, "--log-timestamp": {"--log-timestamp"},
	}
	named := flagsIn(warmer)
	if len(named) < 20 {
		t.Fatalf("read only %d warmer flags: %v", len(named), named)
	}
	for _, f := range named {
		args, ok := samples[f]
		if !ok {
			t.Errorf("%s names the warmer's %s: add a kaniko invocation of it here", kanikoTable, f)
			continue
		}
		t.Run(f, func(t *testing.T) {
			fs := pflag.NewFlagSet("warm-cache", pflag.ContinueOnError)
			fs.SetOutput(io.Discard)
			var w warmopt.WarmCache
			w.AddFlags(fs, func(string) string { return "" })
			if !slices.Contains(args, "--image=alpine:3") && !slices.Contains(args, "alpine:3") && !strings.Contains(strings.Join(args, " "), df) {
				args = append(args, "--image=alpine:3")
			}
			if err := fs.Parse(args); err != nil {
				t.Fatalf("kaniko's warmer %v refused: %v", args, err)
			}
			if _, err := w.Options(func(string) string { return "" }, func(string) (string, bool) { return "", false }, slog.New(slog.DiscardHandler)); err != nil {
				t.Fatalf("kaniko's warmer %v refused: %v", args, err)
			}
		})
	}
}

func want[T comparable](t *testing.T, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("got %v, want %v", got, want)
	}
}

func wantTrue(t *testing.T, ok bool) {
	t.Helper()
	if !ok {
		t.Error("the flag's meaning is not in the job")
	}
}

func contains(t *testing.T, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Errorf("log lacks %q:\n%s", sub, s)
	}
}
