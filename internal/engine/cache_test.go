package engine

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
				{name: "unchanged", spec: buildSpec{dockerfile: cacheDockerfile, files: files},
					want: []string{"hit", "hit", "hit", "hit"},
					check: func(t *testing.T, log string, res *Result) {
						if strings.Contains(log, "extracting layer") {
							t.Error("a fully cached rebuild unpacked layers")
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
	again, log, res := cachedBuild(t, f, store, buildSpec{dockerfile: df, files: map[string]string{"in.txt": "1"}})
	if d := cmp.Diff([]string{"hit", "hit", "hit"}, again); d != "" {
		t.Errorf("rebuild:\n%s", d)
	}
	if strings.Contains(log, "extracting layer") {
		t.Error("cached multi-stage rebuild unpacked layers")
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
