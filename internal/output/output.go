// Package output delivers a built image: pushes to registries, a docker
// tarball, an OCI layout and kaniko's digest files. Files are prepared
// under temporary names and renamed into place only once every push has
// succeeded, so a failed build leaves none of them behind.
package output

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kilnbuild/kiln/internal/option"
)

// Options says where the image goes.
type Options struct {
	// Destinations are the --destination references.
	Destinations []name.Reference
	// NoPush skips pushing to Destinations.
	NoPush bool
	// TarPath writes a tarball `docker load` reads.
	TarPath string
	// OCILayoutPath writes (or adds to) an OCI image layout.
	OCILayoutPath string
	// DigestFile receives "sha256:<hex>" without a newline.
	DigestFile string
	// ImageNameWithDigestFile receives "repo@sha256:<hex>" per destination.
	ImageNameWithDigestFile string
	// ImageNameTagWithDigestFile receives "repo:tag@sha256:<hex>" per destination.
	ImageNameTagWithDigestFile string
	// BuildRecord receives BuildRecordData (the build record).
	BuildRecord     string
	BuildRecordData []byte
	// BuilderOutput is Cloud Build's $BUILDER_OUTPUT: the pushed images
	// are listed in its "images" file, one {"name","digest"} JSON object
	// per line and destination, as kaniko writes it (Cloud Build's
	// provenance reads it).
	BuilderOutput string
	// PushByDigest pushes to each destination's repository by digest and
	// sets no tag (BuildKit's push-by-digest): for images an index step
	// joins later.
	PushByDigest bool
	// IgnoreImmutableTagErrors treats the registries' known "tag is
	// immutable" refusals as success (--push-ignore-immutable-tag-errors).
	IgnoreImmutableTagErrors bool
}

// immutableTagErrors are the refusals of registries whose tags cannot be
// moved (kaniko's list).
var immutableTagErrors = []string{
	"The repository has enabled tag immutability",        // Artifact Registry
	"cannot be overwritten because the tag is immutable", // ECR
}

