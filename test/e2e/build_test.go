package e2e

import (
	"archive/tar"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/record"
)

// fullContext copies testdata/full and adds what git cannot carry: an
// archive for ADD, hard links and symlinks.
func fullContext(t *testing.T) string {
	t.Helper()
	dir := copyTree(t, "testdata/full")
	tarData := imagetest.Tar(
		imagetest.Dir("lib", 0o750, 0, 0),
		imagetest.Reg("lib/libx.so", "ELF", 0o755, 0, 0),
	)
	if err := os.WriteFile(filepath.Join(dir, "bundle.tar.gz"), gz(t, tarData), 0o644); err != nil {
		t.Fatal(err)
	}
	links := filepath.Join(dir, "links")
	os.MkdirAll(links, 0o755)
	os.WriteFile(filepath.Join(links, "first"), []byte("shared"), 0o644)
	if err := os.Link(filepath.Join(links, "first"), filepath.Join(links, "second")); err != nil {
		t.Fatal(err)
	}
	os.Symlink("first", filepath.Join(links, "sym"))
	return dir
}

func baseImage(t *testing.T, oci bool) v1.Image {
	return imagetest.Image(t, oci, nil, imagetest.BaseFiles())
}

func pushTo(t *testing.T, ref string, img v1.Image, opts ...remote.Option) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
}

func pull(t *testing.T, ref string, opts ...remote.Option) v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r, opts...)
	if err != nil {
		t.Fatalf("pulling %s: %v", ref, err)
	}
	checkAligned(t, ref, img)
	return img
}

// checkAligned asserts that an image's layers and history align as
// Docker's do: one non-empty history entry per layer, and every RUN,
// COPY, ADD and WORKDIR (but WORKDIR /) kiln recorded has its layer.
func checkAligned(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var withLayer int
	for _, h := range cf.History {
		if !h.EmptyLayer {
			withLayer++
		}
		if h.Comment != "kiln.dockerfile.v0" {
			continue
		}
		op := strings.Fields(h.CreatedBy + " x")[0]
		layered := op == "RUN" || op == "COPY" || op == "ADD" || (op == "WORKDIR" && strings.TrimSpace(strings.TrimPrefix(h.CreatedBy, "WORKDIR")) != "/")
		if layered == h.EmptyLayer && !strings.HasPrefix(h.CreatedBy, "single snapshot") {
			t.Errorf("%s: history %q has empty_layer=%v", ref, h.CreatedBy, h.EmptyLayer)
		}
	}
	if withLayer != len(ls) {
		t.Errorf("%s: %d layers but %d history entries with a layer", ref, len(ls), withLayer)
	}
}

