package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// refAnnotation names the image an entry of a cache directory holds, as
// kaniko's warmer writes it.
const refAnnotation = "org.opencontainers.image.ref.name"

// lockDir holds the per-digest lock files warmers sharing a cache volume
// take, named as kaniko's warmer names them so both cooperate.
const lockDir = ".warmer-locks"

// entryName is what a cache directory entry is called: an image manifest
// digest.
var entryName = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ErrExpired is returned for an entry older than the directory's TTL.
var ErrExpired = errors.New("stored image is older than the cache TTL")

// BaseDir is a cache directory of base images in kaniko's format, as
// kaniko's warmer and kiln's warm-cache write it: one entry per image
// manifest digest, <dir>/<digest>, either an OCI layout holding that one
// image (the fork's default, FF_KANIKO_OCI_WARMER) or a docker tarball
// with its manifest beside it in <digest>.json (kaniko v1.24). An entry's
// age is its modification time, as in kaniko.
//
// An entry is read only if its content matches the digest it is named
// by: the manifest, config and every layer are checked as they are read.
type BaseDir struct {
	// Path is the directory.
	Path string
	// TTL is how long an entry stays usable; 0 is forever.
	TTL time.Duration
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// ByDigest returns the image stored under the manifest digest h, or an
// error wrapping ErrMiss or ErrExpired.
func (d BaseDir) ByDigest(h v1.Hash) (v1.Image, error) {
	p := filepath.Join(d.Path, h.String())
	st, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", h, ErrMiss)
	}
	if err != nil {
		return nil, fmt.Errorf("base image cache %s: %w", d.Path, err)
	}
	if expired(st.ModTime(), d.TTL, now(d.Now)) {
		return nil, fmt.Errorf("%s stored %s: %w", h, st.ModTime().UTC().Format(time.RFC3339), ErrExpired)
	}
	var img v1.Image
	switch {
	case st.IsDir():
		img, err = layoutEntry(p)
	case st.Mode().IsRegular():
		img, err = tarballEntry(p)
	default:
		err = errors.New("neither an OCI layout nor a tarball")
	}
	if err != nil {
		return nil, fmt.Errorf("base image cache entry %s: %w", p, err)
	}
	return verified(img, h)
}

// ByName returns the freshest image stored under the reference ref for
// platform p, and when it was stored. Only OCI layout entries record the
// name they were stored under.
func (d BaseDir) ByName(ref string, p v1.Platform) (v1.Image, time.Time, error) {
	full := fullName(ref)
	ents, err := os.ReadDir(d.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, time.Time{}, fmt.Errorf("%s: %w", ref, ErrMiss)
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("base image cache %s: %w", d.Path, err)
	}
	type found struct {
		h  v1.Hash
		at time.Time
	}
	var cands []found
	for _, e := range ents {
		if !e.IsDir() || !entryName.MatchString(e.Name()) {
			continue
		}
		lp, err := layout.FromPath(filepath.Join(d.Path, e.Name()))
		if err != nil {
			continue
		}
		idx, err := lp.ImageIndex()
		if err != nil {
			continue
		}
		m, err := idx.IndexManifest()
		if err != nil || len(m.Manifests) != 1 || m.Manifests[0].Annotations[refAnnotation] != full {
			continue
		}
		info, err := e.Info()
		if err != nil || expired(info.ModTime(), d.TTL, now(d.Now)) {
			continue
		}
		h, _ := v1.NewHash(e.Name())
		cands = append(cands, found{h, info.ModTime()})
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].at.After(cands[j].at) })
	for _, c := range cands {
		img, err := d.ByDigest(c.h)
		if err != nil {
			continue
		}
		cf, err := img.ConfigFile()
		if err != nil || (p.OS != "" && cf.OS != p.OS) || (p.Architecture != "" && cf.Architecture != p.Architecture) ||
			(p.Variant != "" && cf.Variant != p.Variant) {
			continue
		}
		return img, c.at, nil
	}
	return nil, time.Time{}, fmt.Errorf("%s: %w", ref, ErrMiss)
}

// fullName normalises a reference to the name stored in an entry.
func fullName(ref string) string {
	r, err := name.ParseReference(ref, name.WeakValidation)
	if err != nil {
		return ref
	}
	return r.Name()
}

// layoutEntry reads the one image of an OCI layout entry.
func layoutEntry(dir string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, err
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(m.Manifests) != 1 {
		return nil, fmt.Errorf("want one image, found %d", len(m.Manifests))
	}
	return p.Image(m.Manifests[0].Digest)
}

