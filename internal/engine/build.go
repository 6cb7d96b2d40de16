// Package build turns a Dockerfile and a context into an image: it plans the
// stages, runs each stage's instructions over a private root directory, and
// writes one layer per file-changing instruction.
package engine

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/kilnbuild/kiln/internal/buildcontext"
	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/dockerfile"
	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/option"
	"github.com/kilnbuild/kiln/internal/record"
	"github.com/kilnbuild/kiln/internal/registry"
	"github.com/kilnbuild/kiln/internal/rootfs"
	"github.com/kilnbuild/kiln/internal/sandbox"
	"github.com/kilnbuild/kiln/internal/snapshot"
)

// BaseImages is a store of base images by manifest digest, as warm-cache
// and kaniko's warmer write them (cache.BaseDir).
type BaseImages interface {
	// ByDigest returns the image stored under manifest digest h.
	ByDigest(h v1.Hash) (v1.Image, error)
	// ByName returns the freshest image stored under a reference for a
	// platform, and when it was stored.
	ByName(ref string, p v1.Platform) (v1.Image, time.Time, error)
}

// Options says what to build. Paths are host paths.
type Options struct {
	// Dockerfile is the Dockerfile's path (absolute, relative to the working
	// directory, or relative to the context) or an http(s) URL.
	Dockerfile string
	// Context is the build context: a directory, or any URI fetch-context
	// accepts (tar://, tar://stdin, git, https), fetched into the work
	// directory first.
	Context string
	// ContextSubPath is the sub-directory of the context to use.
	ContextSubPath string
	// ContextRecord is fetch-context's record of a local context; empty
	// means context.json beside the context directory, if there.
	ContextRecord string
	// Git are the --git options for git contexts.
	Git buildcontext.GitOptions
	// Stdin serves tar://stdin.
	Stdin io.Reader
	// Getenv serves GIT_TOKEN, GIT_USERNAME and GIT_PASSWORD.
	Getenv func(string) string
	// BuildArgs are --build-arg values (KEY=VALUE or KEY).
	BuildArgs []string
	// Target is the stage to build; empty means the last. AlsoBuild are
	// more stages to build with it (kaniko v1.28's --target a,b).
	Target    string
	AlsoBuild []string
	// SkipUnusedStages builds only the stages the target needs.
	SkipUnusedStages bool
	// Labels are extra KEY=VALUE labels set on the final image.
	Labels []string
	// Platform is the target platform (os/arch[/variant]); empty means the host's.
	Platform string
	// Reproducible fixes every timestamp (SOURCE_DATE_EPOCH or the epoch).
	Reproducible bool
	// Isolation is how RUN runs: "chroot" (a private root directory,
	// namespaces), "in-place" (kaniko's model: Root is this container's own
	// file system), or "auto"/"" (in-place only in a container that cannot
	// create namespaces).
	Isolation Isolation
	// UserNS is how chroot isolation maps ids (ParseUserNS); the zero
	// value is auto.
	UserNS UserNS
	// RunNetwork is chroot isolation's RUN network; "" is auto.
	RunNetwork RunNetwork
	// KanikoDir is kiln's own directory (--kaniko-dir: credentials,
	// certificates); in place it is never emptied or unpacked over.
	KanikoDir string
	// Root is the in-place root; empty means "/".
	Root string
	// Force allows in-place isolation outside a container.
	Force bool
	// IgnorePaths are left out of snapshots (and, in place, never emptied
	// or unpacked over).
	IgnorePaths []string
	// IgnoreVarRun leaves /var/run alone in place.
	IgnoreVarRun bool
	// Cleanup empties the in-place root at the end of the build (--cleanup);
	// PreCleanup before it.
	Cleanup, PreCleanup bool
	// Materialize leaves the in-place root as the target image has it even
	// when every layer came from the cache.
	Materialize bool
	// DryRun prints the plan and builds nothing (the result has no image).
	DryRun bool
	// PrintPlan prints the plan and builds (KANIKO_PRINT_PLAN).
	PrintPlan bool
	// ImageFormat forces the image's media types: "docker" or "oci"; empty
	// follows the base image.
	ImageFormat string
	// Annotations are set on the image's manifest.
	Annotations map[string]string

	// inContainer replaces sandbox.InContainer in tests; binfmtDir replaces
	// sandbox.BinfmtDir.
	inContainer func() bool
	binfmtDir   string
	// fetched is the remote context, fetched once for every platform.
	fetched *fetched
	// keepRoots leaves the stage roots in place until Close, for tests
	// that look at them.
	keepRoots bool
	// SnapshotMode is how RUN changes are detected; "" is full.
	SnapshotMode snapshot.Mode
	// Secrets are the build secrets RUN --mount=type=secret can use, by id.
	Secrets map[string]Secret
	// Cache turns the layer cache on; CacheStore holds it.
	Cache      bool
	CacheStore cache.Store
	// CacheCopyLayers and CacheRunLayers say which instructions are cached.
	CacheCopyLayers, CacheRunLayers bool
	// BaseImages are the base images warm-cache stored (--cache-dir);
	// nil means none.
	BaseImages BaseImages
	// SingleSnapshot writes one layer per stage, at its end.
	SingleSnapshot bool
	// Compression and CompressionLevel configure new layers.
	Compression      layer.Compression
	CompressionLevel int
	// WorkDir holds stage roots and layer files; it is emptied by the build.
	WorkDir string
	// ImageFSExtractRetry retries unpacking a base image.
	ImageFSExtractRetry int
	// Registry pulls base images and --from images.
	Registry *registry.Client
	// Upload, when set, is given each layer of the target image as it
	// starts being written (a *layer.Growing), to push its blob while the
	// build goes on; Build returns once these uploads have ended. Execute
	// sets it to upload to the first destination, whose push then finds
	// the blobs there.
	Upload func(context.Context, v1.Layer) error
	// HTTPClient downloads ADD URLs and remote Dockerfiles; nil means a default.
	HTTPClient *http.Client
	// LookupEnv reads the environment (--build-arg KEY, SOURCE_DATE_EPOCH).
	LookupEnv func(string) (string, bool)
	// Logger receives progress.
	Logger *slog.Logger
	// RunStdout and RunStderr, when set, receive what RUN prints, line by
	// line as printed (secrets masked); unset, RUN's lines are log records
	// with their stream's name.
	RunStdout, RunStderr io.Writer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Result is a finished build.
type Result struct {
	// Image is the target stage's image.
	Image v1.Image
	// Digest is the image's manifest digest.
	Digest v1.Hash
	// Materials are the images the build read, by digest.
	Materials []record.Material
	// Dockerfile is the Dockerfile's location and sha256.
	Dockerfile record.File
	// Context is the context's record (from fetch-context, the fetch, or
	// computed for a local directory).
	Context *buildcontext.Record
	// StartedOn is when the build began.
	StartedOn time.Time
	// Index, for a build of several platforms, is the image index of
	// Platforms' images (Image is then nil and Digest is the index's);
	// Manifests describe them for the build record.
	Index     v1.ImageIndex
	Platforms []*Result
	Manifests []record.Manifest
	// platform is the platform this result was built for.
	platform v1.Platform

	cleanup func()
}

// Close removes the build's work files, which back the image's new layers:
// call it once the image has been delivered.
func (r *Result) Close() {
	if r == nil {
		return
	}
	for _, p := range r.Platforms {
		p.Close()
	}
	if r.cleanup != nil {
		r.cleanup()
		r.cleanup = nil
	}
}

// Build runs the build o describes and returns the target stage's image.
// Nothing is written outside o.WorkDir. The caller must Close the result.
func Build(ctx context.Context, o Options) (*Result, error) {
	b, err := newBuilder(o)
	if err != nil {
		return nil, err
	}
	if err := b.prepare(ctx); err != nil {
		b.cleanup()
		return nil, err
	}
	return b.finish(ctx)
}

// finish builds what b prepared and returns its result, or cleans up.
func (b *builder) finish(ctx context.Context) (*Result, error) {
	res, err := b.build(ctx)
	if err != nil {
		b.cleanup()
		return nil, err
	}
	// The roots are not read again: remove them alongside the output.
	if !b.o.keepRoots {
		b.rootsGone = b.workDir.removeRoots(b.log)
	}
	res.cleanup, res.platform = b.cleanup, b.platform
	return res, nil
}

type builder struct {
	o        Options
	log      *slog.Logger
	ctxDir   *buildcontext.Context
	df       *dockerfile.Dockerfile
	dfPath   string // the Dockerfile's path or URL, and its text
	dfSrc    []byte
	plan     *dockerfile.Plan
	args     *dockerfile.BuildArgs
	platform v1.Platform
	now      time.Time
	epoch    *time.Time // fixed time for --reproducible
	work     string     // this build's directory: workDir's path
	workDir  *workDir
	stages   map[int]*stage
	images   map[string]*fsroot.Root // --from image ref -> unpacked root
	// roots are the roots opened, closed at the end.
	roots []*fsroot.Root
	// fromImages are the --from images pulled so far, bases the FROM
	// images (by reference and platform).
	fromImages map[string]v1.Image
	bases      map[string]v1.Image
	// layerTops index the layers read so far (unpacked or indexed, so
	// checked), by digest: a stage on a base another stage read does not
	// read it again to tell what it touches (see unapplied).
	layerTops map[v1.Hash]*pathIndex
	http      *http.Client
	// secrets are the secret values read so far, hidden in RUN output.
	secrets redactor
	// materials are the images pulled, for the build record.
	materials []record.Material
	// ctxRecord describes the context; ctxDigest, when set, delivers it
	// (a local context's digest, computed alongside the build).
	ctxRecord *buildcontext.Record
	ctxDigest <-chan *buildcontext.Record
	started   time.Time
	// iso is the build's isolation: where stage roots are, how RUN runs.
	iso isolation
	// rootsGone waits for the roots' removal started when the build ended.
	rootsGone func()
	// userns, in chroot isolation, is the user namespace RUN runs in;
	// nil runs it with the host's ids. usernsDone says it was decided.
	userns     *sandbox.UserNS
	usernsDone bool
	// net, in chroot isolation with slirp4netns, is the network namespace
	// every RUN joins, made at the first RUN.
	net *sandbox.Net
	// ignore lists paths snapshots skip (and, in place, Clear and Unpack).
	ignore *rootfs.IgnoreList
	// network is RUN's network (sandbox.Network*); slirp the slirp4netns
	// binary it uses.
	network, slirp string
	// cacheWG tracks cache pushes running alongside the build.
	cacheWG sync.WaitGroup
	// uploads push the target image's layers while they are written.
	uploads *layerUploads
	// times are each stage's times by phase (stage index); curTimes the
	// stage's being built.
	times    map[int]*stageTimes
	curTimes *stageTimes
	// Resolved from the options, which the engine never writes: the
	// context directory (after any fetch and --context-sub-path), the
	// in-place root ("/" by default; "" in chroot isolation), whether the
	// layer cache is on, and the environment lookup.
	ctxPath   string
	ctxRoot   *fsroot.Root // the context's handle, until ctxDir holds it
	root      string
	cache     bool
	lookupEnv func(string) (string, bool)
}

func newBuilder(o Options) (*builder, error) {
	b := &builder{o: o, log: o.Logger, stages: map[int]*stage{}, images: map[string]*fsroot.Root{}, fromImages: map[string]v1.Image{}, bases: map[string]v1.Image{}, layerTops: map[v1.Hash]*pathIndex{}, http: o.HTTPClient, started: time.Now().UTC()}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.http == nil {
		b.http = &http.Client{Timeout: 30 * time.Minute}
	}
	b.ctxPath, b.root, b.cache, b.lookupEnv = o.Context, o.Root, o.Cache, o.LookupEnv
	if b.lookupEnv == nil {
		b.lookupEnv = func(string) (string, bool) { return "", false }
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	b.now = now().UTC()
	if o.Reproducible {
		t := time.Unix(0, 0).UTC()
		if s, ok := b.lookupEnv("SOURCE_DATE_EPOCH"); ok && s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("SOURCE_DATE_EPOCH %q: not a number of seconds", s)
			}
			t = time.Unix(n, 0).UTC()
		}
		b.epoch = &t
		b.now = t
	}
	var err error
	if b.platform, err = ParsePlatform(o.Platform); err != nil {
		return nil, option.New("Platform", "", err)
	}
	if o.WorkDir == "" {
		return nil, errors.New("build: no work directory")
	}
	if o.Cache && o.CacheStore == nil {
		return nil, option.Errorf("Cache", "", "no cache store")
	}
	if o.Cache && o.SingleSnapshot { // the option layer warns
		b.cache = false
	}
	if err := os.MkdirAll(o.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating work directory: %w", err)
	}
	if b.workDir, err = newWorkDir(o.WorkDir, b.log); err != nil {
		return nil, fmt.Errorf("creating work directory: %w", err)
	}
	b.work = b.workDir.path
	if err := b.setIsolation(); err != nil {
		b.cleanup()
		return nil, err
	}
	return b, nil
}

