// Package options binds the build step's command-line flags (kaniko's
// executor flags, names and aliases) to kiln's engine options. It is the
// only package that knows about pflag.
package buildopt

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/buildcontext"
	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/engine"
	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/output"
	"github.com/kilnbuild/kiln/internal/record"
	"github.com/kilnbuild/kiln/internal/registry"
	"github.com/kilnbuild/kiln/internal/snapshot"
)

// Build holds the build step's flag values.
type Build struct {
	Dockerfile, Context, ContextSubPath, Bucket string
	Destinations                                []string
	NoPush, NoPushCache                         bool
	TarPath, OCILayoutPath                      string
	DigestFile, ImageNameWithDigestFile         string
	ImageNameTagWithDigestFile                  string
	BuildArgs, Labels                           []string
	Target                                      string
	SkipUnusedStages                            bool
	CustomPlatform                              string
	SnapshotMode                                string
	SingleSnapshot, UseNewRun, Reproducible     bool
	IgnoreVarRun                                bool
	IgnorePaths                                 []string
	Cleanup, Force                              bool
	KanikoDir                                   string
	Cache                                       bool
	CacheRepo, CacheDir                         string
	CacheTTL                                    time.Duration
	CacheCopyLayers, CacheRunLayers             bool
	CompressedCaching                           bool
	Compression                                 string
	CompressionLevel                            int
	Registry                                    options.RegistryFlags
	PushRetry, ImageFSExtractRetry              int
	PushIgnoreImmutableTagErrors                bool
	PushByDigest                                bool
	Profile                                     string
	SkipPushPermissionCheck                     bool
	Git                                         string
	ForceBuildMetadata                          bool
	Annotations                                 []string
	ImageFormat                                 string
	DryRun, PreserveContext, Materialize        bool
	PreCleanup                                  bool
	Secrets                                     []string
	BuildRecord                                 string
	ContextRecord                               string
	Isolation                                   string
	UserNS                                      string
	RunNetwork                                  string
	Log                                         options.LogFlags
	envErr                                      error // an invalid KANIKO_* boolean
	// Environ is the step's environment, for the FF_KANIKO_* flags.
	Environ []string
	// PrintPlan is KANIKO_PRINT_PLAN: the plan is logged, then built.
	PrintPlan bool
	// parsed holds the typed settings Validate parsed, for Job.
	parsed *settings
}

