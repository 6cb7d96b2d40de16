// Package layer writes image layers: tar streams of explicit entries
// (PAX where needed, numeric owners, relative hard links) compressed with
// gzip or zstd into a file, hashed in the same pass.
package layer

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/option"
)

// Entry is one tar entry of a layer.
type Entry struct {
	// Header describes the entry. Name is the image path without a leading
	// slash; directories need no trailing slash. Size is taken from Source.
	Header Header
	// Source is the file holding a regular file's content; empty means no
	// content (whiteouts).
	Source string
	// Open, when set instead of Source, opens the content (a handle
	// resolved inside the root that holds it).
	Open func() (*os.File, error)
	// Sized says Header.Size is the size Source had when the entry was
	// made (from a snapshot), so an empty file need not be looked at again.
	Sized bool
}

// Header is what a layer keeps of an entry's tar header: the fields
// kiln writes (owners are numeric, access and change times are never
// written), in half the memory of a tar.Header, which a layer of many
// files holds one of per file until it is written.
type Header struct {
	Name, Linkname     string
	Size, Mode         int64
	Uid, Gid           int
	ModTime            time.Time
	Devmajor, Devminor int64
	// PAXRecords are extended records (xattrs); they make the entry PAX.
	PAXRecords map[string]string
	Typeflag   byte
}

// tarHeader is h as the tar header written.
func (h *Header) tarHeader() tar.Header {
	t := tar.Header{
		Typeflag: h.Typeflag, Name: h.Name, Linkname: h.Linkname, Size: h.Size, Mode: h.Mode,
		Uid: h.Uid, Gid: h.Gid, ModTime: h.ModTime, Devmajor: h.Devmajor, Devminor: h.Devminor,
		PAXRecords: h.PAXRecords,
	}
	if len(h.PAXRecords) > 0 {
		t.Format = tar.FormatPAX
	}
	return t
}

// Compression names a layer compression.
type Compression string

// The compressions kiln writes.
const (
	Gzip Compression = "gzip"
	Zstd Compression = "zstd"
)

// Options configures New.
type Options struct {
	// Compression is gzip (default) or zstd.
	Compression Compression
	// Level is the compression level; -1 or 0 means the default.
	Level int
	// MediaType is the layer media type; derived from Compression when empty.
	MediaType types.MediaType
	// ModTime, when set, replaces every entry's mtime (reproducible builds).
	ModTime *time.Time
	// TopLevel records the names at the layer's top (File.TopLevel), for
	// a cache entry; without it TopLevel is nil (not known).
	TopLevel bool
	// Follow, when set, is given the layer as it starts being written,
	// to upload it alongside (see Growing). It must not block.
	Follow func(*Growing)
}

// ParseCompression checks a compression name.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(strings.ToLower(s)); c {
	case "", Gzip:
		return Gzip, nil
	case Zstd:
		return Zstd, nil
	}
	return "", option.Errorf("Compression", strconv.Quote(s), "want gzip or zstd")
}

// New writes entries as a compressed layer file in dir and returns it as a
// v1.Layer. The file is removed when the build's work dir is.
func New(ctx context.Context, dir string, entries *List, o Options) (_ v1.Layer, err error) {
	f, err := os.CreateTemp(dir, "layer-*.tar")
	if err != nil {
		return nil, fmt.Errorf("creating layer file: %w", err)
	}
	comp := o.Compression
	if comp == "" {
		comp = Gzip
	}
	mt := o.MediaType
	if mt == "" {
		mt = types.OCILayer
		if comp == Zstd {
			mt = types.OCILayerZStd
		}
	}
	cw := &countingWriter{w: f}
	var file *File
	if o.Follow != nil {
		g := newGrowing(f.Name(), mt)
		cw.wrote = g.wrote
		o.Follow(g)
		defer func() { g.finish(file, err) }()
	}
	file, err = write(ctx, cw, entries, comp, o)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	file.path, file.mediaType = f.Name(), mt
	return file, nil
}

// countingWriter counts what it writes and says so to wrote, if set.
type countingWriter struct {
	w     io.Writer
	n     int64
	wrote func(int)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if c.wrote != nil && n > 0 {
		c.wrote(n)
	}
	return n, err
}

