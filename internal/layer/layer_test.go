package layer

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"golang.org/x/sys/unix"
)

func TestNew(t *testing.T) {
	dir := t.TempDir()
	content := filepath.Join(dir, "content")
	os.WriteFile(content, []byte("hello"), 0o644)
	long := strings.Repeat("d", 120) + "/" + strings.Repeat("f", 120)
	mt := time.Unix(1700000000, 500)
	entries := []Entry{
		{Header: Header{Name: "dir", Typeflag: tar.TypeDir, Mode: 0o2755, Uid: 1000, Gid: 1001, ModTime: mt}},
		{Header: Header{Name: "dir/suid", Typeflag: tar.TypeReg, Mode: 0o4755, ModTime: mt}, Source: content},
		{Header: Header{Name: "dir/link", Typeflag: tar.TypeLink, Linkname: "/dir/suid"}},
		{Header: Header{Name: "dir/sym", Typeflag: tar.TypeSymlink, Linkname: "suid", Mode: 0o777}},
		{Header: Header{Name: long, Typeflag: tar.TypeReg, Mode: 0o1644}, Source: content},
	}
	for _, comp := range []Compression{Gzip, Zstd} {
		t.Run(string(comp), func(t *testing.T) {
			l, err := New(context.Background(), dir, ListOf(entries...), Options{Compression: comp, Level: 3})
			if err != nil {
				t.Fatal(err)
			}
			if comp == Gzip { // ggcr's validate only reads gzip
				if err := validate.Layer(l); err != nil {
					t.Fatalf("validate: %v", err)
				}
			}
			rcu, _ := l.Uncompressed()
			raw, _ := io.ReadAll(rcu)
			rcu.Close()
			if sum := sha256.Sum256(raw); func() string { d, _ := l.DiffID(); return d.Hex }() != hex.EncodeToString(sum[:]) {
				t.Error("diff ID does not match the uncompressed tar")
			}
			wantMT := types.OCILayer
			if comp == Zstd {
				wantMT = types.OCILayerZStd
			}
			if mt, _ := l.MediaType(); mt != wantMT {
				t.Errorf("media type %s", mt)
			}
			rc, _ := l.Uncompressed()
			defer rc.Close()
			tr := tar.NewReader(rc)
			got := map[string]*tar.Header{}
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got[h.Name] = h
			}
			checks := []struct {
				name string
				ok   bool
			}{
				{"dir/ is a directory with setgid", got["dir/"] != nil && got["dir/"].Mode == 0o2755 && got["dir/"].Uid == 1000},
				{"setuid kept", got["dir/suid"] != nil && got["dir/suid"].Mode == 0o4755 && got["dir/suid"].Size == 5},
				{"numeric owner only", got["dir/suid"] != nil && got["dir/suid"].Uname == ""},
				{"mtime in whole seconds", got["dir/suid"] != nil && got["dir/suid"].ModTime.Equal(time.Unix(1700000000, 0))},
				{"hard link relative", got["dir/link"] != nil && got["dir/link"].Typeflag == tar.TypeLink && got["dir/link"].Linkname == "dir/suid"},
				{"symlink", got["dir/sym"] != nil && got["dir/sym"].Linkname == "suid"},
				{"long name through PAX, sticky kept", got[long] != nil && got[long].Mode == 0o1644},
			}
			for _, c := range checks {
				if !c.ok {
					t.Errorf("%s: headers %v", c.name, got)
				}
			}
		})
	}
}

func TestReproducibleTimes(t *testing.T) {
	dir := t.TempDir()
	epoch := time.Unix(0, 0)
	digest := func(mt time.Time) string {
		l, err := New(context.Background(), dir, ListOf(Entry{Header: Header{Name: "d", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt}}), Options{ModTime: &epoch})
		if err != nil {
			t.Fatal(err)
		}
		d, _ := l.Digest()
		return d.String()
	}
	if a, b := digest(time.Now()), digest(time.Unix(42, 0)); a != b {
		t.Errorf("digests differ with ModTime fixed: %s %s", a, b)
	}
}