// stepImage reports whether this binary runs from a kiln step image.
func stepImage() bool {
	exe, err := os.Executable()
	return err == nil && (strings.HasPrefix(exe, "/kaniko/") || strings.HasPrefix(exe, "/ko-app/"))
}

func (b *builder) isContainer() bool {
	if b.o.inContainer != nil {
		return b.o.inContainer()
	}
	return sandbox.InContainer()
}

// setIsolation chooses chroot or in-place isolation and builds the ignore
// list.
func (b *builder) setIsolation() error {
	b.ignore = rootfs.NewIgnoreList(b.o.IgnorePaths...)
	inPlace := false
	switch b.o.Isolation {
	case IsolationChroot:
	case IsolationInPlace:
		inPlace = true
	case "", IsolationAuto:
		// In place only as a step image (the binary under /kaniko or ko's
		// /ko-app) in a container that cannot sandbox: never a developer's
		// own container by surprise.
		inPlace = b.isContainer() && !sandbox.CanChroot() && stepImage()
	default:
		return option.Errorf("Isolation", strconv.Quote(string(b.o.Isolation)), "want auto, chroot or in-place")
	}
	if err := b.setNetwork(inPlace); err != nil {
		return err
	}
	if !inPlace {
		b.iso = privateRoots{b}
		return nil
	}
	if b.o.UserNS.chosen() && b.o.UserNS.Mode != UserNSNone {
		return option.Errorf("UserNS", b.o.UserNS.String(), "needs chroot isolation")
	}
	if !b.o.Force && !b.isContainer() {
		return option.Errorf("Isolation", string(IsolationInPlace), "it replaces the file system it runs on and this does not look like a container: refusing (force it with option Force, or use chroot isolation)")
	}
	if b.root == "" {
		b.root = "/"
	}
	for _, p := range []string{"/proc", "/sys", "/dev"} {
		b.ignore.Add(p)
	}
	if b.o.IgnoreVarRun {
		b.ignore.Add("/var/run")
		b.ignore.Add("/run")
	}
	if b.root == "/" {
		// Host paths are image paths: keep kiln's own files, its binary,
		// the context and every mount (workspaces, secrets, hosts files).
		if !filepath.IsAbs(b.o.WorkDir) {
			return fmt.Errorf("in-place isolation needs an absolute work directory, not %s", b.o.WorkDir)
		}
		b.ignore.Add(b.o.WorkDir)
		if filepath.IsAbs(b.o.KanikoDir) {
			b.ignore.Add(b.o.KanikoDir)
		}
		if exe, err := os.Executable(); err == nil {
			b.ignore.Add(filepath.Dir(exe))
		}
		// The -debug image's shell, as in kaniko: a job's script goes on
		// using it after the build replaced the file system.
		b.ignore.Add("/busybox")
		if ctxDir := strings.TrimPrefix(b.o.Context, "dir://"); filepath.IsAbs(ctxDir) {
			b.ignore.Add(ctxDir)
		}
		mps, err := rootfs.MountPoints("/proc/self/mountinfo")
		if err != nil {
			return fmt.Errorf("reading mount points: %w", err)
		}
		for _, mp := range mps {
			b.ignore.Add(mp)
		}
	}
	// The system's CA certificates are about to go: load them now.
	x509.SystemCertPool()
	fs, err := fsroot.Open(b.root, fsroot.WithProtector(b.ignore))
	if err != nil {
		return err
	}
	b.roots = append(b.roots, fs)
	b.iso = liveRoot{b: b, root: &stageRoot{dir: b.root, fs: fs, live: b.ignore}}
	b.log.Info("in-place isolation: the build replaces this container's file system", "root", b.root, "ignored", strings.Join(b.ignore.Paths(), ","))
	return nil
}