// tarballEntry reads a docker tarball entry (kaniko v1.24's warmer),
// with the manifest stored beside it when there is one: the tarball
// alone does not say which media types the registry's manifest had.
func tarballEntry(p string) (v1.Image, error) {
	img, err := tarball.ImageFromPath(p, nil)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(p + ".json")
	if errors.Is(err, fs.ErrNotExist) {
		return img, nil
	}
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s.json: %w", p, err)
	}
	return partial.CompressedToImage(&sidecarImage{tar: img, raw: raw, m: m})
}

// sidecarImage is a tarball's image with the manifest it was pulled with.
type sidecarImage struct {
	tar v1.Image
	raw []byte
	m   *v1.Manifest
}

func (s *sidecarImage) RawManifest() ([]byte, error)   { return s.raw, nil }
func (s *sidecarImage) RawConfigFile() ([]byte, error) { return s.tar.RawConfigFile() }
func (s *sidecarImage) MediaType() (types.MediaType, error) {
	if s.m.MediaType != "" {
		return s.m.MediaType, nil
	}
	return types.DockerManifestSchema2, nil
}
func (s *sidecarImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	return s.tar.LayerByDigest(h)
}

// verified checks that img's manifest has digest want and its config the
// digest the manifest names, and returns img with every layer checked
// against its digest as it is read.
func verified(img v1.Image, want v1.Hash) (v1.Image, error) {
	raw, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	if got := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(got[:]) != want.String() {
		return nil, fmt.Errorf("entry %s holds a manifest with another digest (sha256:%x)", want, got)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	if got := sha256.Sum256(cfg); "sha256:"+hex.EncodeToString(got[:]) != m.Config.Digest.String() {
		return nil, fmt.Errorf("entry %s: config does not match its digest %s", want, m.Config.Digest)
	}
	return &checkedImage{Image: img, m: m}, nil
}

// checkedImage is an image whose layers are verified as they are read.
type checkedImage struct {
	v1.Image
	m *v1.Manifest
}

// Layers implements v1.Image.
func (c *checkedImage) Layers() ([]v1.Layer, error) {
	out := make([]v1.Layer, 0, len(c.m.Layers))
	for _, d := range c.m.Layers {
		l, err := c.LayerByDigest(d.Digest)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

// LayerByDigest implements v1.Image.
func (c *checkedImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	var desc *v1.Descriptor
	for i := range c.m.Layers {
		if c.m.Layers[i].Digest == h {
			desc = &c.m.Layers[i]
		}
	}
	if desc == nil {
		return nil, fmt.Errorf("layer %s is not in the image", h)
	}
	l, err := c.Image.LayerByDigest(h)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToLayer(&checkedLayer{Layer: l, desc: *desc})
}

// LayerByDiffID implements v1.Image.
func (c *checkedImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	d, err := partial.DiffIDToBlob(c, h)
	if err != nil {
		return nil, err
	}
	return c.LayerByDigest(d)
}

// checkedLayer reads a layer's compressed bytes through a digest and size
// check: a blob that does not match fails the read.
type checkedLayer struct {
	v1.Layer
	desc v1.Descriptor
}

func (l *checkedLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *checkedLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *checkedLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }

// Compressed implements partial.CompressedLayer.
func (l *checkedLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	return &verifyReader{rc: rc, h: sha256.New(), want: l.desc}, nil
}

// verifyReader fails the read that reaches the end of a blob whose size
// or sha256 is not the descriptor's, or that goes past its size.
type verifyReader struct {
	rc   io.ReadCloser
	h    hash.Hash
	n    int64
	want v1.Descriptor
}

func (r *verifyReader) Read(b []byte) (int, error) {
	n, err := r.rc.Read(b)
	r.h.Write(b[:n])
	r.n += int64(n)
	if r.n > r.want.Size {
		return n, fmt.Errorf("blob %s: more than its %d bytes", r.want.Digest, r.want.Size)
	}
	if err == io.EOF {
		if got := "sha256:" + hex.EncodeToString(r.h.Sum(nil)); r.n != r.want.Size || got != r.want.Digest.String() {
			return n, fmt.Errorf("blob %s: content is %s (%d bytes): the cache directory entry is corrupt or was altered", r.want.Digest, got, r.n)
		}
	}
	return n, err
}

func (r *verifyReader) Close() error { return r.rc.Close() }
