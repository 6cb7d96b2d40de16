// Package imageindex joins images built apart (one per platform, on as
// many machines) into one image index, as the index step does after a
// Tekton matrix or an Argo fan-out: each entry carries its image's
// platform, read from the image's config.
package imageindex

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kilnbuild/kiln/internal/option"
	"github.com/kilnbuild/kiln/internal/output"
	"github.com/kilnbuild/kiln/internal/record"
)

// Getter reads manifests from a registry (registry.Client).
type Getter interface {
	Get(ctx context.Context, ref name.Reference) (*remote.Descriptor, error)
	ParseReference(s string, push bool) (name.Reference, error)
}

// Options say which images to join and where the index goes.
type Options struct {
	// Images are REPOSITORY@DIGEST references, or bare digests (sha256:…)
	// in the first destination's repository, or JSON arrays of either (an
	// Argo fan-out's aggregated outputs). An image index among them
	// contributes its platform images.
	Images []string
	// Records are build records (build.json) whose pushed images join, or
	// glob patterns of them.
	Records []string
	// Annotations are set on the index.
	Annotations map[string]string
	// Output says where the index goes (its BuildRecord gets the index's
	// own record).
	Output output.Options
	// Registry reads the images; Pusher writes the index.
	Registry Getter
	Pusher   output.Pusher
	Logger   *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// source is one image named on the command line or in a record.
type source struct {
	ref    string // as given
	digest string // the image's digest, when ref (a record's) has a tag
	from   string // the flag or file it came from, for errors
}

// Result is the index pushed.
type Result struct {
	Index     v1.ImageIndex
	Digest    v1.Hash
	Manifests []record.Manifest
}

// Push resolves every image, checks them, builds the index and delivers
// it. Nothing is written unless every image is there with a platform of
// its own.
func Push(ctx context.Context, o Options) (*Result, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	started := now().UTC()
	srcs, err := o.sources()
	if err != nil {
		return nil, err
	}
	if len(srcs) == 0 {
		return nil, errors.New("no image to join: name them with option Images REF@DIGEST, as arguments, or with option BuildRecord")
	}
	var entries []Entry
	var materials []record.Material
	add := func(ref name.Digest, img v1.Image, from string) {
		entries = append(entries, Entry{Image: img, From: from})
		materials = append(materials, record.Material{Ref: ref.Context().Name(), Digest: ref.DigestStr(), Use: "platform image"})
		log.Info("joining", "image", ref.String())
	}
	for _, s := range srcs {
		ref, err := o.digestRef(s)
		if err != nil {
			return nil, err
		}
		desc, err := o.Registry.Get(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.from, err)
		}
		if desc.MediaType.IsIndex() {
			idx, err := desc.ImageIndex()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.from, err)
			}
			m, err := idx.IndexManifest()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.from, err)
			}
			for _, d := range m.Manifests {
				if !d.MediaType.IsImage() {
					continue
				}
				img, err := idx.Image(d.Digest)
				if err != nil {
					return nil, fmt.Errorf("%s: %s: %w", s.from, d.Digest, err)
				}
				add(ref.Context().Digest(d.Digest.String()), img, s.from+" ("+d.Digest.String()+")")
			}
			continue
		}
		if !desc.MediaType.IsImage() {
			return nil, fmt.Errorf("%s: %s is neither an image nor an image index", s.from, desc.MediaType)
		}
		img, err := desc.Image()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.from, err)
		}
		add(ref, img, s.from)
	}
	if len(entries) == 0 {
		return nil, errors.New("the images named hold no platform image (an empty index?): nothing to join")
	}
	idx, manifests, err := Join(entries, o.Annotations)
	if err != nil {
		return nil, err
	}
	mt, err := idx.MediaType()
	if err != nil {
		return nil, err
	}
	d, err := idx.Digest()
	if err != nil {
		return nil, fmt.Errorf("computing the index digest: %w", err)
	}
	out := o.Output
	if out.BuildRecord != "" {
		var platforms []string
		for _, m := range manifests {
			platforms = append(platforms, m.Platform)
		}
		r := record.Build{
			Digest: d.String(), MediaType: string(mt), Pushed: !out.NoPush, Materials: record.SortMaterials(materials),
			Platform: strings.Join(platforms, ","), Manifests: manifests, Builder: record.BuilderVersion(),
			StartedOn: started, FinishedOn: now().UTC(),
		}
		for _, dst := range out.Destinations {
			r.Images = append(r.Images, record.Image{Ref: dst.String(), Digest: d.String()})
		}
		if out.BuildRecordData, err = r.Marshal(); err != nil {
			return nil, err
		}
	}
	if err := output.Write(ctx, idx, out, o.Pusher, log); err != nil {
		return nil, err
	}
	log.Info("index complete", "digest", d.String(), "platforms", len(manifests))
	return &Result{Index: idx, Digest: d, Manifests: manifests}, nil
}

