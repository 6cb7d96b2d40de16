package output

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

type remotePusher struct{}

func (remotePusher) Write(_ context.Context, ref name.Reference, img v1.Image) error {
	return remote.Write(ref, img)
}

func (remotePusher) WriteIndex(_ context.Context, ref name.Reference, idx v1.ImageIndex) error {
	return remote.WriteIndex(ref, idx)
}

func (remotePusher) Tag(_ context.Context, tag name.Tag, t remote.Taggable) error {
	return remote.Tag(tag, t)
}

type failingPusher struct {
	after  int
	tagged []string
}

func (f *failingPusher) Write(_ context.Context, ref name.Reference, img v1.Image) error {
	if f.after == 0 {
		return errors.New("registry said no")
	}
	f.after--
	return nil
}

func (f *failingPusher) WriteIndex(_ context.Context, ref name.Reference, idx v1.ImageIndex) error {
	return f.Write(context.Background(), ref, nil)
}

func (f *failingPusher) Tag(_ context.Context, tag name.Tag, t remote.Taggable) error {
	f.tagged = append(f.tagged, tag.String())
	return nil
}

func TestWrite(t *testing.T) {
	reg := imagetest.Registry(t)
	img, _ := random.Image(200, 2)
	digest, _ := img.Digest()
	d1, _ := name.ParseReference(reg + "/app:v1")
	d2, _ := name.ParseReference(reg + "/other/app:latest")
	out := t.TempDir()
	o := Options{
		Destinations:               []name.Reference{d1, d2},
		TarPath:                    filepath.Join(out, "img.tar"),
		OCILayoutPath:              filepath.Join(out, "layout"),
		DigestFile:                 filepath.Join(out, "sub", "digest"),
		ImageNameWithDigestFile:    filepath.Join(out, "names"),
		ImageNameTagWithDigestFile: filepath.Join(out, "tags"),
	}
	if err := Write(context.Background(), img, o, remotePusher{}, nil); err != nil {
		t.Fatal(err)
	}
	for _, d := range []name.Reference{d1, d2} {
		got, err := remote.Image(d)
		if err != nil {
			t.Fatal(err)
		}
		if gd, _ := got.Digest(); gd != digest {
			t.Errorf("%s has %s, want %s", d, gd, digest)
		}
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read(o.DigestFile); got != digest.String() {
		t.Errorf("digest file %q", got)
	}
	wantNames := reg + "/app@" + digest.String() + "\n" + reg + "/other/app@" + digest.String() + "\n"
	if got := read(o.ImageNameWithDigestFile); got != wantNames {
		t.Errorf("names file %q, want %q", got, wantNames)
	}
	wantTags := reg + "/app:v1@" + digest.String() + "\n" + reg + "/other/app:latest@" + digest.String() + "\n"
	if got := read(o.ImageNameTagWithDigestFile); got != wantTags {
		t.Errorf("tags file %q", got)
	}
	tag, _ := name.NewTag(reg + "/app:v1")
	timg, err := tarball.ImageFromPath(o.TarPath, &tag)
	if err != nil {
		t.Fatal(err)
	}
	if td, _ := timg.Digest(); td != digest {
		t.Errorf("tarball image %s", td)
	}
	// A second write adds to the existing layout.
	img2, _ := random.Image(100, 1)
	if err := Write(context.Background(), img2, Options{OCILayoutPath: o.OCILayoutPath, NoPush: true}, nil, nil); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(o.OCILayoutPath)
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 2 || im.Manifests[0].Digest != digest {
		t.Fatalf("layout index %+v", im.Manifests)
	}
	if im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v1" {
		t.Errorf("annotations %v", im.Manifests[0].Annotations)
	}
	for _, m := range im.Manifests {
		li, err := p.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := li.Layers(); err != nil {
			t.Fatal(err)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(out, ".*kiln-*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestWriteFailureLeavesNothing(t *testing.T) {
	img, _ := random.Image(100, 1)
	d1, _ := name.ParseReference("example.com/a:1")
	d2, _ := name.ParseReference("example.com/b:1")
	out := t.TempDir()
	existing := filepath.Join(out, "layout")
	if err := Write(context.Background(), img, Options{OCILayoutPath: existing, NoPush: true}, nil, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(existing, "index.json"))
	o := Options{
		Destinations:  []name.Reference{d1, d2},
		TarPath:       filepath.Join(out, "img.tar"),
		OCILayoutPath: existing,
		DigestFile:    filepath.Join(out, "digest"),
	}
	img2, _ := random.Image(100, 1)
	p := &failingPusher{after: 1}
	err := Write(context.Background(), img2, o, p, nil)
	if err == nil || !strings.Contains(err.Error(), "example.com/b:1") {
		t.Fatalf("err = %v", err)
	}
	// The first repository got the image by digest, but no tag: a tag
	// comes only after every repository has the whole image.
	if len(p.tagged) != 0 {
		t.Errorf("tags set although a push failed: %v", p.tagged)
	}
	ents, _ := os.ReadDir(out)
	if len(ents) != 1 || ents[0].Name() != "layout" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("files after a failed push: %v", names)
	}
	after, _ := os.ReadFile(filepath.Join(existing, "index.json"))
	if string(before) != string(after) {
		t.Error("the existing layout's index changed")
	}
}

func TestLayoutPathNotALayout(t *testing.T) {
	img, _ := random.Image(100, 1)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "unrelated"), nil, 0o644)
	err := Write(context.Background(), img, Options{OCILayoutPath: dir, NoPush: true, DigestFile: filepath.Join(t.TempDir(), "d")}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "option OCILayoutPath") {
		t.Errorf("err = %v", err)
	}
}

