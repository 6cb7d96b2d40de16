package warmopt

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/registry"
)

// WarmCache holds the warm-cache step's flags (kaniko warmer's).
type WarmCache struct {
	Images, BuildArgs []string
	Dockerfile        string
	CacheDir          string
	CacheTTL          time.Duration
	Force             bool
	CustomPlatform    string
	Registry          options.RegistryFlags
	KanikoDir         string
	IfSet             bool
	Log               options.LogFlags
}

// Skip reports whether the step has nothing to do (--if-set with no image
// and no Dockerfile).
func (w *WarmCache) Skip() bool { return w.IfSet && len(w.Images) == 0 && w.Dockerfile == "" }

// AddFlags registers kaniko warmer's flags on fs.
func (w *WarmCache) AddFlags(fs *pflag.FlagSet, getenv func(string) string) {
	fs.StringArrayVarP(&w.Images, "image", "i", nil, "Image to store in the cache directory; repeatable.")
	fs.StringVarP(&w.Dockerfile, "dockerfile", "d", "", "Store the base images this Dockerfile's FROM lines name.")
	fs.StringArrayVar(&w.BuildArgs, "build-arg", nil, "Build argument for ARGs used in FROM; repeatable.")
	fs.StringVarP(&w.CacheDir, "cache-dir", "c", "/cache", "Cache directory build --cache-dir reads: one OCI layout per image, named by its digest (kaniko's format).")
	fs.DurationVar(&w.CacheTTL, "cache-ttl", 336*time.Hour, "How long a stored image stays fresh.")
	fs.BoolVar(&w.IfSet, "if-set", false, "Do nothing, successfully, when no --image or --dockerfile is given (for optional pipeline steps).")
	fs.BoolVarP(&w.Force, "force", "f", false, "Store images even when a fresh copy is there.")
	fs.StringVar(&w.CustomPlatform, "custom-platform", "", "Platform os/arch[/variant] to store (default: this machine's); a comma-separated list stores each platform's image.")
	fs.StringVar(&w.CustomPlatform, "customPlatform", "", "Alias of --custom-platform (kaniko warmer's spelling).")
	fs.MarkHidden("custom-platform")
	kdir := getenv("KANIKO_DIR")
	if kdir == "" {
		kdir = "/kaniko"
	}
	fs.StringVar(&w.KanikoDir, "kaniko-dir", kdir, "kiln's directory: .docker/config.json is looked up there.")
	w.Registry.AddFlags(fs, getenv)
	w.Log.AddFlags(fs)
}

// Options validates the flags and returns the engine's options.
func (w *WarmCache) Options(getenv func(string) string, lookupEnv func(string) (string, bool), log *slog.Logger) (cache.WarmOptions, error) {
	if len(w.Images) == 0 && w.Dockerfile == "" {
		return cache.WarmOptions{}, errors.New("give --image or --dockerfile")
	}
	// A comma-separated list stores each platform's image, for builds of
	// several platforms.
	var platforms []v1.Platform
	for _, s := range strings.Split(w.CustomPlatform, ",") {
		p, err := registry.ParsePlatform(strings.TrimSpace(s))
		if err != nil {
			return cache.WarmOptions{}, fmt.Errorf("--custom-platform: %w", err)
		}
		platforms = append(platforms, p)
	}
	platform := platforms[0]
	ro, err := w.Registry.RegistryOptions(getenv, w.KanikoDir, log)
	if err != nil {
		return cache.WarmOptions{}, err
	}
	ro.Platform = platform
	client, err := registry.New(ro)
	if err != nil {
		return cache.WarmOptions{}, err
	}
	return cache.WarmOptions{
		Images: w.Images, Dockerfile: w.Dockerfile, BuildArgs: w.BuildArgs, LookupEnv: lookupEnv,
		Dir: cache.BaseDir{Path: w.CacheDir, TTL: w.CacheTTL}, Force: w.Force, Platform: platform, MorePlatforms: platforms[1:], Pull: client, Logger: log,
	}, nil
}