// checkFullImage asserts what testdata/full must produce.
func checkFullImage(t *testing.T, img v1.Image, wantManifest types.MediaType) {
	t.Helper()
	if err := validate.Image(img); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	if mt, _ := img.MediaType(); mt != wantManifest {
		t.Errorf("manifest media type %s, want %s", mt, wantManifest)
	}
	fs := imagetest.Flatten(t, img)
	type w struct {
		typ      byte
		mode     int64
		uid, gid int
		content  string
		link     string
	}
	wants := map[string]w{
		"opt/app":                   {tar.TypeDir, 0o755, 0, 0, "", ""},
		"opt/app/static/index.html": {tar.TypeReg, 0o644, 1000, 50, "<h1>kiln</h1>\n", ""},
		"opt/app/VERSION":           {tar.TypeReg, 0o644, 1000, 50, "app\n", ""},
		"usr/local/bin/run":         {tar.TypeReg, 0o755, 0, 0, "#!/bin/sh\nexec echo \"run $@\"\n", ""},
		"etc/app/a.conf":            {tar.TypeReg, 0o644, 0, 0, "a=1\n", ""},
		"etc/app/b.conf":            {tar.TypeReg, 0o644, 0, 0, "b=2\n", ""},
		"opt/bundle/lib":            {tar.TypeDir, 0o750, 0, 0, "", ""},
		"opt/bundle/lib/libx.so":    {tar.TypeReg, 0o755, 0, 0, "ELF", ""},
		"opt/links/first":           {tar.TypeReg, 0o644, 0, 0, "shared", ""},
		"opt/links/second":          {tar.TypeLink, 0, 0, 0, "", "opt/links/first"},
		"opt/links/sym":             {tar.TypeSymlink, 0o777, 0, 0, "", "first"},
		"opt":                       {tar.TypeDir, 0o750, 0, 50, "", ""},
		"usr/bin/tool":              {tar.TypeReg, 0o4755, 0, 0, "", ""},
		"tmp":                       {tar.TypeDir, 0o1777, 0, 0, "", ""},
	}
	for p, want := range wants {
		e, ok := fs[p]
		if !ok {
			t.Errorf("%s missing", p)
			continue
		}
		h := e.Header
		if h.Typeflag != want.typ || (want.mode != 0 && h.Mode&0o7777 != want.mode) || h.Uid != want.uid || h.Gid != want.gid || h.Linkname != want.link {
			t.Errorf("%s: type %q mode %o owner %d:%d link %q; want type %q mode %o owner %d:%d link %q",
				p, h.Typeflag, h.Mode&0o7777, h.Uid, h.Gid, h.Linkname, want.typ, want.mode, want.uid, want.gid, want.link)
		}
		if want.content != "" && e.Content != want.content {
			t.Errorf("%s: content %q, want %q", p, e.Content, want.content)
		}
	}
	for _, p := range []string{"opt/app/scratch.tmp", "opt/app/README.md", "etc/app/notes.txt", "opt/app/app"} {
		if _, ok := fs[p]; ok {
			t.Errorf("%s should not be in the image", p)
		}
	}
	cf, _ := img.ConfigFile()
	c := cf.Config
	if c.User != "app" || c.WorkingDir != "/opt/app" {
		t.Errorf("User %q WorkingDir %q", c.User, c.WorkingDir)
	}
	if d := cmp.Diff([]string{"/usr/local/bin/run"}, c.Entrypoint); d != "" {
		t.Errorf("Entrypoint %s", d)
	}
	if d := cmp.Diff([]string{"serve"}, c.Cmd); d != "" {
		t.Errorf("Cmd %s", d)
	}
	if c.Labels["org.opencontainers.image.version"] != "1.2.3" || c.Labels["extra"] != "from-flag" {
		t.Errorf("Labels %v", c.Labels)
	}
	if _, ok := c.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("ExposedPorts %v", c.ExposedPorts)
	}
	if _, ok := c.Volumes["/var/lib/app"]; !ok {
		t.Errorf("Volumes %v", c.Volumes)
	}
	if c.Healthcheck == nil || c.Healthcheck.Test[0] != "CMD" {
		t.Errorf("Healthcheck %+v", c.Healthcheck)
	}
	envs := strings.Join(c.Env, " ")
	if !strings.Contains(envs, "VERSION=1.2.3") || !strings.Contains(envs, "APP_HOME=/opt/app") {
		t.Errorf("Env %v", c.Env)
	}
	// History: base layer, then one entry per instruction of the final
	// stage; layers only for the file-changing ones.
	var created []string
	nonEmpty := 0
	for _, h := range cf.History[1:] {
		created = append(created, strings.Fields(h.CreatedBy)[0])
		if !h.EmptyLayer {
			nonEmpty++
		}
	}
	wantCreated := []string{"ARG", "ENV", "LABEL", "WORKDIR", "COPY", "COPY", "COPY", "ADD", "COPY", "USER", "EXPOSE", "VOLUME", "HEALTHCHECK", "ENTRYPOINT", "CMD"}
	if d := cmp.Diff(wantCreated, created); d != "" {
		t.Errorf("history (-want +got):\n%s", d)
	}
	if layers, _ := img.Layers(); nonEmpty != len(layers)-1 || nonEmpty != 6 {
		t.Errorf("%d non-empty history entries for %d new layers, want 6", nonEmpty, len(layers)-1)
	}
	m, _ := img.Manifest()
	for _, l := range m.Layers[1:] {
		wantLayer := types.OCILayer
		if wantManifest == types.DockerManifestSchema2 {
			wantLayer = types.DockerLayer
		}
		if l.MediaType != wantLayer {
			t.Errorf("layer media type %s, want %s", l.MediaType, wantLayer)
		}
	}
}

