package options_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/option"
	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/options/buildopt"
	"github.com/kilnbuild/kiln/internal/options/emitopt"
	"github.com/kilnbuild/kiln/internal/options/fetchopt"
	"github.com/kilnbuild/kiln/internal/options/indexopt"
	"github.com/kilnbuild/kiln/internal/options/signopt"
	"github.com/kilnbuild/kiln/internal/options/warmopt"
)

// TestSourcesAreFlags: every flag the table names an option by is a flag
// of some step.
func TestSourcesAreFlags(t *testing.T) {
	getenv := func(string) string { return "" }
	var sets []*pflag.FlagSet
	add := func(f func(*pflag.FlagSet)) {
		fs := pflag.NewFlagSet("step", pflag.ContinueOnError)
		f(fs)
		sets = append(sets, fs)
	}
	add(func(fs *pflag.FlagSet) { (&buildopt.Build{}).AddFlags(fs, getenv) })
	add(func(fs *pflag.FlagSet) { (&warmopt.WarmCache{}).AddFlags(fs, getenv) })
	add(func(fs *pflag.FlagSet) { (&fetchopt.FetchContext{}).AddFlags(fs) })
	add(func(fs *pflag.FlagSet) { (&emitopt.EmitResults{}).AddFlags(fs) })
	add(func(fs *pflag.FlagSet) { (&indexopt.Index{}).AddFlags(fs, getenv) })
	add(func(fs *pflag.FlagSet) { (&signopt.Sign{}).AddFlags(fs, getenv) })
	for opt, src := range options.Sources() {
		if !strings.HasPrefix(src, "--") {
			continue // an environment variable
		}
		found := false
		for _, fs := range sets {
			found = found || fs.Lookup(strings.TrimPrefix(src, "--")) != nil
		}
		if !found {
			t.Errorf("option %s: %s is no step's flag", opt, src)
		}
	}
}

// exitError carries an exit code, as a failed RUN's error does.
type exitError struct{ error }

func (exitError) ExitCode() int { return 7 }

// TestFailNamesFlags: an engine's error, which names options, is
// reported naming the flags, and keeps its exit code.
func TestFailNamesFlags(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	err := fmt.Errorf("Dockerfile:2: RUN: %w", option.New("UserNS", "required", exitError{errors.New("id-mapping failed")}))
	if code := options.Fail(log, "build", err); code != 7 {
		t.Errorf("exit code %d, want the RUN's 7", code)
	}
	if got := buf.String(); !strings.Contains(got, "RUN: --userns required: id-mapping failed") || strings.Contains(got, "option UserNS") {
		t.Errorf("logged %q, want the flag named", got)
	}
	buf.Reset()
	if code := options.Refuse(log, &buf, "build", option.Errorf("Isolation", "in-place", "refusing (force it with option Force)")); code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	if got := buf.String(); !strings.Contains(got, "--isolation in-place: refusing (force it with --force)") {
		t.Errorf("logged %q, want the flags named", got)
	}
}