// Entry is an image to put in an index; From names it in errors.
type Entry struct {
	Image v1.Image
	From  string
}

// Join makes the index of entries, in order, each entry carrying its
// image's platform from the image's config: a Docker manifest list when
// every image is a Docker manifest, else an OCI index, with annotations on
// it. It refuses an image without a platform and two images for one
// platform. The manifests describe the entries for a build record.
func Join(entries []Entry, annotations map[string]string) (v1.ImageIndex, []record.Manifest, error) {
	var adds []mutate.IndexAddendum
	var manifests []record.Manifest
	byPlatform := map[string]string{}
	allDocker := true
	for _, e := range entries {
		cf, err := e.Image.ConfigFile()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: reading its config: %w", e.From, err)
		}
		p := cf.Platform()
		if p == nil || p.OS == "" || p.Architecture == "" {
			return nil, nil, fmt.Errorf("%s: the image has no platform in its config (os and architecture): an index entry needs one", e.From)
		}
		ps := p.String()
		if prev, ok := byPlatform[ps]; ok {
			return nil, nil, fmt.Errorf("%s and %s are both for %s: an index holds one image per platform", prev, e.From, ps)
		}
		byPlatform[ps] = e.From
		mt, err := e.Image.MediaType()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", e.From, err)
		}
		d, err := e.Image.Digest()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", e.From, err)
		}
		allDocker = allDocker && mt == types.DockerManifestSchema2
		adds = append(adds, mutate.IndexAddendum{Add: e.Image, Descriptor: v1.Descriptor{Platform: p}})
		manifests = append(manifests, record.Manifest{Platform: ps, Digest: d.String(), MediaType: string(mt)})
	}
	mt := types.OCIImageIndex
	if allDocker {
		mt = types.DockerManifestList
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, mt), adds...)
	if len(annotations) > 0 {
		idx = mutate.Annotations(idx, annotations).(v1.ImageIndex)
	}
	return idx, manifests, nil
}

// sources lists the images to join: Images, then each record's.
func (o Options) sources() ([]source, error) {
	var out []source
	for _, s := range o.Images {
		s = strings.TrimSpace(s)
		if strings.HasPrefix(s, "[") {
			// A JSON list, as Argo aggregates a fan-out's output parameters.
			var list []string
			if err := json.Unmarshal([]byte(s), &list); err != nil {
				return nil, option.Errorf("Images", s, "a list must be a JSON array of strings: %w", err)
			}
			for _, e := range list {
				out = append(out, source{ref: strings.TrimSpace(e), from: "--image " + e})
			}
			continue
		}
		out = append(out, source{ref: s, from: "--image " + s})
	}
	var records []string
	for _, path := range o.Records {
		if !strings.ContainsAny(path, "*?[") {
			records = append(records, path)
			continue
		}
		// A pattern, as CI artifacts of a matrix arrive (platforms/*.json).
		matches, err := filepath.Glob(path)
		if err != nil || len(matches) == 0 {
			return nil, option.Errorf("BuildRecord", path, "no file matches")
		}
		records = append(records, matches...)
	}
	for _, path := range records {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, option.New("BuildRecord", path, err)
		}
		var r record.Build
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, option.New("BuildRecord", path, err)
		}
		if !r.Pushed || len(r.Images) == 0 {
			return nil, option.Errorf("BuildRecord", path, "the build pushed no image (--no-push), so there is none in a registry to join")
		}
		if r.Digest == "" {
			return nil, option.Errorf("BuildRecord", path, "no digest")
		}
		out = append(out, source{ref: r.Images[0].Ref, digest: r.Digest, from: "--build-record " + path})
	}
	return out, nil
}

// digestRef parses a source, which must name its image by digest.
func (o Options) digestRef(s source) (name.Digest, error) {
	ref := s.ref
	if strings.HasPrefix(ref, "sha256:") {
		if len(o.Output.Destinations) == 0 {
			return name.Digest{}, fmt.Errorf("%s: a bare digest needs option Destinations naming a repository that holds it", s.from)
		}
		ref = o.Output.Destinations[0].Context().Name() + "@" + ref
	}
	r, err := o.Registry.ParseReference(ref, false)
	if err != nil {
		return name.Digest{}, fmt.Errorf("%s: %w", s.from, err)
	}
	if s.digest != "" {
		if _, err := v1.NewHash(s.digest); err != nil {
			return name.Digest{}, fmt.Errorf("%s: digest %q: %w", s.from, s.digest, err)
		}
		return r.Context().Digest(s.digest), nil
	}
	d, ok := r.(name.Digest)
	if !ok {
		return name.Digest{}, fmt.Errorf("%s: name the image by digest (REPOSITORY@sha256:…): a tag can move while the index is made", s.from)
	}
	return d, nil
}
