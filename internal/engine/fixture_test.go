package engine

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/registry"
)

// fixture is an in-process registry holding base images, and a way to run
// builds against it.
type fixture struct {
	t      *testing.T
	reg    string
	client *registry.Client
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureOn(t, imagetest.Registry(t))
}

// newFixtureOn is a fixture on the registry at host.
func newFixtureOn(t *testing.T, host string) *fixture {
	t.Helper()
	f := &fixture{t: t, reg: host}
	var err error
	f.client, err = registry.New(registry.Options{InsecureRegistries: []string{f.reg}, Platform: v1.Platform{OS: "linux", Architecture: "amd64"}})
	if err != nil {
		t.Fatal(err)
	}
	f.push("base:oci", imagetest.Image(t, true, nil, imagetest.BaseFiles()))
	f.push("base:docker", imagetest.Image(t, false, nil, imagetest.BaseFiles()))
	f.push("busybox:1", imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	return f
}

// push stores img in the fixture's registry under repo:tag.
func (f *fixture) push(ref string, img v1.Image) string {
	f.t.Helper()
	full := f.reg + "/" + ref
	r, err := name.ParseReference(full, name.Insecure)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		f.t.Fatal(err)
	}
	return full
}

// buildSpec is one build: a Dockerfile, context files and option tweaks.
type buildSpec struct {
	dockerfile string
	files      map[string]string // context files; "dir/" makes a directory
	opts       func(*Options)
	env        map[string]string
	ctx        context.Context // nil: context.Background()
}

// run builds s. REG/ in the Dockerfile is replaced by the registry's host.
func (f *fixture) run(s buildSpec) (*Result, error) {
	f.t.Helper()
	o, ctx := f.options(s)
	res, err := Build(ctx, o)
	if err == nil {
		f.t.Cleanup(res.Close)
	}
	return res, err
}

// options writes s's Dockerfile and context and returns the options that
// build it.
func (f *fixture) options(s buildSpec) (Options, context.Context) {
	f.t.Helper()
	dir := f.t.TempDir()
	df := strings.ReplaceAll(s.dockerfile, "REG/", f.reg+"/")
	write(f.t, dir, "Dockerfile", df)
	for p, c := range s.files {
		write(f.t, dir, p, c)
	}
	o := Options{
		Dockerfile: filepath.Join(dir, "Dockerfile"),
		Context:    dir,
		WorkDir:    f.t.TempDir(),
		Registry:   f.client,
		Isolation:  "chroot",
		Platform:   "linux/amd64",
		Now:        func() time.Time { return time.Unix(1750000000, 0) },
		LookupEnv: func(k string) (string, bool) {
			v, ok := s.env[k]
			return v, ok
		},
	}
	if s.opts != nil {
		s.opts(&o)
	}
	ctx := s.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	return o, ctx
}

// mustRun builds s and returns the image's files and config.
func (f *fixture) mustRun(s buildSpec) (map[string]imagetest.Entry, *v1.ConfigFile, v1.Image) {
	f.t.Helper()
	res, err := f.run(s)
	if err != nil {
		f.t.Fatalf("build: %v", err)
	}
	cf, err := res.Image.ConfigFile()
	if err != nil {
		f.t.Fatal(err)
	}
	return imagetest.Flatten(f.t, res.Image), cf, res.Image
}

func write(t *testing.T, dir, p, content string) {
	t.Helper()
	full := filepath.Join(dir, p)
	if strings.HasSuffix(p, "/") {
		if err := os.MkdirAll(full, 0o755); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func layerCompression(s string) layer.Compression { return layer.Compression(s) }

func pushIndex(t *testing.T, ref string, idx v1.ImageIndex) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
}

func sortStrings(s []string) { sort.Strings(s) }
