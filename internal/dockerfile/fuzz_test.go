package dockerfile

import (
	"errors"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// FuzzDockerfile parses, plans and expands arbitrary Dockerfiles: kiln
// must never panic or hang on one, every error that concerns a line names
// the Dockerfile, and every instruction's words expand (or fail) cleanly.
func FuzzDockerfile(f *testing.F) {
	for _, s := range []string{
		"FROM scratch\nCOPY . /\n",
		"ARG B=busybox\nFROM $B AS a\nARG X=${Y:-z}\nENV P=${X:+q} \\\n  R=1\nRUN --mount=type=bind,from=a,source=/d,target=/m --mount=type=cache,id=c,target=/m/x/../../run-cache echo $P\n",
		"# escape=`\nFROM scratch\nCOPY <<EOF /x\nhello `\nEOF\n",
		"FROM a\nFROM b AS c\nCOPY --from=c /x /y\nFROM c\nONBUILD RUN x\n",
		"FROM ${A:?missing}\n",
		"FROM scratch\nRUN <<A bash\n#!/bin/sh\necho\nA\n",
		"FROM x\nWORKDIR ${HOME:-/root}/../../etc\nUSER 0:0\nHEALTHCHECK --interval=1s CMD true\n",
	} {
		f.Add(s, "BUILD=x", "")
	}
	f.Fuzz(func(t *testing.T, src, arg, target string) {
		if len(src) > 4096 {
			return
		}
		d, err := Parse("Dockerfile", strings.NewReader(src))
		if err != nil {
			var de *Error
			if errors.As(err, &de) && de.File != "Dockerfile" {
				t.Fatalf("error names %q: %v", de.File, err)
			}
			return
		}
		p := v1.Platform{OS: "linux", Architecture: "amd64"}
		plan, err := d.Plan(PlanOptions{
			BuildArgs: NewBuildArgs([]string{arg}, func(string) (string, bool) { return "", false }),
			Target:    target, SkipUnusedStages: true, TargetPlatform: p, BuildPlatform: p,
		})
		if err != nil {
			return
		}
		if plan.Target < 0 || plan.Target >= len(plan.Stages) {
			t.Fatalf("target %d of %d stages", plan.Target, len(plan.Stages))
		}
		for _, st := range plan.Stages {
			if st.BaseStage >= st.Index {
				t.Fatalf("stage %d is based on stage %d, not before it", st.Index, st.BaseStage)
			}
			env := plan.Meta.Clone()
			exp := env.Expander(d.Escape)
			for _, cmd := range st.Commands {
				if ex, ok := cmd.(instructions.SupportsSingleWordExpansion); ok {
					ex.Expand(exp)
				}
				if ex, ok := cmd.(instructions.SupportsSingleWordExpansionRaw); ok {
					ex.ExpandRaw(exp)
				}
				if rc, ok := cmd.(*instructions.RunCommand); ok {
					instructions.GetMounts(rc)
				}
			}
		}
	})
}