// write writes entries compressed with comp to out, hashing what it
// writes.
func write(ctx context.Context, out *countingWriter, entries *List, comp Compression, o Options) (*File, error) {
	digest := sha256.New()
	cw := io.MultiWriter(out, digest)
	var zw io.WriteCloser
	var err error
	switch comp {
	case Gzip:
		level := o.Level
		if level == 0 || level == -1 {
			level = gzip.DefaultCompression
		}
		zw, err = gzip.NewWriterLevel(cw, level)
	case Zstd:
		opts := []zstd.EOption{}
		if o.Level > 0 {
			opts = append(opts, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(o.Level)))
		}
		zw, err = zstd.NewWriter(cw, opts...)
	default:
		err = fmt.Errorf("unknown compression %q", comp)
	}
	if err != nil {
		return nil, fmt.Errorf("layer compression: %w", err)
	}
	diffID := sha256.New()
	if err := WriteTar(ctx, io.MultiWriter(zw, diffID), entries, o.ModTime); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compressing layer: %w", err)
	}
	file := &File{digest: hashOf(digest), diffID: hashOf(diffID), size: out.n, compression: comp}
	if o.TopLevel {
		file.topLevel = topLevel(entries)
	}
	return file, nil
}

// topLevel is the first components of the entries' names, sorted, once
// each: a whiteout or an opaque marker at the top as it is named.
func topLevel(entries *List) []string {
	seen := map[string]bool{}
	names := []string{} // known to be none, not unknown
	for e := range entries.All() {
		first, _, _ := strings.Cut(fsroot.Clean(e.Header.Name), "/")
		if first != "" && !seen[first] {
			seen[first] = true
			names = append(names, first)
		}
	}
	sort.Strings(names)
	return names
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// WriteTar writes entries as an uncompressed tar stream to w. When modTime
// is set it replaces every entry's times. The files are opened (and the
// small ones read) by a goroutine running ahead of the writer, in order,
// so that opening and reading overlap compressing.
func WriteTar(ctx context.Context, w io.Writer, entries *List, modTime *time.Time) error {
	ctx, cancel := context.WithCancel(ctx)
	contents := make(chan content, prefetchAhead)
	go prefetch(ctx, entries, contents)
	defer func() {
		cancel()
		for c := range contents { // the ones opened ahead, after a failure
			c.close()
		}
	}()
	tw := tar.NewWriter(w)
	// One buffer for every file: io.Copy from an *os.File goes through its
	// WriteTo, which allocates 32 KiB per call.
	buf := make([]byte, 64<<10)
	for e := range entries.All() {
		c, ok := <-contents
		if !ok {
			return ctx.Err()
		}
		h := e.Header.tarHeader()
		h.Name = strings.TrimPrefix(h.Name, "/")
		if h.Typeflag == tar.TypeDir && !strings.HasSuffix(h.Name, "/") {
			h.Name += "/"
		}
		h.ModTime = h.ModTime.Truncate(time.Second)
		if modTime != nil {
			h.ModTime = *modTime
		}
		if h.Typeflag == tar.TypeLink {
			h.Linkname = strings.TrimPrefix(h.Linkname, "/")
		}
		if c.err != nil {
			return fmt.Errorf("layer entry %s: %w", h.Name, c.err)
		}
		h.Size = c.size
		if err := tw.WriteHeader(&h); err != nil {
			c.close()
			return fmt.Errorf("layer entry %s: %w", h.Name, err)
		}
		var err error
		switch {
		case c.data != nil:
			_, err = tw.Write(c.data)
		case c.f != nil:
			var n int64
			n, err = io.CopyBuffer(tw, struct{ io.Reader }{c.f}, buf)
			c.close()
			if err == nil && n != h.Size {
				err = fmt.Errorf("file changed size while being read (%d of %d bytes)", n, h.Size)
			}
		}
		if err != nil {
			return fmt.Errorf("layer entry %s: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("closing layer tar: %w", err)
	}
	return nil
}

// prefetchAhead bounds the entries opened ahead of the writer, and
// smallFile the files read whole ahead (at most 64 x 64 KiB in memory).
const (
	prefetchAhead = 64
	smallFile     = 64 << 10
)

// content is a regular file's content for its entry: read (data), open
// (f, streamed by the writer) or empty; size is its size.
type content struct {
	f    *os.File
	data []byte
	size int64
	err  error
}

func (c content) close() {
	if c.f != nil {
		c.f.Close()
	}
}

// prefetch opens each entry's content in order and sends it to out,
// which it closes at the end or when ctx is done.
func prefetch(ctx context.Context, entries *List, out chan<- content) {
	defer close(out)
	for e := range entries.All() {
		var c content
		if err := ctx.Err(); err != nil {
			c.err = err
		} else if e.Header.Typeflag == tar.TypeReg && !(e.Sized && e.Header.Size == 0) {
			switch {
			case e.Open != nil:
				c.f, c.size, c.err = openWith(e.Open)
			case e.Source != "":
				c.f, c.size, c.err = openSource(e.Source)
			}
			if c.f != nil && c.size <= smallFile {
				c.data, c.err = readAll(c.f, c.size)
				c.f.Close()
				c.f = nil
			}
		}
		select {
		case out <- c:
		case <-ctx.Done():
			c.close()
			return
		}
		if c.err != nil {
			return
		}
	}
}

// readAll reads a file of size bytes whole, refusing one that changed size.
func readAll(f *os.File, size int64) ([]byte, error) {
	data := make([]byte, size+1) // one more: a file that grew is seen
	n, err := io.ReadFull(f, data)
	switch {
	case int64(n) == size && errors.Is(err, io.ErrUnexpectedEOF):
		return data[:n], nil
	case err == nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return nil, fmt.Errorf("file changed size while being read (%d of %d bytes)", n, size)
	}
	return nil, err
}

// openWith opens a regular file's content with open; empty files are
// closed at once.
func openWith(open func() (*os.File, error)) (*os.File, int64, error) {
	f, err := open()
	if err != nil {
		return nil, 0, err
	}
	var st unix.Stat_t // not f.Stat: no FileInfo to allocate per file
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, 0, &os.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, 0, fmt.Errorf("%s is no longer a regular file", f.Name())
	}
	if st.Size == 0 {
		f.Close()
		return nil, 0, nil
	}
	return f, st.Size, nil
}

// openSource opens a regular file's content for a layer, without following
// a symlink and without the runtime poller; empty files are not opened.
func openSource(path string) (*os.File, int64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil, 0, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, 0, fmt.Errorf("%s is no longer a regular file", path)
	}
	if st.Size == 0 {
		return nil, 0, nil
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), st.Size, nil
}

// File is a compressed layer stored in a file, with its hashes known.
type File struct {
	path        string
	digest      v1.Hash
	diffID      v1.Hash
	size        int64
	mediaType   types.MediaType
	compression Compression
	topLevel    []string
}

var _ v1.Layer = (*File)(nil)

// TopLevel is the first components of the layer's entry names (a
// whiteout's or an opaque marker's as it is named), sorted; empty, not
// nil, for a layer with no entries; nil unless Options.TopLevel was set.
func (l *File) TopLevel() []string { return l.topLevel }

// Digest returns the sha256 of the compressed blob.
func (l *File) Digest() (v1.Hash, error) { return l.digest, nil }

// DiffID returns the sha256 of the uncompressed tar.
func (l *File) DiffID() (v1.Hash, error) { return l.diffID, nil }

// Size returns the compressed size.
func (l *File) Size() (int64, error) { return l.size, nil }

// MediaType returns the layer's media type.
func (l *File) MediaType() (types.MediaType, error) { return l.mediaType, nil }

// Compressed opens the compressed blob.
func (l *File) Compressed() (io.ReadCloser, error) { return os.Open(l.path) }

// Uncompressed opens the blob and decompresses it.
func (l *File) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	switch l.compression {
	case Zstd:
		zr, err := zstd.NewReader(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		return &readCloser{Reader: zr, close: func() error { zr.Close(); return f.Close() }}, nil
	default:
		zr, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		return &readCloser{Reader: zr, close: func() error { zr.Close(); return f.Close() }}, nil
	}
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r *readCloser) Close() error { return r.close() }
