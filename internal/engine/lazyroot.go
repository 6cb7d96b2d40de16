package engine

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kilnbuild/kiln/internal/dockerfile"
	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/rootfs"
)

// A stage's root is brought up to date with its base image and the layers
// taken from the cache only when an instruction needs what they hold. A
// COPY, ADD or WORKDIR whose destination none of those layers touches (not
// the path, nothing under it, none of its parents) writes the same files
// and the same layer whether they are in the root or not: it runs before
// them, and they are unpacked under what it wrote when a later instruction
// (a RUN, or a COPY that does touch them) needs the whole root. A COPY of
// one file onto a large base, or after a cached RUN, then unpacks nothing.
//
// A COPY or ADD that no RUN in its stage follows does not even write its
// files into the root: they are read from their source for its layer
// (copy.go, streams), which joins the layers not in the root as an
// ownLayer, applied only when a later instruction or stage needs it there.
// A stage whose image nothing reads (imageNeeded) makes no layers at all.

// pathIndex is what the layers not yet in a stage's root touch: every
// path they hold (a whiteout as the path it deletes, an opaque marker as
// its directory) and every directory above one. As every directory above
// counts, a path is touched exactly when its first component is: that is
// all the index keeps, as 64-bit FNV-1a hashes. A collision (a base can be
// made to have one) only makes touches say yes, which brings the root up
// to date, as it would be without the index.
type pathIndex struct {
	seen map[uint64]struct{}
	all  bool // an opaque root: every path
	// hash is pathHash; tests make paths collide with another.
	hash func(string) uint64
}

func newPathIndex() *pathIndex { return &pathIndex{seen: map[uint64]struct{}{}, hash: pathHash} }

// pathHash is the FNV-1a hash of p.
func pathHash(p string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(p); i++ {
		h ^= uint64(p[i])
		h *= 1099511628211
	}
	return h
}

func (ix *pathIndex) has(p string) bool {
	_, ok := ix.seen[ix.hash(p)]
	return ok
}

// add adds a layer entry's name (or a name at a layer's top).
func (ix *pathIndex) add(name string) {
	top, rest, _ := strings.Cut(fsroot.Clean(name), "/")
	if rest == "" {
		switch {
		case top == ".wh..wh..opq":
			ix.all = true
			return
		case strings.HasPrefix(top, ".wh."):
			top = strings.TrimPrefix(top, ".wh.")
		}
	}
	if top != "" {
		ix.seen[ix.hash(top)] = struct{}{}
	}
}

// touches reports whether the image path p, something under it, or one of
// its parents is in the index.
func (ix *pathIndex) touches(p string) bool {
	top, _, _ := strings.Cut(fsroot.Clean(p), "/")
	return ix.all || top == "" || ix.has(top)
}

// unapplied indexes the layers not in st's root yet that this build did
// not make: the base image's when it is not unpacked, then those taken
// from the cache. The index is kept until the root or those layers change.
func (b *builder) unapplied(st *stage) (*pathIndex, error) {
	others := 0
	for _, l := range st.pending {
		if _, own := l.(ownLayer); !own {
			others++
		}
	}
	if st.lazy != nil && st.lazyFor == others && st.lazyUnpacked == st.unpacked {
		return st.lazy, nil
	}
	defer b.clock(phaseUnpack)()
	ix := newPathIndex()
	var layers []v1.Layer
	if !st.unpacked && st.base != nil {
		ls, err := st.base.Layers()
		if err != nil {
			return nil, err
		}
		layers = append(layers, ls...)
	}
	for _, l := range st.pending {
		if _, own := l.(ownLayer); !own {
			layers = append(layers, l)
		}
	}
	// Each layer is read on its own (a registry's in parallel downloads),
	// but for a cached one whose names at the top are known and one this
	// build has read already (another stage's base).
	parts := make([]*pathIndex, len(layers))
	errs := make([]error, len(layers))
	read := make([]v1.Hash, len(layers))
	var wg sync.WaitGroup
	for i, l := range layers {
		if k, ok := l.(knownLayer); ok {
			parts[i] = newPathIndex()
			for _, n := range k.topLevel {
				parts[i].add(n)
			}
			continue
		}
		d, err := l.Digest()
		if err == nil && b.layerTops[d] != nil {
			parts[i] = b.layerTops[d]
			continue
		}
		parts[i], read[i] = newPathIndex(), d
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = indexLayer(parts[i], l)
		}()
	}
	wg.Wait()
	for i, part := range parts {
		if errs[i] != nil {
			return nil, fmt.Errorf("reading a layer's entries: %w", errs[i])
		}
		if read[i].Hex != "" {
			b.layerTops[read[i]] = part
		}
		ix.all = ix.all || part.all
		for p := range part.seen { // copied: parts are kept, and shared
			ix.seen[p] = struct{}{}
		}
	}
	st.lazy, st.lazyFor, st.lazyUnpacked = ix, others, st.unpacked
	return ix, nil
}

