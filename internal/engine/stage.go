package engine

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/dockerfile"
	"github.com/kilnbuild/kiln/internal/instruction"
	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/option"
	"github.com/kilnbuild/kiln/internal/rootfs"
	"github.com/kilnbuild/kiln/internal/snapshot"
)

// historyComment marks history entries kiln wrote.
const historyComment = "kiln.dockerfile.v0"

// stage is the state of one stage while its instructions run.
type stage struct {
	ps   *dockerfile.Stage
	root *stageRoot // where the stage's files are built
	base v1.Image
	// State is the config and variables, which instructions change.
	instruction.State
	oci      bool
	history  []v1.History
	addenda  []mutate.Addendum
	platform v1.Platform
	img      v1.Image // the finished image
	// key is the cache key of the stage so far.
	key string
	// unpacked says the base image is in root; pending are layers taken
	// from the cache and not yet applied to root.
	unpacked bool
	pending  []v1.Layer
	// lazy indexes the layers not in root yet (for lazyFor pending layers
	// and the unpacked state lazyUnpacked); ahead says root holds files an
	// instruction wrote before those layers were unpacked.
	lazy         *pathIndex
	lazyFor      int
	lazyUnpacked bool
	ahead        bool
	// snapshot is the root's state after the last RUN, while nothing else
	// has written to the root since.
	snapshot *snapshot.Snapshot
	// imageless says nothing reads the stage's image, only its root
	// (COPY --from, RUN --mount): it makes no snapshots and no layers.
	imageless bool
	// own indexes the paths of the pending layers this build made and
	// did not write into the root (streamed COPYs); nil when none.
	own *pathIndex
}

// imageNeeded says whether stage ps's image is read: it is a target, a
// later stage starts FROM it, or the layer cache stores its layers. A
// stage that only COPY --from or RUN --mount reads is needed as a root
// alone.
func (b *builder) imageNeeded(ps *dockerfile.Stage) bool {
	if ps.Index == b.plan.Target || b.cache {
		return true
	}
	for _, name := range b.o.AlsoBuild {
		if b.df.StageIndex(strings.TrimSpace(name), len(b.df.Stages)) == ps.Index {
			return true
		}
	}
	for _, other := range b.plan.Stages {
		if other.Build && other.BaseStage == ps.Index {
			return true
		}
	}
	return false
}