func TestBuildInProcessRegistry(t *testing.T) {
	reg := imagetest.Registry(t)
	for _, tc := range []struct {
		name string
		oci  bool
		want types.MediaType
	}{{"oci", true, types.OCIManifestSchema1}, {"docker", false, types.DockerManifestSchema2}} {
		t.Run(tc.name, func(t *testing.T) {
			base := reg + "/base:" + tc.name
			pushTo(t, base, baseImage(t, tc.oci))
			ctx := fullContext(t)
			out := t.TempDir()
			dest1, dest2 := reg+"/kiln/full:"+tc.name, reg+"/mirror/full:"+tc.name+"-copy"
			args := func(n string) []string {
				return []string{
					"--context", ctx, "--dockerfile", "Dockerfile",
					"--destination", dest1, "-d", dest2, "--insecure", "--insecure-pull",
					"--build-arg", "BASE=" + base, "--build-arg", "VERSION=1.2.3", "--build-arg", "NPM_TOKEN=npm-s3cret",
					"--label", "extra=from-flag", "--reproducible",
					"--digest-file", filepath.Join(out, n+".digest"),
					"--image-name-with-digest-file", filepath.Join(out, n+".names"),
					"--image-name-tag-with-digest-file", filepath.Join(out, n+".tags"),
					"--oci-layout-path", filepath.Join(out, n+"-layout"),
					"--tarPath", filepath.Join(out, n+".tar"),
					"--log-format", "json",
				}
			}
			r := kiln(t, nil, args("one")...)
			if r.code != 0 {
				t.Fatalf("build failed (%d):\n%s", r.code, r.stderr)
			}
			digest, _ := os.ReadFile(filepath.Join(out, "one.digest"))
			if !strings.HasPrefix(string(digest), "sha256:") || strings.HasSuffix(string(digest), "\n") {
				t.Fatalf("digest file %q", digest)
			}
			for _, d := range []string{dest1, dest2} {
				img := pull(t, d)
				if got, _ := img.Digest(); got.String() != string(digest) {
					t.Errorf("%s: %s, want %s", d, got, digest)
				}
			}
			checkFullImage(t, pull(t, dest1), tc.want)
			checkRecord(t, filepath.Join(out, "build.json"), string(digest), base, []string{dest1, dest2})
			res := filepath.Join(out, "results")
			r = step(t, "emit-results", nil, "--build-record", filepath.Join(out, "build.json"), "--digest-file", filepath.Join(out, "one.digest"),
				"--oci-layout-path", filepath.Join(out, "one-layout"), "--tekton-results-dir", res)
			if r.code != 0 {
				t.Fatalf("emit-results failed:\n%s", r.stderr)
			}
			if got, _ := os.ReadFile(filepath.Join(res, "IMAGE_DIGEST")); string(got) != string(digest) {
				t.Errorf("IMAGE_DIGEST = %q", got)
			}
			if got, _ := os.ReadFile(filepath.Join(res, "IMAGE_URL")); string(got) != dest1 {
				t.Errorf("IMAGE_URL = %q, want %s", got, dest1)
			}
			names, _ := os.ReadFile(filepath.Join(out, "one.names"))
			if want := reg + "/kiln/full@" + string(digest) + "\n" + reg + "/mirror/full@" + string(digest) + "\n"; string(names) != want {
				t.Errorf("names %q, want %q", names, want)
			}
			tags, _ := os.ReadFile(filepath.Join(out, "one.tags"))
			if !strings.HasPrefix(string(tags), dest1+"@"+string(digest)) {
				t.Errorf("tags %q", tags)
			}
			p, err := layout.FromPath(filepath.Join(out, "one-layout"))
			if err != nil {
				t.Fatal(err)
			}
			h, _ := v1.NewHash(string(digest))
			limg, err := p.Image(h)
			if err != nil {
				t.Fatalf("layout lacks the image: %v", err)
			}
			checkFullImage(t, limg, tc.want)
			tag, _ := name.NewTag(dest1)
			timg, err := tarball.ImageFromPath(filepath.Join(out, "one.tar"), &tag)
			if err != nil {
				t.Fatalf("tarball: %v", err)
			}
			if td, _ := timg.ConfigName(); td.String() == "" {
				t.Error("tarball has no config")
			}
			// Reproducible: a second build gives the same digest.
			r = kiln(t, nil, args("two")...)
			if r.code != 0 {
				t.Fatalf("second build failed:\n%s", r.stderr)
			}
			digest2, _ := os.ReadFile(filepath.Join(out, "two.digest"))
			if string(digest2) != string(digest) {
				t.Errorf("--reproducible builds differ: %s vs %s", digest, digest2)
			}
		})
	}
}