// TestWriteLateFailureRollsBack is the security issue's finding 10: when
// an output fails after others are in place, those are put back as they
// were.
func TestWriteLateFailureRollsBack(t *testing.T) {
	img, _ := random.Image(100, 1)
	out := t.TempDir()
	tarPath, digestFile := filepath.Join(out, "img.tar"), filepath.Join(out, "digest")
	os.WriteFile(tarPath, []byte("old tarball"), 0o644)
	os.WriteFile(digestFile, []byte("sha256:old"), 0o644)
	os.WriteFile(filepath.Join(out, "blocker"), nil, 0o644)
	o := Options{NoPush: true, TarPath: tarPath, OCILayoutPath: filepath.Join(out, "layout"), DigestFile: digestFile,
		ImageNameWithDigestFile: filepath.Join(out, "blocker", "names")}
	if err := Write(context.Background(), img, o, nil, nil); err == nil || !strings.Contains(err.Error(), "option ImageNameWithDigestFile") {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(tarPath); string(b) != "old tarball" {
		t.Errorf("--tar-path now holds %d bytes, want the old file back", len(b))
	}
	if b, _ := os.ReadFile(digestFile); string(b) != "sha256:old" {
		t.Errorf("--digest-file now %q", b)
	}
	ents, _ := os.ReadDir(out)
	if len(ents) != 3 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("after a failed write the directory holds %v", names)
	}
	// An output that names a directory is refused before anything else.
	o = Options{NoPush: true, TarPath: filepath.Join(out, "new.tar"), DigestFile: t.TempDir()}
	if err := Write(context.Background(), img, o, nil, nil); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Fatalf("digest file naming a directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "new.tar")); err == nil {
		t.Error("the tarball was written although the digest file cannot be")
	}
}

// TestDigestFileOnAMountedFile: kaniko's README writes the digest to
// /dev/termination-log, a file Kubernetes mounts on its own, which a
// rename cannot replace: it is written in place.
func TestDigestFileOnAMountedFile(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "termination-log")
	src := filepath.Join(t.TempDir(), "log")
	os.WriteFile(target, nil, 0o644)
	os.WriteFile(src, []byte("old"), 0o644)
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mounting a file (root is required): %v", err)
	}
	defer unix.Unmount(target, unix.MNT_DETACH)
	img, _ := random.Image(100, 1)
	d, _ := img.Digest()
	if err := Write(context.Background(), img, Options{NoPush: true, DigestFile: target}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(src); string(b) != d.String() {
		t.Errorf("the mounted file holds %q, want %s", b, d)
	}
}

// TestPushByDigest pushes the image to the destination's repository by
// digest and leaves the tag alone.
func TestPushByDigest(t *testing.T) {
	reg := imagetest.Registry(t)
	img, _ := random.Image(100, 1)
	d, _ := img.Digest()
	dest, _ := name.ParseReference(reg + "/app:1")
	if err := Write(context.Background(), img, Options{Destinations: []name.Reference{dest}, PushByDigest: true}, remotePusher{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Image(dest.Context().Digest(d.String())); err != nil {
		t.Errorf("not pushed by digest: %v", err)
	}
	if _, err := remote.Head(dest); err == nil {
		t.Error("the tag was set")
	}
}
