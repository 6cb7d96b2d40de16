package dockerfile

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

func TestParseErrors(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"unknown instruction", "FROM scratch\nNOPE x\n", "Dockerfile:2: unknown instruction: NOPE"},
		{"empty", "# only a comment\n", "file with no instructions"},
		{"no FROM", "ARG A=1\n", "no FROM instruction"},
		{"bad stage name", "FROM scratch AS 1bad\n", "Dockerfile:1: invalid name for build stage"},
		{"copy without dest", "FROM scratch\nCOPY a\n", "Dockerfile:2:"},
		{"unterminated heredoc", "FROM scratch\nCOPY <<EOF /x\nabc\n", "Dockerfile:2: unterminated heredoc"},
		{"bad escape", "# escape=x\nFROM scratch\n", "escape"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("Dockerfile", strings.NewReader(tt.src))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	src := `ARG BASE=alpine
ARG VER
FROM ${BASE}:${VER:-latest} AS Build
FROM build AS test
FROM scratch AS unused
FROM busybox:${TARGETARCH} AS final
COPY --from=BUILD /a /a
COPY --from=0 /b /b
`
	df, err := Parse("Dockerfile", strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		opts      PlanOptions
		wantBases []string
		wantBuild []bool
		wantErr   string
	}{
		{
			name:      "all stages up to the last",
			opts:      PlanOptions{BuildArgs: NewBuildArgs([]string{"VER=3.20"}, nil)},
			wantBases: []string{"alpine:3.20", "build", "scratch", "busybox:amd64"},
			wantBuild: []bool{true, true, true, true},
		},
		{
			name:      "skip unused stages",
			opts:      PlanOptions{SkipUnusedStages: true},
			wantBases: []string{"alpine:latest", "build", "scratch", "busybox:amd64"},
			wantBuild: []bool{true, false, false, true},
		},
		{
			name:      "target by name, case-insensitive",
			opts:      PlanOptions{Target: "TEST", SkipUnusedStages: true, BuildArgs: NewBuildArgs([]string{"BASE=debian"}, nil)},
			wantBases: []string{"debian:latest", "build"},
			wantBuild: []bool{true, true},
		},
		{name: "unknown target", opts: PlanOptions{Target: "nope"}, wantErr: `option Target "nope"`},
		{name: "numeric target is not a name", opts: PlanOptions{Target: "1"}, wantErr: `option Target "1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.TargetPlatform, tt.opts.BuildPlatform = amd64, amd64
			p, err := df.Plan(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var bases []string
			var build []bool
			for _, s := range p.Stages {
				bases = append(bases, s.Base)
				build = append(build, s.Build)
			}
			if d := cmp.Diff(tt.wantBases, bases); d != "" {
				t.Errorf("bases:\n%s", d)
			}
			if d := cmp.Diff(tt.wantBuild, build); d != "" {
				t.Errorf("build:\n%s", d)
			}
			if p.Stages[1].BaseStage != 0 {
				t.Errorf("FROM build resolved to %d", p.Stages[1].BaseStage)
			}
		})
	}
}

func TestBuildArgs(t *testing.T) {
	env := map[string]string{"FROM_ENV": "e"}
	b := NewBuildArgs([]string{"A=1", "B=", "FROM_ENV", "NOT_IN_ENV", "HTTP_PROXY=http://p", "C=x=y"}, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	for k, want := range map[string]string{"A": "1", "B": "", "FROM_ENV": "e", "C": "x=y"} {
		if v, ok := b.Lookup(k); !ok || v != want {
			t.Errorf("%s = %q, %v", k, v, ok)
		}
	}
	if _, ok := b.Lookup("NOT_IN_ENV"); ok {
		t.Error("NOT_IN_ENV set")
	}
	b2 := NewBuildArgs([]string{"USED=1", "UNUSED=2", "HTTP_PROXY=p"}, nil)
	b2.Lookup("USED")
	if d := cmp.Diff([]string{"UNUSED"}, b2.Unused()); d != "" {
		t.Error(d)
	}
	if v, _ := b2.ProxyArgs().Get("HTTP_PROXY"); v != "p" {
		t.Errorf("proxy arg %q", v)
	}
}

func TestEnvExpander(t *testing.T) {
	e := NewEnv([]string{"A=1", "B=", "PATH=/bin"})
	e.Set("A", "2")
	if d := cmp.Diff([]string{"A=2", "B=", "PATH=/bin"}, e.List()); d != "" {
		t.Error(d)
	}
	exp := e.Expander('\\')
	for in, want := range map[string]string{
		"$A":           "2",
		"${A:-x}":      "2",
		"${B:-x}":      "x",
		"${B-x}":       "",
		"${NONE:+set}": "",
		"${A:+set}":    "set",
		`\$A`:          "$A",
		"'$A'":         "$A",
		"$PATH:/usr":   "/bin:/usr",
	} {
		got, err := exp(in)
		if err != nil || got != want {
			t.Errorf("expand %q = %q, %v; want %q", in, got, err, want)
		}
	}
}
