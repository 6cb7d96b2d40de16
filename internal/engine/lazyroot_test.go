package engine

import (
	"archive/tar"
	"context"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/layer"
)

func TestPathIndex(t *testing.T) {
	ix := newPathIndex()
	for _, n := range []string{"bin/", "bin/sh", "./etc/passwd", "usr/lib/.wh.old", "var/cache/.wh..wh..opq"} {
		ix.add(n)
	}
	for _, c := range []struct {
		p    string
		want bool
	}{
		{"/app", false}, {"/app/x", false}, {"/blob.bin", false}, {"/binary", false},
		{"/bin", true},         // an entry
		{"/bin/ls", true},      // under an entry
		{"/etc", true},         // holds an entry
		{"/etc/hosts", true},   // its parent holds one
		{"/usr/lib/old", true}, // deleted by a whiteout
		{"/usr/lib/new", true}, // the whiteout's directory holds an entry
		{"/var/cache/x", true}, // an opaque directory
		{"/", true},            // the root itself
	} {
		if got := ix.touches(c.p); got != c.want {
			t.Errorf("touches(%s) = %v, want %v", c.p, got, c.want)
		}
	}
	opaque := newPathIndex()
	opaque.add(".wh..wh..opq")
	if !opaque.touches("/app") {
		t.Error("an opaque root touches everything")
	}
}

// TestPathIndexCollisions is a base whose names collide in the index's
// hash (a hostile base can find FNV-1a collisions): touches must still say
// yes for every path a layer holds, everything under it and every parent,
// so the root is brought up to date wherever it would be without the index.
func TestPathIndexCollisions(t *testing.T) {
	byLength := func(p string) uint64 { return uint64(len(p)) } // "abcdefg" and "pq/rstu" collide
	ix := &pathIndex{seen: map[uint64]struct{}{}, hash: byLength}
	names := []string{"abcdefg", "pq/rstu/v", "x/yy/zzz/w", "m/n"}
	for _, n := range names {
		ix.add(n)
	}
	for _, n := range names {
		for p := n; p != "."; p = filepath.Dir(p) {
			for _, q := range []string{"/" + p, "/" + p + "/under"} {
				if !ix.touches(q) {
					t.Errorf("touches(%s) = false: the layer holds %s", q, n)
				}
			}
		}
	}
}