func TestExampleHello(t *testing.T) {
	out := t.TempDir()
	r := kiln(t, nil, "--context", "../../examples/hello", "--no-push", "--oci-layout-path", filepath.Join(out, "layout"), "--tar-path", filepath.Join(out, "hello.tar"))
	if r.code != 0 {
		t.Fatalf("build failed:\n%s", r.stderr)
	}
	img, err := tarball.ImageFromPath(filepath.Join(out, "hello.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	fs := imagetest.Flatten(t, img)
	if fs["etc/greeting"].Content != "hello from kiln\n" || fs["srv/site/index.html"].Content == "" {
		t.Errorf("files %v", fs)
	}
	if _, ok := fs["srv/site/README.md"]; ok {
		t.Error(".dockerignore not applied")
	}
}

func TestFlags(t *testing.T) {
	r := kiln(t, nil, "--help")
	if r.code != 0 {
		t.Fatalf("--help exit %d", r.code)
	}
	for _, f := range []string{"--dockerfile", "--context", "--destination", "--no-push", "--tar-path", "--oci-layout-path",
		"--digest-file", "--image-name-with-digest-file", "--image-name-tag-with-digest-file", "--build-arg", "--target",
		"--skip-unused-stages", "--label", "--custom-platform", "--snapshot-mode", "--single-snapshot", "--use-new-run",
		"--reproducible", "--ignore-var-run", "--cleanup", "--kaniko-dir", "--force", "--cache", "--cache-repo",
		"--cache-dir", "--cache-ttl", "--compression", "--compression-level", "--insecure", "--skip-tls-verify",
		"--insecure-pull", "--skip-tls-verify-pull", "--insecure-registry", "--skip-tls-verify-registry",
		"--registry-certificate", "--registry-client-cert", "--registry-mirror", "--registry-map",
		"--skip-default-registry-fallback", "--push-retry", "--image-download-retry", "--image-fs-extract-retry",
		"--skip-push-permission-check", "--verbosity", "--log-format", "--log-timestamp"} {
		if !strings.Contains(r.stderr, f+" ") && !strings.Contains(r.stderr, f+"[") {
			t.Errorf("--help does not document %s", f)
		}
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--no-such-flag"}, 2, "unknown flag: --no-such-flag"},
		{[]string{"--no-push", "--cache"}, 2, "--cache needs --cache-repo"},
		{[]string{"--no-push", "--git", "colour=red"}, 2, `unknown option "colour"`},
		{[]string{"--no-push", "--snapshotMode", "fast"}, 2, `--snapshot-mode "fast"`},
		{[]string{"--no-push", "--compression", "lz4"}, 2, "--compression"},
		{[]string{"--no-push", "--customPlatform", "linux"}, 2, "--custom-platform"},
		{[]string{"--context", "."}, 2, "no --destination"},
		{[]string{"--no-push", "--verbosity", "loud"}, 2, "--verbosity"},
	} {
		r := kiln(t, nil, tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d, %q", tc.args, r.code, r.stderr, tc.code, tc.want)
		}
	}
}

func TestBadInput(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/base:1"
	pushTo(t, base, baseImage(t, true))
	tests := []struct {
		name, dockerfile string
		files            map[string]string
		extra            []string
		want             []string
	}{
		{"malformed Dockerfile", "FROM " + base + "\nCOPY <<EOF /x\nno end\n", nil, nil, []string{"Dockerfile:2", "unterminated heredoc"}},
		{"unknown instruction", "FROM " + base + "\nFETCH x\n", nil, nil, []string{"Dockerfile:2: unknown instruction: FETCH"}},
		{"undefined stage", "FROM " + base + "\nCOPY --from=builder /a /a\n", nil, []string{"--registry-map", "index.docker.io=127.0.0.1:9", "--skip-default-registry-fallback"}, []string{"Dockerfile:2", "--from=builder", "no stage named"}},
		{"missing COPY source", "FROM " + base + "\nCOPY missing.txt /x\n", nil, nil, []string{"Dockerfile:2", `"missing.txt" not found in the build context`}},
		{"source excluded by .dockerignore", "FROM " + base + "\nCOPY secret.env /x\n", map[string]string{".dockerignore": "*.env\n", "secret.env": "TOKEN=x"}, nil, []string{"Dockerfile:2", "excluded by .dockerignore"}},
		{"unreachable registry", "FROM 127.0.0.1:9/nothing:1\n", nil, nil, []string{"Dockerfile:1", "127.0.0.1:9/nothing:1", "connection refused"}},
		{"unreachable destination", "FROM " + base + "\n", nil, []string{"--destination", "127.0.0.1:9/out:1"}, []string{"127.0.0.1:9/out:1", "connection refused"}},
		{"missing Dockerfile", "", nil, []string{"--dockerfile", "nope/Dockerfile"}, []string{"--dockerfile nope/Dockerfile"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.TempDir()
			if tt.dockerfile != "" {
				os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte(tt.dockerfile), 0o644)
			}
			for p, c := range tt.files {
				os.WriteFile(filepath.Join(ctx, p), []byte(c), 0o644)
			}
			out := t.TempDir()
			args := append([]string{"--context", ctx, "--insecure-pull", "--insecure",
				"--digest-file", filepath.Join(out, "digest"), "--oci-layout-path", filepath.Join(out, "layout"),
				"--tar-path", filepath.Join(out, "img.tar")}, tt.extra...)
			if !strings.Contains(strings.Join(tt.extra, " "), "--destination") {
				args = append(args, "--no-push")
			}
			r := kiln(t, nil, args...)
			if r.code == 0 {
				t.Fatalf("build succeeded:\n%s", r.stderr)
			}
			contains(t, r.stderr, tt.want...)
			ents, _ := os.ReadDir(out)
			if len(ents) != 0 {
				t.Errorf("outputs written by a failed build: %v", ents)
			}
		})
	}
}

func TestMirrorAndSubPath(t *testing.T) {
	reg := imagetest.Registry(t)
	// The mirror holds "library/base"; Docker Hub is never asked because the
	// mirror has the image.
	pushTo(t, reg+"/library/kiln-base:1", baseImage(t, true))
	ctx := t.TempDir()
	os.MkdirAll(filepath.Join(ctx, "sub"), 0o755)
	os.WriteFile(filepath.Join(ctx, "sub", "Dockerfile"), []byte("FROM kiln-base:1\nCOPY f /f\n"), 0o644)
	os.WriteFile(filepath.Join(ctx, "sub", "f"), []byte("sub"), 0o644)
	os.WriteFile(filepath.Join(ctx, "f"), []byte("top"), 0o644)
	out := t.TempDir()
	r := kiln(t, []string{"KANIKO_REGISTRY_MIRROR=" + reg}, "--context", "dir://"+ctx, "--context-sub-path", "sub",
		"--insecure-pull", "--skip-default-registry-fallback", "--no-push", "--tar-path", filepath.Join(out, "i.tar"))
	if r.code != 0 {
		t.Fatalf("build failed:\n%s", r.stderr)
	}
	contains(t, r.stderr, "pulled through mirror")
	img, err := tarball.ImageFromPath(filepath.Join(out, "i.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	fs := imagetest.Flatten(t, img)
	if fs["f"].Content != "sub" || fs["etc/passwd"].Content == "" {
		t.Errorf("f = %q; base files present: %v", fs["f"].Content, fs["etc/passwd"].Content != "")
	}
}

// checkRecord asserts the build record written beside the digest file.
func checkRecord(t *testing.T, path, digest, base string, dests []string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("build record: %v", err)
	}
	if strings.Contains(string(data), "npm-s3cret") {
		t.Error("a secret build arg is in the build record")
	}
	rec, err := record.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Digest != digest || !rec.Pushed || rec.Platform != "linux/amd64" || !strings.HasPrefix(rec.Builder, "kiln@") {
		t.Errorf("record %+v", rec)
	}
	var refs []string
	for _, im := range rec.Images {
		refs = append(refs, im.Ref)
		if im.Digest != digest {
			t.Errorf("image %s digest %s", im.Ref, im.Digest)
		}
	}
	if strings.Join(refs, ",") != strings.Join(dests, ",") {
		t.Errorf("images %v, want %v", refs, dests)
	}
	baseImg := pull(t, base)
	bd, _ := baseImg.Digest()
	if len(rec.Materials) != 1 || rec.Materials[0].Ref != base || rec.Materials[0].Digest != bd.String() {
		t.Errorf("materials %+v, want %s@%s", rec.Materials, base, bd)
	}
	if rec.BuildArgs["NPM_TOKEN"] != record.Masked || rec.BuildArgs["VERSION"] != "1.2.3" {
		t.Errorf("build args %v", rec.BuildArgs)
	}
	var ctxRec struct{ Source, SHA256 string }
	json.Unmarshal(rec.Context, &ctxRec)
	if !strings.HasPrefix(rec.Dockerfile.SHA256, "sha256:") || !strings.HasPrefix(ctxRec.SHA256, "sha256:") {
		t.Errorf("dockerfile %+v context %s", rec.Dockerfile, rec.Context)
	}
	if rec.FinishedOn.Before(rec.StartedOn) {
		t.Errorf("times %v %v", rec.StartedOn, rec.FinishedOn)
	}
}
