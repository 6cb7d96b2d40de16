package layer

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Decompress returns r's content decompressed when it starts with a
// gzip, bzip2, xz or zstd magic number, and r itself otherwise (a plain
// tar). done releases the decompressor.
func Decompress(r io.Reader) (_ io.Reader, done func(), _ error) {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		return bzip2.NewReader(br), func() {}, nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		xr, err := xz.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return xr, func() {}, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
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
