// Command build is kiln's build step: it builds a Dockerfile into an image
// without a daemon and accepts kaniko's executor flags.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/engine"
	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/options/buildopt"
	"github.com/kilnbuild/kiln/internal/profiling"
	"github.com/kilnbuild/kiln/internal/sandbox"
)

func main() {
	if sandbox.IsSandbox() { // re-executed as the RUN sandbox's init
		os.Exit(sandbox.SandboxMain())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	if len(args) > 0 {
		switch args[0] { // kaniko's executor subcommands
		case "version", "--version":
			fmt.Println(buildopt.Version())
			return 0
		case "login":
			return buildopt.RunLogin(args[1:], os.Stdin, os.Stderr, os.Getenv)
		case "push":
			return buildopt.RunPush(ctx, args[1:], os.Stderr, os.Getenv)
		}
	}
	fs := pflag.NewFlagSet("build", pflag.ContinueOnError)
	var o buildopt.Build
	o.AddFlags(fs, os.Getenv)
	if code, done := options.Parse(fs, "Usage: build [flags] [-- KEY=VALUE ...]\n\nBuilds a Dockerfile into an OCI image without a daemon.\nArguments after -- are build arguments, like --build-arg.", args, os.Stderr, true); done {
		return code
	}
	o.BuildArgs = append(o.BuildArgs, fs.Args()...)
	o.Environ = os.Environ()
	log, err := o.Log.Logger(os.Stderr, os.Getenv)
	if err == nil {
		err = o.Validate(fs)
	}
	var job engine.Job
	if err == nil {
		job, err = o.Job(fs, os.Getenv, os.LookupEnv, log, os.Stdout, os.Stderr)
	}
	if err != nil {
		return options.Refuse(log, os.Stderr, "build", err)
	}
	stopProfile, err := profiling.Start(o.Profile)
	if err != nil {
		return options.Refuse(log, os.Stderr, "build", err)
	}
	_, err = engine.Execute(ctx, job)
	if perr := stopProfile(); perr != nil {
		log.Warn("writing the profiles", "error", perr.Error())
	}
	if err != nil {
		return options.Fail(log, "build", err)
	}
	return 0
}
