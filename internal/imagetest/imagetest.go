// Package imagetest makes small images for tests and reads images back as
// a flattened file system, the way ggcr's random package serves its tests.
package imagetest

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one entry of a test layer.
type File struct {
	Path     string
	Type     byte // tar type flag; 0 means a regular file
	Mode     int64
	UID, GID int
	Content  string
	Link     string // symlink target or hard-link target
	ModTime  time.Time
}

// Dir, Reg and Symlink are shorthands for File values.
func Dir(p string, mode int64, uid, gid int) File {
	return File{Path: p, Type: tar.TypeDir, Mode: mode, UID: uid, GID: gid}
}

// Reg is a regular file.
func Reg(p, content string, mode int64, uid, gid int) File {
	return File{Path: p, Type: tar.TypeReg, Mode: mode, UID: uid, GID: gid, Content: content}
}

// Symlink is a symbolic link.
func Symlink(p, target string) File {
	return File{Path: p, Type: tar.TypeSymlink, Mode: 0o777, Link: target}
}

// Tar returns an uncompressed tar of files.
func Tar(files ...File) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		typ := f.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		mt := f.ModTime
		if mt.IsZero() {
			mt = time.Unix(1700000000, 0)
		}
		h := &tar.Header{Name: f.Path, Typeflag: typ, Mode: f.Mode, Uid: f.UID, Gid: f.GID, Linkname: f.Link, ModTime: mt}
		if typ == tar.TypeReg {
			h.Size = int64(len(f.Content))
		}
		if err := tw.WriteHeader(h); err != nil {
			panic(err)
		}
		if typ == tar.TypeReg {
			tw.Write([]byte(f.Content))
		}
	}
	tw.Close()
	return buf.Bytes()
}

