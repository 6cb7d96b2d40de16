// Package cache stores the layers of cacheable instructions under keys
// that chain from the base image: in a registry repository (one small image
// per key, tagged with the key) or in an on-disk OCI layout ("oci:/path").
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ErrMiss is returned by Get when nothing usable is stored under a key.
var ErrMiss = errors.New("cache miss")

// emptyLabel marks an entry for an instruction that changed nothing.
const emptyLabel = "dev.kiln.cache.empty-layer"

// topLevelLabel holds an entry's TopLevel, as a JSON array of strings.
const topLevelLabel = "dev.kiln.cache.top-level"

// maxTopLevel bounds the size of an entry's TopLevel label: a layer with
// more names at its top is stored without it (and read to find them).
const maxTopLevel = 16 << 10

// Entry is what an instruction left: its layer, or none.
type Entry struct {
	// Layer is the instruction's layer; nil when it changed nothing.
	Layer v1.Layer
	// Created is when the entry was stored.
	Created time.Time
	// TopLevel is the first components of the layer's entry names
	// (whiteouts as they are named), so that a build can tell what the
	// layer touches without reading it; nil when not known.
	TopLevel []string
}

// Store keeps entries by key.
type Store interface {
	// Get returns the entry under key, or ErrMiss.
	Get(ctx context.Context, key string) (*Entry, error)
	// Put stores an entry under key.
	Put(ctx context.Context, key string, e Entry) error
}

// Key chains a parent key with the parts that decide an instruction's
// result.
type Key struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
}

// NewKey starts a key from its parent (a base image digest or the key of
// the previous instruction).
func NewKey(parent string) *Key {
	k := &Key{h: sha256.New()}
	k.Add("parent", parent)
	return k
}

// Add adds a named part. Parts are length-prefixed, so no two different
// sequences of parts give the same key.
func (k *Key) Add(name, value string) *Key {
	fmt.Fprintf(k.h, "%d:%s%d:%s", len(name), name, len(value), value)
	return k
}

// AddEnv adds KEY=VALUE pairs in sorted order.
func (k *Key) AddEnv(name string, env []string) *Key {
	sorted := append([]string(nil), env...)
	sort.Strings(sorted)
	return k.Add(name, strings.Join(sorted, "\x00"))
}

// String is the key's hex digest, usable as an image tag.
func (k *Key) String() string { return hex.EncodeToString(k.h.Sum(nil)) }

// expired reports whether an entry created at t is older than ttl.
func expired(t time.Time, ttl time.Duration, now time.Time) bool {
	return ttl > 0 && now.Sub(t) > ttl
}

// entryImage wraps an entry as a one-layer (or no-layer) image.
func entryImage(e Entry) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	var err error
	if e.Layer != nil {
		mt, merr := e.Layer.MediaType()
		if merr != nil {
			return nil, merr
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: e.Layer, MediaType: mt}); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: e.Created}
	if e.Layer == nil {
		cf.Config.Labels = map[string]string{emptyLabel: "true"}
	} else if e.TopLevel != nil && !slices.ContainsFunc(e.TopLevel, notUTF8) {
		// JSON would store a name that is not UTF-8 as another.
		if b, err := json.Marshal(e.TopLevel); err == nil && len(b) <= maxTopLevel {
			cf.Config.Labels = map[string]string{topLevelLabel: string(b)}
		}
	}
	return mutate.ConfigFile(img, cf)
}

func notUTF8(s string) bool { return !utf8.ValidString(s) }

// entryFrom reads an entry back from its image.
func entryFrom(img v1.Image) (*Entry, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	e := &Entry{Created: cf.Created.Time}
	if cf.Config.Labels[emptyLabel] == "true" {
		return e, nil
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, err
	}
	if len(ls) != 1 {
		return nil, fmt.Errorf("cache entry has %d layers, want 1", len(ls))
	}
	e.Layer = ls[0]
	if v, ok := cf.Config.Labels[topLevelLabel]; ok && len(v) <= maxTopLevel {
		var names []string
		if json.Unmarshal([]byte(v), &names) == nil && names != nil {
			e.TopLevel = names
		}
	}
	return e, nil
}