// AddFlags registers kaniko's executor flags on fs. Environment variables
// kaniko reads (KANIKO_NO_PUSH, KANIKO_DIR, KANIKO_REGISTRY_MIRROR,
// KANIKO_REGISTRY_MAP) give defaults, read through getenv.
func (b *Build) AddFlags(fs *pflag.FlagSet, getenv func(string) string) {
	fs.StringVarP(&b.Dockerfile, "dockerfile", "f", "Dockerfile", "Path to the Dockerfile: absolute, relative to the working directory or the context, or an http(s) URL.")
	fs.StringVarP(&b.Context, "context", "c", "/workspace/", "Build context: a directory, dir://, tar://path (.tar, .tar.gz, .tar.zst), tar://stdin, git://host/repo.git#ref#commit, an http(s) .git URL, or an https tarball (#sha256= pin).")
	fs.StringVar(&b.ContextSubPath, "context-sub-path", "", "Sub-directory of the context to use as the context.")
	fs.StringVarP(&b.Bucket, "bucket", "b", "", "Legacy GCS bucket context: the context is gs://BUCKET/context.tar.gz (or BUCKET itself when it has a scheme).")
	fs.MarkHidden("bucket")
	fs.StringArrayVarP(&b.Destinations, "destination", "d", nil, "Image reference to push to; repeatable. All get the same digest.")
	fs.BoolVar(&b.NoPush, "no-push", envBool(getenv, "KANIKO_NO_PUSH", &b.envErr), "Do not push the image (env KANIKO_NO_PUSH).")
	fs.BoolVar(&b.NoPushCache, "no-push-cache", false, "Use the layer cache but do not add to it.")
	fs.StringVar(&b.Profile, "profile", getenv("KILN_PROFILE"), "Write Go CPU and heap profiles of the build (cpu.pprof, heap.pprof, for go tool pprof) into this directory (env KILN_PROFILE).")
	fs.BoolVar(&b.PushByDigest, "push-by-digest", false, "Push to each destination's repository by digest only, setting no tag (as BuildKit's push-by-digest): for images the index step joins into one index.")
	fs.StringVar(&b.TarPath, "tar-path", "", "Also write the image as a tarball that docker load reads, tagged with the destinations.")
	fs.StringVar(&b.TarPath, "tarPath", "", "Deprecated alias of --tar-path.")
	fs.MarkHidden("tarPath")
	fs.StringVar(&b.OCILayoutPath, "oci-layout-path", "", "Also write the image into this OCI image layout directory.")
	fs.StringVar(&b.DigestFile, "digest-file", "", "Write the image digest (sha256:..., no newline) to this file.")
	fs.StringVar(&b.ImageNameWithDigestFile, "image-name-with-digest-file", "", "Write repo@digest, one line per destination, to this file.")
	fs.StringVar(&b.ImageNameTagWithDigestFile, "image-name-tag-with-digest-file", "", "Write repo:tag@digest, one line per destination, to this file.")
	fs.StringArrayVar(&b.BuildArgs, "build-arg", nil, "Build argument KEY=VALUE, or KEY to take the value from the environment; repeatable.")
	fs.StringVar(&b.Target, "target", "", "Stage to build (default: the last); a comma-separated list builds each listed stage, the first being the image delivered (kaniko v1.28).")
	fs.BoolVar(&b.SkipUnusedStages, "skip-unused-stages", true, "Build only the stages the target depends on (as BuildKit and kaniko v1.28; =false builds every stage up to the target).")
	fs.StringArrayVar(&b.Labels, "label", nil, "Label KEY=VALUE to set on the image; repeatable.")
	fs.StringVar(&b.CustomPlatform, "custom-platform", "", "Platform os/arch[/variant] of base images and the result (default: this machine's); a comma-separated list builds each and pushes an image index.")
	fs.StringVar(&b.CustomPlatform, "customPlatform", "", "Deprecated alias of --custom-platform.")
	fs.MarkHidden("customPlatform")
	fs.StringVar(&b.SnapshotMode, "snapshot-mode", "full", "How RUN changes are found: full (every content or metadata change, by inode change time), redo (mtime, size, mode, owner) or time (mtime).")
	fs.StringVar(&b.SnapshotMode, "snapshotMode", "full", "Deprecated alias of --snapshot-mode.")
	fs.MarkHidden("snapshotMode")
	fs.BoolVar(&b.SingleSnapshot, "single-snapshot", false, "Write one layer per stage, at its end.")
	fs.BoolVar(&b.UseNewRun, "use-new-run", false, "Accepted for kaniko compatibility; kiln's RUN detection is always the new one.")
	fs.BoolVar(&b.Reproducible, "reproducible", false, "Fix all timestamps (SOURCE_DATE_EPOCH, or the epoch) so equal inputs give equal digests.")
	fs.BoolVar(&b.IgnoreVarRun, "ignore-var-run", true, "In place, leave /var/run (and /run) alone and out of snapshots.")
	fs.BoolVar(&b.IgnoreVarRun, "whitelist-var-run", true, "Deprecated alias of --ignore-var-run.")
	fs.MarkHidden("whitelist-var-run")
	fs.StringArrayVar(&b.IgnorePaths, "ignore-path", nil, "Path to leave out of snapshots (and, in place, never emptied or unpacked over); repeatable.")
	fs.BoolVar(&b.Cleanup, "cleanup", envBool(getenv, "KANIKO_CLEANUP", &b.envErr), "In place, empty the file system at the end of the build (env KANIKO_CLEANUP; kiln always removes its work directory).")
	fs.BoolVar(&b.PreCleanup, "pre-cleanup", envBool(getenv, "KANIKO_PRE_CLEANUP", &b.envErr), "In place, empty the file system before the build (env KANIKO_PRE_CLEANUP).")
	fs.BoolVar(&b.PreserveContext, "preserve-context", envBool(getenv, "KANIKO_PRESERVE_CONTEXT", &b.envErr), "Accepted (env KANIKO_PRESERVE_CONTEXT): kiln never empties or overwrites the context in place.")
	fs.BoolVar(&b.Materialize, "materialize", false, "In place, leave the file system as the target image has it even when every layer came from the cache.")
	b.PrintPlan = envBool(getenv, "KANIKO_PRINT_PLAN", &b.envErr)
	fs.BoolVar(&b.DryRun, "dryrun", false, "Print the build plan (stages and instructions) and stop: nothing is built or pushed.")
	fs.StringArrayVar(&b.Annotations, "annotation", nil, "KEY=VALUE annotation on the image's manifest; repeatable.")
	fs.StringVar(&b.ImageFormat, "image-format", "", "Media types of the image: docker or oci (default: the base image's; FROM scratch gives oci).")
	fs.BoolVar(&b.Force, "force", false, "Allow in-place isolation outside a container.")
	kdir := getenv("KANIKO_DIR")
	if kdir == "" {
		kdir = "/kaniko"
	}
	fs.StringVar(&b.KanikoDir, "kaniko-dir", kdir, "kiln's own directory (env KANIKO_DIR): .docker/config.json is looked up there; when set, work files go there too.")
	fs.BoolVar(&b.Cache, "cache", false, "Use the layer cache: RUN (and with --cache-copy-layers COPY/ADD) layers are looked up by key and stored.")
	fs.StringVar(&b.CacheRepo, "cache-repo", "", "Cache repository (default: <first destination's repository>/cache), or oci:/path for an on-disk OCI layout.")
	fs.StringVar(&b.CacheDir, "cache-dir", "/cache", "Directory of base images warm-cache (or kaniko's warmer) stored, used with --cache.")
	fs.DurationVar(&b.CacheTTL, "cache-ttl", 336*time.Hour, "How long cache entries and warmed base images stay valid.")
	fs.BoolVar(&b.CacheCopyLayers, "cache-copy-layers", false, "Cache COPY and ADD layers too.")
	fs.BoolVar(&b.CacheRunLayers, "cache-run-layers", true, "Cache RUN layers.")
	fs.BoolVar(&b.CompressedCaching, "compressed-caching", true, "Accepted for kaniko compatibility: kiln keeps every layer compressed on disk, never in memory.")
	fs.StringVar(&b.Compression, "compression", "gzip", "Layer compression: gzip or zstd (zstd needs an OCI base).")
	fs.IntVar(&b.CompressionLevel, "compression-level", -1, "Compression level (-1: the default).")
	b.Registry.AddFlags(fs, getenv)
	fs.IntVar(&b.PushRetry, "push-retry", 0, "Retries for each push, with exponential backoff from 1s.")
	fs.IntVar(&b.ImageFSExtractRetry, "image-fs-extract-retry", 0, "Retries for extracting a base image.")
	fs.BoolVar(&b.PushIgnoreImmutableTagErrors, "push-ignore-immutable-tag-errors", false, "Treat the registries' known immutable-tag errors (Artifact Registry, ECR) as success.")
	fs.BoolVar(&b.SkipPushPermissionCheck, "skip-push-permission-check", false, "Do not check, before building, that every destination accepts a push.")
	fs.StringVar(&b.Git, "git", "", "Git context options: branch=,single-branch=,recurse-submodules=,depth=,insecure-skip-tls=.")
	fs.BoolVar(&b.ForceBuildMetadata, "force-build-metadata", false, "Deprecated (kaniko v1.28): accepted with a warning; kiln commits layers as BuildKit does.")
	fs.StringVar(&b.BuildRecord, "build-record", "", "Write the build record (JSON: images, digests, Dockerfile, context, base images, masked build args, platform, times) here; default: build.json beside --digest-file, or inside --oci-layout-path; \"-\" for none.")
	fs.StringVar(&b.ContextRecord, "context-record", "", "fetch-context's record of the context, for the build record, when it is not context.json beside the context.")
	fs.StringArrayVar(&b.Secrets, "secret", nil, "Build secret for RUN --mount=type=secret: id=ID,src=PATH or id=ID,env=VAR; repeatable. Never written to layers, history or logs.")
	fs.StringVar(&b.Isolation, "isolation", "auto", "How the build is isolated: chroot (a private root directory; RUN in mount and pid namespaces), in-place (kaniko's model: the container's own / is the image root; needs no capability), or auto (in-place only in a container that cannot create namespaces).")
	fs.StringVar(&b.RunNetwork, "run-network", "auto", "Chroot isolation: RUN's network: auto (slirp4netns where it is on PATH, else host), host (this host's network, its loopback included), private (loopback only) or slirp4netns (out through NAT, never this host's loopback). In place RUN has the container's network.")
	fs.StringVar(&b.UserNS, "userns", "auto", "Chroot isolation: run RUN in a user namespace, its root id-mapped, so that root in a RUN is not root on the host: auto (where the kernel allows it, else a warning), required (the default mapping, or fail), none, or HOSTID[:SIZE] (the host ids image ids 0.. map to; required).")
	b.Log.AddFlags(fs)
}

