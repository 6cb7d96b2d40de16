package options

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/kilnbuild/kiln/internal/logging"
)

// Parse parses a step's flags. When done is true the step ends with code:
// 0 after --help, 2 for a bad flag or a stray argument (printed to stderr).
// Arguments after "--" are left in fs.Args() when allowRest is set.
func Parse(fs *pflag.FlagSet, usage string, args []string, stderr io.Writer, allowRest ...bool) (code int, done bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "%s\n\nFlags:\n%s", usage, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0, true
		}
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
		return 2, true
	}
	if fs.NArg() > 0 && !(len(allowRest) > 0 && allowRest[0] && fs.ArgsLenAtDash() == 0) {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, true
	}
	return 0, false
}

// ParseWithArgs is Parse for subcommands that take positional arguments
// (left in fs.Args()).
func ParseWithArgs(fs *pflag.FlagSet, usage string, args []string, stderr io.Writer) (code int, done bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "%s\n\nFlags:\n%s", usage, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0, true
		}
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
		return 2, true
	}
	return 0, false
}

// Logger builds the step's logger from --verbosity, --log-format and
// --log-timestamp. The color format colours only a terminal, and never
// with NO_COLOR set (https://no-color.org).
func (l LogFlags) Logger(w io.Writer, getenv func(string) string) (*slog.Logger, error) {
	color := false
	if f, ok := w.(*os.File); ok && getenv("NO_COLOR") == "" {
		color = term.IsTerminal(int(f.Fd()))
	}
	return logging.New(w, logging.Options{Verbosity: l.Verbosity, Format: l.Format, Timestamp: l.Timestamp, Color: color})
}

// exitCoder is an error that carries the exit code the step should end
// with (a RUN's, as kaniko ends with it).
type exitCoder interface{ ExitCode() int }

// Fail reports a step's failure once, through its logger, and returns its
// exit code: the failed RUN's own code where a RUN failed (kaniko's
// behaviour, which GitLab's allow_failure:exit_codes and Argo's retry rules
// rely on), else 1.
func Fail(log *slog.Logger, step string, err error) int {
	err = Named(err)
	log.Error(step+" failed", "error", err.Error())
	var ec exitCoder
	if errors.As(err, &ec) {
		if c := ec.ExitCode(); c > 0 && c < 256 {
			return c
		}
	}
	return 1
}

// Refuse reports bad flags or settings (exit code 2): through the logger
// once it exists, so a JSON log stays JSON, else on stderr.
func Refuse(log *slog.Logger, stderr io.Writer, step string, err error) int {
	err = Named(err)
	if log != nil {
		log.Error(step + ": " + err.Error())
	} else {
		fmt.Fprintf(stderr, "%s: %v\n", step, err)
	}
	return 2
}
