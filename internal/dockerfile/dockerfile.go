// Package dockerfile parses Dockerfiles with buildkit's parser and
// instructions packages, resolves ARG scoping and plans which stages a build
// runs. It never touches a filesystem.
package dockerfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// Dockerfile is a parsed Dockerfile.
type Dockerfile struct {
	// Name is the path shown in errors.
	Name string
	// Stages are the FROM sections, in order.
	Stages []instructions.Stage
	// MetaArgs are the ARG instructions before the first FROM.
	MetaArgs []instructions.ArgCommand
	// Escape is the escape token from the "# escape=" directive.
	Escape rune
}

// Error is a Dockerfile error with the line it is about.
type Error struct {
	File string
	Line int
	Err  error
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.File, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an Error about the instruction at loc.
func Errorf(file string, loc []parser.Range, format string, args ...any) error {
	return &Error{File: file, Line: Line(loc), Err: fmt.Errorf(format, args...)}
}

// WrapError returns err as an Error at loc, unless it already carries a line.
func WrapError(file string, loc []parser.Range, err error) error {
	var de *Error
	if err == nil || errors.As(err, &de) {
		return err
	}
	return &Error{File: file, Line: Line(loc), Err: err}
}

// Line is the first line of a location, or 0.
func Line(loc []parser.Range) int {
	if len(loc) == 0 {
		return 0
	}
	return loc[0].Start.Line
}

// Parse parses the Dockerfile read from r; name is used in errors.
func Parse(name string, r io.Reader) (*Dockerfile, error) {
	src, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	res, err := parser.Parse(bytes.NewReader(src))
	if err != nil {
		return nil, locate(name, err)
	}
	if len(res.AST.Children) == 0 {
		return nil, &Error{File: name, Err: errors.New("file with no instructions")}
	}
	stages, meta, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return nil, locate(name, err)
	}
	if len(stages) == 0 {
		return nil, &Error{File: name, Err: errors.New("no FROM instruction")}
	}
	return &Dockerfile{Name: name, Stages: stages, MetaArgs: meta, Escape: res.EscapeToken}, nil
}

// ParseTrigger parses an ONBUILD trigger expression into an instruction.
func ParseTrigger(expr string) (instructions.Command, error) {
	res, err := parser.Parse(strings.NewReader(expr))
	if err != nil {
		return nil, fmt.Errorf("ONBUILD trigger %q: %w", expr, err)
	}
	if len(res.AST.Children) != 1 {
		return nil, fmt.Errorf("ONBUILD trigger %q: want one instruction", expr)
	}
	cmd, err := instructions.ParseCommand(res.AST.Children[0])
	if err != nil {
		return nil, fmt.Errorf("ONBUILD trigger %q: %w", expr, err)
	}
	return cmd, nil
}

// parseErrorPrefix is buildkit's own line prefix, replaced by ours.
var parseErrorPrefix = regexp.MustCompile(`^dockerfile parse error on line \d+: `)

// locate turns a buildkit error into an Error naming the line.
func locate(name string, err error) error {
	var le *parser.LocationError
	line := 0
	if errors.As(err, &le) && len(le.Locations) > 0 && len(le.Locations[0]) > 0 {
		line = le.Locations[0][0].Start.Line
	}
	msg := parseErrorPrefix.ReplaceAllString(err.Error(), "")
	var ue *instructions.UnknownInstructionError
	if errors.As(err, &ue) {
		msg = fmt.Sprintf("unknown instruction: %s", ue.Instruction)
		line = ue.Line
	}
	return &Error{File: name, Line: line, Err: errors.New(msg)}
}

// StageIndex resolves a stage reference (a name, case-insensitive, or a
// number) among the first n stages. It returns -1 when ref names no stage.
func (d *Dockerfile) StageIndex(ref string, n int) int {
	lower := strings.ToLower(ref)
	for i := 0; i < n && i < len(d.Stages); i++ {
		if d.Stages[i].Name != "" && d.Stages[i].Name == lower {
			return i
		}
	}
	if i, err := strconv.Atoi(ref); err == nil && i >= 0 && i < n && i < len(d.Stages) {
		return i
	}
	return -1
}
