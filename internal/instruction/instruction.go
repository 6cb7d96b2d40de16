// Package instruction holds the semantics of the Dockerfile instructions
// that change only an image's config (ENV, LABEL, USER, CMD, ...), as pure
// functions over a stage's State: no file system, registry or sandbox.
// The engine's handlers for COPY, ADD, WORKDIR and RUN use its helpers for
// the config side of what they do.
package instruction

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kilnbuild/kiln/internal/dockerfile"
)

// DefaultShell is the shell of shell-form CMD, ENTRYPOINT and RUN.
var DefaultShell = []string{"/bin/sh", "-c"}

// State is a stage's config while its instructions run.
type State struct {
	// Config is the image config being built. Its Config.Env is not kept
	// up to date: ImageEnv is the image's environment.
	Config *v1.ConfigFile
	// ImageEnv is the image's ENV; Env is what instructions see (ImageEnv
	// and the stage's ARGs); Args are the ARGs declared in the stage that
	// have values.
	ImageEnv, Env, Args *dockerfile.Env
	// CmdSet says CMD was given in this stage (an ENTRYPOINT after it
	// keeps it).
	CmdSet bool
	// StartInterval is HEALTHCHECK --start-interval, which ggcr's config
	// type cannot hold.
	StartInterval time.Duration
}

// Lookup finds a variable's value.
type Lookup interface {
	Lookup(key string) (string, bool)
}

// Scope is what instructions read from outside their stage.
type Scope struct {
	// BuildArgs are the --build-arg values.
	BuildArgs Lookup
	// Meta are the ARGs declared before the first FROM, with values.
	Meta *dockerfile.Env
	// Escape is the Dockerfile's escape character.
	Escape rune
}

// Env applies ENV.
func Env(s *State, c *instructions.EnvCommand) error {
	for _, kv := range c.Env {
		s.ImageEnv.Set(kv.Key, kv.Value)
		s.Env.Set(kv.Key, kv.Value)
	}
	return nil
}

// Label applies LABEL.
func Label(s *State, c *instructions.LabelCommand) error {
	cfg := &s.Config.Config
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	for _, kv := range c.Labels {
		cfg.Labels[kv.Key] = kv.Value
	}
	return nil
}

// Maintainer applies MAINTAINER.
func Maintainer(s *State, c *instructions.MaintainerCommand) error {
	s.Config.Author = c.Maintainer
	return nil
}

// User applies USER.
func User(s *State, c *instructions.UserCommand) error {
	s.Config.Config.User = c.User
	return nil
}

// Arg applies ARG inside a stage: a build arg's value wins, then the
// ARG's default, then a meta ARG's value; an ARG with none of them stays
// unset.
func Arg(s *State, sc Scope, c *instructions.ArgCommand) error {
	for _, kv := range c.Args {
		var val *string
		if v, ok := lookup(sc.BuildArgs, kv.Key); ok {
			val = &v
		} else if kv.Value != nil {
			val = kv.Value
		} else if v, ok := sc.Meta.Get(kv.Key); ok {
			val = &v
		}
		if val != nil {
			s.Env.Set(kv.Key, *val)
			s.Args.Set(kv.Key, *val)
		}
	}
	return nil
}

func lookup(l Lookup, key string) (string, bool) {
	if l == nil {
		return "", false
	}
	return l.Lookup(key)
}

// Expose applies EXPOSE: each value expanded and normalised to
// "port/proto", ranges spelled out.
func Expose(s *State, sc Scope, c *instructions.ExposeCommand) error {
	ports, err := ExposedPorts(c.Ports, s.Env.Expander(sc.Escape))
	if err != nil {
		return err
	}
	cfg := &s.Config.Config
	if cfg.ExposedPorts == nil {
		cfg.ExposedPorts = map[string]struct{}{}
	}
	for _, p := range ports {
		cfg.ExposedPorts[p] = struct{}{}
	}
	return nil
}

