package registry

import (
	"context"
	"encoding/base64"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestPullCandidates(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		ref  string
		want []string
	}{
		{"plain", Options{}, "example.com/a/b:1", []string{"example.com/a/b:1"}},
		{"mirrors for docker hub", Options{Mirrors: []string{"https://m1.example", "m2.example/prefix/"}}, "busybox:1.36",
			[]string{"m1.example/library/busybox:1.36", "m2.example/prefix/library/busybox:1.36", "busybox:1.36"}},
		{"mirrors ignored elsewhere", Options{Mirrors: []string{"m1.example"}}, "quay.io/x/y:1", []string{"quay.io/x/y:1"}},
		{"no fallback", Options{Mirrors: []string{"m1.example"}, SkipDefaultRegistryFallback: true}, "busybox@sha256:" + strings.Repeat("a", 64),
			[]string{"m1.example/library/busybox@sha256:" + strings.Repeat("a", 64)}},
		{"registry map", Options{Map: map[string][]string{"docker.io": {"reg.local/hub"}}}, "alpine:3",
			[]string{"reg.local/hub/library/alpine:3", "alpine:3"}},
		{"repository prefix map", Options{Map: map[string][]string{"gcr.io/distroless": {"reg.local/dl"}}}, "gcr.io/distroless/static:nonroot",
			[]string{"reg.local/dl/static:nonroot", "gcr.io/distroless/static:nonroot"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.o)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.pullCandidates(tt.ref)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestPullThroughMirrorMap(t *testing.T) {
	s := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer s.Close()
	host := strings.TrimPrefix(s.URL, "http://")
	img, _ := random.Image(100, 1)
	ref, _ := name.ParseReference(host + "/mirror/library/app:1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	c, _ := New(Options{Map: map[string][]string{"docker.io": {host + "/mirror"}}, InsecureRegistries: []string{host}})
	got, err := c.Pull(context.Background(), "app:1")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Errorf("pulled %s, want %s", d, want)
	}
}

func TestKeychainOrder(t *testing.T) {
	home, kaniko, explicit := t.TempDir(), t.TempDir(), t.TempDir()
	writeConfig := func(dir, user string) {
		os.MkdirAll(filepath.Join(dir, ".docker"), 0o700)
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":pw"))
		os.WriteFile(filepath.Join(dir, ".docker", "config.json"), []byte(`{"auths":{"reg.example":{"auth":"`+auth+`"}}}`), 0o600)
	}
	writeConfig(home, "home-user")
	writeConfig(kaniko, "kaniko-user")
	writeConfig(explicit, "explicit-user")
	res, _ := name.NewRegistry("reg.example")
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"HOME": home, "DOCKER_CONFIG": filepath.Join(explicit, ".docker")}, "explicit-user"},
		{map[string]string{"HOME": home}, "kaniko-user"},
	} {
		kc := &DockerConfigKeychain{Dirs: ConfigDirs(func(k string) string { return tc.env[k] }, kaniko)}
		a, err := kc.Resolve(res)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ := a.Authorization()
		if cfg.Username != tc.want {
			t.Errorf("env %v: user %q, want %q", tc.env, cfg.Username, tc.want)
		}
	}
	kc := &DockerConfigKeychain{Dirs: ConfigDirs(func(k string) string { return map[string]string{"HOME": home}[k] }, "")}
	a, _ := kc.Resolve(res)
	if cfg, _ := a.Authorization(); cfg.Username != "home-user" {
		t.Errorf("HOME fallback: %q", cfg.Username)
	}
	other, _ := name.NewRegistry("other.example")
	if a, _ := kc.Resolve(other); a != authn.Anonymous {
		t.Error("unknown registry is not anonymous")
	}
}