func TestDigestMatchesBlob(t *testing.T) {
	dir := t.TempDir()
	l, err := New(context.Background(), dir, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := l.Compressed()
	b, _ := io.ReadAll(rc)
	rc.Close()
	sum := sha256.Sum256(b)
	if d, _ := l.Digest(); d.Hex != hex.EncodeToString(sum[:]) {
		t.Errorf("digest %s does not match the blob", d)
	}
	if n, _ := l.Size(); n != int64(len(b)) {
		t.Errorf("size %d, blob %d", n, len(b))
	}
}

func TestParseCompression(t *testing.T) {
	for in, want := range map[string]Compression{"": Gzip, "gzip": Gzip, "ZSTD": Zstd} {
		if got, err := ParseCompression(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	if _, err := ParseCompression("lz4"); err == nil || !strings.Contains(err.Error(), `option Compression "lz4"`) {
		t.Errorf("lz4: %v", err)
	}
}

// TestWriteTarContents: files opened ahead of the writer land in order
// with their contents, small and large, and a file whose size changed
// between its open and its read, or that is not a regular file any more,
// fails the layer naming the entry, leaving no descriptor open.
func TestWriteTarContents(t *testing.T) {
	dir := t.TempDir()
	var entries []Entry
	want := map[string]string{}
	for i := 0; i < 300; i++ { // more than run ahead
		name := filepath.Join(dir, "f"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+"-"+time.Duration(i).String())
		data := strings.Repeat("y", i*37)
		if i == 150 {
			data = strings.Repeat("big", smallFile) // streamed, not read ahead
		}
		os.WriteFile(name, []byte(data), 0o644)
		img := filepath.Base(name)
		entries = append(entries, Entry{Header: Header{Name: img, Typeflag: tar.TypeReg, Mode: 0o644}, Source: name})
		want[img] = data
	}
	var buf strings.Builder
	if err := WriteTar(context.Background(), &buf, ListOf(entries...), nil); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(strings.NewReader(buf.String()))
	for i := 0; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			if i != len(entries) {
				t.Errorf("%d entries, want %d", i, len(entries))
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != entries[i].Header.Name {
			t.Fatalf("entry %d is %s, want %s", i, h.Name, entries[i].Header.Name)
		}
		if b, _ := io.ReadAll(tr); string(b) != want[h.Name] {
			t.Errorf("%s: %d bytes, want %d", h.Name, len(b), len(want[h.Name]))
		}
	}

	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	fds := func() int { ents, _ := os.ReadDir("/proc/self/fd"); return len(ents) }
	before := fds()
	for _, bad := range []Entry{
		{Header: Header{Name: "fifo", Typeflag: tar.TypeReg}, Source: fifo},
		{Header: Header{Name: "gone", Typeflag: tar.TypeReg}, Source: filepath.Join(dir, "gone")},
	} {
		err := WriteTar(context.Background(), io.Discard, ListOf(append(append([]Entry{}, entries[:100]...), bad)...), nil)
		if err == nil || !strings.Contains(err.Error(), bad.Header.Name) {
			t.Errorf("%s: %v, want an error naming it", bad.Header.Name, err)
		}
	}
	// A file read ahead whose size is not the one its fstat gave.
	four := filepath.Join(dir, "four")
	os.WriteFile(four, []byte("four"), 0o644)
	for _, size := range []int64{3, 5} {
		f, _ := os.Open(four)
		if _, err := readAll(f, size); err == nil || !strings.Contains(err.Error(), "changed size") {
			t.Errorf("4 bytes read as %d: %v", size, err)
		}
		f.Close()
	}
	if f, _ := os.Open(four); f != nil {
		if b, err := readAll(f, 4); err != nil || string(b) != "four" {
			t.Errorf("readAll: %q %v", b, err)
		}
		f.Close()
	}
	if after := fds(); after > before {
		t.Errorf("%d descriptors open after failed layers, %d before", after, before)
	}
}

func TestList(t *testing.T) {
	for _, n := range []int{0, 1, listChunk - 1, listChunk, listChunk + 1, 3*listChunk + 7} {
		l := &List{}
		for i := 0; i < n; i++ {
			if got := l.Append(Entry{Header: Header{Name: fmt.Sprint(i)}}); got != i {
				t.Fatalf("n=%d: Append returned %d, want %d", n, got, i)
			}
		}
		if l.Len() != n {
			t.Fatalf("n=%d: Len %d", n, l.Len())
		}
		if n > 0 {
			l.At(n - 1).Header.Name = "last"
		}
		i := 0
		for e := range l.All() {
			want := fmt.Sprint(i)
			if i == n-1 {
				want = "last"
			}
			if e.Header.Name != want || l.At(i).Header.Name != want {
				t.Fatalf("n=%d: entry %d is %q/%q, want %q", n, i, e.Header.Name, l.At(i).Header.Name, want)
			}
			i++
		}
		if i != n {
			t.Fatalf("n=%d: All yielded %d", n, i)
		}
	}
	var nilList *List
	if nilList.Len() != 0 {
		t.Error("a nil List has entries")
	}
	for range nilList.All() {
		t.Error("a nil List yields")
	}
}

// TestTopLevel: a layer says which names are at its top, once each and
// sorted, whiteouts and opaque markers as they are named.
func TestTopLevel(t *testing.T) {
	dir := t.TempDir()
	entries := []Entry{
		{Header: Header{Name: "/many/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{Header: Header{Name: "many/f", Typeflag: tar.TypeReg, Mode: 0o644}},
		{Header: Header{Name: "etc/.wh.group", Typeflag: tar.TypeReg}},
		{Header: Header{Name: ".wh.gone", Typeflag: tar.TypeReg}},
		{Header: Header{Name: "./top", Typeflag: tar.TypeReg}},
		{Header: Header{Name: "var/cache/.wh..wh..opq", Typeflag: tar.TypeReg}},
	}
	for _, tc := range []struct {
		name    string
		entries []Entry
		want    []string
	}{
		{"entries", entries, []string{".wh.gone", "etc", "many", "top", "var"}},
		{"none", nil, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(context.Background(), dir, ListOf(tc.entries...), Options{TopLevel: true})
			if err != nil {
				t.Fatal(err)
			}
			if got := l.(*File).TopLevel(); got == nil || strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("TopLevel %q, want %q", got, tc.want)
			}
			unasked, err := New(context.Background(), dir, ListOf(tc.entries...), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := unasked.(*File).TopLevel(); got != nil {
				t.Errorf("TopLevel %q without Options.TopLevel, want nil (not known)", got)
			}
		})
	}
}