// knownLayer is a layer from the cache whose entry says what names are
// at its top (cache.Entry.TopLevel): what it touches is known without
// reading it. The list is trusted as the layer's content is: whoever can
// write the cache can put any file into the image, and a wrong list can do
// no more than that (a COPY runs before a layer it should have waited
// for). Such a layer is read only when it is unpacked, and unpacking
// checks every entry as always.
type knownLayer struct {
	v1.Layer
	topLevel []string
}

// ownLayer is a layer this build made from entries (a streamed COPY) and
// did not write into the root: it needs no checking, and its paths are in
// the stage's own index. It touches nothing a layer before it in the stage
// holds that is not in the root (it was made with the root up to date, or
// ahead of them), so it can be applied before them.
type ownLayer struct{ v1.Layer }

// applyOwn applies the layers this build made that are not in st's root
// yet, in order, and leaves the others pending.
func (b *builder) applyOwn(st *stage) error {
	defer b.clock(phaseUnpack)()
	var rest []v1.Layer
	for _, l := range st.pending {
		if _, own := l.(ownLayer); !own {
			rest = append(rest, l)
			continue
		}
		if err := b.applyLayer(st, l); err != nil {
			return err
		}
	}
	st.pending, st.own = rest, nil
	return nil
}

func indexLayer(ix *pathIndex, l v1.Layer) error {
	r, finish, err := layer.OpenTar(l)
	if err != nil {
		return err
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return finish()
		}
		if err == nil {
			err = rootfs.CheckHeader(h)
		}
		if err != nil {
			finish()
			return err
		}
		ix.add(h.Name)
	}
}

// checkUnapplied refuses, at the end of a stage, the layers its root
// never needed (so never unpacked) that unpacking would have refused: a
// hostile base fails the build whatever the Dockerfile does with it. A
// cached layer whose names are known is not read (see knownLayer).
func (b *builder) checkUnapplied(st *stage) error {
	if st.unpacked && len(st.pending) == 0 {
		return nil
	}
	if _, err := b.unapplied(st); err != nil {
		return &dockerfile.Error{File: b.df.Name, Line: st.ps.Line, Err: fmt.Errorf("FROM %s: %w", st.ps.Base, err)}
	}
	return nil
}

// numericOwner matches a --chown of numeric ids, which needs no
// /etc/passwd or /etc/group from the root.
var numericOwner = regexp.MustCompile(`^[0-9]+:[0-9]+$`)

// rootFor is what of st's root an instruction (expanded) writing at dest
// needs: all of it when lookup (it reads the root, as a --chown by name
// does), when the root is the live "/", when a RUN later in the stage needs the whole root anyway
// (unpacking now reads each layer once, not its entries first and then
// again), or when a layer not in the root touches dest; else it runs
// ahead of those layers.
func (b *builder) rootFor(st *stage, cmd instructions.Command, dest string, lookup bool) (rootNeed, error) {
	if lookup || st.root.live != nil || b.o.SingleSnapshot || (st.unpacked && len(st.pending) == 0) || runsLater(st, cmd) {
		return wholeRoot, nil
	}
	ix, err := b.unapplied(st)
	if err != nil {
		return 0, err
	}
	if ix.touches(st.Abs(dest)) {
		return wholeRoot, nil
	}
	if st.own != nil && st.own.touches(st.Abs(dest)) {
		return ownAheadOfRoot, nil
	}
	return aheadOfRoot, nil
}

// runsLater says whether a RUN follows cmd in st's stage (or cmd is not
// one of the stage's own instructions: an ONBUILD trigger).
func runsLater(st *stage, cmd instructions.Command) bool {
	for i, c := range st.ps.Commands {
		if c == cmd {
			return hasRun(st.ps.Commands[i+1:])
		}
	}
	return true
}
