package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/stream"
)

// TestFollowReadsWhileWritten reads a layer through Follow while it is
// being written: the reader gets a megabyte before the layer can finish
// (the next entry's content is held back until it has), Digest and Size
// say not computed until then, and what it reads is the finished blob.
func TestFollowReadsWhileWritten(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	data := make([]byte, 2<<20)
	rand.Read(data) // incompressible: compressed bytes flow as it is written
	if err := os.WriteFile(big, data, 0o644); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	held := func() (*os.File, error) {
		select {
		case <-release:
		case <-time.After(time.Minute):
			return nil, errors.New("the follower never read the first megabyte")
		}
		return os.Open(big)
	}
	entries := ListOf(
		Entry{Header: Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644}, Source: big},
		Entry{Header: Header{Name: "held", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}, Open: held},
	)
	type result struct {
		read        []byte
		early, late error
	}
	got := make(chan result, 1)
	follow := func(g *Growing) {
		go func() {
			var r result
			rc, err := g.Compressed()
			if err != nil {
				r.late = err
				got <- r
				return
			}
			defer rc.Close()
			var buf bytes.Buffer
			_, r.early = io.CopyN(&buf, rc, 1<<20)
			if r.early == nil {
				if _, err := g.Digest(); !errors.Is(err, stream.ErrNotComputed) {
					r.early = errors.New("digest known before the layer was finished")
				}
				if _, err := g.Size(); !errors.Is(err, stream.ErrNotComputed) {
					r.early = errors.New("size known before the layer was finished")
				}
			}
			close(release)
			_, r.late = io.Copy(&buf, rc)
			r.read = buf.Bytes()
			got <- r
		}()
	}
	l, err := New(context.Background(), dir, entries, Options{Follow: follow})
	if err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.early != nil || r.late != nil {
		t.Fatalf("following: %v, %v", r.early, r.late)
	}
	rc, _ := l.Compressed()
	blob, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(r.read, blob) {
		t.Fatalf("follower read %d bytes, the blob has %d (or they differ)", len(r.read), len(blob))
	}
}

// TestFollowFails: when writing the layer fails, the follower gets the
// error, never an end that would let a truncated blob be committed.
func TestFollowFails(t *testing.T) {
	dir := t.TempDir()
	boom := errors.New("source vanished")
	entries := ListOf(
		Entry{Header: Header{Name: "a", Typeflag: tar.TypeDir, Mode: 0o755}},
		Entry{Header: Header{Name: "a/f", Typeflag: tar.TypeReg, Mode: 0o644}, Open: func() (*os.File, error) { return nil, boom }},
	)
	var g *Growing
	var rc io.ReadCloser
	follow := func(x *Growing) {
		g = x
		var err error
		if rc, err = g.Compressed(); err != nil {
			t.Error(err)
		}
	}
	if _, err := New(context.Background(), dir, entries, Options{Follow: follow}); err == nil {
		t.Fatal("the layer was written")
	}
	if rc == nil {
		t.FailNow()
	}
	defer rc.Close()
	if _, err := io.ReadAll(rc); !errors.Is(err, boom) {
		t.Errorf("follower read to %v, want %v", err, boom)
	}
	if _, err := g.Digest(); !errors.Is(err, boom) {
		t.Errorf("digest: %v, want %v", err, boom)
	}
	if _, err := g.Compressed(); !errors.Is(err, boom) {
		t.Errorf("opening after the failure: %v, want %v", err, boom)
	}
}