func isImmutableTagError(err error) bool {
	for _, s := range immutableTagErrors {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}

// Pusher writes images and image indexes to a registry.
type Pusher interface {
	// Write pushes img (its blobs and manifest) to ref.
	Write(ctx context.Context, ref name.Reference, img v1.Image) error
	// WriteIndex pushes idx, its images and their blobs to ref.
	WriteIndex(ctx context.Context, ref name.Reference, idx v1.ImageIndex) error
	// Tag points tag at t (an image or an index), whose manifest is in
	// tag's repository.
	Tag(ctx context.Context, tag name.Tag, t remote.Taggable) error
}

// Artifact is what Write delivers: a v1.Image or a v1.ImageIndex.
type Artifact interface {
	Digest() (v1.Hash, error)
	MediaType() (types.MediaType, error)
	RawManifest() ([]byte, error)
}

// DefaultTarTag names the image in a tarball when no destination is given.
const DefaultTarTag = "kiln.local/image:latest"

// Write delivers a (a v1.Image or a v1.ImageIndex) as o says.
func Write(ctx context.Context, a Artifact, o Options, p Pusher, log *slog.Logger) (err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	idx, isIndex := a.(v1.ImageIndex)
	img, isImage := a.(v1.Image)
	if !isIndex && !isImage {
		return fmt.Errorf("output: %T is neither an image nor an image index", a)
	}
	digest, err := a.Digest()
	if err != nil {
		return fmt.Errorf("computing digest: %w", err)
	}
	var pending []*staged
	defer func() {
		if err != nil {
			for _, s := range pending {
				s.abort()
			}
		}
	}()
	stage := func(s *staged, e error) error {
		if s != nil {
			pending = append(pending, s)
		}
		return e
	}
	if o.TarPath != "" {
		if isIndex {
			return option.New("TarPath", o.TarPath, ErrTarIndex)
		}
		if err := stage(stageTarball(img, o.TarPath, o.Destinations)); err != nil {
			return err
		}
	}
	if o.OCILayoutPath != "" {
		if err := stage(stageLayout(a, o.OCILayoutPath, o.Destinations)); err != nil {
			return err
		}
	}
	if o.DigestFile != "" {
		if err := stage(stageFile(o.DigestFile, "DigestFile", digest.String())); err != nil {
			return err
		}
	}
	if o.ImageNameWithDigestFile != "" {
		var b strings.Builder
		for _, d := range o.Destinations {
			b.WriteString(d.Context().Name() + "@" + digest.String() + "\n")
		}
		if err := stage(stageFile(o.ImageNameWithDigestFile, "ImageNameWithDigestFile", b.String())); err != nil {
			return err
		}
	}
	if o.ImageNameTagWithDigestFile != "" {
		var b strings.Builder
		for _, d := range o.Destinations {
			b.WriteString(d.Context().Name() + ":" + d.Identifier() + "@" + digest.String() + "\n")
		}
		if err := stage(stageFile(o.ImageNameTagWithDigestFile, "ImageNameTagWithDigestFile", b.String())); err != nil {
			return err
		}
	}
	if o.BuildRecord != "" {
		if err := stage(stageFile(o.BuildRecord, "BuildRecord", string(o.BuildRecordData))); err != nil {
			return err
		}
	}
	if o.BuilderOutput != "" && !o.NoPush && len(o.Destinations) > 0 {
		if err := stage(stageFile(filepath.Join(o.BuilderOutput, "images"), "BuilderOutput", builderImages(o.Destinations, digest))); err != nil {
			return err
		}
	}
	if !o.NoPush {
		// Every repository gets the whole image by digest first; only
		// then are tags set, so a push that fails leaves no tag on an
		// image that is not all there.
		for _, d := range o.Destinations {
			log.Info("pushing", "destination", d.String())
			byDigest := d.Context().Digest(digest.String())
			var err error
			if isIndex {
				err = p.WriteIndex(ctx, byDigest, idx)
			} else {
				err = p.Write(ctx, byDigest, img)
			}
			if err != nil {
				return fmt.Errorf("pushing %s: %w", d, err)
			}
		}
		for _, d := range o.Destinations {
			if t, ok := d.(name.Tag); ok && !o.PushByDigest {
				if err := p.Tag(ctx, t, a); err != nil {
					if o.IgnoreImmutableTagErrors && isImmutableTagError(err) {
						log.Warn("the tag is immutable and stays where it was (--push-ignore-immutable-tag-errors)", "destination", d.String(), "error", err.Error())
						continue
					}
					return fmt.Errorf("tagging %s: %w", d, err)
				}
			}
			log.Info("pushed", "image", d.Context().Name()+"@"+digest.String(), "destination", d.String())
		}
	}
	if err := commitAll(pending); err != nil {
		pending = nil // rolled back or aborted
		return err
	}
	pending = nil
	return nil
}

// builderImages lists the pushed images as kaniko does for Cloud Build:
// one {"name","digest"} object per line and destination.
func builderImages(dests []name.Reference, digest v1.Hash) string {
	var b strings.Builder
	for _, d := range dests {
		line, _ := json.Marshal(struct {
			Name   string `json:"name"`
			Digest string `json:"digest"`
		}{d.String(), digest.String()})
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// commitAll puts every staged output into place, or, when one fails,
// undoes those already committed and drops the rest: all or nothing.
func commitAll(pending []*staged) error {
	for i, s := range pending {
		if err := s.commit(); err != nil {
			for j := i - 1; j >= 0; j-- {
				pending[j].rollback()
			}
			for _, rest := range pending[i:] {
				rest.abort()
			}
			return err
		}
	}
	for _, s := range pending {
		if s.finish != nil {
			s.finish()
		}
	}
	return nil
}

// staged is an output written under a temporary name.
type staged struct {
	// commit puts it into place; rollback undoes a commit (a later one
	// failed), abort drops what was prepared and never committed, finish
	// drops what a commit kept for rolling back.
	commit   func() error
	rollback func()
	abort    func()
	finish   func()
}

// tempBeside creates a temporary file on the target's file system: in its
// directory, or, while that does not exist yet (a layout about to be
// renamed into place), in the nearest directory that does. Nothing is
// created at the target's path before the commit.
func tempBeside(target, opt string) (*os.File, error) {
	dir := filepath.Dir(target)
	for {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(target)+".kiln-*")
	if err != nil {
		return nil, option.New(opt, target, err)
	}
	return f, nil
}

// renameStage commits tmp by renaming it to target; what target held
// before is kept aside until every output is in place, and put back if a
// later one fails.
func renameStage(tmp, target, opt string) *staged {
	backup := ""
	var inPlace []byte // a mounted file's old content, written over in place
	return &staged{
		commit: func() error {
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return option.New(opt, target, err)
			}
			if _, err := os.Lstat(target); err == nil {
				backup = tmp + ".old"
				err := os.Rename(target, backup)
				if errors.Is(err, syscall.EBUSY) {
					// A file mounted on its own (Kubernetes' /dev/termination-
					// log) cannot be renamed: write it in place.
					backup = ""
					return writeInPlace(tmp, target, opt, &inPlace)
				}
				if err != nil {
					backup = ""
					return option.New(opt, target, err)
				}
			}
			if err := os.Rename(tmp, target); err != nil {
				if backup != "" {
					os.Rename(backup, target)
					backup = ""
				}
				return option.New(opt, target, err)
			}
			return nil
		},
		rollback: func() {
			if inPlace != nil {
				os.WriteFile(target, inPlace, 0)
				return
			}
			os.RemoveAll(target)
			if backup != "" {
				os.Rename(backup, target)
			}
		},
		abort:  func() { os.RemoveAll(tmp) },
		finish: func() { os.RemoveAll(backup) },
	}
}

// writeInPlace writes tmp's content over the file target, keeping the
// old content in *old for a rollback, and removes tmp.
func writeInPlace(tmp, target, opt string, old *[]byte) error {
	prev, err := os.ReadFile(target)
	if err != nil {
		return option.New(opt, target, err)
	}
	data, err := os.ReadFile(tmp)
	if err == nil {
		err = os.WriteFile(target, data, 0)
	}
	os.Remove(tmp)
	if err != nil {
		return option.New(opt, target, err)
	}
	*old = prev
	return nil
}

// checkTarget refuses a file output whose path names a directory, before
// anything is built or pushed.
func checkTarget(target, opt string) error {
	if fi, err := os.Stat(target); err == nil && fi.IsDir() {
		return option.Errorf(opt, target, "is a directory")
	}
	return nil
}

// stageFile prepares a small text file.
func stageFile(target, opt, content string) (*staged, error) {
	if err := checkTarget(target, opt); err != nil {
		return nil, err
	}
	f, err := tempBeside(target, opt)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, option.New(opt, target, err)
	}
	return renameStage(f.Name(), target, opt), nil
}

// stageTarball prepares a docker tarball tagged with every destination.
func stageTarball(img v1.Image, target string, dests []name.Reference) (*staged, error) {
	if err := checkTarget(target, "TarPath"); err != nil {
		return nil, err
	}
	f, err := tempBeside(target, "TarPath")
	if err != nil {
		return nil, err
	}
	f.Close()
	refs := map[name.Reference]v1.Image{}
	for _, d := range dests {
		if t, ok := d.(name.Tag); ok {
			refs[t] = img
		}
	}
	if len(refs) == 0 {
		t, _ := name.NewTag(DefaultTarTag)
		refs[t] = img
	}
	if err := tarball.MultiRefWriteToFile(f.Name(), refs); err != nil {
		os.Remove(f.Name())
		return nil, option.New("TarPath", target, err)
	}
	os.Chmod(f.Name(), 0o644)
	return renameStage(f.Name(), target, "TarPath"), nil
}

// ErrTarIndex refuses --tar-path for an image index: the docker tarball
// `docker load` reads holds images, one platform each.
var ErrTarIndex = errors.New("a docker tarball cannot hold an image index (several platforms): use option OCILayoutPath, or build one platform per tarball")

// stageLayout prepares an OCI layout holding a (an image or an index). A
// new layout directory is renamed into place; an existing one gets the
// blobs first and its index.json replaced last, by rename.
func stageLayout(a Artifact, target string, dests []name.Reference) (*staged, error) {
	const opt = "OCILayoutPath"
	parent := filepath.Dir(target)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, option.New(opt, target, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(target)+".kiln-*")
	if err != nil {
		return nil, option.New(opt, target, err)
	}
	os.Chmod(tmp, 0o755)
	fail := func(err error) (*staged, error) {
		os.RemoveAll(tmp)
		return nil, option.New(opt, target, err)
	}
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return fail(err)
	}
	var opts []layout.Option
	if len(dests) > 0 {
		opts = append(opts, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": dests[0].Identifier(),
		}))
	}
	switch a := a.(type) {
	case v1.ImageIndex:
		err = p.AppendIndex(a, opts...)
	case v1.Image:
		err = p.AppendImage(a, opts...)
	}
	if err != nil {
		return fail(err)
	}
	fi, err := os.Stat(target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return renameStage(tmp, target, opt), nil
	case err != nil:
		return fail(err)
	case !fi.IsDir():
		return fail(errors.New("exists and is not a directory"))
	}
	ents, err := os.ReadDir(target)
	if err != nil {
		return fail(err)
	}
	if len(ents) > 0 {
		if _, err := os.Stat(filepath.Join(target, "index.json")); err != nil {
			return fail(errors.New("exists, is not empty and is not an OCI layout (no index.json)"))
		}
	}
	index := filepath.Join(target, "index.json")
	old, oldErr := os.ReadFile(index)
	return &staged{
		commit: func() error {
			defer os.RemoveAll(tmp)
			if err := mergeLayout(tmp, target); err != nil {
				return option.New(opt, target, err)
			}
			return nil
		},
		// The blobs added stay: without the index entry they are unused.
		rollback: func() {
			if oldErr == nil {
				atomicWrite(index, old)
			} else {
				os.Remove(index)
			}
		},
		abort: func() { os.RemoveAll(tmp) },
	}, nil
}