// parseSecrets parses --secret values.
func parseSecrets(values []string) (map[string]engine.Secret, error) {
	out := map[string]engine.Secret{}
	for _, v := range values {
		var id string
		var s engine.Secret
		for _, kv := range strings.Split(v, ",") {
			k, val, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("--secret %q: want id=ID,src=PATH or id=ID,env=VAR", v)
			}
			switch k {
			case "id":
				id = val
			case "src", "source":
				s.File = val
			case "env":
				s.Env = val
			case "type":
				if val != "file" && val != "env" {
					return nil, fmt.Errorf("--secret %q: type must be file or env", v)
				}
			default:
				return nil, fmt.Errorf("--secret %q: unknown key %q", v, k)
			}
		}
		if id == "" {
			return nil, fmt.Errorf("--secret %q: no id", v)
		}
		if (s.File == "") == (s.Env == "") {
			if s.File == "" && s.Env == "" {
				s.Env = id // BuildKit: id alone means the environment variable of that name
			} else {
				return nil, fmt.Errorf("--secret %q: give src or env, not both", v)
			}
		}
		out[id] = s
	}
	return out, nil
}

// envBool reads a boolean environment variable as kaniko does
// (strconv.ParseBool); an invalid value is kept in *bad for Validate.
func envBool(getenv func(string) string, name string, bad *error) bool {
	v := getenv(name)
	if v == "" {
		return false
	}
	b, err := strconv.ParseBool(v)
	if err != nil && *bad == nil {
		*bad = fmt.Errorf("invalid value %q for the %s environment variable: want true or false", v, name)
	}
	return b
}

