// Command sign is kiln's sign step: it signs the images a build pushed and
// attaches SLSA provenance, as cosign sign and cosign attest store them.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/options/signopt"
	"github.com/kilnbuild/kiln/internal/sign"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	fs := pflag.NewFlagSet("sign", pflag.ContinueOnError)
	var o signopt.Sign
	o.AddFlags(fs, os.Getenv)
	if code, done := options.Parse(fs, "Usage: sign --build-record FILE (--key KEY | --identity-token-file FILE) [flags]", args, os.Stderr); done {
		return code
	}
	log, err := o.Log.Logger(os.Stderr, os.Getenv)
	if err == nil && o.Skip() {
		log.Info("no key and no keyless identity: not signing")
		return 0
	}
	var so sign.Options
	if err == nil {
		so, err = o.Options(os.Getenv, log)
	}
	if err != nil {
		return options.Refuse(log, os.Stderr, "sign", err)
	}
	if err := sign.Sign(ctx, so); err != nil {
		return options.Fail(log, "sign", err)
	}
	return 0
}
