package build

import (
	"context"
	"fmt"

	"github.com/kilnbuild/kiln/internal/output"
)

// Job is a whole build step: the build and where its image goes.
type Job struct {
	// Build configures the build itself.
	Build Options
	// Output says where the image goes.
	Output output.Options
	// SkipPushPermissionCheck skips checking, before building, that every
	// destination accepts a push.
	SkipPushPermissionCheck bool
}

// Execute checks push access, builds, and delivers the image. It writes no
// output unless the whole build and every push succeeded.
func Execute(ctx context.Context, j Job) (*Result, error) {
	log := j.Build.Logger
	if !j.Output.NoPush && !j.SkipPushPermissionCheck && j.Build.Registry != nil {
		for _, d := range j.Output.Destinations {
			if err := j.Build.Registry.CheckPush(ctx, d); err != nil {
				return nil, fmt.Errorf("--destination %s: %w", d, err)
			}
		}
	}
	res, err := Build(ctx, j.Build)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	if err := output.Write(ctx, res.Image, j.Output, j.Build.Registry, log); err != nil {
		return nil, err
	}
	if log != nil {
		log.Info("build complete", "digest", res.Digest.String())
	}
	return res, nil
}
