package layer

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/readahead"
	"github.com/ulikunitz/xz"
)

// Decompress returns r's content decompressed when it starts with a
// gzip, bzip2, xz or zstd magic number, and r itself otherwise (a plain
// tar). Its stages read ahead in goroutines of their own (readAhead):
// the content ends (io.EOF) only once r has (every format is read as a
// run of streams to r's end), so from then on nothing but the caller
// reads r. done stops the goroutines and releases the decompressor, and
// must be called before r is closed.
func Decompress(r io.Reader) (_ io.Reader, done func(), _ error) { return decompress(r, true) }

// DecompressHead is Decompress for a caller that reads only the start of
// the content (a tar header, to see whether it is an archive): nothing is
// read or decompressed ahead of it.
func DecompressHead(r io.Reader) (_ io.Reader, done func(), _ error) { return decompress(r, false) }

func decompress(r io.Reader, ahead bool) (io.Reader, func(), error) {
	in, inDone := r, func() {}
	if ahead {
		in, inDone = readAhead(r, readAheadIn)
	}
	br := bufio.NewReader(in)
	dec, release, threaded, err := decoder(br)
	if err != nil {
		inDone()
		return nil, nil, err
	}
	out, outDone := dec, func() {}
	if ahead && dec != io.Reader(br) && !threaded {
		out, outDone = readAhead(dec, readAheadOut)
	}
	return out, func() { outDone(); release(); inDone() }, nil
}

// decoder returns the decompressor of the format br's magic number names
// (br itself for a plain tar), what releases it, and whether it reads
// ahead in goroutines of its own (zstd's does).
func decoder(br *bufio.Reader) (_ io.Reader, release func(), threaded bool, _ error) {
	magic, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, false, err
		}
		return zr, func() { zr.Close() }, false, nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		return bzip2.NewReader(br), func() {}, false, nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		xr, err := xz.NewReader(br)
		if err != nil {
			return nil, nil, false, err
		}
		return xr, func() {}, false, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, nil, false, err
		}
		return zr, zr.Close, true, nil
	}
	return br, func() {}, false, nil
}

// readAheadSize is how far ahead a stage of Decompress reads: its
// buffers and their size.
type readAheadSize struct{ buffers, size int }

var (
	// readAheadIn reads the compressed bytes (a registry's body, its
	// digest check) ahead of the decompressor.
	readAheadIn = readAheadSize{4, 64 << 10}
	// readAheadOut decompresses ahead of what reads the result.
	readAheadOut = readAheadSize{4, 256 << 10}
)

// readAhead reads r in a goroutine of its own, ahead of what reads the
// result, so that the stages of unpacking a big layer (receiving and
// checking its bytes, decompressing them, writing the files) run on
// cores of their own instead of taking turns: decompressing is one core's
// work. done stops the
// goroutine, waiting for a read of r under way, so r may be released
// after it.
func readAhead(r io.Reader, s readAheadSize) (io.Reader, func()) {
	ra, err := readahead.NewReaderSize(r, s.buffers, s.size)
	if err != nil {
		return r, func() {}
	}
	return ra, func() { ra.Close() }
}

// OpenTar opens a layer's tar stream: its compressed bytes decompressed
// here (klauspost's gzip and zstd, faster than ggcr's Uncompressed).
// finish reads the rest (a registry layer's verifying reader checks its
// digest at the end) and closes it; its error says the layer was not
// what its digest names.
func OpenTar(l v1.Layer) (r io.Reader, finish func() error, err error) {
	rc, err := l.Compressed()
	if err != nil {
		return nil, nil, err
	}
	r, done, err := Decompress(rc)
	if err != nil {
		rc.Close()
		return nil, nil, err
	}
	return r, func() error {
		defer rc.Close()
		defer done()
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
		_, err := io.Copy(io.Discard, rc)
		return err
	}, nil
}