// Validate checks the flag values that need no I/O. Its errors name the
// flags.
func (b *Build) Validate(fs *pflag.FlagSet) error { return options.Named(b.validate(fs)) }

func (b *Build) validate(fs *pflag.FlagSet) error {
	if b.envErr != nil {
		return b.envErr
	}
	switch b.ImageFormat {
	case "", "docker", "oci":
	default:
		return fmt.Errorf("--image-format %q: want docker or oci", b.ImageFormat)
	}
	if b.ImageFormat == "docker" && b.Compression == "zstd" {
		return errors.New("--compression=zstd cannot be used with --image-format=docker: Docker's schema 2 has no zstd layer media type")
	}
	for _, a := range b.Annotations {
		if k, _, ok := strings.Cut(a, "="); !ok || k == "" {
			return fmt.Errorf("--annotation %q: want KEY=VALUE", a)
		}
	}
	if _, err := registry.ParseHelpers(b.Registry.CredentialHelpers); err != nil {
		return fmt.Errorf("--credential-helpers: %w", err)
	}
	if err := b.parseSettings(); err != nil {
		return err
	}
	if _, err := layer.ParseCompression(b.Compression); err != nil {
		return err
	}
	if b.CompressionLevel < -1 || b.CompressionLevel > 22 {
		return fmt.Errorf("--compression-level %d: want -1 to 9 (gzip) or 1 to 22 (zstd)", b.CompressionLevel)
	}
	if len(b.Destinations) == 0 && !b.NoPush {
		return errors.New("no --destination given: name one, or pass --no-push")
	}
	for _, l := range b.Labels {
		if k, _, ok := strings.Cut(l, "="); !ok || k == "" {
			return fmt.Errorf("--label %q: want KEY=VALUE", l)
		}
	}
	platforms, err := b.platforms()
	if err != nil {
		return err
	}
	if len(platforms) > 1 && b.TarPath != "" {
		return fmt.Errorf("--tar-path with --custom-platform %s: %w", b.CustomPlatform, output.ErrTarIndex)
	}
	if _, err := parseSecrets(b.Secrets); err != nil {
		return err
	}
	if _, err := buildcontext.ParseGitOptions(b.Git); err != nil {
		return err
	}
	return nil
}

