package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/buildcontext"
	"github.com/kilnbuild/kiln/internal/dockerfile"
	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/option"
)

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
	// Dir is the cache directory, with the TTL after which a stored image
	// is stored again.
	Dir BaseDir
	// Force stores images even when a fresh copy is there.
	Force bool
	// Platform selects from image indexes; MorePlatforms are stored too
	// (for a build of several platforms).
	Platform      v1.Platform
	MorePlatforms []v1.Platform
	// Pull fetches images.
	Pull interface {
		PullPlatform(ctx context.Context, ref string, p v1.Platform) (v1.Image, error)
	}
	Logger *slog.Logger
}

// Warm stores base images in the cache directory, in kaniko's format (see
// BaseDir), for build --cache-dir. As kaniko's warmer, an image that
// cannot be stored is a warning, and Warm fails only when none could be.
func Warm(ctx context.Context, o WarmOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(o.Dir.Path, 0o755); err != nil {
		return fmt.Errorf("base image cache %s: %w", o.Dir.Path, err)
	}
	var errs []error
	tried := 0
	for _, p := range append([]v1.Platform{o.Platform}, o.MorePlatforms...) {
		po := o
		po.Platform = p
		refs := append([]string(nil), o.Images...)
		if o.Dockerfile != "" {
			more, err := dockerfileBases(po)
			if err != nil {
				return err
			}
			refs = append(refs, more...)
		}
		refs = dedupe(refs)
		if len(refs) == 0 {
			return errors.New("no image to warm: give option Images or option Dockerfile")
		}
		for _, ref := range refs {
			tried++
			if err := warmOne(ctx, po, log, ref); err != nil {
				if ctx.Err() != nil {
					return err
				}
				log.Warn("could not store the image", "image", ref, "platform", p.String(), "error", err)
				errs = append(errs, err)
			}
		}
	}
	if len(errs) == tried {
		return fmt.Errorf("no image could be stored in %s: %w", o.Dir.Path, errors.Join(errs...))
	}
	return nil
}

func dedupe(refs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range refs {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// warmOne stores one image under its manifest digest.
func warmOne(ctx context.Context, o WarmOptions, log *slog.Logger, ref string) error {
	r, err := name.ParseReference(ref, name.WeakValidation)
	if err != nil {
		return option.New("Images", ref, err)
	}
	if d, ok := r.(name.Digest); ok && !o.Force {
		if h, err := v1.NewHash(d.DigestStr()); err == nil {
			if _, err := o.Dir.ByDigest(h); err == nil {
				log.Info("already in the cache directory", "image", ref, "digest", h.String())
				return nil
			}
		}
	}
	img, err := o.Pull.PullPlatform(ctx, ref, o.Platform)
	if err != nil {
		return option.New("Images", ref, err)
	}
	h, err := img.Digest()
	if err != nil {
		return option.New("Images", ref, err)
	}
	fresh := func() bool { _, err := o.Dir.ByDigest(h); return err == nil }
	if !o.Force && fresh() {
		log.Info("already in the cache directory", "image", ref, "digest", h.String())
		return nil
	}
	unlock, err := lockEntry(o.Dir.Path, h.String())
	if err != nil {
		return err
	}
	defer unlock()
	if !o.Force && fresh() {
		log.Info("stored by another warmer meanwhile", "image", ref, "digest", h.String())
		return nil
	}
	tmp, err := os.MkdirTemp(o.Dir.Path, ".warming-")
	if err != nil {
		return fmt.Errorf("base image cache %s: %w", o.Dir.Path, err)
	}
	defer os.RemoveAll(tmp)
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return fmt.Errorf("base image cache %s: %w", o.Dir.Path, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refAnnotation: r.Name()})); err != nil {
		return fmt.Errorf("storing %s: %w", ref, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	t := now(o.Dir.Now)
	if err := os.Chtimes(tmp, t, t); err != nil {
		return err
	}
	if err := replace(tmp, filepath.Join(o.Dir.Path, h.String())); err != nil {
		return fmt.Errorf("storing %s: %w", ref, err)
	}
	log.Info("stored base image", "image", r.Name(), "digest", h.String())
	return nil
}

// replace moves the finished entry tmp to dst in one step: an entry
// already there (expired, forced, or a kaniko v1.24 tarball) is exchanged
// for it, so a build reading dst sees the old entry or the new one, never
// neither, and then removed.
func replace(tmp, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if !errors.Is(err, unix.EEXIST) {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE); err != nil {
		return err
	}
	os.Remove(dst + ".json") // a tarball entry's manifest
	return nil               // tmp now holds the old entry; the caller removes it
}

// lockEntry takes the lock kaniko's warmer takes for a digest
// (<dir>/.warmer-locks/<digest>.lock), so warmers sharing a volume store
// each image once.
func lockEntry(dir, digest string) (func(), error) {
	ld := filepath.Join(dir, lockDir)
	if err := os.MkdirAll(ld, 0o755); err != nil {
		return nil, fmt.Errorf("base image cache %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(ld, digest+".lock"), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, fmt.Errorf("base image cache %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("base image cache %s: locking %s: %w", dir, digest, err)
	}
	return func() { f.Close() }, nil
}

// dockerfileBases lists the images a Dockerfile's FROM lines pull. A
// Dockerfile in the working directory (a checkout) is resolved inside it,
// as the build step does: a link out of it is not followed.
func dockerfileBases(o WarmOptions) ([]string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return nil, option.New("Dockerfile", o.Dockerfile, err)
	}
	src, err := fsroot.ReadFileWithin(o.Dockerfile, buildcontext.MaxFileSize, wd)
	if err != nil {
		return nil, option.New("Dockerfile", "", err)
	}
	df, err := dockerfile.Parse(o.Dockerfile, bytes.NewReader(src))
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

// ReadOnly wraps a store so nothing is pushed to it (--no-push-cache).
type ReadOnly struct{ Store }

// Put implements Store by doing nothing.
func (ReadOnly) Put(context.Context, string, Entry) error { return nil }
