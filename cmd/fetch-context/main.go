// Command fetch-context is kiln's first pipeline step: it places a build
// context (kaniko's context URIs) in a workspace directory and records
// where it came from.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/buildcontext"
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
	fs := pflag.NewFlagSet("fetch-context", pflag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: fetch-context --context SOURCE --dest DIR [flags]\n\nFlags:\n%s", fs.FlagUsages())
	}
	var o options.FetchContext
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "fetch-context: %v\n", err)
		return 2
	}
	log, err := logging.New(os.Stderr, logging.Options{Verbosity: o.Log.Verbosity, Format: o.Log.Format, Timestamp: o.Log.Timestamp})
	if err != nil {
		fmt.Fprintf(os.Stderr, "fetch-context: %v\n", err)
		return 2
	}
	fo, record, err := o.Options(os.Getenv, os.Stdin, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fetch-context: %v\n", err)
		return 2
	}
	rec, err := buildcontext.Fetch(ctx, fo)
	if err == nil {
		err = buildcontext.WriteRecord(record, rec)
	}
	if err == nil {
		err = buildcontext.WriteChainsResults(o.ResultsDir, rec)
	}
	if err != nil {
		log.Error("fetch-context failed", "error", err.Error())
		fmt.Fprintf(os.Stderr, "fetch-context: error: %v\n", err)
		return 1
	}
	log.Info("context fetched", "dest", fo.Dest, "sha256", rec.SHA256, "commit", rec.Commit)
	return 0
}