// setNetwork chooses RUN's network.
func (b *builder) setNetwork(inPlace bool) error {
	mode := b.o.RunNetwork
	if inPlace {
		switch mode {
		case "", RunNetworkAuto, RunNetworkHost:
			b.network = sandbox.NetworkHost
			return nil
		}
		return option.Errorf("RunNetwork", string(mode), "needs chroot isolation: in place, RUN has this container's network")
	}
	switch mode {
	case "", RunNetworkAuto:
		if p, err := exec.LookPath("slirp4netns"); err == nil {
			b.network, b.slirp = sandbox.NetworkSlirp, p
			return nil
		}
		b.network = sandbox.NetworkHost
	case RunNetworkHost:
		b.network = sandbox.NetworkHost
	case RunNetworkPrivate:
		b.network = sandbox.NetworkNone
	case RunNetworkSlirp:
		p, err := exec.LookPath("slirp4netns")
		if err != nil {
			return option.New("RunNetwork", string(RunNetworkSlirp), err)
		}
		b.network, b.slirp = sandbox.NetworkSlirp, p
	default:
		return option.Errorf("RunNetwork", strconv.Quote(string(mode)), "want auto, host, private or slirp4netns")
	}
	return nil
}

// runUserNS returns chroot isolation's user namespace, made at the first
// RUN (one for the whole build, checked against the file system holding
// the stage roots); nil when there is none.
func (b *builder) runUserNS() (*sandbox.UserNS, error) {
	if !b.usernsDone {
		ns, err := b.newUserNS()
		if err != nil {
			return nil, err
		}
		b.userns, b.usernsDone = ns, true
	}
	return b.userns, nil
}