// settings are the flags parsed into the engine's typed values, once, by
// Validate.
type settings struct {
	snapshot   snapshot.Mode
	isolation  engine.Isolation
	userns     engine.UserNS
	runNetwork engine.RunNetwork
}

// parseSettings parses the flags that have typed values in the engine,
// naming the flag in an error.
func (b *Build) parseSettings() error {
	var s settings
	var err error
	if s.snapshot, err = snapshot.ParseMode(b.SnapshotMode); err != nil {
		return err // names --snapshot-mode
	}
	if s.isolation, err = engine.ParseIsolation(b.Isolation); err != nil {
		return fmt.Errorf("--isolation: %w", err)
	}
	if s.userns, err = engine.ParseUserNS(b.UserNS); err != nil {
		return fmt.Errorf("--userns: %w", err)
	}
	if s.userns.Mode != engine.UserNSAuto && s.userns.Mode != engine.UserNSNone && s.isolation == engine.IsolationInPlace {
		return fmt.Errorf("--userns %s needs chroot isolation, not --isolation=in-place", b.UserNS)
	}
	if s.runNetwork, err = engine.ParseRunNetwork(b.RunNetwork); err != nil {
		return fmt.Errorf("--run-network: %w", err)
	}
	b.parsed = &s
	return nil
}

// Job turns validated flags into the engine's job. fs tells which flags were
// set explicitly; stdout and stderr receive RUN's output as it prints it,
// except with a JSON log, which gets records instead.
func (b *Build) Job(fs *pflag.FlagSet, getenv func(string) string, lookupEnv func(string) (string, bool), log *slog.Logger, stdout, stderr io.Writer) (engine.Job, error) {
	j, err := b.job(fs, getenv, lookupEnv, log, stdout, stderr)
	return j, options.Named(err)
}

