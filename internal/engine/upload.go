package engine

import (
	"context"
	"log/slog"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kilnbuild/kiln/internal/dockerfile"
	"github.com/kilnbuild/kiln/internal/layer"
)

// layerUploads pushes the target image's layers while they are written
// (Options.Upload), so that uploading overlaps compressing and the build's
// later instructions. An upload that fails is only logged: the push after
// the build uploads whatever is missing.
type layerUploads struct {
	upload func(context.Context, v1.Layer) error
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// stages are the indexes of the stages whose layers the target image
	// holds: the target and the stages it is FROM, in a chain.
	stages map[int]bool
}

// newLayerUploads returns the uploads of plan's target image, or nil when
// upload is nil.
func newLayerUploads(ctx context.Context, upload func(context.Context, v1.Layer) error, plan *dockerfile.Plan, log *slog.Logger) *layerUploads {
	if upload == nil {
		return nil
	}
	byIndex := map[int]*dockerfile.Stage{}
	for _, ps := range plan.Stages {
		byIndex[ps.Index] = ps
	}
	stages := map[int]bool{}
	for i := plan.Target; i >= 0 && !stages[i]; {
		ps, ok := byIndex[i]
		if !ok {
			break
		}
		stages[i] = true
		i = ps.BaseStage
	}
	ctx, cancel := context.WithCancel(ctx)
	return &layerUploads{upload: upload, log: log, ctx: ctx, cancel: cancel, stages: stages}
}

// follow returns the layer.Options Follow for a layer of stage ps: nil
// when the image pushed does not hold it.
func (u *layerUploads) follow(ps *dockerfile.Stage) func(*layer.Growing) {
	if u == nil || !u.stages[ps.Index] {
		return nil
	}
	return func(g *layer.Growing) {
		u.wg.Go(func() {
			if err := u.upload(u.ctx, g); err != nil && u.ctx.Err() == nil {
				u.log.Info("uploading a layer while building failed; the push will upload it", "error", err)
			}
		})
	}
}

// wait waits for the uploads started to end.
func (u *layerUploads) wait() {
	if u != nil {
		u.wg.Wait()
	}
}

// stop cancels the uploads still running and waits for them.
func (u *layerUploads) stop() {
	if u != nil {
		u.cancel()
		u.wg.Wait()
	}
}