// TestLazyRoot: a COPY to a path no base layer touches runs without the
// base unpacked (the stage root holds at most the COPY's files), the base is
// unpacked under what it wrote when a later COPY needs it, and a COPY into a
// directory of the base still finds it there (its layer records the
// directory as the base has it). A hostile base is refused all the same.
func TestLazyRoot(t *testing.T) {
	f := newFixture(t)
	work := t.TempDir()
	if _, err := f.run(buildSpec{dockerfile: "FROM REG/busybox:1\nCOPY a /app/a\nWORKDIR /app\nCOPY a b\n", files: map[string]string{"a": "A"},
		opts: func(o *Options) { o.WorkDir = work; o.keepRoots = true }}); err != nil {
		t.Fatal(err)
	}
	roots, _ := filepath.Glob(filepath.Join(work, "build-*", "stage-0", "root"))
	if len(roots) != 1 {
		t.Fatalf("stage roots %v", roots)
	}
	var inRoot []string
	filepath.WalkDir(roots[0], func(p string, d fs.DirEntry, err error) error {
		if rel, _ := filepath.Rel(roots[0], p); rel != "." {
			inRoot = append(inRoot, rel)
		}
		return nil
	})
	// The COPYs' files are read from the context for their layers, not
	// written into the root (no RUN needs them there): the root gets the
	// first COPY's layer when WORKDIR /app needs it, never the base's, and
	// the last COPY's file never.
	if d := cmp.Diff([]string{"app", "app/a"}, inRoot); d != "" {
		t.Errorf("the stage root holds more than the layers applied for WORKDIR, the base was unpacked (-want +got):\n%s", d)
	}
	broken := imagetest.Image(t, true, nil, []imagetest.File{{Path: "../escape", Type: tar.TypeReg, Mode: 0o644, Content: "x"}})
	f.push("broken:1", broken)
	if _, err := f.run(buildSpec{dockerfile: "FROM REG/broken:1\nCOPY a /app/a\n", files: map[string]string{"a": "A"}}); err == nil || !strings.Contains(err.Error(), "escapes the root") {
		t.Errorf("a hostile base never unpacked: %v, want it refused", err)
	}

	base := imagetest.Image(t, true, nil, append(imagetest.BusyboxFiles(t),
		imagetest.Dir("srv", 0o700, 5, 5), imagetest.Reg("srv/base.txt", "from base\n", 0o644, 0, 0)))
	f.push("lazybase:1", base)
	// The first COPY runs before the base is unpacked, the second (into the
	// base's /srv) unpacks it under the first's file; the next stage reads
	// the root that results.
	df := "FROM REG/lazybase:1 AS lazy\nCOPY a /app/a\nCOPY b /srv/b\n" +
		"FROM REG/busybox:1\nCOPY --from=lazy /app/a /srv/base.txt /srv/b /got/\n"
	files := map[string]string{"a": "A\n", "b": "B\n"}
	fs, _, _ := f.mustRun(buildSpec{dockerfile: df, files: files})
	for p, want := range map[string]string{"got/a": "A\n", "got/base.txt": "from base\n", "got/b": "B\n"} {
		if got := fs[p].Content; got != want {
			t.Errorf("/%s from the lazy stage's root: %q, want %q", p, got, want)
		}
	}
	fs, _, img := f.mustRun(buildSpec{dockerfile: df, files: files, opts: func(o *Options) { o.Target = "lazy" }})
	if e := fs["srv"]; e.Header.Mode&0o777 != 0o700 || e.Header.Uid != 5 {
		t.Errorf("/srv %o %d: the base's directory was replaced", e.Header.Mode, e.Header.Uid)
	}
	ls, _ := img.Layers()
	var names [][]string
	for _, l := range ls[1:3] {
		names = append(names, imagetest.LayerNames(t, l))
	}
	if d := cmp.Diff([][]string{{"app", "app/a"}, {"srv", "srv/b"}}, names); d != "" {
		t.Errorf("the COPY layers (-want +got):\n%s", d)
	}
	// The parent the second COPY found in the base is recorded as the base
	// has it: that COPY waited for the base to be unpacked.
	rc, _ := ls[2].Uncompressed()
	if e := imagetest.ReadTar(t, rc)["srv"]; e.Header.Mode&0o777 != 0o700 || e.Header.Uid != 5 {
		t.Errorf("the COPY layer's srv: %o %d:%d, want the base's 0700 5:5", e.Header.Mode, e.Header.Uid, e.Header.Gid)
	}
}