// runNet returns the network namespace RUNs reach out through
// slirp4netns in, made at the first RUN that needs it (one for the whole
// build).
func (b *builder) runNet() (*sandbox.Net, error) {
	if b.net == nil {
		n, err := sandbox.NewSlirpNet(b.slirp, b.work)
		if err != nil {
			return nil, fmt.Errorf("RUN network %s: %w", RunNetworkSlirp, err)
		}
		b.net = n
	}
	return b.net, nil
}

// newUserNS makes the user namespace --userns asks for, or returns nil
// and logs why there is none.
func (b *builder) newUserNS() (*sandbox.UserNS, error) {
	if b.o.UserNS.Mode == UserNSNone {
		b.log.Warn("chroot isolation without a user namespace (--userns=none): root in a RUN is the host's root with Docker's default capabilities, confined by the sandbox's mount, pid, ipc and uts namespaces")
		return nil, nil
	}
	m := sandbox.DefaultIDMap()
	if b.o.UserNS.Map != nil {
		m = *b.o.UserNS.Map
	}
	ns, err := sandbox.NewUserNS(m, "")
	if err == nil {
		if err = ns.Check(b.work); err != nil {
			ns.Close()
		}
	}
	if err != nil {
		if b.o.UserNS.chosen() {
			return nil, option.New("UserNS", b.o.UserNS.String(), err)
		}
		b.log.Warn("chroot isolation without a user namespace: this kernel or file system does not allow one here, so root in a RUN is the host's root with Docker's default capabilities, confined by the sandbox's namespaces; pass --userns=required to refuse to build without one", "reason", err.Error())
		return nil, nil
	}
	b.log.Debug("RUN runs in a user namespace", "ids", m.String())
	return ns, nil
}

