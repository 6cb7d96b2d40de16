package layer

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// errDigest stands for a registry layer's verifying reader, which fails
// at the end of the bytes when they are not what the digest names.
var errDigest = errors.New("digest mismatch")

// endsWith is r with err in place of its io.EOF; reads counts its reads.
type endsWith struct {
	r     io.Reader
	err   error
	reads atomic.Int64
	bytes atomic.Int64
}

func (e *endsWith) Read(p []byte) (int, error) {
	e.reads.Add(1)
	n, err := e.r.Read(p)
	e.bytes.Add(int64(n))
	if err == io.EOF && e.err != nil {
		err = e.err
	}
	return n, err
}

func compressed(t *testing.T, format string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch format {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "zstd":
		w, err = zstd.NewWriter(&buf)
	case "plain":
		return data
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDecompress reads streams longer than Decompress reads ahead, in
// every format it knows: the content comes through whole and in order,
// having read its source to the end; an error of the compressed stream at
// its end (a digest mismatch) comes through after it; and once done
// returns nothing reads the stream again. DecompressHead does the same
// in the caller's goroutine, reading no more of the stream than the start
// asked for needs.
func TestDecompress(t *testing.T) {
	data := make([]byte, 2<<20)
	rnd := rand.New(rand.NewSource(1))
	for i := range data {
		data[i] = "abcdefgh"[rnd.Intn(8)] // compressible, not trivially
	}
	for _, format := range []string{"gzip", "xz", "zstd", "plain"} {
		for name, Decompress := range map[string]func(io.Reader) (io.Reader, func(), error){"Decompress": Decompress, "DecompressHead": DecompressHead} {
			t.Run(name+"/"+format, func(t *testing.T) {
				z := compressed(t, format, data)
				src := &endsWith{r: bytes.NewReader(z)}
				r, done, err := Decompress(src)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(r)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("read %d bytes (equal: %v), %v; want the %d bytes written", len(got), bytes.Equal(got, data), err, len(data))
				}
				// At r's end its source is at its end too, and read by nothing
				// else: a caller reads on (layer.OpenTar, rootfs.Unpack) with
				// no goroutine of Decompress reading beside it.
				if n, err := io.Copy(io.Discard, src); n != 0 || err != nil {
					t.Errorf("the source had %d bytes left, %v, once the content ended", n, err)
				}
				done()

				src = &endsWith{r: bytes.NewReader(z), err: errDigest}
				if r, done, err = Decompress(src); err != nil {
					t.Fatal(err)
				}
				got, err = io.ReadAll(r)
				done()
				if !errors.Is(err, errDigest) {
					t.Errorf("read %d bytes, %v; want %v at the end", len(got), err, errDigest)
				}

				src = &endsWith{r: bytes.NewReader(z)}
				if r, done, err = Decompress(src); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
					t.Fatal(err)
				}
				// The decoders buffer some of their own (xz 64 KiB, zstd its own
				// read-ahead); Decompress would read 256 KiB ahead of them.
				if got := src.bytes.Load(); name == "DecompressHead" && got > 128<<10 {
					t.Errorf("DecompressHead read %d bytes of the stream for 1000 of content", got)
				}
				done()
				n := src.reads.Load()
				time.Sleep(20 * time.Millisecond)
				if m := src.reads.Load(); m != n {
					t.Errorf("the stream was read %d more times after done", m-n)
				}
			})
		}
	}
}