func (b *builder) buildStage(ctx context.Context, ps *dockerfile.Stage) (*stage, error) {
	platform, err := b.stagePlatform(ps)
	if err != nil {
		return nil, err
	}
	st := &stage{ps: ps, State: instruction.State{Args: &dockerfile.Env{}}, platform: platform}
	switch {
	case ps.BaseStage >= 0:
		prev, ok := b.stages[ps.BaseStage]
		if !ok {
			return nil, &dockerfile.Error{File: b.df.Name, Line: ps.Line, Err: fmt.Errorf("FROM %s: stage was not built", ps.Base)}
		}
		st.base = prev.img
	case strings.EqualFold(ps.Base, "scratch"):
		st.base = mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		st.base = mutate.ConfigMediaType(st.base, types.OCIConfigJSON)
	default:
		if st.base, err = b.baseImage(ctx, ps, st.platform); err != nil {
			return nil, err
		}
	}
	if ps.BaseStage < 0 && !strings.EqualFold(ps.Base, "scratch") {
		b.material(ps.Base, st.base, "base")
	}
	if b.cache {
		if err := b.initKey(st); err != nil {
			return nil, err
		}
	}
	mt, err := st.base.MediaType()
	if err != nil {
		return nil, fmt.Errorf("base image %s: %w", ps.Base, err)
	}
	st.oci = mt != types.DockerManifestSchema2
	if !st.oci && b.o.Compression == layer.Zstd {
		return nil, &dockerfile.Error{File: b.df.Name, Line: ps.Line,
			Err: option.Errorf("Compression", string(layer.Zstd), "needs an OCI base image; %s uses Docker media types", ps.Base)}
	}
	cf, err := st.base.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("base image %s: reading config: %w", ps.Base, err)
	}
	st.Config = cf.DeepCopy()
	if strings.EqualFold(ps.Base, "scratch") && ps.BaseStage < 0 {
		st.Config.OS, st.Config.Architecture, st.Config.Variant = st.platform.OS, st.platform.Architecture, st.platform.Variant
		st.Config.RootFS.Type = "layers"
	}
	// As BuildKit: a relative working directory in the base's config is
	// taken from "/" (system.NormalizeWorkdir), and PATH is always set.
	if wd := st.Config.Config.WorkingDir; wd != "" && !path.IsAbs(wd) {
		st.Config.Config.WorkingDir = path.Join("/", wd)
	}
	st.StartInterval = healthStartInterval(st.base)
	st.ImageEnv = dockerfile.NewEnv(st.Config.Config.Env)
	if _, ok := st.ImageEnv.Get("PATH"); !ok {
		st.ImageEnv.Set("PATH", defaultPath)
	}
	st.Env = st.ImageEnv.Clone()
	if ps.BaseStage >= 0 {
		// A stage built on another inherits its ARGs (BuildKit's
		// dispatchState.init), values included.
		prev := b.stages[ps.BaseStage]
		for _, k := range prev.Args.Keys() {
			v, _ := prev.Args.Get(k)
			st.Args.Set(k, v)
			st.Env.Set(k, v)
		}
	}
	triggers := st.Config.Config.OnBuild
	st.Config.Config.OnBuild = nil

	if st.root, err = b.iso.stageRoot(ps.Index); err != nil {
		return nil, err
	}
	// In place a stage's image is what keeps it once the next stage
	// empties the live root.
	st.imageless = st.root.live == nil && !b.imageNeeded(ps)
	// Unpacking waits for the first instruction that needs the files (see
	// lazyroot.go), unless the isolation wants the base at once: a stage
	// of COPYs onto a fresh path unpacks nothing.
	if b.iso.eager() {
		if err := b.materialize(ctx, st); err != nil {
			return nil, err
		}
	}
	var start *snapshot.Snapshot
	if b.o.SingleSnapshot && !st.imageless {
		if err := b.materialize(ctx, st); err != nil {
			return nil, err
		}
		stop := b.clock(phaseSnapshot)
		start, err = snapshot.Take(ctx, st.root.dir, b.snapshotOptions(st))
		stop()
		if err != nil {
			return nil, err
		}
	}
	for _, t := range triggers {
		cmd, err := dockerfile.ParseTrigger(t)
		if err != nil {
			return nil, &dockerfile.Error{File: b.df.Name, Line: ps.Line, Err: err}
		}
		b.log.Info("running ONBUILD trigger", "stage", stageLabel(ps), "trigger", t)
		if err := b.dispatch(ctx, st, cmd); err != nil {
			return nil, dockerfile.WrapError(b.df.Name, b.fromLocation(ps), fmt.Errorf("ONBUILD %s: %w", t, err))
		}
	}
	for _, cmd := range ps.Commands {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b.log.Info(sourceText(cmd), "stage", stageLabel(ps))
		if err := b.dispatch(ctx, st, cmd); err != nil {
			return nil, dockerfile.WrapError(b.df.Name, cmd.Location(), err)
		}
	}
	if start != nil {
		stop := b.clock(phaseSnapshot)
		changes, _, err := start.Diff(ctx, b.snapshotOptions(st))
		if err != nil {
			stop()
			return nil, err
		}
		entries, err := snapshot.Entries(st.root.dir, changes)
		stop()
		if err != nil {
			return nil, err
		}
		if entries.Len() > 0 {
			if err := b.addLayer(ctx, st, "single snapshot of stage "+stageLabel(ps), entries); err != nil {
				return nil, err
			}
		}
	}
	if ps.Index == b.plan.Target && len(b.o.Labels) > 0 {
		if st.Config.Config.Labels == nil {
			st.Config.Config.Labels = map[string]string{}
		}
		for _, l := range b.o.Labels {
			k, v, _ := strings.Cut(l, "=")
			st.Config.Config.Labels[k] = v
		}
	}
	if err := b.checkUnapplied(st); err != nil {
		return nil, err
	}
	if err := st.finish(b.now); err != nil {
		return nil, err
	}
	if err := b.iso.finished(ctx, st); err != nil {
		return nil, err
	}
	return st, nil
}

// materialize brings the stage's root up to date: the base image unpacked
// (emptying the root first in place), then the layers taken from the cache.
func (b *builder) materialize(ctx context.Context, st *stage) error {
	if !st.unpacked {
		if st.root.live != nil {
			if err := st.root.clear(); err != nil {
				return err
			}
		}
		// A root already holding what instructions wrote is never emptied
		// for a retry.
		if err := b.unpack(ctx, st.root, st.base, st.ps.Base, !st.ahead); err != nil {
			return &dockerfile.Error{File: b.df.Name, Line: st.ps.Line, Err: err}
		}
		st.unpacked = true
	}
	defer b.clock(phaseUnpack)()
	for _, l := range st.pending {
		if err := b.applyLayer(st, l); err != nil {
			return err
		}
	}
	st.pending, st.own = nil, nil
	return nil
}

