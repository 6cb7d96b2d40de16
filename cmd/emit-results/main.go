// Command emit-results is kiln's last pipeline step: it publishes what the
// build produced as Tekton results, Argo output parameters, a GitLab dotenv
// report or Buildkite meta-data.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/options/emitopt"
	"github.com/kilnbuild/kiln/internal/results"
)

func main() {
	_, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(os.Args[1:])
	stop()
	os.Exit(code)
}

func run(args []string) int {
	fs := pflag.NewFlagSet("emit-results", pflag.ContinueOnError)
	var o emitopt.EmitResults
	o.AddFlags(fs)
	if code, done := options.Parse(fs, "Usage: emit-results --build-record FILE [outputs]", args, os.Stderr); done {
		return code
	}
	log, err := o.Log.Logger(os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "emit-results: %v\n", err)
		return 2
	}
	v, err := results.Emit(o.Results)
	if err != nil {
		log.Error("emit-results failed", "error", err.Error())
		fmt.Fprintf(os.Stderr, "emit-results: error: %v\n", err)
		return 1
	}
	log.Info("results written", "digest", v.Digest, "url", v.URL)
	return 0
}
