package build

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/kilnbuild/kiln/internal/output"
	"github.com/kilnbuild/kiln/internal/record"
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
	// SecretIDs are the --secret ids, whose build-arg namesakes are masked
	// in the build record.
	SecretIDs []string
}

// record builds the build record of a finished build.
func (j Job) record(res *Result) ([]byte, error) {
	mt, err := res.Image.MediaType()
	if err != nil {
		return nil, err
	}
	cf, err := res.Image.ConfigFile()
	if err != nil {
		return nil, err
	}
	platform := cf.OS + "/" + cf.Architecture
	if cf.Variant != "" {
		platform += "/" + cf.Variant
	}
	r := record.Build{
		Digest: res.Digest.String(), MediaType: string(mt), Pushed: !j.Output.NoPush,
		Dockerfile: res.Dockerfile, Materials: res.Materials,
		BuildArgs: record.MaskArgs(j.Build.BuildArgs, j.Build.LookupEnv, j.SecretIDs),
		Target:    j.Build.Target, Platform: platform, Builder: record.BuilderVersion(),
		StartedOn: res.StartedOn, FinishedOn: time.Now().UTC(),
	}
	for _, d := range j.Output.Destinations {
		r.Images = append(r.Images, record.Image{Ref: d.String(), Digest: res.Digest.String()})
	}
	if res.Context != nil {
		data, err := json.Marshal(res.Context)
		if err != nil {
			return nil, err
		}
		r.Context = data
	}
	return r.Marshal()
}

// Execute checks push access, builds, and delivers the image. It writes no
// output unless the whole build and every push succeeded.
func Execute(ctx context.Context, j Job) (*Result, error) {
	log := j.Build.Logger
	if !j.Output.NoPush && !j.SkipPushPermissionCheck && j.Build.Registry != nil && !j.Build.DryRun {
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
	if res.Image == nil { // --dryrun: the plan was printed
		return res, nil
	}
	out := j.Output
	if out.BuildRecord != "" {
		if out.BuildRecordData, err = j.record(res); err != nil {
			return nil, err
		}
	}
	if err := output.Write(ctx, res.Image, out, j.Build.Registry, log); err != nil {
		return nil, err
	}
	if log != nil {
		log.Info("build complete", "digest", res.Digest.String())
	}
	return res, nil
}
