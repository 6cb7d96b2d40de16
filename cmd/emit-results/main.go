// Command emit-results is kiln's last pipeline step: it publishes what the
// build produced as Tekton results, Argo output parameters, a GitLab dotenv
// report or Buildkite meta-data.
package main

import (
	"context"
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
	log, err := o.Log.Logger(os.Stderr, os.Getenv)
	if err != nil {
		return options.Refuse(log, os.Stderr, "emit-results", err)
	}
	v, err := results.Emit(o.Results)
	if err != nil {
		return options.Fail(log, "emit-results", err)
	}
	log.Info("results written", "digest", v.Digest, "url", v.URL)
	return 0
}