func (b *Build) job(fs *pflag.FlagSet, getenv func(string) string, lookupEnv func(string) (string, bool), log *slog.Logger, stdout, stderr io.Writer) (engine.Job, error) {
	if b.parsed == nil {
		return engine.Job{}, errors.New("build options: Job before Validate")
	}
	ro, err := b.Registry.RegistryOptions(getenv, b.KanikoDir, log)
	if err != nil {
		return engine.Job{}, err
	}
	ro.PushRetry = b.PushRetry
	platforms, err := b.platforms()
	if err != nil {
		return engine.Job{}, err
	}
	if ro.Platform, err = engine.ParsePlatform(platforms[0]); err != nil {
		return engine.Job{}, fmt.Errorf("--custom-platform: %w", err)
	}
	client, err := registry.New(ro)
	if err != nil {
		return engine.Job{}, err
	}
	var dests []name.Reference
	for _, d := range b.Destinations {
		ref, err := client.ParseReference(d, true)
		if err != nil {
			return engine.Job{}, fmt.Errorf("--destination %q: %w", d, err)
		}
		dests = append(dests, ref)
	}
	gitOpts, err := buildcontext.ParseGitOptions(b.Git)
	if err != nil {
		return engine.Job{}, err
	}
	comp, _ := layer.ParseCompression(b.Compression)
	secrets, err := parseSecrets(b.Secrets)
	if err != nil {
		return engine.Job{}, err
	}
	var store cache.Store
	if b.Cache {
		if store, err = b.cacheStore(client, dests); err != nil {
			return engine.Job{}, err
		}
	}
	b.compatNotes(fs, getenv, log)
	context := b.Context
	if b.Bucket != "" {
		// kaniko's legacy --bucket: the context tarball in a GCS bucket.
		context = b.Bucket
		if !strings.Contains(context, "://") {
			context = "gs://" + strings.TrimSuffix(context, "/") + "/context.tar.gz"
		}
	}
	targets := strings.Split(b.Target, ",")
	annotations := map[string]string{}
	for _, a := range b.Annotations {
		k, v, _ := strings.Cut(a, "=")
		annotations[k] = v
	}
	var baseImages engine.BaseImages
	if b.Cache {
		// As kaniko: the warmed base images are the cache's, used with --cache.
		baseImages = cache.BaseDir{Path: b.CacheDir, TTL: b.CacheTTL}
	}
	work := filepath.Join(os.TempDir(), "kiln")
	if fs.Changed("kaniko-dir") || getenv("KANIKO_DIR") != "" || b.parsed.isolation == engine.IsolationInPlace {
		work = filepath.Join(b.KanikoDir, "work")
	}
	return engine.Job{
		Build: engine.Options{
			Dockerfile:          b.Dockerfile,
			Context:             context,
			ContextSubPath:      b.ContextSubPath,
			ContextRecord:       b.ContextRecord,
			Git:                 gitOpts,
			Stdin:               os.Stdin,
			Getenv:              getenv,
			BuildArgs:           b.BuildArgs,
			Target:              strings.TrimSpace(targets[0]),
			AlsoBuild:           trimAll(targets[1:]),
			SkipUnusedStages:    b.SkipUnusedStages,
			Labels:              b.Labels,
			Platform:            platforms[0],
			Reproducible:        b.Reproducible,
			SingleSnapshot:      b.SingleSnapshot,
			SnapshotMode:        b.parsed.snapshot,
			Isolation:           b.parsed.isolation,
			UserNS:              b.parsed.userns,
			RunNetwork:          b.parsed.runNetwork,
			KanikoDir:           b.KanikoDir,
			Force:               b.Force,
			IgnorePaths:         b.IgnorePaths,
			IgnoreVarRun:        b.IgnoreVarRun,
			Cleanup:             b.Cleanup,
			PreCleanup:          b.PreCleanup,
			Materialize:         b.Materialize,
			DryRun:              b.DryRun,
			PrintPlan:           b.PrintPlan,
			ImageFormat:         b.ImageFormat,
			Annotations:         annotations,
			Cache:               b.Cache,
			CacheStore:          store,
			CacheCopyLayers:     b.CacheCopyLayers,
			CacheRunLayers:      b.CacheRunLayers,
			BaseImages:          baseImages,
			Secrets:             secrets,
			Compression:         comp,
			CompressionLevel:    b.CompressionLevel,
			WorkDir:             work,
			ImageFSExtractRetry: b.ImageFSExtractRetry,
			Registry:            client,
			LookupEnv:           lookupEnv,
			Logger:              log,
			RunStdout:           runOut(b.Log.Format, stdout),
			RunStderr:           runOut(b.Log.Format, stderr),
		},
		Output: output.Options{
			Destinations:               dests,
			NoPush:                     b.NoPush,
			TarPath:                    b.TarPath,
			OCILayoutPath:              b.OCILayoutPath,
			DigestFile:                 b.DigestFile,
			ImageNameWithDigestFile:    b.ImageNameWithDigestFile,
			ImageNameTagWithDigestFile: b.ImageNameTagWithDigestFile,
			BuildRecord:                b.buildRecordPath(),
			IgnoreImmutableTagErrors:   b.PushIgnoreImmutableTagErrors,
			PushByDigest:               b.PushByDigest,
			BuilderOutput:              getenv("BUILDER_OUTPUT"),
		},
		Platforms:               platforms,
		SkipPushPermissionCheck: b.SkipPushPermissionCheck,
		SecretIDs:               secretIDs(secrets),
	}, nil
}

// platforms splits --custom-platform's comma-separated list, refusing a
// platform named twice; none means this machine's ("" once).
func (b *Build) platforms() ([]string, error) {
	var out []string
	seen := map[string]string{}
	for _, s := range strings.Split(b.CustomPlatform, ",") {
		s = strings.TrimSpace(s)
		if s == "" && b.CustomPlatform != "" {
			return nil, fmt.Errorf("--custom-platform %q: an empty platform in the list", b.CustomPlatform)
		}
		p, err := engine.ParsePlatform(s)
		if err != nil {
			return nil, fmt.Errorf("--custom-platform: %w", err)
		}
		if prev, ok := seen[p.String()]; ok {
			return nil, fmt.Errorf("--custom-platform %q: %s and %s are one platform", b.CustomPlatform, prev, s)
		}
		seen[p.String()] = s
		out = append(out, s)
	}
	return out, nil
}

