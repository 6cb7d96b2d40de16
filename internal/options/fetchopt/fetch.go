package fetchopt

import (
	"errors"
	"fmt"
	"github.com/kilnbuild/kiln/internal/options"
	"io"
	"log/slog"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/buildcontext"
)

// FetchContext holds the fetch-context step's flags.
type FetchContext struct {
	Context, ContextSubPath, Dest, Record, Git, ResultsDir string
	MaxSize                                                int64
	MaxFiles, Retries                                      int
	IfSet                                                  bool
	Log                                                    options.LogFlags
}

// AddFlags registers the fetch-context flags.
func (f *FetchContext) AddFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&f.Context, "context", "c", "", "Context source, in kaniko's forms: a path, dir://, tar://path, tar://stdin, git://host/repo.git#ref#commit, an http(s) .git URL, or an https tarball (#sha256= pin).")
	fs.StringVar(&f.ContextSubPath, "context-sub-path", "", "Sub-directory of the context the build will use (checked and recorded).")
	fs.StringVarP(&f.Dest, "dest", "o", "", "Directory to place the context in; it must not exist or be empty.")
	fs.StringVar(&f.Record, "record", "", "Where to write the context record (JSON); default: context.json beside --dest.")
	fs.StringVar(&f.Git, "git", "", "Git options: branch=,single-branch=,recurse-submodules=,depth=,insecure-skip-tls=.")
	fs.StringVar(&f.ResultsDir, "results-dir", "", "Also write Tekton Chains' CHAINS-GIT_URL and CHAINS-GIT_COMMIT results here (git contexts).")
	fs.Int64Var(&f.MaxSize, "max-context-size", buildcontext.DefaultLimits.MaxBytes, "Most bytes of file content a context may unpack to.")
	fs.IntVar(&f.MaxFiles, "max-context-files", buildcontext.DefaultLimits.MaxFiles, "Most files a context may unpack to.")
	fs.BoolVar(&f.IfSet, "if-set", false, "Do nothing, successfully, when --context is empty (for optional pipeline steps).")
	fs.IntVar(&f.Retries, "retries", 3, "Retries for transient network errors, with exponential backoff.")
	f.Log.AddFlags(fs)
}

// Skip reports whether the step has nothing to do (--if-set with no
// --context).
func (f *FetchContext) Skip() bool { return f.IfSet && f.Context == "" }

// Options validates the flags and returns the engine's options and the
// record path.
func (f *FetchContext) Options(getenv func(string) string, stdin io.Reader, log *slog.Logger) (buildcontext.FetchOptions, string, error) {
	if f.Context == "" {
		return buildcontext.FetchOptions{}, "", errors.New("--context is required")
	}
	if f.Dest == "" {
		return buildcontext.FetchOptions{}, "", errors.New("--dest is required")
	}
	if f.MaxSize <= 0 || f.MaxFiles <= 0 {
		return buildcontext.FetchOptions{}, "", fmt.Errorf("--max-context-size and --max-context-files must be positive")
	}
	git, err := buildcontext.ParseGitOptions(f.Git)
	if err != nil {
		return buildcontext.FetchOptions{}, "", err
	}
	record := f.Record
	if record == "" {
		record = filepath.Join(filepath.Dir(filepath.Clean(f.Dest)), "context.json")
	}
	return buildcontext.FetchOptions{
		Source: f.Context, Dest: f.Dest, SubPath: f.ContextSubPath, Git: git, Stdin: stdin, Getenv: getenv,
		Limits: buildcontext.Limits{MaxBytes: f.MaxSize, MaxFiles: f.MaxFiles}, Retries: f.Retries, Logger: log,
	}, record, nil
}
