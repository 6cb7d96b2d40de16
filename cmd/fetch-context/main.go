// Command fetch-context is kiln's first pipeline step: it places a build
// context (kaniko's context URIs) in a workspace directory and records
// where it came from.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/buildcontext"
	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/options/fetchopt"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	fs := pflag.NewFlagSet("fetch-context", pflag.ContinueOnError)
	var o fetchopt.FetchContext
	o.AddFlags(fs)
	if code, done := options.Parse(fs, "Usage: fetch-context --context SOURCE --dest DIR [flags]", args, os.Stderr); done {
		return code
	}
	log, err := o.Log.Logger(os.Stderr, os.Getenv)
	if err == nil && o.Skip() {
		log.Info("no context source given: nothing to fetch")
		return 0
	}
	var fo buildcontext.FetchOptions
	var record string
	if err == nil {
		fo, record, err = o.Options(os.Getenv, os.Stdin, log)
	}
	if err != nil {
		return options.Refuse(log, os.Stderr, "fetch-context", err)
	}
	if err := buildcontext.FetchAndRecord(ctx, fo, record, o.ResultsDir); err != nil {
		return options.Fail(log, "fetch-context", err)
	}
	return 0
}