// cacheStore builds the layer cache's store from --cache-repo.
func (b *Build) cacheStore(client *registry.Client, dests []name.Reference) (cache.Store, error) {
	var store cache.Store
	switch {
	case strings.HasPrefix(b.CacheRepo, "oci:"):
		store = &cache.Layout{Path: strings.TrimPrefix(b.CacheRepo, "oci:"), TTL: b.CacheTTL}
	default:
		repo := b.CacheRepo
		if repo == "" {
			if len(dests) == 0 {
				return nil, errors.New("--cache needs --cache-repo when there is no --destination")
			}
			repo = dests[0].Context().Name() + "/cache"
		}
		if _, err := name.NewRepository(repo); err != nil {
			return nil, fmt.Errorf("--cache-repo %q: %w", repo, err)
		}
		store = &cache.Registry{Repo: repo, TTL: b.CacheTTL, Pull: client, Push: client,
			Parse: func(s string) (name.Reference, error) { return client.ParseReference(s, true) }}
	}
	if b.NoPushCache {
		store = cache.ReadOnly{Store: store}
	}
	return store, nil
}

// buildRecordPath is --build-record, or its default.
func (b *Build) buildRecordPath() string {
	switch b.BuildRecord {
	case "-":
		return ""
	case "":
		return record.DefaultPath(b.DigestFile, b.OCILayoutPath)
	}
	return b.BuildRecord
}

func secretIDs(m map[string]engine.Secret) []string {
	var out []string
	for id := range m {
		out = append(out, id)
	}
	return out
}

// runOut is where RUN output goes for a log format: passed through, or nil
// (log records) for JSON.
func runOut(format string, w io.Writer) io.Writer {
	if strings.EqualFold(format, "json") {
		return nil
	}
	return w
}

