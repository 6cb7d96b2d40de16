package engine

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/registry"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// recordingStore is a cache.Store that records, in order, whether each
// lookup found an entry ("hit") or not ("miss"), as the build saw it.
type recordingStore struct {
	cache.Store
	mu     sync.Mutex
	lookup []string
}

func (r *recordingStore) Get(ctx context.Context, key string) (*cache.Entry, error) {
	e, err := r.Store.Get(ctx, key)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.lookup = append(r.lookup, "hit")
	} else {
		r.lookup = append(r.lookup, "miss")
	}
	return e, err
}

// cachedBuild builds with the cache and returns "hit"/"miss" per cached
// instruction, in order (the store's answers to the build's lookups),
// plus the whole log.
func cachedBuild(t *testing.T, f *fixture, store cache.Store, s buildSpec) ([]string, string, *Result) {
	t.Helper()
	var logs syncBuffer
	rec := &recordingStore{Store: store}
	inner := s.opts
	s.opts = func(o *Options) {
		o.Cache, o.CacheStore, o.CacheCopyLayers, o.CacheRunLayers = true, rec, true, true
		o.Reproducible = true
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		if inner != nil {
			inner(o)
		}
	}
	res, err := f.run(s)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, logs.String())
	}
	return rec.lookup, logs.String(), res
}

const cacheDockerfile = `FROM REG/busybox:1
ARG USED=a
COPY a.txt /a.txt
RUN echo "$USED" > /used && cat /a.txt > /copy
COPY . /ctx/
RUN ls /ctx > /listing
`

func TestCacheInvalidation(t *testing.T) {
	for _, storeKind := range []string{"layout", "registry"} {
		t.Run(storeKind, func(t *testing.T) {
			f := newFixture(t)
			var store cache.Store = &cache.Layout{Path: filepath.Join(t.TempDir(), "cache")}
			if storeKind == "registry" {
				store = &cache.Registry{Repo: f.reg + "/app/cache", Pull: f.client, Push: f.client,
					Parse: func(s string) (name.Reference, error) { return f.client.ParseReference(s, true) }}
			}
			files := map[string]string{"a.txt": "A", "b.txt": "B", ".dockerignore": "ignored.txt\n", "ignored.txt": "1"}
			with := func(k, v string) map[string]string {
				m := map[string]string{}
				for a, b := range files {
					m[a] = b
				}
				m[k] = v
				return m
			}
			unchangedWork := t.TempDir()
			first, _, base := cachedBuild(t, f, store, buildSpec{dockerfile: cacheDockerfile, files: files})
			if d := cmp.Diff([]string{"miss", "miss", "miss", "miss"}, first); d != "" {
				t.Fatalf("first build (-want +got):\n%s", d)
			}
			tests := []struct {
				name  string
				spec  buildSpec
				want  []string
				check func(t *testing.T, log string, res *Result)
			}{
				{name: "unchanged", spec: buildSpec{dockerfile: cacheDockerfile, files: files, opts: keepRootsIn(unchangedWork)},
					want: []string{"hit", "hit", "hit", "hit"},
					check: func(t *testing.T, log string, res *Result) {
						if got := stageRootFiles(t, unchangedWork); len(got) != 0 {
							t.Errorf("a fully cached rebuild unpacked layers into its root: %v", got)
						}
						if res.Digest != base.Digest {
							m1, _ := res.Image.RawManifest()
							m2, _ := base.Image.RawManifest()
							c1, _ := res.Image.RawConfigFile()
							c2, _ := base.Image.RawConfigFile()
							t.Errorf("cached rebuild digest %s, uncached %s\n%s\n%s\n%s\n%s", res.Digest, base.Digest, m1, m2, c1, c2)
						}
					}},
				{name: "unused build arg and ignored file", spec: buildSpec{dockerfile: cacheDockerfile, files: with("ignored.txt", "2"),
					opts: func(o *Options) { o.BuildArgs = []string{"NOT_DECLARED=x"} }},
					want: []string{"hit", "hit", "hit", "hit"}},
				{name: "context file", spec: buildSpec{dockerfile: cacheDockerfile, files: with("a.txt", "changed")},
					want: []string{"miss", "miss", "miss", "miss"}},
				{name: "late context file", spec: buildSpec{dockerfile: cacheDockerfile, files: with("b.txt", "changed")},
					want: []string{"hit", "hit", "miss", "miss"},
					check: func(t *testing.T, log string, res *Result) {
						fs := imagetest.Flatten(t, res.Image)
						if fs["ctx/b.txt"].Content != "changed" || fs["copy"].Content != "A" {
							t.Errorf("files after a partial hit: b=%q copy=%q", fs["ctx/b.txt"].Content, fs["copy"].Content)
						}
					}},
				{name: "build arg used by RUN", spec: buildSpec{dockerfile: cacheDockerfile, files: files,
					opts: func(o *Options) { o.BuildArgs = []string{"USED=b"} }},
					want: []string{"hit", "miss", "miss", "miss"}},
				{name: "Dockerfile line", spec: buildSpec{dockerfile: strings.Replace(cacheDockerfile, "> /used", ">  /used", 1), files: files},
					want: []string{"hit", "miss", "miss", "miss"}},
				{name: "base image", spec: buildSpec{dockerfile: strings.Replace(cacheDockerfile, "busybox:1", "busybox:2", 1), files: files},
					want: []string{"miss", "miss", "miss", "miss"}},
			}
			f.push("busybox:2", imagetest.Image(t, true, func(cf *v1.ConfigFile) { cf.Author = "other" }, imagetest.BusyboxFiles(t)))
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					got, log, res := cachedBuild(t, f, store, tt.spec)
					if d := cmp.Diff(tt.want, got); d != "" {
						t.Errorf("hits and misses (-want +got):\n%s", d)
					}
					if tt.check != nil {
						tt.check(t, log, res)
					}
				})
			}
		})
	}
}

