package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kilnbuild/kiln/internal/imageindex"
	"github.com/kilnbuild/kiln/internal/option"
	"github.com/kilnbuild/kiln/internal/output"
	"github.com/kilnbuild/kiln/internal/record"
)

// Job is a whole build step: the build and where its image goes.
type Job struct {
	// Build configures the build itself.
	Build Options
	// Platforms, when there are several, builds Build once for each
	// (Build.Platform set to it) and delivers one image index of the
	// images; with one or none, Build.Platform is built.
	Platforms []string
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
	var a output.Artifact = res.Image
	if res.Index != nil {
		a = res.Index
	}
	mt, err := a.MediaType()
	if err != nil {
		return nil, err
	}
	r := record.Build{
		Digest: res.Digest.String(), MediaType: string(mt), Pushed: !j.Output.NoPush,
		Dockerfile: res.Dockerfile, Materials: res.Materials,
		BuildArgs: record.MaskArgs(j.Build.BuildArgs, j.Build.LookupEnv, j.SecretIDs),
		Target:    j.Build.Target, Builder: record.BuilderVersion(),
		StartedOn: res.StartedOn, FinishedOn: time.Now().UTC(),
	}
	if res.Index == nil {
		if r.Platform, err = imagePlatform(res.Image); err != nil {
			return nil, err
		}
	}
	r.Manifests = res.Manifests
	if res.Index != nil {
		var platforms []string
		for _, m := range res.Manifests {
			platforms = append(platforms, m.Platform)
		}
		r.Platform = strings.Join(platforms, ",")
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

// imagePlatform is img's os/arch[/variant], from its config.
func imagePlatform(img v1.Image) (string, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	return platformString(v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}), nil
}

// Execute checks push access, builds, and delivers the image (an image
// index for several platforms). It writes no output unless the whole
// build and every push succeeded.
func Execute(ctx context.Context, j Job) (*Result, error) {
	log := j.Build.Logger
	if !j.Output.NoPush && !j.SkipPushPermissionCheck && j.Build.Registry != nil && !j.Build.DryRun {
		for _, d := range j.Output.Destinations {
			if err := j.Build.Registry.CheckPush(ctx, d); err != nil {
				return nil, option.New("Destinations", d.String(), err)
			}
		}
	}
	var res *Result
	var err error
	var a output.Artifact
	build := j.Build
	if !j.Output.NoPush && len(j.Output.Destinations) > 0 && build.Registry != nil && build.Upload == nil {
		// The image's layers go to the first destination as they are
		// written; its push then finds them there.
		repo := j.Output.Destinations[0].Context()
		build.Upload = func(ctx context.Context, l v1.Layer) error { return build.Registry.Upload(ctx, repo, l) }
	}
	if len(j.Platforms) > 1 {
		if res, err = buildPlatforms(ctx, build, j.Platforms); err != nil {
			return nil, err
		}
		a = res.Index
	} else {
		o := build
		if len(j.Platforms) == 1 {
			o.Platform = j.Platforms[0]
		}
		if res, err = Build(ctx, o); err != nil {
			return nil, err
		}
		a = res.Image
	}
	defer res.Close()
	if res.Image == nil && res.Index == nil { // --dryrun: the plan was printed
		return res, nil
	}
	out := j.Output
	if out.BuildRecord != "" {
		if out.BuildRecordData, err = j.record(res); err != nil {
			return nil, err
		}
	}
	began := time.Now()
	if err := output.Write(ctx, a, out, j.Build.Registry, log); err != nil {
		return nil, err
	}
	if log != nil {
		log.Info("build complete", "digest", res.Digest.String(), "output", time.Since(began).Round(time.Millisecond).String())
	}
	return res, nil
}

// buildPlatforms builds o once per platform, one after the other, and
// joins the images into an index. Every platform is planned (and its RUN
// emulation checked) before the first is built; a remote context is
// fetched once.
func buildPlatforms(ctx context.Context, o Options, platforms []string) (_ *Result, err error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	res := &Result{}
	defer func() {
		if err != nil {
			res.Close()
		}
	}()
	if isRemote(o.Context) && o.fetched == nil {
		wd, err := newWorkDir(o.WorkDir, log)
		if err != nil {
			return nil, fmt.Errorf("creating work directory: %w", err)
		}
		res.cleanup = func() { wd.remove() }
		if o.fetched, err = fetchRemote(ctx, o, filepath.Join(wd.path, "context"), o.HTTPClient, log); err != nil {
			return nil, err
		}
	}
	var builders []*builder
	defer func() {
		for _, b := range builders {
			b.cleanup()
		}
	}()
	for _, p := range platforms {
		po := o
		po.Platform = p
		po.Logger = log.With("platform", p)
		b, err := newBuilder(po)
		if err != nil {
			return nil, option.New("Platforms", p, err)
		}
		builders = append(builders, b)
		if err := b.prepare(ctx); err != nil {
			return nil, option.New("Platforms", p, err)
		}
	}
	for len(builders) > 0 {
		b := builders[0]
		builders = builders[1:]
		b.log.Info("building for platform", "platform", platformString(b.platform))
		r, err := b.finish(ctx) // cleans b up when it fails
		if err != nil {
			return nil, option.New("Platforms", platformString(b.platform), err)
		}
		res.Platforms = append(res.Platforms, r)
	}
	first := res.Platforms[0]
	res.Dockerfile, res.Context, res.StartedOn = first.Dockerfile, first.Context, first.StartedOn
	if first.Image == nil { // --dryrun
		return res, nil
	}
	var mats []record.Material
	for _, r := range res.Platforms {
		mats = append(mats, r.Materials...)
	}
	res.Materials = record.SortMaterials(mats)
	var entries []imageindex.Entry
	for _, r := range res.Platforms {
		entries = append(entries, imageindex.Entry{Image: r.Image, From: "platform " + platformString(r.platform)})
	}
	if res.Index, res.Manifests, err = imageindex.Join(entries, o.Annotations); err != nil {
		return nil, err
	}
	for i, r := range res.Platforms {
		res.Manifests[i].Materials = r.Materials
	}
	if res.Digest, err = res.Index.Digest(); err != nil {
		return nil, fmt.Errorf("computing the index digest: %w", err)
	}
	return res, nil
}