func trimAll(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// nativeFlags are kaniko v1.28's FF_KANIKO_* feature flags whose
// behaviour kiln has always (the way the flag's default or enabled
// setting has it), ignoredFlags those that mean nothing in kiln.
var (
	nativeFlags = map[string]string{
		"FF_KANIKO_BUILDKIT_ARG_ENV_PRECEDENCE":   "an ARG after an inherited ENV is overridden by --build-arg, as BuildKit",
		"FF_KANIKO_CACHE_PROBE_AFTER_MISS":        "the cache is probed after a miss",
		"FF_KANIKO_CHOWN_ON_IMPLICIT_DIRS":        "directories COPY creates belong to --chown",
		"FF_KANIKO_COPY_AS_ROOT":                  "COPY from the context gives 0:0 unless --chown",
		"FF_KANIKO_COPY_CHMOD_ON_IMPLICIT_DIRS":   "directories COPY creates take an octal --chmod",
		"FF_KANIKO_OCI_SCRATCH_BASE":              "FROM scratch gives OCI media types",
		"FF_KANIKO_PRESERVE_HARDLINKS":            "hard links stay hard links",
		"FF_KANIKO_RELATIVE_LINK_TARGETS":         "hard link targets are relative in layers",
		"FF_KANIKO_RUN_MOUNT_BIND":                "RUN --mount=type=bind works",
		"FF_KANIKO_RUN_HONOR_GROUP":               "RUN honours USER's group and supplementary groups",
		"FF_KANIKO_SECUREJOIN_EXTRACTION":         "layers are unpacked through handles inside the root",
		"FF_KANIKO_PRESERVE_MOUNTED_PATHS":        "in place, mount points are never emptied",
		"FF_KANIKO_DEPRECATE_INTER_STAGE_RESTORE": "the context is never emptied between stages",
		"FF_KANIKO_NO_PROPAGATE_ANNOTATIONS":      "base image annotations are not copied",
		"FF_KANIKO_VOLUME_SKIP_MKDIR":             "VOLUME creates no directory",
		"FF_KANIKO_OCI_WARMER":                    "warm-cache writes an OCI layout",
		"FF_KANIKO_WARMER_CACHE_LOCK":             "concurrent warm-cache runs are safe",
		"FF_KANIKO_CLEAN_KANIKO_DIR":              "the work directory is always removed",
		"FF_KANIKO_SCOPED_DOCKERIGNORE":           "<Dockerfile>.dockerignore is honoured",
		"FF_KANIKO_EXPAND_HEREDOC":                "heredocs expand as BuildKit's",
	}
	// ignoredEnv are kaniko's variables for things kiln does not have.
	ignoredEnv = map[string]string{
		"KANIKO_TELEMETRY_ENDPOINT": "kiln exports no OpenTelemetry traces; its JSON log has the timings",
		"KANIKO_IGNORE_ASSERTIONS":  "kiln has no internal assertions to relax",
		"SNAPSHOT_TIMEOUT_DURATION": "kiln's snapshots have no timeout: they never walk more than the RUN changed",
		"SNAPSHOT_TIMEOUT":          "kiln's snapshots have no timeout: they never walk more than the RUN changed",
		"BENCHMARK_FILE":            "kiln writes no benchmark file; its JSON log has the timings",
	}
	ignoredFlags = []string{
		"FF_KANIKO_CACHE_LOOKAHEAD", "FF_KANIKO_CROSS_REPO_MOUNT", "FF_KANIKO_DISABLE_HTTP2", "FF_KANIKO_HASH_DIR_FRAMING",
		"FF_KANIKO_IGNORE_CACHED_MANIFEST", "FF_KANIKO_INFER_CROSS_STAGE_CACHE_KEY", "FF_KANIKO_PATH_SCOPED_REGISTRY_AUTH",
		"FF_KANIKO_PRECOMPILE_DOCKERIGNORE", "FF_KANIKO_REPRODUCIBLE_PRESERVE_BASE_LAYERS", "FF_KANIKO_RESOLVE_CACHE_KEY",
		"FF_KANIKO_ROLLING_CACHE_KEY", "FF_KANIKO_RUN_VIA_TINI", "FF_KANIKO_SHARED_BASE_CACHE", "FF_KANIKO_SKIP_CACHED_STAGES",
		"FF_KANIKO_SKIP_RELABEL_RECOMPRESS", "FF_KANIKO_SKIP_WRITE_WHITEOUTS", "FF_KANIKO_UNTAR_SKIP_ROOT",
	}
)

// compatNotes says, once, what kiln does with kaniko settings it accepts
// without acting on them the same way.
func (b *Build) compatNotes(fs *pflag.FlagSet, getenv func(string) string, log *slog.Logger) {
	if b.ForceBuildMetadata {
		log.Warn("--force-build-metadata is deprecated (kaniko v1.28) and changes nothing: kiln commits layers as BuildKit does")
	}
	if b.PreserveContext {
		log.Info("--preserve-context: kiln never empties or overwrites the context")
	}
	if b.UseNewRun {
		log.Debug("--use-new-run: kiln's change detection is always the fast one")
	}
	if b.Cache && b.SingleSnapshot {
		log.Warn("--single-snapshot builds one layer per stage: the layer cache is not used")
	}
	if fs.Changed("cache-dir") && !b.Cache {
		log.Info("--cache-dir is used with --cache only, as in kaniko", "cache-dir", b.CacheDir)
	}
	if b.Isolation != "in-place" && (b.Materialize || b.PreCleanup) {
		log.Debug("--materialize and --pre-cleanup concern in-place builds")
	}
	for _, kv := range b.Environ {
		name, _, _ := strings.Cut(kv, "=")
		if what, ok := ignoredEnv[name]; ok {
			log.Info("kaniko environment variable ignored", "variable", name, "why", what)
			continue
		}
		if !strings.HasPrefix(name, "FF_KANIKO_") {
			continue
		}
		if what, native := nativeFlags[name]; native {
			log.Info("kaniko feature flag: kiln does this natively", "flag", name, "behaviour", what)
			continue
		}
		if slices.Contains(ignoredFlags, name) {
			log.Info("kaniko feature flag ignored: it has no meaning in kiln", "flag", name)
			continue
		}
		log.Warn("unknown kaniko feature flag", "flag", name)
	}
}
