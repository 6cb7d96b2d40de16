// Package option is how kiln's engine packages report a problem with one
// of the options they were given: by the option's own name (its field in
// the engine's options), never by a command-line flag, which only the
// option layer (internal/options) knows. That layer puts the flag in its
// place when it reports the error (Name), so a command's user reads the
// flag they typed and a library's user the field they set.
package option

import (
	"fmt"
	"regexp"
	"strings"
)

// Error is a problem with the value of one option.
type Error struct {
	// Option is the option's name: its field in the engine's options
	// ("Isolation", "TarPath").
	Option string
	// Value is the value, as the message shows it; empty when the option
	// is a switch or the value says nothing.
	Value string
	// Err is what is wrong.
	Err error
}

// New is an Error of option with value.
func New(option, value string, err error) *Error {
	return &Error{Option: option, Value: value, Err: err}
}

// Errorf is an Error of option with value, its message formatted.
func Errorf(option, value, format string, args ...any) *Error {
	return New(option, value, fmt.Errorf(format, args...))
}

func (e *Error) Error() string {
	name := e.name()
	if e.Value != "" {
		name += " " + e.Value
	}
	return name + ": " + e.Err.Error()
}

// name is how the message names the option.
func (e *Error) name() string { return "option " + e.Option }

func (e *Error) Unwrap() error { return e.Err }

// Name returns err with every option that sources holds named by its
// source (a flag, "--isolation") instead, wherever its message names it as
// "option Name": as the subject of an Error or in a hint ("force it with
// option Force"). The whole message is rewritten, since the errors that
// wrap an Error hold its text as it was made. The result unwraps to err.
func Name(err error, sources map[string]string) error {
	if err == nil || len(sources) == 0 {
		return err
	}
	names := make([]string, 0, len(sources))
	for k := range sources {
		names = append(names, regexp.QuoteMeta(k))
	}
	re := regexp.MustCompile(`\boption (` + strings.Join(names, "|") + `)\b`)
	msg := err.Error()
	out := re.ReplaceAllStringFunc(msg, func(m string) string {
		return sources[strings.TrimPrefix(m, "option ")]
	})
	if out == msg {
		return err
	}
	return &named{err: err, msg: out}
}

// named is an error whose message names options by their sources.
type named struct {
	err error
	msg string
}

func (n *named) Error() string { return n.msg }
func (n *named) Unwrap() error { return n.err }
