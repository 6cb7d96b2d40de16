// Command warm-cache is kiln's warm-cache step: it stores base images in a
// cache directory that build --cache-dir reads, with kaniko warmer's flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/logging"
	"github.com/kilnbuild/kiln/internal/options"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	fs := pflag.NewFlagSet("warm-cache", pflag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: warm-cache [flags]\n\nStores base images in a cache directory for build --cache-dir.\n\nFlags:\n%s", fs.FlagUsages())
	}
	var o options.WarmCache
	o.AddFlags(fs, os.Getenv)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "warm-cache: %v\n", err)
		return 2
	}
	log, err := logging.New(os.Stderr, logging.Options{Verbosity: o.Log.Verbosity, Format: o.Log.Format, Timestamp: o.Log.Timestamp})
	if err != nil {
		fmt.Fprintf(os.Stderr, "warm-cache: %v\n", err)
		return 2
	}
	wo, err := o.Options(os.Getenv, os.LookupEnv, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "warm-cache: %v\n", err)
		return 2
	}
	if err := cache.Warm(ctx, wo); err != nil {
		log.Error("warm-cache failed", "error", err.Error())
		fmt.Fprintf(os.Stderr, "warm-cache: error: %v\n", err)
		return 1
	}
	return 0
}
