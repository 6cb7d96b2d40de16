// Command warm-cache is kiln's warm-cache step: it stores base images in a
// cache directory that build --cache-dir reads, with kaniko warmer's flags.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/options/warmopt"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	fs := pflag.NewFlagSet("warm-cache", pflag.ContinueOnError)
	var o warmopt.WarmCache
	o.AddFlags(fs, os.Getenv)
	if code, done := options.Parse(fs, "Usage: warm-cache [flags]\n\nStores base images in a cache directory for build --cache-dir.", args, os.Stderr); done {
		return code
	}
	log, err := o.Log.Logger(os.Stderr, os.Getenv)
	if err == nil && o.Skip() {
		log.Info("no image to warm: nothing to do")
		return 0
	}
	var wo cache.WarmOptions
	if err == nil {
		wo, err = o.Options(os.Getenv, os.LookupEnv, log)
	}
	if err != nil {
		return options.Refuse(log, os.Stderr, "warm-cache", err)
	}
	if err := cache.Warm(ctx, wo); err != nil {
		return options.Fail(log, "warm-cache", err)
	}
	return 0
}