func (b *builder) cleanup() {
	b.uploads.stop()
	b.cacheWG.Wait()
	b.net.Close()
	b.userns.Close()
	for _, r := range b.roots {
		r.Close()
	}
	b.roots = nil
	b.ctxRoot.Close()
	b.ctxDir.Close()
	if b.rootsGone != nil {
		b.rootsGone()
	}
	if err := b.workDir.remove(); err != nil {
		b.log.Warn("removing work directory", "dir", b.work, "error", err)
	}
}

// ParsePlatform parses os/arch[/variant]; empty means the host platform.
func ParsePlatform(s string) (v1.Platform, error) { return registry.ParsePlatform(s) }

// fetchContext fetches a remote context into the work directory, as the
// fetch-context step would, and applies --context-sub-path.
func (b *builder) fetchContext(ctx context.Context) error {
	src := b.o.Context
	if isRemote(src) {
		f := b.o.fetched // fetched once for every platform
		if f == nil {
			var err error
			if f, err = fetchRemote(ctx, b.o, filepath.Join(b.work, "context"), b.http, b.log); err != nil {
				return err
			}
		}
		b.ctxRecord = f.rec
		return b.openContext(f.dir)
	}
	dir, err := buildcontext.Dir(src)
	if err != nil {
		return err
	}
	// fetch-context leaves its record beside the context directory.
	recPath := b.o.ContextRecord
	if recPath == "" {
		recPath = filepath.Join(filepath.Dir(filepath.Clean(dir)), "context.json")
	}
	if data, err := os.ReadFile(recPath); err == nil {
		var rec buildcontext.Record
		if json.Unmarshal(data, &rec) == nil && rec.SHA256 != "" {
			b.ctxRecord = &rec
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return option.New("Context", strconv.Quote(src), err)
	}
	if err := b.openContext(abs); err != nil {
		return err
	}
	if b.ctxRecord == nil {
		// The context's digest (for the build record) reads every file
		// of it, through a handle of its own: alongside the build, which
		// only reads the context too.
		if r, err := b.ctxRoot.OpenRoot(""); err == nil {
			ch := make(chan *buildcontext.Record, 1)
			b.ctxDigest = ch
			go func() {
				defer r.Close()
				var rec *buildcontext.Record
				if d, err := buildcontext.CanonicalDigestOf(r); err == nil {
					rec = &buildcontext.Record{Source: r.Path(), SHA256: d}
				}
				ch <- rec
			}()
		}
	}
	return nil
}

// openContext opens the context directory dir, and the directory
// --context-sub-path names inside it, as the handle every later read of
// the context goes through.
func (b *builder) openContext(dir string) error {
	r, err := buildcontext.OpenContextDir(dir, b.o.ContextSubPath)
	if err != nil {
		return err
	}
	b.ctxRoot, b.ctxPath = r, r.Path()
	return nil
}

// fetched is a remote context fetched into a directory.
type fetched struct {
	dir string // the context directory, before --context-sub-path
	rec *buildcontext.Record
}

// isRemote says whether a --context value must be fetched.
func isRemote(src string) bool {
	return strings.Contains(src, "://") && !strings.HasPrefix(src, "dir://")
}

// fetchRemote fetches o.Context into dest, as the fetch-context step would
// (which checks --context-sub-path; each platform's build opens it).
func fetchRemote(ctx context.Context, o Options, dest string, hc *http.Client, log *slog.Logger) (*fetched, error) {
	rec, err := buildcontext.Fetch(ctx, buildcontext.FetchOptions{
		Source: o.Context, Dest: dest, SubPath: o.ContextSubPath, Git: o.Git, Stdin: o.Stdin,
		Getenv: o.Getenv, HTTPClient: hc, Retries: 3, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	log.Info("fetched context", "source", rec.Source, "commit", rec.Commit, "sha256", rec.SHA256)
	return &fetched{dir: dest, rec: rec}, nil
}

// prepare fetches the context, reads the Dockerfile and plans the build,
// checking that this machine can run the RUN instructions of the stages
// it will build: nothing is built yet.
func (b *builder) prepare(ctx context.Context) error {
	if err := b.fetchContext(ctx); err != nil {
		return err
	}
	dfPath, dfSrc, wd, err := b.readDockerfile(ctx)
	if err != nil {
		return err
	}
	b.dfPath, b.dfSrc = dfPath, dfSrc
	b.ctxDir, err = buildcontext.OpenRoot(b.ctxRoot, b.dfPath, wd)
	b.ctxRoot = nil // the context has it now (or closed it)
	wd.Close()
	if err != nil {
		return err
	}
	if b.df, err = dockerfile.Parse(displayName(b.dfPath), strings.NewReader(string(b.dfSrc))); err != nil {
		return err
	}
	b.args = dockerfile.NewBuildArgs(b.o.BuildArgs, b.lookupEnv)
	hostPlatform, _ := ParsePlatform("")
	b.plan, err = b.df.Plan(dockerfile.PlanOptions{
		BuildArgs: b.args, Target: b.o.Target, AlsoBuild: b.o.AlsoBuild, SkipUnusedStages: b.o.SkipUnusedStages,
		TargetPlatform: b.platform, BuildPlatform: hostPlatform,
	})
	if err != nil {
		return err
	}
	if b.o.SkipUnusedStages {
		if err := b.requireOnbuildStages(ctx); err != nil {
			return err
		}
	}
	if b.o.DryRun || b.o.PrintPlan {
		b.printPlan()
	}
	if err := b.resolveBases(ctx); err != nil {
		return err
	}
	return b.checkEmulation()
}

// build builds the stages prepare planned.
func (b *builder) build(ctx context.Context) (*Result, error) {
	if b.o.DryRun {
		return &Result{StartedOn: b.started}, nil
	}
	dfPath, src := b.dfPath, b.dfSrc
	if err := b.iso.begin(); err != nil {
		return nil, err
	}
	if b.epoch == nil {
		// A reproducible build's layers may be in the registry already,
		// which only the push's existence checks would skip.
		b.uploads = newLayerUploads(ctx, b.o.Upload, b.plan, b.log)
	}
	var last *stage
	for _, ps := range b.plan.Stages {
		if !ps.Build {
			b.log.Info("skipping unused stage", "stage", stageLabel(ps))
			continue
		}
		b.log.Info("building stage", "stage", stageLabel(ps), "from", ps.Base)
		times, began := b.timesOf(ps.Index), time.Now()
		st, err := b.buildStage(ctx, ps)
		b.curTimes = nil
		if err != nil {
			return nil, err
		}
		b.log.Info("stage summary", append([]any{"stage", stageLabel(ps)}, times.summary(time.Since(began))...)...)
		b.stages[ps.Index] = st
		if ps.Index == b.plan.Target {
			last = st
		}
	}
	if err := b.iso.end(ctx, last); err != nil {
		return nil, err
	}
	// Cache pushes go on alongside the output; Close waits for them.
	if unused := b.args.Unused(); len(unused) > 0 {
		b.log.Warn("build args were not consumed", "args", strings.Join(unused, ","))
	}
	img, err := b.finalImage(last.img)
	if err != nil {
		return nil, err
	}
	b.uploads.wait()
	d, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("computing image digest: %w", err)
	}
	sum := sha256.Sum256(src)
	return &Result{
		Image: img, Digest: d, Materials: record.SortMaterials(b.materials), Context: b.contextRecord(), StartedOn: b.started,
		Dockerfile: record.File{Path: displayName(dfPath), SHA256: "sha256:" + hex.EncodeToString(sum[:])},
	}, nil
}

// contextRecord is the context's record, waiting for its digest when that
// is being computed.
func (b *builder) contextRecord() *buildcontext.Record {
	if b.ctxDigest != nil {
		b.ctxRecord, b.ctxDigest = <-b.ctxDigest, nil
	}
	return b.ctxRecord
}

// printPlan logs the stages --dryrun would build, with their instructions.
func (b *builder) printPlan() {
	for _, ps := range b.plan.Stages {
		if !ps.Build {
			b.log.Info("plan: skip stage", "stage", stageLabel(ps))
			continue
		}
		b.log.Info("plan: build stage", "stage", stageLabel(ps), "from", ps.Base, "target", ps.Index == b.plan.Target)
		for _, cmd := range ps.Commands {
			b.log.Info("plan: "+sourceText(cmd), "stage", stageLabel(ps))
		}
	}
}

// finalImage applies --image-format and --annotation to the target's image.
func (b *builder) finalImage(img v1.Image) (v1.Image, error) {
	var err error
	if b.o.ImageFormat != "" {
		if img, err = convertFormat(img, b.o.ImageFormat); err != nil {
			return nil, option.New("ImageFormat", string(b.o.ImageFormat), err)
		}
	}
	if len(b.o.Annotations) > 0 {
		img = mutate.Annotations(img, b.o.Annotations).(v1.Image)
	}
	return img, nil
}

func stageLabel(s *dockerfile.Stage) string {
	if s.Name != "" {
		return s.Name
	}
	return strconv.Itoa(s.Index)
}

func displayName(p string) string {
	if wd, err := os.Getwd(); err == nil {
		if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
			return r
		}
	}
	return p
}

// readDockerfile finds the Dockerfile as kaniko does: a URL, an existing
// path, or a path relative to the context. A path inside the context or
// the working directory (a checkout, as in GitLab's and the Task's) is
// resolved inside that tree: a hostile context's Dockerfile linked to a
// file outside it is not there. It returns the working directory too, the
// other tree the ignore file beside the Dockerfile is read in.
func (b *builder) readDockerfile(ctx context.Context) (path string, src []byte, wd *fsroot.Root, err error) {
	df := b.o.Dockerfile
	if df == "" {
		df = "Dockerfile"
	}
	if strings.HasPrefix(df, "http://") || strings.HasPrefix(df, "https://") {
		data, err := b.download(ctx, df, 1<<20)
		if err != nil {
			return "", nil, nil, option.New("Dockerfile", df, err)
		}
		return df, data, nil, nil
	}
	wdPath, err := os.Getwd()
	if err == nil {
		wd, err = fsroot.Open(wdPath)
	}
	if err != nil {
		return "", nil, nil, option.New("Dockerfile", df, err)
	}
	defer func() {
		if err != nil {
			wd.Close()
			wd = nil
		}
	}()
	candidates := []string{df}
	if !filepath.IsAbs(df) {
		candidates = append(candidates, filepath.Join(b.ctxPath, df))
	}
	var refused error // a candidate that is there but no regular file
	for _, c := range candidates {
		data, err := fsroot.ReadFileIn(c, buildcontext.MaxFileSize, b.ctxRoot, wd)
		switch {
		case err == nil:
			abs, _ := filepath.Abs(c)
			return abs, data, wd, nil
		case errors.Is(err, fs.ErrNotExist):
		case errors.Is(err, fsroot.ErrNotRegular):
			if refused == nil {
				refused = err
			}
		default:
			return "", nil, nil, option.New("Dockerfile", c, err)
		}
	}
	if refused != nil {
		return "", nil, nil, option.New("Dockerfile", df, refused)
	}
	return "", nil, nil, option.Errorf("Dockerfile", df, "no such file (looked in the working directory and the context %s)", b.ctxPath)
}

// download fetches url, refusing bodies over limit bytes.
func (b *builder) download(ctx context.Context, url string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", redactURL(url), resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("GET %s: larger than %d bytes", redactURL(url), limit)
	}
	return data, nil
}

// fromImage pulls a --from image once per build, for the cache key and
// for the copy alike.
func (b *builder) fromImage(ctx context.Context, ref string, platform v1.Platform) (v1.Image, error) {
	if img, ok := b.fromImages[ref]; ok {
		return img, nil
	}
	defer b.clock(phasePull)()
	img, err := b.o.Registry.PullPlatform(ctx, ref, platform)
	if err != nil {
		return nil, err
	}
	b.fromImages[ref] = img
	b.material(ref, img, "copy")
	return img, nil
}

// material records an image the build read.
func (b *builder) material(ref string, img v1.Image, use string) {
	if d, err := img.Digest(); err == nil {
		b.materials = append(b.materials, record.Material{Ref: ref, Digest: d.String(), Use: use})
	}
}
