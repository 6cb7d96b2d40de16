package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"

	"github.com/kilnbuild/kiln/internal/dockerfile"
)

// refAnnotation names a base image in the cache directory's layout.
const refAnnotation = "org.opencontainers.image.ref.name"

// createdAnnotation records when warm-cache stored an image.
const createdAnnotation = "dev.kiln.cache.created"

// WarmOptions configure Warm.
type WarmOptions struct {
	// Images are the references to store.
	Images []string
	// Dockerfile, when set, adds the base images its FROM lines name.
	Dockerfile string
	// BuildArgs expand ARGs used in FROM.
	BuildArgs []string
	// LookupEnv serves --build-arg KEY.
	LookupEnv func(string) (string, bool)
	// Dir is the cache directory (an OCI layout).
	Dir string
	// TTL is how long a stored image stays fresh; Force replaces it anyway.
	TTL   time.Duration
	Force bool
	// Platform selects from image indexes.
	Platform v1.Platform
	// Pull fetches images.
	Pull interface {
		PullPlatform(ctx context.Context, ref string, p v1.Platform) (v1.Image, error)
	}
	Logger *slog.Logger
	Now    func() time.Time
}

// fullName normalises a reference to the name stored in the layout.
func fullName(ref string) string {
	r, err := name.ParseReference(ref)
	if err != nil {
		return ref
	}
	return r.Name()
}

// Warm stores base images, by digest and named by reference, in the
// cache directory's OCI layout for build --cache-dir.
func Warm(ctx context.Context, o WarmOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	refs := append([]string(nil), o.Images...)
	if o.Dockerfile != "" {
		more, err := dockerfileBases(o)
		if err != nil {
			return err
		}
		refs = append(refs, more...)
	}
	if len(refs) == 0 {
		return errors.New("no image to warm: give --image or --dockerfile")
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return fmt.Errorf("--cache-dir %s: %w", o.Dir, err)
	}
	p, err := layout.FromPath(o.Dir)
	if err != nil {
		if p, err = layout.Write(o.Dir, empty.Index); err != nil {
			return fmt.Errorf("--cache-dir %s: %w", o.Dir, err)
		}
	}
	for _, ref := range refs {
		full := fullName(ref)
		if !o.Force {
			if created, ok := storedAt(p, full); ok && !expired(created, o.TTL, now(o.Now)) {
				log.Info("already in the cache directory", "image", full)
				continue
			}
		}
		img, err := o.Pull.PullPlatform(ctx, ref, o.Platform)
		if err != nil {
			return fmt.Errorf("--image %s: %w", ref, err)
		}
		d, err := img.Digest()
		if err != nil {
			return err
		}
		err = p.ReplaceImage(img, match.Annotation(refAnnotation, full), layout.WithAnnotations(map[string]string{
			refAnnotation: full, createdAnnotation: now(o.Now).UTC().Format(time.RFC3339),
		}))
		if err != nil {
			return fmt.Errorf("storing %s: %w", ref, err)
		}
		log.Info("stored base image", "image", full, "digest", d.String())
	}
	return nil
}

func storedAt(p layout.Path, full string) (time.Time, bool) {
	idx, err := p.ImageIndex()
	if err != nil {
		return time.Time{}, false
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return time.Time{}, false
	}
	for _, d := range m.Manifests {
		if d.Annotations[refAnnotation] == full {
			t, err := time.Parse(time.RFC3339, d.Annotations[createdAnnotation])
			return t, err == nil
		}
	}
	return time.Time{}, false
}

// dockerfileBases lists the images a Dockerfile's FROM lines pull.
func dockerfileBases(o WarmOptions) ([]string, error) {
	f, err := os.Open(o.Dockerfile)
	if err != nil {
		return nil, fmt.Errorf("--dockerfile: %w", err)
	}
	defer f.Close()
	df, err := dockerfile.Parse(o.Dockerfile, f)
	if err != nil {
		return nil, err
	}
	plan, err := df.Plan(dockerfile.PlanOptions{
		BuildArgs: dockerfile.NewBuildArgs(o.BuildArgs, o.LookupEnv), TargetPlatform: o.Platform, BuildPlatform: o.Platform,
	})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range plan.Stages {
		if s.BaseStage < 0 && !strings.EqualFold(s.Base, "scratch") {
			out = append(out, s.Base)
		}
	}
	return out, nil
}

// BaseImages returns a lookup of base images warm-cache stored in dir, for
// build --cache-dir. Images older than ttl are not used; a missing
// directory finds nothing.
func BaseImages(dir string, ttl time.Duration) func(ref string) (v1.Image, bool) {
	return func(ref string) (v1.Image, bool) {
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			return nil, false
		}
		p, err := layout.FromPath(dir)
		if err != nil {
			return nil, false
		}
		full := fullName(ref)
		created, ok := storedAt(p, full)
		if !ok || expired(created, ttl, time.Now()) {
			return nil, false
		}
		idx, err := p.ImageIndex()
		if err != nil {
			return nil, false
		}
		m, err := idx.IndexManifest()
		if err != nil {
			return nil, false
		}
		for _, d := range m.Manifests {
			if d.Annotations[refAnnotation] == full {
				img, err := idx.Image(d.Digest)
				return img, err == nil
			}
		}
		return nil, false
	}
}

// ReadOnly wraps a store so nothing is pushed to it (--no-push-cache).
type ReadOnly struct{ Store }

// Put implements Store by doing nothing.
func (ReadOnly) Put(context.Context, string, Entry) error { return nil }