func TestCacheMultiStageAndTTL(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "cache")
	store := &cache.Layout{Path: dir}
	df := "FROM REG/busybox:1 AS gen\nCOPY in.txt /in.txt\nRUN cat /in.txt > /out.txt\nFROM REG/busybox:1\nCOPY --from=gen /out.txt /final.txt\n"
	first, _, _ := cachedBuild(t, f, store, buildSpec{dockerfile: df, files: map[string]string{"in.txt": "1"}})
	if d := cmp.Diff([]string{"miss", "miss", "miss"}, first); d != "" {
		t.Fatal(d)
	}
	work := t.TempDir()
	again, _, res := cachedBuild(t, f, store, buildSpec{dockerfile: df, files: map[string]string{"in.txt": "1"}, opts: keepRootsIn(work)})
	if d := cmp.Diff([]string{"hit", "hit", "hit"}, again); d != "" {
		t.Errorf("rebuild:\n%s", d)
	}
	if got := stageRootFiles(t, work); len(got) != 0 {
		t.Errorf("a cached multi-stage rebuild unpacked layers into its roots: %v", got)
	}
	if imagetest.Flatten(t, res.Image)["final.txt"].Content != "1\n" && imagetest.Flatten(t, res.Image)["final.txt"].Content != "1" {
		t.Errorf("final.txt = %q", imagetest.Flatten(t, res.Image)["final.txt"].Content)
	}
	changed, _, res := cachedBuild(t, f, store, buildSpec{dockerfile: df, files: map[string]string{"in.txt": "2"}})
	if d := cmp.Diff([]string{"miss", "miss", "miss"}, changed); d != "" {
		t.Errorf("changed --from stage:\n%s", d)
	}
	if got := imagetest.Flatten(t, res.Image)["final.txt"].Content; got != "2" {
		t.Errorf("final.txt = %q after the change", got)
	}
	// Entries older than the TTL are not used.
	old := &cache.Layout{Path: dir, TTL: time.Hour, Now: func() time.Time { return time.Now().Add(2 * time.Hour) }}
	expired, _, _ := cachedBuild(t, f, old, buildSpec{dockerfile: df, files: map[string]string{"in.txt": "1"}})
	if d := cmp.Diff([]string{"miss", "miss", "miss"}, expired); d != "" {
		t.Errorf("expired entries:\n%s", d)
	}
}

func TestCachePushFailureIsAWarning(t *testing.T) {
	f := newFixture(t)
	client, _ := registry.New(registry.Options{})
	store := &cache.Registry{Repo: "127.0.0.1:9/cache", Pull: client, Push: client,
		Parse: func(s string) (name.Reference, error) { return name.ParseReference(s, name.Insecure) }}
	var logs syncBuffer
	_, _, res := cachedBuild(t, f, store, buildSpec{dockerfile: "FROM REG/busybox:1\nRUN echo x > /x\n", opts: func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}})
	if imagetest.Flatten(t, res.Image)["x"].Content != "x\n" {
		t.Error("build result wrong")
	}
	res.Close() // cache pushes go on alongside the output, until Close
	if log := logs.String(); !strings.Contains(log, "storing a cache layer failed") {
		t.Errorf("no warning:\n%s", log)
	}
	_ = context.Background
	_ = os.Getenv
}

// keepRootsIn builds in work and keeps the stage roots for stageRootFiles.
func keepRootsIn(work string) func(*Options) {
	return func(o *Options) { o.WorkDir, o.keepRoots = work, true }
}