// TestLazyRootThroughBaseLinks: a base whose symlinks point out of the
// root (absolute, and up with ..) makes a COPY through them wait for the
// base, and the write then lands inside the root: nothing outside changes,
// also after an earlier COPY ran before the base was unpacked.
func TestLazyRootThroughBaseLinks(t *testing.T) {
	f := newFixture(t)
	outside := t.TempDir()
	f.push("linkbase:1", imagetest.Image(t, true, nil, append(imagetest.BaseFiles(),
		imagetest.Symlink("abs", outside), imagetest.Symlink("up", "../../../../.."))))
	for _, df := range []string{
		"FROM REG/linkbase:1\nCOPY a /fresh/a\nCOPY a /abs/planted\nCOPY a /up/" + strings.TrimPrefix(outside, "/") + "/up-planted\n",
		"FROM REG/linkbase:1\nWORKDIR /abs\nCOPY a planted\n",
	} {
		if _, err := f.run(buildSpec{dockerfile: df, files: map[string]string{"a": "A"}}); err != nil {
			t.Fatalf("%q: %v", df, err)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 0 {
			t.Fatalf("%q wrote outside the root: %v", df, ents)
		}
	}
}

// TestStreamedCopy: a COPY that no RUN follows reads its files from the
// context for its layer and writes only directories into the root; the
// image is the same, a later stage's COPY --from reads the files (the
// layer applied over the base, replacing the base's file), and a COPY
// that replaces what a streamed COPY wrote gets it applied first.
func TestStreamedCopy(t *testing.T) {
	f := newFixture(t)
	f.push("streambase:1", imagetest.Image(t, true, nil, append(imagetest.BusyboxFiles(t),
		imagetest.Reg("etc/motd", "base motd\n", 0o644, 0, 0))))
	work := t.TempDir()
	df := "FROM REG/streambase:1 AS s\nCOPY tree/ /opt/tree/\nCOPY motd /etc/motd\nCOPY again /opt/tree/a\n" +
		"FROM REG/busybox:1\nCOPY --from=s /opt/tree /etc/motd /got/\n"
	files := map[string]string{"tree/": "", "tree/a": "A\n", "tree/sub/": "", "tree/sub/b": "B\n", "motd": "new motd\n", "again": "A2\n"}
	res, err := f.run(buildSpec{dockerfile: df, files: files, opts: func(o *Options) { o.WorkDir = work; o.Target = "s"; o.keepRoots = true }})
	if err != nil {
		t.Fatal(err)
	}
	got := imagetest.Flatten(t, res.Image)
	for p, want := range map[string]string{"opt/tree/a": "A2\n", "opt/tree/sub/b": "B\n", "etc/motd": "new motd\n"} {
		if got[p].Content != want {
			t.Errorf("image /%s = %q, want %q", p, got[p].Content, want)
		}
	}
	roots, _ := filepath.Glob(filepath.Join(work, "build-*", "stage-0", "root"))
	if len(roots) != 1 {
		t.Fatalf("stage roots %v", roots)
	}
	// The COPY that replaces /opt/tree/a had the earlier COPYs' layers
	// applied first (the base was unpacked for the COPY onto its
	// /etc/motd), and its own file stayed out of the root.
	for p, want := range map[string]bool{"opt/tree/sub/b": true, "etc/motd": true, "bin/busybox": true} {
		if _, err := os.Lstat(filepath.Join(roots[0], p)); (err == nil) != want {
			t.Errorf("/%s in the stage root: %v, want present %v", p, err, want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(roots[0], "opt/tree/a")); err != nil || string(b) != "A\n" {
		t.Errorf("/opt/tree/a in the root: %q %v, want the first COPY's", b, err)
	}

	fs, _, _ := f.mustRun(buildSpec{dockerfile: df, files: files})
	for p, want := range map[string]string{"got/a": "A2\n", "got/sub/b": "B\n", "got/motd": "new motd\n"} {
		if fs[p].Content != want {
			t.Errorf("/%s read from the streamed stage: %q, want %q", p, fs[p].Content, want)
		}
	}
}

// TestImagelessStage: a stage that only COPY --from reads makes no layer
// (nor snapshots): the build writes the target's layers alone, and the
// target still gets the stage's files. A stage a later one starts FROM
// keeps its layers.
func TestImagelessStage(t *testing.T) {
	f := newFixture(t)
	for _, tt := range []struct {
		df     string
		layers int
	}{
		{"FROM REG/busybox:1 AS b\nRUN echo built > /f && mkdir /d && echo two > /d/g\nFROM REG/busybox:1\nCOPY --from=b /f /d /out/\n", 1},
		{"FROM REG/busybox:1 AS b\nRUN echo built > /f && mkdir /d && echo two > /d/g\nFROM b\nCOPY --from=b /f /d /out/\n", 2},
	} {
		work := t.TempDir()
		res, err := f.run(buildSpec{dockerfile: tt.df, opts: func(o *Options) { o.WorkDir = work }})
		if err != nil {
			t.Fatal(err)
		}
		made, _ := filepath.Glob(filepath.Join(work, "build-*", "layer-*.tar*"))
		if len(made) != tt.layers {
			t.Errorf("%q: %d layer files written, want %d: %v", tt.df, len(made), tt.layers, made)
		}
		fs := imagetest.Flatten(t, res.Image)
		if fs["out/f"].Content != "built\n" || fs["out/g"].Content != "two\n" {
			t.Errorf("%q: the target's copy of the stage's files: %q %q", tt.df, fs["out/f"].Content, fs["out/g"].Content)
		}
	}
}

// TestStreamedCopySourceSwap: a streamed COPY reads its files from the
// source when the layer is written, not when it walked them. A directory
// or a file of the source swapped for a symlink out of it in between
// (absolute, or climbing with ..) never has the layer read outside: the
// file is opened inside the source, its last element not followed.
func TestStreamedCopySourceSwap(t *testing.T) {
	outside := t.TempDir()
	os.MkdirAll(filepath.Join(outside, "sub"), 0o755)
	os.WriteFile(filepath.Join(outside, "sub", "f"), []byte("SECRET"), 0o644)
	os.WriteFile(filepath.Join(outside, "f"), []byte("SECRET"), 0o644)
	for _, swap := range []struct {
		name   string
		target string // what sub (or sub/f) becomes a symlink to
		file   bool
	}{
		{"directory, absolute", outside, false},
		{"directory, climbing", "../../../../../../../../" + strings.TrimPrefix(outside, "/"), false},
		{"file, absolute", filepath.Join(outside, "f"), true},
	} {
		t.Run(swap.name, func(t *testing.T) {
			ctxDir := t.TempDir()
			os.MkdirAll(filepath.Join(ctxDir, "sub"), 0o755)
			os.WriteFile(filepath.Join(ctxDir, "sub", "f"), []byte("inside"), 0o644)
			src, err := fsroot.Open(ctxDir)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			dst, err := fsroot.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer dst.Close()
			b := &builder{}
			w := b.newWriter(&stage{root: &stageRoot{fs: dst}}, writerOptions{stream: src})
			defer w.close()
			d, err := src.OpenDir("sub")
			if err != nil {
				t.Fatal(err)
			}
			fi, err := d.Lstat("f")
			if err != nil {
				t.Fatal(err)
			}
			if err := w.copyFrom(d, "f", fi, "/app/f"); err != nil {
				t.Fatal(err)
			}
			d.Close()
			entries := w.entries()
			if swap.file {
				os.Remove(filepath.Join(ctxDir, "sub", "f"))
				os.Symlink(swap.target, filepath.Join(ctxDir, "sub", "f"))
			} else {
				os.Rename(filepath.Join(ctxDir, "sub"), filepath.Join(ctxDir, "moved"))
				os.Symlink(swap.target, filepath.Join(ctxDir, "sub"))
			}
			var buf strings.Builder
			err = layer.WriteTar(context.Background(), &buf, entries, nil)
			if strings.Contains(buf.String(), "SECRET") {
				t.Fatalf("the layer holds a file from outside the source (err %v)", err)
			}
			if err == nil {
				t.Errorf("a swapped source wrote a layer without error")
			}
		})
	}
}

// blobGets counts the registry's blob downloads, by digest.
type blobGets struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *blobGets) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, d, ok := strings.Cut(r.URL.Path, "/blobs/"); ok && r.Method == http.MethodGet {
			c.mu.Lock()
			c.n[d]++
			c.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
}

func (c *blobGets) of(d v1.Hash) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[d.String()]
}

// TestBaseReadOnce: a stage whose COPY runs ahead of its base (so has to
// know what the base touches) on a base another stage unpacked, or
// indexed, does not download it again; a stage that needs the base's
// files does, as it must.
func TestBaseReadOnce(t *testing.T) {
	for _, tc := range []struct {
		name, dockerfile, file string
		want                   int
	}{
		{"after a stage that unpacked it", "FROM REG/busybox:1 AS a\nRUN echo a > /a\nFROM REG/busybox:1\nCOPY --from=a /a /b\n", "b", 1},
		{"after a stage that indexed it", "FROM REG/busybox:1 AS a\nCOPY f /a\nFROM a\nCOPY f /b\n", "b", 1},
		{"in a stage that needs its files", "FROM REG/busybox:1 AS a\nCOPY f /a\nFROM a\nRUN cat /a > /b\n", "b", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gets := &blobGets{n: map[string]int{}}
			f := newFixtureOn(t, imagetest.RegistryWith(t, gets.wrap))
			base := imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t))
			f.push("busybox:1", base)
			ls, _ := base.Layers()
			d, _ := ls[0].Digest()
			res, err := f.run(buildSpec{dockerfile: tc.dockerfile, files: map[string]string{"f": "F\n"}})
			if err != nil {
				t.Fatal(err)
			}
			if got := gets.of(d); got != tc.want {
				t.Errorf("the base layer was downloaded %d times, want %d", got, tc.want)
			}
			fs := imagetest.Flatten(t, res.Image)
			if fs[tc.file].Content == "" || fs["usr/bin/busybox"].Content == "" {
				t.Errorf("the image lacks /%s (%q) or the base's /usr/bin/busybox", tc.file, fs[tc.file].Content)
			}
		})
	}
}
