package cache

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// platformPuller pulls from a real (in-process) registry.
type platformPuller struct{}

func (platformPuller) PullPlatform(_ context.Context, ref string, p v1.Platform) (v1.Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	return remote.Image(r, remote.WithPlatform(p))
}

var hostPlatform = v1.Platform{OS: "linux", Architecture: runtime.GOARCH}

func pushImage(t *testing.T, ref string, content string) v1.Image {
	t.Helper()
	img := imagetest.Image(t, true, nil, []imagetest.File{imagetest.Reg("etc/which", content, 0o644, 0, 0)})
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// contentOf reads /etc/which back from an image's layers (every byte of
// every layer, so a corrupt blob fails here).
func contentOf(t *testing.T, img v1.Image) string {
	t.Helper()
	return imagetest.Flatten(t, img)["etc/which"].Content
}

func TestWarmWritesKanikosFormat(t *testing.T) {
	reg := imagetest.Registry(t)
	ref := reg + "/base:1"
	img := pushImage(t, ref, "one")
	h := digestOf(t, img)
	dir := BaseDir{Path: filepath.Join(t.TempDir(), "cache"), TTL: time.Hour}
	ctx := context.Background()
	if err := Warm(ctx, WarmOptions{Images: []string{ref}, Dir: dir, Platform: hostPlatform, Pull: platformPuller{}}); err != nil {
		t.Fatal(err)
	}
	// <dir>/<digest> is an OCI layout of the one image, named as kaniko's
	// OciWarmer names it.
	entry := filepath.Join(dir.Path, h.String())
	st, err := os.Stat(entry)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o755 {
		t.Fatalf("entry %s: %v %v", entry, st, err)
	}
	p, err := layout.FromPath(entry)
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := p.ImageIndex()
	m, err := idx.IndexManifest()
	if err != nil || len(m.Manifests) != 1 || m.Manifests[0].Digest != h ||
		m.Manifests[0].Annotations[refAnnotation] != ref {
		t.Fatalf("entry index: %+v %v", m, err)
	}
	got, err := dir.ByDigest(h)
	if err != nil {
		t.Fatal(err)
	}
	if digestOf(t, got) != h || contentOf(t, got) != "one" {
		t.Errorf("ByDigest gave another image")
	}
	if got, _, err := dir.ByName(ref, hostPlatform); err != nil || digestOf(t, got) != h {
		t.Errorf("ByName: %v", err)
	}
	if _, _, err := dir.ByName(ref, v1.Platform{OS: "linux", Architecture: "s390x"}); !errors.Is(err, ErrMiss) {
		t.Errorf("ByName for another platform: %v", err)
	}

	// A fresh entry is kept, an expired one stored again, --force always.
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(entry, old, old)
	if _, err := dir.ByDigest(h); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired entry: %v", err)
	}
	if err := Warm(ctx, WarmOptions{Images: []string{ref}, Dir: dir, Platform: hostPlatform, Pull: platformPuller{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := dir.ByDigest(h); err != nil {
		t.Errorf("expired entry not stored again: %v", err)
	}
	// The tag moves: the new image is stored beside the old one.
	img2 := pushImage(t, ref, "two")
	if err := Warm(ctx, WarmOptions{Images: []string{ref, ref}, Dir: dir, Platform: hostPlatform, Pull: platformPuller{}}); err != nil {
		t.Fatal(err)
	}
	if got, err := dir.ByDigest(digestOf(t, img2)); err != nil || contentOf(t, got) != "two" {
		t.Errorf("moved tag: %v", err)
	}
	if got, _, err := dir.ByName(ref, hostPlatform); err != nil || contentOf(t, got) != "two" {
		t.Errorf("ByName does not give the newest: %v", err)
	}
	ents, _ := os.ReadDir(dir.Path)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".warming") {
			t.Errorf("left %s behind", e.Name())
		}
	}

	// As kaniko's warmer: one image that cannot be stored is a warning,
	// all of them an error.
	if err := Warm(ctx, WarmOptions{Images: []string{reg + "/missing:1", ref}, Dir: dir, Platform: hostPlatform, Pull: platformPuller{}}); err != nil {
		t.Errorf("one of two images missing: %v", err)
	}
	if err := Warm(ctx, WarmOptions{Images: []string{reg + "/missing:1"}, Dir: dir, Platform: hostPlatform, Pull: platformPuller{}}); err == nil {
		t.Error("warming only a missing image succeeded")
	}
}

// TestReadsKanikoWarmedEntries stores images exactly as kaniko's warmers
// do (pkg/warmer/warm.go: the fork's OciWarmer.Write and v1.24's
// Warmer.Write, tarball plus manifest) and reads them back.
func TestReadsKanikoWarmedEntries(t *testing.T) {
	reg := imagetest.Registry(t)
	ref := reg + "/base:kaniko"
	pushImage(t, ref, "kaniko")
	r, _ := name.ParseReference(ref, name.WeakValidation)
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	h := digestOf(t, img)
	dir := t.TempDir()

	// FF_KANIKO_OCI_WARMER (the fork's default).
	tmp, _ := os.MkdirTemp(dir, "")
	p, _ := layout.Write(tmp, empty.Index)
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": r.Name()})); err != nil {
		t.Fatal(err)
	}
	ociDir := filepath.Join(dir, "oci")
	os.Mkdir(ociDir, 0o755)
	os.Rename(tmp, filepath.Join(ociDir, h.String()))

	// kaniko v1.24: a docker tarball and its manifest.
	tarDir := filepath.Join(dir, "tar")
	os.Mkdir(tarDir, 0o755)
	f, _ := os.Create(filepath.Join(tarDir, h.String()))
	if err := tarball.Write(r, img, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	raw, _ := img.RawManifest()
	os.WriteFile(filepath.Join(tarDir, h.String()+".json"), raw, 0o644)

	for _, d := range []string{ociDir, tarDir} {
		got, err := BaseDir{Path: d, TTL: time.Hour}.ByDigest(h)
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if digestOf(t, got) != h || contentOf(t, got) != "kaniko" {
			t.Errorf("%s: another image", d)
		}
	}
	if got, _, err := (BaseDir{Path: ociDir}).ByName(ref, hostPlatform); err != nil || digestOf(t, got) != h {
		t.Errorf("ByName in kaniko's OCI entries: %v", err)
	}
}

// TestAlteredEntriesAreRefused tampers with a stored entry in the ways a
// shared cache volume could be: a renamed entry, a replaced layer blob.
func TestAlteredEntriesAreRefused(t *testing.T) {
	reg := imagetest.Registry(t)
	ref := reg + "/base:t"
	img := pushImage(t, ref, "genuine")
	other := pushImage(t, reg+"/other:t", "evil")
	h, oh := digestOf(t, img), digestOf(t, other)
	dir := BaseDir{Path: t.TempDir()}
	ctx := context.Background()
	if err := Warm(ctx, WarmOptions{Images: []string{ref, reg + "/other:t"}, Dir: dir, Platform: hostPlatform, Pull: platformPuller{}}); err != nil {
		t.Fatal(err)
	}

	// The other image's entry renamed to the pinned digest.
	entry := filepath.Join(dir.Path, h.String())
	os.RemoveAll(entry)
	if err := os.Rename(filepath.Join(dir.Path, oh.String()), entry); err != nil {
		t.Fatal(err)
	}
	if _, err := dir.ByDigest(h); err == nil || errors.Is(err, ErrMiss) {
		t.Errorf("an entry holding another image was used: %v", err)
	}

	// A layer blob replaced with other bytes.
	os.RemoveAll(entry)
	if err := Warm(ctx, WarmOptions{Images: []string{ref}, Dir: dir, Platform: hostPlatform, Pull: platformPuller{}}); err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	ld, _ := ls[0].Digest()
	ol, _ := other.Layers()
	rc, _ := ol[0].Compressed()
	evil, _ := io.ReadAll(rc)
	blob := filepath.Join(entry, "blobs", "sha256", ld.Hex)
	if err := os.WriteFile(blob, evil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := dir.ByDigest(h)
	if err != nil {
		t.Fatal(err)
	}
	gls, _ := got.Layers()
	rc, err = gls[0].Uncompressed()
	if err == nil {
		_, err = io.Copy(io.Discard, rc)
	}
	if err == nil || !strings.Contains(err.Error(), "altered") {
		t.Errorf("a replaced layer blob was read: %v", err)
	}
}

// TestWarmSeveralPlatforms stores each platform's image of an index, as a
// build of several platforms reads them.
func TestWarmSeveralPlatforms(t *testing.T) {
	reg := imagetest.Registry(t)
	ref := reg + "/multi:1"
	var adds []mutate.IndexAddendum
	want := map[string]v1.Hash{}
	for _, arch := range []string{"amd64", "arm64"} {
		img := imagetest.Image(t, true, func(cf *v1.ConfigFile) { cf.Architecture = arch }, []imagetest.File{imagetest.Reg("etc/which", arch, 0o644, 0, 0)})
		want[arch] = digestOf(t, img)
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	r, _ := name.ParseReference(ref)
	if err := remote.WriteIndex(r, mutate.AppendManifests(empty.Index, adds...)); err != nil {
		t.Fatal(err)
	}
	dir := BaseDir{Path: filepath.Join(t.TempDir(), "cache")}
	amd, arm := v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"}
	if err := Warm(context.Background(), WarmOptions{Images: []string{ref}, Dir: dir, Platform: amd, MorePlatforms: []v1.Platform{arm}, Pull: platformPuller{}}); err != nil {
		t.Fatal(err)
	}
	for arch, p := range map[string]v1.Platform{"amd64": amd, "arm64": arm} {
		img, err := dir.ByDigest(want[arch])
		if err != nil {
			t.Fatalf("%s: %v", arch, err)
		}
		if contentOf(t, img) != arch {
			t.Errorf("%s: stored another image", arch)
		}
		if got, _, err := dir.ByName(ref, p); err != nil || digestOf(t, got) != want[arch] {
			t.Errorf("ByName(%s): %v", arch, err)
		}
	}
}

// TestWarmDockerfileStaysInTheWorkingDirectory performs the attack of a
// checkout whose Dockerfile links out of it: the outside file is not read
// (its FROM is not warmed); the checkout's own Dockerfile is.
func TestWarmDockerfileStaysInTheWorkingDirectory(t *testing.T) {
	reg := imagetest.Registry(t)
	inside, outside := reg+"/inside:1", reg+"/outside:1"
	hIn, hOut := digestOf(t, pushImage(t, inside, "in")), digestOf(t, pushImage(t, outside, "out"))
	elsewhere := t.TempDir()
	if err := os.WriteFile(filepath.Join(elsewhere, "Dockerfile"), []byte("FROM "+outside+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wd := t.TempDir()
	t.Chdir(wd)
	if err := os.WriteFile("Dockerfile", []byte("FROM "+inside+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{filepath.Join(elsewhere, "Dockerfile"), "../../../../../../../.." + filepath.Join(elsewhere, "Dockerfile")} {
		if err := os.Symlink(target, "linked"); err != nil {
			t.Fatal(err)
		}
		dir := BaseDir{Path: filepath.Join(t.TempDir(), "cache"), TTL: time.Hour}
		err := Warm(context.Background(), WarmOptions{Dockerfile: "linked", Dir: dir, Platform: hostPlatform, Pull: platformPuller{}})
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("link %s: err = %v, want the Dockerfile not found", target, err)
		}
		if _, err := os.Stat(filepath.Join(dir.Path, hOut.String())); err == nil {
			t.Errorf("link %s: the outside Dockerfile's base was warmed", target)
		}
		os.Remove("linked")
	}
	dir := BaseDir{Path: filepath.Join(t.TempDir(), "cache"), TTL: time.Hour}
	if err := Warm(context.Background(), WarmOptions{Dockerfile: filepath.Join(wd, "Dockerfile"), Dir: dir, Platform: hostPlatform, Pull: platformPuller{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir.Path, hIn.String())); err != nil {
		t.Errorf("the working directory's Dockerfile's base was not warmed: %v", err)
	}
}