// applyLayer applies a layer not in st's root yet (from the cache, or a
// streamed COPY's) to it.
func (b *builder) applyLayer(st *stage, l v1.Layer) error {
	r, finish, err := layer.OpenTar(l)
	if err != nil {
		return fmt.Errorf("reading a layer to apply: %w", err)
	}
	err = rootfs.ApplyTar(st.root.dir, r, st.root.unpackOptions(rootfs.UnpackOptions{Logger: b.log}))
	if ferr := finish(); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return fmt.Errorf("applying a layer: %w", err)
	}
	return nil
}

// initKey starts the stage's cache key from its base and the settings
// that shape every layer.
func (b *builder) initKey(st *stage) error {
	base := ""
	switch {
	case st.ps.BaseStage >= 0:
		base = "stage:" + b.stages[st.ps.BaseStage].key
	default:
		d, err := st.base.Digest()
		if err != nil {
			return err
		}
		base = "image:" + d.String()
	}
	epoch := ""
	if b.epoch != nil {
		epoch = b.epoch.String()
	}
	st.key = cache.NewKey(base).Add("platform", platformString(st.platform)).
		Add("compression", fmt.Sprintf("%s/%d", b.o.Compression, b.o.CompressionLevel)).
		Add("reproducible", epoch).String()
	return nil
}

// baseImage is the image a stage's FROM names, from the cache directory
// or the registry, fetched once per build.
func (b *builder) baseImage(ctx context.Context, ps *dockerfile.Stage, platform v1.Platform) (v1.Image, error) {
	key := ps.Base + "\x00" + platformString(platform)
	if img, ok := b.bases[key]; ok {
		return img, nil
	}
	stop := b.clock(phasePull)
	img, err := b.pullBase(ctx, ps.Base, platform)
	stop()
	if err != nil {
		return nil, &dockerfile.Error{File: b.df.Name, Line: ps.Line, Err: fmt.Errorf("FROM %s: %w", ps.Base, err)}
	}
	b.bases[key] = img
	return img, nil
}

// stagePlatform is the platform a stage builds for.
func (b *builder) stagePlatform(ps *dockerfile.Stage) (v1.Platform, error) {
	if ps.Platform == "" {
		return b.platform, nil
	}
	p, err := ParsePlatform(ps.Platform)
	if err != nil {
		return v1.Platform{}, &dockerfile.Error{File: b.df.Name, Line: ps.Line, Err: fmt.Errorf("FROM --platform: %w", err)}
	}
	return p, nil
}

// requireOnbuildStages marks, besides the stages the target needs, those
// its base images' ONBUILD triggers read (COPY --from=<stage>, RUN
// --mount from=), which only the images' configs tell.
func (b *builder) requireOnbuildStages(ctx context.Context) error {
	for changed := true; changed; {
		changed = false
		for _, ps := range b.plan.Stages {
			if !ps.Build {
				continue
			}
			img, err := b.registryBase(ctx, ps)
			if err != nil {
				return err
			}
			if img == nil {
				continue
			}
			cf, err := img.ConfigFile()
			if err != nil {
				return fmt.Errorf("base image %s: reading config: %w", ps.Base, err)
			}
			var cmds []instructions.Command
			for _, t := range cf.Config.OnBuild {
				if cmd, err := dockerfile.ParseTrigger(t); err == nil {
					cmds = append(cmds, cmd)
				}
			}
			for _, j := range b.df.CommandRefs(cmds, ps.Index, b.plan.Meta) {
				if !b.plan.Stages[j].Build {
					b.plan.Require(b.df, j)
					changed = true
				}
			}
		}
	}
	return nil
}

// pullBase fetches a base image as kaniko does with --cache-dir: a
// digest reference is looked up in the cache directory first; any other is
// resolved in the registry and its manifest digest looked up there, so a
// moved tag is never served stale. When the registry cannot be reached
// (not when it refuses), the image warm-cache stored under the name is
// used, with a warning.
func (b *builder) pullBase(ctx context.Context, ref string, platform v1.Platform) (v1.Image, error) {
	dir := b.o.BaseImages
	if dir != nil {
		if d, err := name.NewDigest(ref, name.WeakValidation); err == nil {
			if h, err := v1.NewHash(d.DigestStr()); err == nil {
				if img, err := dir.ByDigest(h); err == nil {
					b.log.Info("base image from the cache directory", "image", ref)
					return img, nil
				} else if !errors.Is(err, cache.ErrMiss) {
					b.log.Warn("not using the cache directory's copy", "image", ref, "error", err)
				}
			}
		}
	}
	if b.o.Registry == nil {
		return nil, errors.New("no registry client")
	}
	img, err := b.o.Registry.PullPlatform(ctx, ref, platform)
	if err != nil {
		var te *transport.Error
		if dir == nil || ctx.Err() != nil || errors.As(err, &te) {
			return nil, err
		}
		cimg, at, cerr := dir.ByName(ref, platform)
		if cerr != nil {
			return nil, err
		}
		b.log.Warn("registry unreachable: using the image warm-cache stored under this name", "image", ref,
			"stored", at.UTC().Format(time.RFC3339), "error", err)
		return cimg, nil
	}
	if dir == nil {
		return img, nil
	}
	h, err := img.Digest()
	if err != nil {
		return nil, err
	}
	cimg, err := dir.ByDigest(h)
	if err != nil {
		if !errors.Is(err, cache.ErrMiss) {
			b.log.Warn("not using the cache directory's copy", "image", ref, "error", err)
		}
		return img, nil
	}
	b.log.Info("base image from the cache directory", "image", ref, "digest", h.String())
	return cimg, nil
}

func platformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// snapshotOptions are the options of every snapshot of a stage root.
func (b *builder) snapshotOptions(st *stage) snapshot.Options {
	o := snapshot.Options{Mode: b.snapshotMode()}
	if st.root.live != nil || len(b.o.IgnorePaths) > 0 {
		o.Ignore = b.ignore.Ignored
	}
	return o
}

func (b *builder) fromLocation(ps *dockerfile.Stage) []parser.Range {
	return []parser.Range{{Start: parser.Position{Line: ps.Line}}}
}

// unpack extracts img into r; retry allows --image-fs-extract-retry
// attempts, each on a root emptied first.
func (b *builder) unpack(ctx context.Context, r *stageRoot, img v1.Image, what string, retry bool) error {
	var err error
	tries := b.o.ImageFSExtractRetry
	if !retry {
		tries = 0
	}
	for i := 0; i <= tries; i++ {
		if i > 0 {
			b.log.Warn("retrying image extraction", "image", what, "attempt", i, "error", err)
			// Emptied, not replaced: handles on the root stay valid.
			if err := r.clear(); err != nil {
				return err
			}
		}
		stop := b.clock(phaseUnpack)
		parts := map[int]*pathIndex{}
		err = rootfs.Unpack(ctx, r.dir, img, r.unpackOptions(rootfs.UnpackOptions{Logger: b.log, Name: what,
			Entry: func(layer int, name string) {
				if parts[layer] == nil {
					parts[layer] = newPathIndex()
				}
				parts[layer].add(name)
			}}))
		stop()
		if err == nil {
			b.keepIndexes(img, parts)
			return nil
		}
	}
	return fmt.Errorf("extracting %s: %w", what, err)
}

// keepIndexes keeps the indexes of img's layers, just unpacked (parts by
// layer; a layer with no entries has none).
func (b *builder) keepIndexes(img v1.Image, parts map[int]*pathIndex) {
	ls, err := img.Layers()
	if err != nil {
		return
	}
	for i, l := range ls {
		d, err := l.Digest()
		if err != nil {
			continue
		}
		if parts[i] == nil {
			parts[i] = newPathIndex()
		}
		b.layerTops[d] = parts[i]
	}
}

