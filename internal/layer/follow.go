package layer

import (
	"errors"
	"io"
	"os"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/stream"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Growing is a layer being written, for uploading it while it is: its
// Compressed reads the compressed bytes as they reach the layer file,
// waiting for more until the layer is finished, and fails if writing it
// does. Digest, DiffID and Size say stream.ErrNotComputed until the layer
// is finished, as a ggcr stream.Layer does, so ggcr's remote uploads it in
// one streamed request and commits it under the digest known at its end.
type Growing struct {
	path      string
	mediaType types.MediaType

	mu      sync.Mutex
	changed *sync.Cond
	written int64
	done    *File // set when finished
	err     error // set when writing failed
}

var _ v1.Layer = (*Growing)(nil)

func newGrowing(path string, mt types.MediaType) *Growing {
	g := &Growing{path: path, mediaType: mt}
	g.changed = sync.NewCond(&g.mu)
	return g
}

// wrote says n more bytes are in the file.
func (g *Growing) wrote(n int) {
	g.mu.Lock()
	g.written += int64(n)
	g.mu.Unlock()
	g.changed.Broadcast()
}

// finish says the layer is f, or that writing it failed with err.
func (g *Growing) finish(f *File, err error) {
	g.mu.Lock()
	switch {
	case err != nil:
		g.err = err
	case f == nil:
		g.err = errors.New("layer not written")
	default:
		g.done = f
	}
	g.mu.Unlock()
	g.changed.Broadcast()
}

func (g *Growing) finished() (*File, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return nil, g.err
	}
	if g.done == nil {
		return nil, stream.ErrNotComputed
	}
	return g.done, nil
}

// Digest is the compressed blob's sha256, once the layer is finished.
func (g *Growing) Digest() (v1.Hash, error) {
	f, err := g.finished()
	if err != nil {
		return v1.Hash{}, err
	}
	return f.Digest()
}

// DiffID is the tar's sha256, once the layer is finished.
func (g *Growing) DiffID() (v1.Hash, error) {
	f, err := g.finished()
	if err != nil {
		return v1.Hash{}, err
	}
	return f.DiffID()
}

// Size is the compressed size, once the layer is finished.
func (g *Growing) Size() (int64, error) {
	f, err := g.finished()
	if err != nil {
		return 0, err
	}
	return f.Size()
}

// MediaType is the layer's media type.
func (g *Growing) MediaType() (types.MediaType, error) { return g.mediaType, nil }

// Compressed reads the compressed blob from its start, as it is written.
func (g *Growing) Compressed() (io.ReadCloser, error) {
	if _, err := g.finished(); err != nil && !errors.Is(err, stream.ErrNotComputed) {
		return nil, err
	}
	f, err := os.Open(g.path)
	if err != nil {
		return nil, err
	}
	return &follower{g: g, f: f}, nil
}

// Uncompressed is the finished layer's tar.
func (g *Growing) Uncompressed() (io.ReadCloser, error) {
	f, err := g.finished()
	if err != nil {
		return nil, err
	}
	return f.Uncompressed()
}

// follower reads a growing layer's file up to what has been written.
type follower struct {
	g      *Growing
	f      *os.File
	off    int64
	closed bool
}

func (r *follower) Read(p []byte) (int, error) {
	g := r.g
	g.mu.Lock()
	for r.off >= g.written && g.done == nil && g.err == nil && !r.closed {
		g.changed.Wait()
	}
	written, done, err, closed := g.written, g.done != nil, g.err, r.closed
	g.mu.Unlock()
	switch {
	case closed:
		return 0, os.ErrClosed
	case err != nil:
		return 0, err
	case r.off >= written && done:
		return 0, io.EOF
	}
	if avail := written - r.off; int64(len(p)) > avail {
		p = p[:avail]
	}
	n, err := r.f.ReadAt(p, r.off)
	r.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// Close releases the file and wakes a Read waiting for more.
func (r *follower) Close() error {
	r.g.mu.Lock()
	r.closed = true
	r.g.mu.Unlock()
	r.g.changed.Broadcast()
	return r.f.Close()
}
