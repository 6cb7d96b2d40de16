// Command index is kiln's index step: it joins images built apart, one per
// platform (a Tekton matrix, an Argo fan-out), into one image index and
// pushes it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/imageindex"
	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/options/indexopt"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	fs := pflag.NewFlagSet("index", pflag.ContinueOnError)
	var o indexopt.Index
	o.AddFlags(fs, os.Getenv)
	if code, done := options.ParseWithArgs(fs, "Usage: index --destination REF (--image REPOSITORY@DIGEST | --build-record FILE)... [IMAGE...]\n\nJoins images built apart, one per platform, into one image index and pushes it.", args, os.Stderr); done {
		return code
	}
	log, err := o.Log.Logger(os.Stderr, os.Getenv)
	var opts imageindex.Options
	if err == nil {
		opts, err = o.Options(fs.Args(), os.Getenv, log)
	}
	if err != nil {
		return options.Refuse(log, os.Stderr, "index", err)
	}
	if _, err := imageindex.Push(ctx, opts); err != nil {
		return options.Fail(log, "index", err)
	}
	return 0
}