// Layer returns a gzip layer of files.
func Layer(t testing.TB, files ...File) v1.Layer {
	t.Helper()
	data := Tar(files...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Image returns an image of the given layers: OCI media types when oci,
// Docker v2 otherwise. mod may adjust the config.
func Image(t testing.TB, oci bool, mod func(*v1.ConfigFile), layers ...[]File) v1.Image {
	t.Helper()
	var img v1.Image = empty.Image
	lmt := types.DockerLayer
	if oci {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		lmt = types.OCILayer
	}
	for _, files := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer: Layer(t, files...), MediaType: lmt,
			History: v1.History{CreatedBy: "test layer", Created: v1.Time{Time: time.Unix(1700000000, 0)}},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if mod != nil {
		mod(cf)
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// BaseFiles is a small root file system with users, groups and a few
// directories of distinct modes and owners.
func BaseFiles() []File {
	return []File{
		Dir("etc", 0o755, 0, 0),
		Reg("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n", 0o644, 0, 0),
		Reg("etc/group", "root:x:0:\nappgrp:x:1001:\nstaff:x:50:\nnogroup:x:65534:\n", 0o644, 0, 0),
		Dir("opt", 0o750, 0, 50),
		Dir("opt/data", 0o2775, 1000, 1001),
		Dir("tmp", 0o1777, 0, 0),
		Dir("usr", 0o755, 0, 0),
		Dir("usr/bin", 0o755, 0, 0),
		Reg("usr/bin/tool", "#!/bin/sh\necho tool\n", 0o4755, 0, 0),
		Symlink("bin", "usr/bin"),
		Dir("var", 0o755, 0, 0),
		Symlink("var/run", "/run"),
		Dir("run", 0o755, 0, 0),
	}
}

// Registry starts ggcr's in-process registry and returns its host:port.
func Registry(t testing.TB) string {
	t.Helper()
	return RegistryWith(t, nil)
}

// RegistryWith is Registry with its handler wrapped by wrap (nil: none),
// to observe or change the requests it serves.
func RegistryWith(t testing.TB, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// Entry is a flattened file.
type Entry struct {
	Header  tar.Header
	Content string
}

// Flatten applies img's layers in order (whiteouts and opaque directories
// included) and returns the resulting files by path without leading slash.
// A layer's whiteouts and opaque markers apply to the layers below it only.
func Flatten(t testing.TB, img v1.Image) map[string]Entry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	fs := map[string]Entry{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		entries := ReadTar(t, rc)
		rc.Close()
		added := map[string]Entry{}
		for name, e := range entries {
			dir, base := path.Split(name)
			dir = strings.TrimSuffix(dir, "/")
			switch {
			case base == ".wh..wh..opq":
				for k := range fs {
					if strings.HasPrefix(k, dir+"/") {
						delete(fs, k)
					}
				}
			case strings.HasPrefix(base, ".wh."):
				victim := path.Join(dir, strings.TrimPrefix(base, ".wh."))
				for k := range fs {
					if k == victim || strings.HasPrefix(k, victim+"/") {
						delete(fs, k)
					}
				}
			default:
				added[name] = e
			}
		}
		for name, e := range added {
			fs[name] = e
		}
	}
	return fs
}

// ReadTar reads a tar stream into entries by clean path.
func ReadTar(t testing.TB, r io.Reader) map[string]Entry {
	t.Helper()
	out := map[string]Entry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		out[name] = Entry{Header: *h, Content: string(data)}
	}
}

// LayerNames lists the entry names of one layer, sorted.
func LayerNames(t testing.TB, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	for n := range ReadTar(t, rc) {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// BusyboxApplets are linked to /bin/busybox in BusyboxFiles.
var BusyboxApplets = []string{
	"sh", "echo", "cat", "ls", "mkdir", "rm", "touch", "chmod", "chown", "ln", "mv", "cp", "id",
	"env", "sleep", "true", "false", "test", "wc", "pwd", "sort", "grep", "stat", "readlink", "head", "printf", "uname",
}

// BusyboxFiles is BaseFiles plus Debian's static busybox (busybox-static)
// at /bin/busybox with applet symlinks, so RUN has a shell. It fails the
// test when busybox is not installed.
func BusyboxFiles(t testing.TB) []File {
	t.Helper()
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("Debian's busybox-static is required (apt-get install busybox-static; test/run installs it): %v", err)
	}
	return busyboxFiles(data)
}

// ForeignBusyboxDir holds busybox-static binaries of other architectures,
// busybox.<GOARCH> (test/run unpacks Debian's package for the one that is
// not this machine's).
const ForeignBusyboxDir = "/usr/local/lib/kiln-test"

// BusyboxFilesFor is BusyboxFiles with the busybox of architecture arch:
// this machine's /bin/busybox, or ForeignBusyboxDir's. It fails the test
// when there is none.
func BusyboxFilesFor(t testing.TB, arch string) []File {
	t.Helper()
	if arch == runtime.GOARCH {
		return BusyboxFiles(t)
	}
	p := path.Join(ForeignBusyboxDir, "busybox."+arch)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("Debian's busybox-static for %s is required at %s (test/run unpacks it there): %v", arch, p, err)
	}
	return busyboxFiles(data)
}

func busyboxFiles(data []byte) []File {
	files := BaseFiles()
	// BaseFiles has bin -> usr/bin; put busybox in usr/bin.
	files = append(files, File{Path: "usr/bin/busybox", Type: tar.TypeReg, Mode: 0o755, Content: string(data)})
	for _, a := range BusyboxApplets {
		files = append(files, Symlink("usr/bin/"+a, "busybox"))
	}
	return files
}

// BusyboxIndex is an OCI index of BusyboxFilesFor images, one per
// architecture (linux), in the order given.
func BusyboxIndex(t testing.TB, archs ...string) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, arch := range archs {
		img := Image(t, true, func(cf *v1.ConfigFile) { cf.OS, cf.Architecture = "linux", arch }, BusyboxFilesFor(t, arch))
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
}