// Writer pushes the images of registry entries.
type Writer interface {
	Write(ctx context.Context, ref name.Reference, img v1.Image) error
}

// Reader pulls the images of registry entries.
type Reader interface {
	Pull(ctx context.Context, ref string) (v1.Image, error)
}

// Registry is a Store in a registry repository.
type Registry struct {
	// Repo is the cache repository, e.g. registry.example.com/app/cache.
	Repo string
	// TTL makes older entries misses; 0 keeps them forever.
	TTL time.Duration
	// Pull and Push talk to the registry.
	Pull  Reader
	Push  Writer
	Parse func(ref string) (name.Reference, error)
	Now   func() time.Time
}

// Get implements Store.
func (r *Registry) Get(ctx context.Context, key string) (*Entry, error) {
	img, err := r.Pull.Pull(ctx, r.Repo+":"+key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMiss, err)
	}
	e, err := entryFrom(img)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMiss, err)
	}
	if expired(e.Created, r.TTL, now(r.Now)) {
		return nil, fmt.Errorf("%w: entry from %s is older than the cache TTL", ErrMiss, e.Created.Format(time.RFC3339))
	}
	return e, nil
}

// Put implements Store.
func (r *Registry) Put(ctx context.Context, key string, e Entry) error {
	img, err := entryImage(e)
	if err != nil {
		return err
	}
	ref, err := r.Parse(r.Repo + ":" + key)
	if err != nil {
		return err
	}
	return r.Push.Write(ctx, ref, img)
}

func now(f func() time.Time) time.Time {
	if f != nil {
		return f()
	}
	return time.Now()
}

// Layout is a Store in an OCI image layout directory; each entry is an
// image annotated with its key.
type Layout struct {
	// Path is the layout directory; it is created when missing.
	Path string
	TTL  time.Duration
	Now  func() time.Time

	mu sync.Mutex
}

// keyAnnotation holds an entry's key in the layout index.
const keyAnnotation = "dev.kiln.cache.key"

func (l *Layout) open() (layout.Path, error) {
	if p, err := layout.FromPath(l.Path); err == nil {
		return p, nil
	}
	return layout.Write(l.Path, empty.Index)
}

// Get implements Store.
func (l *Layout) Get(_ context.Context, key string) (*Entry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, err := layout.FromPath(l.Path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMiss, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMiss, err)
	}
	imgs, err := imagesWithKey(idx, key)
	if err != nil || len(imgs) == 0 {
		return nil, ErrMiss
	}
	// The newest entry wins.
	var best *Entry
	for _, img := range imgs {
		e, err := entryFrom(img)
		if err != nil {
			continue
		}
		if best == nil || e.Created.After(best.Created) {
			best = e
		}
	}
	if best == nil {
		return nil, ErrMiss
	}
	if expired(best.Created, l.TTL, now(l.Now)) {
		return nil, fmt.Errorf("%w: entry from %s is older than the cache TTL", ErrMiss, best.Created.Format(time.RFC3339))
	}
	return best, nil
}

func imagesWithKey(idx v1.ImageIndex, key string) ([]v1.Image, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []v1.Image
	for _, d := range m.Manifests {
		if !match.Annotation(keyAnnotation, key)(d) {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

// Put implements Store.
func (l *Layout) Put(_ context.Context, key string, e Entry) error {
	img, err := entryImage(e)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	p, err := l.open()
	if err != nil {
		return fmt.Errorf("cache layout %s: %w", l.Path, err)
	}
	return p.ReplaceImage(img, match.Annotation(keyAnnotation, key), layout.WithAnnotations(map[string]string{keyAnnotation: key}))
}
