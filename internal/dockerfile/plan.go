package dockerfile

import (
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kilnbuild/kiln/internal/option"
)

// PlanOptions says what to build.
type PlanOptions struct {
	// BuildArgs are the --build-arg values.
	BuildArgs *BuildArgs
	// Target is the --target stage; empty means the last stage. AlsoBuild
	// are more stages to build with it.
	Target    string
	AlsoBuild []string
	// SkipUnusedStages builds only the stages the target depends on.
	SkipUnusedStages bool
	// TargetPlatform is the platform of the image built.
	TargetPlatform v1.Platform
	// BuildPlatform is the platform kiln runs on.
	BuildPlatform v1.Platform
}

// Stage is one FROM section with its base resolved.
type Stage struct {
	// Index is the stage's position in the Dockerfile.
	Index int
	// Name is the lower-cased stage name, or "".
	Name string
	// Base is the FROM argument after ARG expansion.
	Base string
	// BaseStage is the index of the stage Base names, or -1.
	BaseStage int
	// Platform is the FROM --platform value after expansion, or "".
	Platform string
	// Commands are the stage's instructions.
	Commands []instructions.Command
	// Line is the FROM instruction's line.
	Line int
	// Build says whether the plan runs this stage.
	Build bool
}

// Plan is the list of stages a build runs.
type Plan struct {
	// Stages are all stages up to and including the target.
	Stages []*Stage
	// Target is the index of the target stage.
	Target int
	// Meta holds the ARGs declared before the first FROM with their values,
	// and the predefined platform ARGs.
	Meta *Env
}

// PlatformArgs returns BuildKit's predefined platform ARGs.
func PlatformArgs(target, build v1.Platform) *Env {
	e := &Env{}
	e.Set("TARGETSTAGE", "default")
	for _, p := range []struct {
		prefix string
		p      v1.Platform
	}{{"TARGET", target}, {"BUILD", build}} {
		e.Set(p.prefix+"PLATFORM", platformString(p.p))
		e.Set(p.prefix+"OS", p.p.OS)
		e.Set(p.prefix+"ARCH", p.p.Architecture)
		e.Set(p.prefix+"VARIANT", p.p.Variant)
	}
	return e
}

func platformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// Plan resolves the meta ARGs, every stage's base and the target, and marks
// the stages to build.
func (d *Dockerfile) Plan(o PlanOptions) (*Plan, error) {
	meta := PlatformArgs(o.TargetPlatform, o.BuildPlatform)
	for _, a := range d.MetaArgs {
		for _, kv := range a.Args {
			exp := meta.Expander(d.Escape)
			key, err := exp(kv.Key)
			if err != nil {
				return nil, Errorf(d.Name, a.Location(), "ARG %s: %v", kv.Key, err)
			}
			if v, ok := o.BuildArgs.Lookup(key); ok {
				meta.Set(key, v)
				continue
			}
			if kv.Value != nil {
				v, err := exp(*kv.Value)
				if err != nil {
					return nil, Errorf(d.Name, a.Location(), "ARG %s: %v", key, err)
				}
				meta.Set(key, v)
			}
		}
	}
	p := &Plan{Meta: meta, Target: len(d.Stages) - 1}
	if o.Target != "" {
		p.Target = d.StageIndex(o.Target, len(d.Stages))
		if p.Target < 0 || !strings.EqualFold(d.Stages[p.Target].Name, o.Target) {
			return nil, &Error{File: d.Name, Err: option.Errorf("Target", strconv.Quote(o.Target), "no stage with that name")}
		}
		// BuildKit's predefined TARGETSTAGE: the target's name, "default"
		// without --target.
		meta.Set("TARGETSTAGE", strings.ToLower(o.Target))
	}
	last := p.Target
	var also []int
	for _, name := range o.AlsoBuild {
		j := d.StageIndex(name, len(d.Stages))
		if j < 0 || !strings.EqualFold(d.Stages[j].Name, name) {
			return nil, &Error{File: d.Name, Err: option.Errorf("Target", strconv.Quote(name), "no stage with that name")}
		}
		also = append(also, j)
		last = max(last, j)
	}
	exp := meta.Expander(d.Escape)
	for i := 0; i <= last; i++ {
		st := d.Stages[i]
		base, err := exp(st.BaseName)
		if err != nil {
			return nil, Errorf(d.Name, st.Location, "FROM %s: %v", st.BaseName, err)
		}
		if base == "" {
			return nil, Errorf(d.Name, st.Location, "FROM %s: base name expands to an empty string", st.BaseName)
		}
		platform, err := exp(st.Platform)
		if err != nil {
			return nil, Errorf(d.Name, st.Location, "FROM --platform=%s: %v", st.Platform, err)
		}
		s := &Stage{
			Index: i, Name: st.Name, Base: base, BaseStage: -1, Platform: platform,
			Commands: st.Commands, Line: Line(st.Location),
		}
		if j := d.stageByName(base, i); j >= 0 {
			s.BaseStage = j
		}
		p.Stages = append(p.Stages, s)
	}
	if !o.SkipUnusedStages {
		for _, s := range p.Stages {
			s.Build = s.Index <= p.Target
		}
		for _, j := range also {
			p.Require(d, j)
		}
		return p, nil
	}
	p.Require(d, p.Target)
	for _, j := range also {
		p.Require(d, j)
	}
	return p, nil
}

// Require marks stage i to be built, with every stage it needs: its base
// stage and the stages its COPY --from and RUN --mount from= read.
func (p *Plan) Require(d *Dockerfile, i int) {
	if i < 0 || i >= len(p.Stages) {
		return
	}
	s := p.Stages[i]
	if s.Build {
		return
	}
	s.Build = true
	if s.BaseStage >= 0 {
		p.Require(d, s.BaseStage)
	}
	for _, dep := range d.FromRefs(s.Index, p.Meta) {
		p.Require(d, dep)
	}
}

// stageByName finds an earlier stage named name (FROM accepts names only).
func (d *Dockerfile) stageByName(name string, before int) int {
	lower := strings.ToLower(name)
	for i := 0; i < before; i++ {
		if d.Stages[i].Name != "" && d.Stages[i].Name == lower {
			return i
		}
	}
	return -1
}

// FromRefs returns the earlier stages that stage i reads with COPY --from
// and RUN --mount from=.
func (d *Dockerfile) FromRefs(i int, meta *Env) []int {
	return d.CommandRefs(d.Stages[i].Commands, i, meta)
}

// CommandRefs returns the stages before stage i that cmds read with COPY
// --from and RUN --mount from= (ONBUILD triggers' included, for which
// kiln parses the base image's triggers).
func (d *Dockerfile) CommandRefs(cmds []instructions.Command, i int, meta *Env) []int {
	var out []int
	exp := meta.Expander(d.Escape)
	add := func(ref string) {
		if ref == "" {
			return
		}
		from, err := exp(ref)
		if err != nil {
			return
		}
		if j := d.StageIndex(from, i); j >= 0 {
			out = append(out, j)
		}
	}
	for _, c := range cmds {
		switch c := c.(type) {
		case *instructions.CopyCommand:
			add(c.From)
		case *instructions.RunCommand:
			for _, m := range instructions.GetMounts(c) {
				add(m.From)
			}
		}
	}
	return out
}