// atomicWrite replaces p with data through a rename.
func atomicWrite(p string, data []byte) error {
	tmp := p + ".kiln-restore"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// mergeLayout moves src's blobs into the layout dst and then atomically
// replaces dst's index.json with both indexes' manifests.
func mergeLayout(src, dst string) error {
	err := filepath.WalkDir(filepath.Join(src, "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if _, err := os.Stat(to); err == nil {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		return os.Rename(p, to)
	})
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dst, "oci-layout")); err != nil {
		if err := os.Rename(filepath.Join(src, "oci-layout"), filepath.Join(dst, "oci-layout")); err != nil {
			return err
		}
	}
	var merged v1.IndexManifest
	if err := readIndex(filepath.Join(dst, "index.json"), &merged); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var added v1.IndexManifest
	if err := readIndex(filepath.Join(src, "index.json"), &added); err != nil {
		return err
	}
	if merged.SchemaVersion == 0 {
		merged = added
	} else {
		merged.Manifests = append(merged.Manifests, added.Manifests...)
	}
	data, err := json.MarshalIndent(merged, "", "   ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(src, "index.json.new")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dst, "index.json"))
}

func readIndex(p string, into *v1.IndexManifest) error {
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, into)
}

// Batch is a set of small files written together: each is prepared under a
// temporary name, and Commit renames them all into place; Abort removes
// what was prepared. Steps use it to write results all or nothing.
type Batch struct {
	pending []*staged
}

// Add prepares a file; opt names its option in errors.
func (b *Batch) Add(path, opt, content string) error {
	s, err := stageFile(path, opt, content)
	if err != nil {
		return err
	}
	b.pending = append(b.pending, s)
	return nil
}

// Commit renames every prepared file into place, or none of them.
func (b *Batch) Commit() error {
	err := commitAll(b.pending)
	b.pending = nil
	return err
}

// Abort removes every prepared file.
func (b *Batch) Abort() {
	for _, s := range b.pending {
		s.abort()
	}
	b.pending = nil
}