// ExposedPorts normalises EXPOSE values to "port/proto" (tcp when none is
// given), expanding ranges.
func ExposedPorts(raw []string, expand instructions.SingleWordExpander) ([]string, error) {
	var out []string
	for _, r := range raw {
		r, err := expand(r)
		if err != nil {
			return nil, err
		}
		port, proto, _ := strings.Cut(r, "/")
		if proto == "" {
			proto = "tcp"
		}
		proto = strings.ToLower(proto)
		if proto != "tcp" && proto != "udp" && proto != "sctp" {
			return nil, fmt.Errorf("EXPOSE %s: invalid protocol %q", r, proto)
		}
		lo, hi, isRange := strings.Cut(port, "-")
		start, err := strconv.ParseUint(lo, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("EXPOSE %s: invalid port %q", r, lo)
		}
		end := start
		if isRange {
			if end, err = strconv.ParseUint(hi, 10, 16); err != nil || end < start {
				return nil, fmt.Errorf("EXPOSE %s: invalid port range %q", r, port)
			}
		}
		for p := start; p <= end; p++ {
			out = append(out, fmt.Sprintf("%d/%s", p, proto))
		}
	}
	return out, nil
}

// Volume applies VOLUME.
func Volume(s *State, c *instructions.VolumeCommand) error {
	cfg := &s.Config.Config
	if cfg.Volumes == nil {
		cfg.Volumes = map[string]struct{}{}
	}
	for _, v := range c.Volumes {
		if v == "" {
			return errors.New("VOLUME specified can not be an empty string")
		}
		cfg.Volumes[v] = struct{}{}
	}
	return nil
}

// Cmd applies CMD.
func Cmd(s *State, c *instructions.CmdCommand) error {
	s.Config.Config.Cmd = s.CommandLine(c.ShellDependantCmdLine)
	s.CmdSet = true
	return nil
}

// Entrypoint applies ENTRYPOINT: it resets a CMD the stage did not set
// itself, as Docker does.
func Entrypoint(s *State, c *instructions.EntrypointCommand) error {
	s.Config.Config.Entrypoint = s.CommandLine(c.ShellDependantCmdLine)
	if !s.CmdSet {
		s.Config.Config.Cmd = nil
	}
	return nil
}

// Shell applies SHELL.
func Shell(s *State, c *instructions.ShellCommand) error {
	s.Config.Config.Shell = append([]string(nil), c.Shell...)
	return nil
}

// StopSignal applies STOPSIGNAL.
func StopSignal(s *State, c *instructions.StopSignalCommand) error {
	s.Config.Config.StopSignal = c.Signal
	return nil
}

// Healthcheck applies HEALTHCHECK.
func Healthcheck(s *State, c *instructions.HealthCheckCommand) error {
	h := c.Health
	s.Config.Config.Healthcheck = &v1.HealthConfig{
		Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod, Retries: h.Retries,
	}
	s.StartInterval = h.StartInterval
	return nil
}

// Onbuild applies ONBUILD.
func Onbuild(s *State, c *instructions.OnbuildCommand) error {
	s.Config.Config.OnBuild = append(s.Config.Config.OnBuild, c.Expression)
	return nil
}

// CommandLine turns a CMD, ENTRYPOINT or RUN command line into its exec
// form, through the stage's SHELL for the shell form.
func (s *State) CommandLine(c instructions.ShellDependantCmdLine) []string {
	if !c.PrependShell {
		return append([]string{}, c.CmdLine...)
	}
	sh := s.Config.Config.Shell
	if len(sh) == 0 {
		sh = DefaultShell
	}
	return append(append([]string{}, sh...), strings.Join(c.CmdLine, " "))
}

// WorkingDir is the stage's working directory ("/" when none is set).
func (s *State) WorkingDir() string {
	if wd := s.Config.Config.WorkingDir; wd != "" {
		return wd
	}
	return "/"
}

// Abs resolves p (a COPY or ADD destination, a WORKDIR) against the working
// directory.
func (s *State) Abs(p string) string {
	if path.IsAbs(p) {
		return p
	}
	return path.Join(s.WorkingDir(), p)
}

// Workdir applies WORKDIR to the config and returns the directory, clean
// and absolute. Creating it is the engine's.
func Workdir(s *State, c *instructions.WorkdirCommand) string {
	s.Config.Config.WorkingDir = path.Clean(s.Abs(c.Path))
	return s.Config.Config.WorkingDir
}