// finish assembles the stage's image.
func (st *stage) finish(now time.Time) error {
	img, err := mutate.Append(st.base, st.addenda...)
	if err != nil {
		return fmt.Errorf("appending layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	baseCf, err := st.base.ConfigFile()
	if err != nil {
		return err
	}
	cf.History = append(append([]v1.History(nil), baseCf.History...), st.history...)
	cf.Config = st.Config.Config
	cf.Config.Env = st.ImageEnv.List()
	cf.Author = st.Config.Author
	cf.OS, cf.Architecture, cf.Variant = st.Config.OS, st.Config.Architecture, st.Config.Variant
	cf.Created = v1.Time{Time: now}
	cf.Container, cf.DockerVersion = "", ""
	if st.img, err = mutate.ConfigFile(img, cf); err != nil {
		return fmt.Errorf("writing config: %w", err)
	}
	if st.StartInterval > 0 && cf.Config.Healthcheck != nil {
		if st.img, err = withHealthStartInterval(st.img, st.StartInterval); err != nil {
			return fmt.Errorf("writing HEALTHCHECK --start-interval: %w", err)
		}
	}
	return nil
}

// commit records an instruction. As BuildKit, RUN, COPY, ADD and a
// WORKDIR other than / commit a layer (withLayer), empty or not, so that
// layers and history align as Docker's do; metadata instructions record
// an empty-layer history entry.
func (b *builder) commit(ctx context.Context, st *stage, createdBy string, entries *layer.List, withLayer bool) error {
	if !withLayer || b.o.SingleSnapshot || st.imageless {
		// With --single-snapshot the stage's one layer is the difference
		// between its start and its end, taken in buildStage; a stage
		// whose image nothing reads has no layers.
		st.history = append(st.history, v1.History{
			Created: v1.Time{Time: b.now}, CreatedBy: createdBy, Comment: historyComment, EmptyLayer: true,
		})
		return nil
	}
	if entries.Len() > 0 {
		st.snapshot = nil
	}
	return b.addLayer(ctx, st, createdBy, entries)
}

// addLayer appends a layer of entries with its history entry.
func (b *builder) addLayer(ctx context.Context, st *stage, createdBy string, entries *layer.List) error {
	h := historyEntry(b.now, createdBy)
	mt := types.DockerLayer
	if st.oci {
		mt = types.OCILayer
		if b.o.Compression == layer.Zstd {
			mt = types.OCILayerZStd
		}
	}
	stop := b.clock(phaseLayer)
	l, err := layer.New(ctx, b.work, entries, layer.Options{
		Compression: b.o.Compression, Level: b.o.CompressionLevel, MediaType: mt, ModTime: b.epoch,
		TopLevel: b.cache, Follow: b.uploads.follow(st.ps),
	})
	stop()
	if err != nil {
		return err
	}
	st.history = append(st.history, h)
	st.addenda = append(st.addenda, mutate.Addendum{Layer: l, MediaType: mt})
	return nil
}

// expand expands the instruction's words with the stage's variables.
func (b *builder) expand(st *stage, cmd instructions.Command) error {
	exp := st.Env.Expander(b.df.Escape)
	if ex, ok := cmd.(instructions.SupportsSingleWordExpansion); ok {
		if err := ex.Expand(exp); err != nil {
			return err
		}
	}
	if ex, ok := cmd.(instructions.SupportsSingleWordExpansionRaw); ok {
		if err := ex.ExpandRaw(exp); err != nil {
			return err
		}
	}
	return nil
}

// dispatch runs one instruction.
func (b *builder) dispatch(ctx context.Context, st *stage, cmd instructions.Command) error {
	if err := b.expand(st, cmd); err != nil {
		return fmt.Errorf("%s: %w", strings.ToUpper(cmd.Name()), err)
	}
	h, err := b.handlerFor(cmd)
	if err != nil {
		return err
	}
	return h.apply(ctx, st)
}

// workdirHandler is WORKDIR.
type workdirHandler struct {
	b *builder
	c *instructions.WorkdirCommand
}

// key: the directory made depends on the path, the working directory it
// is taken from and the USER that owns what it creates.
func (h workdirHandler) key(_ context.Context, st *stage, k *cache.Key) (bool, error) {
	c := st.Config.Config
	k.Add("workdir", h.c.Path).Add("user", c.User).Add("from", c.WorkingDir)
	return false, nil
}

// root: the owner of a USER by name is looked up in the root.
func (h workdirHandler) root(st *stage) (rootNeed, error) {
	return h.b.rootFor(st, h.c, h.c.Path, st.Config.Config.User != "")
}

// apply sets the working directory and creates it, owned by the stage's
// USER, when it is missing. As BuildKit, a WORKDIR other than / commits a
// layer, empty when the directory was there.
func (h workdirHandler) apply(ctx context.Context, st *stage) error {
	p := h.c.Path
	wd := instruction.Workdir(&st.State, h.c)
	owner := rootfs.IDs{}
	if user := st.Config.Config.User; user != "" {
		var err error
		if owner, err = rootfs.LookupUser(st.root.fs, user); err != nil {
			return fmt.Errorf("WORKDIR %s: %w", p, err)
		}
	}
	w := h.b.newWriter(st, writerOptions{createOwner: owner})
	defer w.close()
	if _, err := w.mkdirAll(wd); err != nil {
		return fmt.Errorf("WORKDIR %s: %w", p, err)
	}
	var entries *layer.List
	if w.createdAny {
		entries = w.entries()
	}
	return h.b.commit(ctx, st, sourceText(h.c), entries, wd != "/")
}

// sourceText is an instruction's Dockerfile text.
func sourceText(cmd instructions.Command) string {
	if s, ok := cmd.(fmt.Stringer); ok {
		return s.String()
	}
	return strings.ToUpper(cmd.Name())
}

// historyEntry is the history of one instruction.
func historyEntry(now time.Time, createdBy string) v1.History {
	return v1.History{Created: v1.Time{Time: now}, CreatedBy: createdBy, Comment: historyComment}
}
