package options

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/pflag"

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

// Logger builds the step's logger from --verbosity, --log-format and
// --log-timestamp.
func (l LogFlags) Logger(w io.Writer) (*slog.Logger, error) {
	return logging.New(w, logging.Options{Verbosity: l.Verbosity, Format: l.Format, Timestamp: l.Timestamp})
}