// stageRootFiles is what the stage roots of the build in work hold.
func stageRootFiles(t *testing.T, work string) []string {
	t.Helper()
	roots, _ := filepath.Glob(filepath.Join(work, "build-*", "stage-*", "root"))
	if len(roots) == 0 {
		t.Fatalf("no stage roots in %s", work)
	}
	var got []string
	for _, r := range roots {
		filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
			if rel, _ := filepath.Rel(filepath.Dir(filepath.Dir(r)), p); p != r {
				got = append(got, rel)
			}
			return nil
		})
	}
	return got
}

// readCountingStore counts how often the layers of the entries it gives
// out are opened (compressed or not), and can store entries as a kiln that
// kept no TopLevel did.
type readCountingStore struct {
	cache.Store
	noTopLevel bool
	reads      atomic.Int64
}

func (s *readCountingStore) Put(ctx context.Context, key string, e cache.Entry) error {
	if s.noTopLevel {
		e.TopLevel = nil
	}
	return s.Store.Put(ctx, key, e)
}

func (s *readCountingStore) Get(ctx context.Context, key string) (*cache.Entry, error) {
	e, err := s.Store.Get(ctx, key)
	if err == nil && e.Layer != nil {
		e.Layer = &readCountingLayer{e.Layer, &s.reads}
	}
	return e, err
}

type readCountingLayer struct {
	v1.Layer
	reads *atomic.Int64
}

func (l *readCountingLayer) Compressed() (io.ReadCloser, error) {
	l.reads.Add(1)
	return l.Layer.Compressed()
}

func (l *readCountingLayer) Uncompressed() (io.ReadCloser, error) {
	l.reads.Add(1)
	return l.Layer.Uncompressed()
}

// TestCachedLayerUnread: a COPY after a cached RUN whose layer touches
// nothing the COPY writes does not read that layer at all (the cache entry
// says what is at its top), and the image holds both; a COPY into what
// the cached layer made reads it and finds the RUN's directory there; an
// entry stored without the names is read to find them.
func TestCachedLayerUnread(t *testing.T) {
	const run = "FROM REG/busybox:1\nRUN mkdir -m 700 /many && echo x > /many/f && rm /etc/group\n"
	for _, tc := range []struct {
		name       string
		copy, dest string
		noTopLevel bool
		wantReads  bool
	}{
		{name: "beside it", copy: "COPY a /a\n", dest: "a"},
		{name: "beside a deleted file's directory", copy: "COPY a /srv/a\n", dest: "srv/a"},
		{name: "into it", copy: "COPY a /many/a\n", dest: "many/a", wantReads: true},
		{name: "where it deleted a file", copy: "COPY a /etc/a\n", dest: "etc/a", wantReads: true},
		{name: "entry without its names", copy: "COPY a /a\n", dest: "a", noTopLevel: true, wantReads: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			store := &readCountingStore{Store: &cache.Layout{Path: filepath.Join(t.TempDir(), "cache")}, noTopLevel: tc.noTopLevel}
			spec := buildSpec{dockerfile: run + tc.copy, files: map[string]string{"a": "A"}, opts: func(o *Options) { o.CacheCopyLayers = false }}
			cachedBuild(t, f, store, spec)
			hits, _, res := cachedBuild(t, f, store, spec)
			reads := store.reads.Load() // before the image's layers are read here
			if d := cmp.Diff([]string{"hit"}, hits); d != "" {
				t.Fatalf("rebuild (-want +got):\n%s", d)
			}
			if got := reads > 0; got != tc.wantReads {
				t.Errorf("the cached layer was opened %d times, want it read: %v", reads, tc.wantReads)
			}
			fs := imagetest.Flatten(t, res.Image)
			if fs["many/f"].Content != "x\n" || fs[tc.dest].Content != "A" {
				t.Errorf("/many/f %q, /%s %q", fs["many/f"].Content, tc.dest, fs[tc.dest].Content)
			}
			if _, ok := fs["etc/group"]; ok {
				t.Error("/etc/group, deleted by the cached RUN, is back")
			}
			if e := fs["many"]; e.Header.Mode&0o777 != 0o700 {
				t.Errorf("/many mode %o, want the RUN's 0700", e.Header.Mode&0o777)
			}
			if tc.dest == "many/a" {
				// The COPY's layer records the directory as the RUN made it.
				ls, _ := res.Image.Layers()
				rc, _ := ls[len(ls)-1].Uncompressed()
				if e := imagetest.ReadTar(t, rc)["many"]; e.Header.Mode&0o777 != 0o700 {
					t.Errorf("the COPY layer's /many %o, want the cached RUN's 0700", e.Header.Mode&0o777)
				}
			}
		})
	}
}
