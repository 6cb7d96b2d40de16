package instruction

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/kilnbuild/kiln/internal/dockerfile"
)

// buildArgs are --build-arg values.
type buildArgs map[string]string

func (b buildArgs) Lookup(k string) (string, bool) { v, ok := b[k]; return v, ok }

// apply parses the instructions of src (one stage, FROM omitted) and
// applies each to s through the function of its kind.
func apply(t *testing.T, s *State, sc Scope, src string) error {
	t.Helper()
	res, err := parser.Parse(strings.NewReader("FROM scratch\n" + src))
	if err != nil {
		t.Fatal(err)
	}
	stages, _, err := instructions.Parse(res.AST, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range stages[0].Commands {
		if ex, ok := cmd.(instructions.SupportsSingleWordExpansion); ok {
			if err := ex.Expand(s.Env.Expander('\\')); err != nil {
				return err
			}
		}
		switch c := cmd.(type) {
		case *instructions.EnvCommand:
			err = Env(s, c)
		case *instructions.LabelCommand:
			err = Label(s, c)
		case *instructions.MaintainerCommand:
			err = Maintainer(s, c)
		case *instructions.UserCommand:
			err = User(s, c)
		case *instructions.ArgCommand:
			err = Arg(s, sc, c)
		case *instructions.ExposeCommand:
			err = Expose(s, sc, c)
		case *instructions.VolumeCommand:
			err = Volume(s, c)
		case *instructions.CmdCommand:
			err = Cmd(s, c)
		case *instructions.EntrypointCommand:
			err = Entrypoint(s, c)
		case *instructions.ShellCommand:
			err = Shell(s, c)
		case *instructions.StopSignalCommand:
			err = StopSignal(s, c)
		case *instructions.HealthCheckCommand:
			err = Healthcheck(s, c)
		case *instructions.OnbuildCommand:
			err = Onbuild(s, c)
		case *instructions.WorkdirCommand:
			Workdir(s, c)
		default:
			t.Fatalf("%s is not a config instruction", c.Name())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func newState(base v1.Config) *State {
	env := dockerfile.NewEnv(base.Env)
	return &State{Config: &v1.ConfigFile{Config: base}, ImageEnv: env, Env: env.Clone(), Args: &dockerfile.Env{}}
}

func TestConfigInstructions(t *testing.T) {
	for _, tt := range []struct {
		name     string
		base     v1.Config
		args     buildArgs
		meta     []string
		src      string
		want     v1.Config // Env is compared against ImageEnv
		wantEnv  []string  // what instructions see
		wantArgs []string
		author   string
		interval time.Duration
		err      string
	}{
		{
			name: "ENV keeps the first position of a key and expands earlier values",
			base: v1.Config{Env: []string{"PATH=/bin", "A=1"}},
			src:  "ENV B=2 A=${A}0\nENV PATH=/x:$PATH",
			want: v1.Config{Env: []string{"PATH=/x:/bin", "A=10", "B=2"}}, wantEnv: []string{"PATH=/x:/bin", "A=10", "B=2"},
		},
		{
			name: "LABEL and MAINTAINER",
			base: v1.Config{Labels: map[string]string{"a": "base"}},
			src:  "LABEL a=1 \"b c\"=2\nMAINTAINER me <me@example.com>",
			want: v1.Config{Labels: map[string]string{"a": "1", "b c": "2"}}, author: "me <me@example.com>",
		},
		{
			name: "ARG: build arg, then default, then meta ARG; no value stays unset",
			args: buildArgs{"A": "given"}, meta: []string{"C=meta"},
			src:  "ARG A=default B=default\nARG C\nARG D\nUSER $A:$B",
			want: v1.Config{User: "given:default"}, wantEnv: []string{"A=given", "B=default", "C=meta"},
			wantArgs: []string{"A=given", "B=default", "C=meta"},
		},
		{
			name: "EXPOSE normalises protocols and spells out ranges",
			src:  "ARG P=8080\nEXPOSE 80 $P/UDP 9000-9002/sctp",
			want: v1.Config{ExposedPorts: map[string]struct{}{
				"80/tcp": {}, "8080/udp": {}, "9000/sctp": {}, "9001/sctp": {}, "9002/sctp": {},
			}},
			wantEnv: []string{"P=8080"}, wantArgs: []string{"P=8080"},
		},
		{name: "EXPOSE refuses an unknown protocol", src: "EXPOSE 80/icmp", err: `invalid protocol "icmp"`},
		{name: "EXPOSE refuses a reversed range", src: "EXPOSE 90-80", err: `invalid port range "90-80"`},
		{name: "EXPOSE refuses a port above 65535", src: "EXPOSE 70000", err: `invalid port "70000"`},
		{
			name: "VOLUME adds to the base's",
			base: v1.Config{Volumes: map[string]struct{}{"/a": {}}},
			src:  `VOLUME ["/b", "/c"]`,
			want: v1.Config{Volumes: map[string]struct{}{"/a": {}, "/b": {}, "/c": {}}},
		},
		{name: "VOLUME refuses a path expanded to nothing", src: "ARG E=\nVOLUME [\"$E\"]", err: "can not be an empty string"},
		{
			name: "ENTRYPOINT resets an inherited CMD",
			base: v1.Config{Cmd: []string{"base"}},
			src:  "ENTRYPOINT [\"/app\"]",
			want: v1.Config{Entrypoint: []string{"/app"}},
		},
		{
			name: "ENTRYPOINT keeps the stage's own CMD; shell form goes through SHELL",
			src:  "CMD [\"--help\"]\nSHELL [\"/bin/bash\", \"-xc\"]\nENTRYPOINT exec app",
			want: v1.Config{Cmd: []string{"--help"}, Shell: []string{"/bin/bash", "-xc"}, Entrypoint: []string{"/bin/bash", "-xc", "exec app"}},
		},
		{
			name: "CMD in shell form without SHELL",
			src:  "CMD echo hi",
			want: v1.Config{Cmd: []string{"/bin/sh", "-c", "echo hi"}},
		},
		{
			name: "STOPSIGNAL, HEALTHCHECK and ONBUILD",
			src:  "STOPSIGNAL SIGTERM\nHEALTHCHECK --interval=5s --start-interval=2s --retries=3 CMD [\"true\"]\nONBUILD RUN make",
			want: v1.Config{StopSignal: "SIGTERM", OnBuild: []string{"RUN make"}, Healthcheck: &v1.HealthConfig{
				Test: []string{"CMD", "true"}, Interval: 5 * time.Second, Retries: 3,
			}},
			interval: 2 * time.Second,
		},
		{
			name: "WORKDIR is taken from the working directory and cleaned",
			base: v1.Config{WorkingDir: "/srv"},
			src:  "WORKDIR app/../web/\nWORKDIR ./static",
			want: v1.Config{WorkingDir: "/srv/web/static"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newState(tt.base)
			sc := Scope{BuildArgs: tt.args, Meta: dockerfile.NewEnv(tt.meta), Escape: '\\'}
			err := apply(t, s, sc, tt.src)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := s.Config.Config
			got.Env = s.ImageEnv.List()
			if len(got.Env) == 0 {
				got.Env = nil
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantEnv, s.Env.List(), cmpEmpty); diff != "" {
				t.Errorf("variables seen (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantArgs, s.Args.List(), cmpEmpty); diff != "" {
				t.Errorf("stage ARGs (-want +got):\n%s", diff)
			}
			if s.Config.Author != tt.author {
				t.Errorf("author %q, want %q", s.Config.Author, tt.author)
			}
			if s.StartInterval != tt.interval {
				t.Errorf("start interval %v, want %v", s.StartInterval, tt.interval)
			}
		})
	}
}

// cmpEmpty treats nil and empty lists alike.
var cmpEmpty = cmp.Transformer("empty", func(l []string) []string {
	if len(l) == 0 {
		return nil
	}
	return l
})

func TestAbs(t *testing.T) {
	for _, tt := range []struct{ wd, p, want string }{
		{"", "a", "/a"},
		{"/srv", "a/b", "/srv/a/b"},
		{"/srv", "/etc", "/etc"},
		{"/srv", "../x", "/x"},
		{"/srv", ".", "/srv"},
	} {
		s := newState(v1.Config{WorkingDir: tt.wd})
		if got := s.Abs(tt.p); got != tt.want {
			t.Errorf("Abs(%q) in %q = %q, want %q", tt.p, tt.wd, got, tt.want)
		}
	}
}