func TestRetry(t *testing.T) {
	var calls atomic.Int32
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= 2 {
			http.Error(w, "try later", http.StatusBadRequest)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer s.Close()
	host := strings.TrimPrefix(s.URL, "http://")
	c, _ := New(Options{InsecureRegistries: []string{host}, PushRetry: 3, RetryDelay: time.Millisecond})
	img, _ := random.Image(10, 1)
	ref, _ := c.ParseReference(host+"/r:1", true)
	if err := c.Write(context.Background(), ref, img); err != nil {
		t.Fatalf("push with retries: %v", err)
	}
	c0, _ := New(Options{InsecureRegistries: []string{host}})
	calls.Store(0)
	if err := c0.Write(context.Background(), ref, img); err == nil {
		t.Error("push without retries succeeded against a failing registry")
	}
}

func TestTransportOptionErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "x.pem")
	os.WriteFile(notPEM, []byte("nope"), 0o644)
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Certificates: map[string]string{"r": filepath.Join(dir, "missing")}}, "option Certificates r="},
		{Options{Certificates: map[string]string{"r": notPEM}}, "no PEM certificate"},
		{Options{ClientCertificates: map[string]string{"r": "onlyone"}}, "option ClientCertificates r=onlyone"},
	} {
		if _, err := New(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
}

func TestCheckRepository(t *testing.T) {
	for repo, ok := range map[string]bool{
		"team/app": true, "a.b_c/d-e": true, "a__b": true, "library/busybox": true,
		"../x": false, "a/../b": false, "a//b": false, ".hidden": false, "a/.": false, "Upper": false, "-x": false,
	} {
		if err := CheckRepository(repo); (err == nil) != ok {
			t.Errorf("CheckRepository(%q) = %v", repo, err)
		}
	}
	c, _ := New(Options{})
	if _, err := c.ParseReference("registry.example.com/../x:1", true); err == nil || !strings.Contains(err.Error(), `".."`) {
		t.Errorf("host/../x: %v", err)
	}
}

// TestStalledRegistry: a registry that accepts the connection and then
// never answers fails the push within a bounded time, naming the cause,
// after the retries asked for.
func TestStalledRegistry(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			defer c.Close() // held open, never answered
		}
	}()
	host := l.Addr().String()
	c, _ := New(Options{InsecureRegistries: []string{host}, IdleTimeout: 300 * time.Millisecond, PushRetry: 1, RetryDelay: time.Millisecond})
	img, _ := random.Image(10, 1)
	ref, _ := c.ParseReference(host+"/r:1", true)
	done := make(chan error, 1)
	go func() { done <- c.Write(context.Background(), ref, img) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("push to a stalled registry: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the push to a stalled registry hung")
	}
	if accepted.Load() < 2 {
		t.Errorf("%d connections: the push was not retried", accepted.Load())
	}
}

// TestPullRefusesAnotherPlatform asks a single-platform image and an
// index for a platform they do not have: refused, never relabelled.
func TestPullRefusesAnotherPlatform(t *testing.T) {
	s := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer s.Close()
	host := strings.TrimPrefix(s.URL, "http://")
	img, _ := random.Image(100, 1)
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	img, _ = mutate.ConfigFile(img, cf)
	single, _ := name.ParseReference(host + "/single:1")
	multi, _ := name.ParseReference(host + "/multi:1")
	if err := remote.Write(single, img); err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	if err := remote.WriteIndex(multi, idx); err != nil {
		t.Fatal(err)
	}
	c, _ := New(Options{InsecureRegistries: []string{host}, PullRetry: 3, RetryDelay: time.Hour})
	arm := v1.Platform{OS: "linux", Architecture: "arm64"}
	for _, ref := range []string{single.String(), multi.String()} {
		if _, err := c.PullPlatform(context.Background(), ref, v1.Platform{OS: "linux", Architecture: "amd64"}); err != nil {
			t.Errorf("%s for linux/amd64: %v", ref, err)
		}
		_, err := c.PullPlatform(context.Background(), ref, arm)
		if err == nil || !strings.Contains(err.Error(), "linux/arm64") {
			t.Errorf("%s for linux/arm64: %v, want a refusal naming the platform", ref, err)
		}
	}
}

func TestParsePlatform(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"linux/arm64", "linux/arm64"},
		{"linux/arm/v7", "linux/arm/v7"},
		{"arm64", "linux/arm64"},
		{"aarch64", "linux/arm64"},
		{"x86_64", "linux/amd64"},
		{"arm", "linux/arm/v7"},
		{"s390x", "linux/s390x"},
		{"linux", ""},
		{"frobnitz", ""},
		{"/arm64", ""},
	} {
		p, err := ParsePlatform(c.in)
		if c.want == "" {
			if err == nil {
				t.Errorf("%q: accepted as %s", c.in, &p)
			}
			continue
		}
		if err != nil || p.String() != c.want {
			t.Errorf("%q: %v, %v; want %s", c.in, &p, err, c.want)
		}
	}
}
