package engine

import (
	"context"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kilnbuild/kiln/internal/dockerfile"
	"github.com/kilnbuild/kiln/internal/sandbox"
)

// resolveBases fetches the manifest and config of every base image the
// plan builds on, so that a base missing or lacking the platform fails
// before anything is built (layers are fetched when unpacked).
func (b *builder) resolveBases(ctx context.Context) error {
	for _, ps := range b.plan.Stages {
		if !ps.Build {
			continue
		}
		b.timesOf(ps.Index)
		_, err := b.registryBase(ctx, ps)
		b.curTimes = nil
		if err != nil {
			return err
		}
	}
	return nil
}

// registryBase is the image a stage's FROM pulls, for its platform, fetched
// once per build; nil for a stage FROM another stage or scratch.
func (b *builder) registryBase(ctx context.Context, ps *dockerfile.Stage) (v1.Image, error) {
	if ps.BaseStage >= 0 || strings.EqualFold(ps.Base, "scratch") {
		return nil, nil
	}
	platform, err := b.stagePlatform(ps)
	if err != nil {
		return nil, err
	}
	return b.baseImage(ctx, ps, platform)
}

// checkEmulation refuses, before anything is built, a stage whose RUN
// instructions this machine cannot execute: its root's platform is
// neither the machine's nor one a binfmt_misc handler (qemu) runs.
func (b *builder) checkEmulation() error {
	dir := b.o.binfmtDir
	if dir == "" {
		dir = sandbox.BinfmtDir
	}
	for _, ps := range b.plan.Stages {
		if !ps.Build || !hasRun(ps.Commands) {
			continue
		}
		p, scratch, err := b.rootPlatform(ps)
		if err != nil {
			return err
		}
		if scratch { // whatever was copied in decides
			continue
		}
		known, err := sandbox.CanRun(p, dir)
		if err != nil {
			return &dockerfile.Error{File: b.df.Name, Line: ps.Line, Err: fmt.Errorf("stage %s: RUN for %s: %w", stageLabel(ps), platformString(p), err)}
		}
		if !known {
			b.log.Warn("cannot tell whether this machine runs programs for the platform (binfmt_misc is not mounted here): RUN fails with 'exec format error' if it does not", "stage", stageLabel(ps), "platform", platformString(p))
		}
	}
	return nil
}

// rootPlatform is the platform of the programs a stage's RUN executes:
// that of the stage (or image) its FROM chain starts at. scratch says the
// chain starts at scratch.
func (b *builder) rootPlatform(ps *dockerfile.Stage) (p v1.Platform, scratch bool, err error) {
	for ps.Platform == "" && ps.BaseStage >= 0 {
		ps = b.plan.Stages[ps.BaseStage]
	}
	if ps.BaseStage < 0 && strings.EqualFold(ps.Base, "scratch") {
		return v1.Platform{}, true, nil
	}
	p, err = b.stagePlatform(ps)
	return p, false, err
}

// hasRun says whether cmds hold a RUN.
func hasRun(cmds []instructions.Command) bool {
	for _, c := range cmds {
		if _, ok := c.(*instructions.RunCommand); ok {
			return true
		}
	}
	return false
}
