package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	sigs "github.com/sigstore/cosign/v2/pkg/signature"

	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/record"
)

// unames are what `uname -m` prints on each architecture (under qemu too).
var unames = map[string]string{"amd64": "x86_64\n", "arm64": "aarch64\n"}

// pushBusyboxIndex pushes a linux/amd64 + linux/arm64 busybox index, each
// platform with Debian's busybox-static of its architecture.
func pushBusyboxIndex(t *testing.T, ref string, opts ...remote.Option) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, imagetest.BusyboxIndex(t, "amd64", "arm64"), opts...); err != nil {
		t.Fatal(err)
	}
}

// checkPlatformImages reads the index at ref back: one entry per arch in
// order, each image's config platform and the uname its RUN wrote at path.
func checkPlatformImages(t *testing.T, ref string, archs []string, path string, opts ...remote.Option) v1.Hash {
	t.Helper()
	r, _ := name.ParseReference(ref)
	idx, err := remote.Index(r, opts...)
	if err != nil {
		t.Fatalf("%s: %v", ref, err)
	}
	m, _ := idx.IndexManifest()
	if len(m.Manifests) != len(archs) {
		t.Fatalf("%s: %d entries, want %v", ref, len(m.Manifests), archs)
	}
	for i, arch := range archs {
		desc := m.Manifests[i]
		if desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != arch {
			t.Errorf("%s entry %d: %v, want linux/%s", ref, i, desc.Platform, arch)
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		if cf.Architecture != arch {
			t.Errorf("%s: config architecture %s", arch, cf.Architecture)
		}
		if got := imagetest.Flatten(t, img)[path].Content; got != unames[arch] {
			t.Errorf("%s: /%s = %q, want %q", arch, path, got, unames[arch])
		}
	}
	d, _ := idx.Digest()
	return d
}

// TestBuildTwoPlatforms runs the build binary once for linux/amd64 and
// linux/arm64 against docker-registry (TLS, htpasswd): one index pushed,
// each platform's RUN executed by its own busybox (arm64 through qemu), a
// label from TARGETARCH; the digest file, the build record and the layout
// describe the index; sign signs the index and both images and cosign
// verifies all three. A docker tarball of an index is refused up front.
func TestBuildTwoPlatforms(t *testing.T) {
	d := startDistribution(t)
	base := d.host + "/base/busybox:multi"
	pushBusyboxIndex(t, base, d.remoteOpts()...)
	ctxDir, out := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("ARG BASE\nFROM ${BASE}\nARG TARGETARCH\nLABEL arch=$TARGETARCH\nRUN uname -m > /uname\n"), 0o644)
	env := []string{"DOCKER_CONFIG=" + d.dockerConfig(t, d.user, d.password), "SSL_CERT_FILE=" + d.caFile}
	dest := d.host + "/team/multi:1"
	args := []string{"--context", ctxDir, "-d", dest, "--build-arg", "BASE=" + base, "--isolation", "chroot",
		"--custom-platform", "linux/amd64,linux/arm64"}

	r := kiln(t, env, append(args, "--tar-path", filepath.Join(out, "image.tar"))...)
	if r.code != 2 || !strings.Contains(r.stderr, "a docker tarball cannot hold an image index") {
		t.Errorf("--tar-path with two platforms: exit %d\n%s", r.code, r.stderr)
	}
	r = kiln(t, env, append(args, "--digest-file", filepath.Join(out, "digest"), "--build-record", filepath.Join(out, "build.json"),
		"--oci-layout-path", filepath.Join(out, "layout"))...)
	if r.code != 0 {
		t.Fatalf("build failed (%d):\n%s", r.code, r.stderr)
	}
	digest := checkPlatformImages(t, dest, []string{"amd64", "arm64"}, "uname", d.remoteOpts()...)
	if got, _ := os.ReadFile(filepath.Join(out, "digest")); string(got) != digest.String() {
		t.Errorf("--digest-file %q, index %s", got, digest)
	}
	rec, err := record.Read(filepath.Join(out, "build.json"))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Digest != digest.String() || rec.MediaType != string(types.OCIImageIndex) || len(rec.Manifests) != 2 || rec.Platform != "linux/amd64,linux/arm64" {
		t.Errorf("build record %+v", rec)
	}
	p, err := layout.FromPath(filepath.Join(out, "layout"))
	if err != nil {
		t.Fatal(err)
	}
	if li, err := p.ImageIndex(); err == nil {
		if _, err := li.ImageIndex(digest); err != nil {
			t.Errorf("the layout lacks the index: %v", err)
		}
	}
	r0 := step(t, "emit-results", nil, "--build-record", filepath.Join(out, "build.json"), "--digest-file", filepath.Join(out, "digest"),
		"--oci-layout-path", filepath.Join(out, "layout"), "--tekton-results-dir", out)
	if got, _ := os.ReadFile(filepath.Join(out, "IMAGE_DIGEST")); r0.code != 0 || string(got) != digest.String() {
		t.Errorf("emit-results: %d %q\n%s", r0.code, got, r0.stderr)
	}
	for i, arch := range []string{"amd64", "arm64"} {
		ref, _ := name.ParseReference(dest)
		img, err := remote.Image(ref.Context().Digest(rec.Manifests[i].Digest), d.remoteOpts()...)
		if err != nil {
			t.Fatal(err)
		}
		if cf, _ := img.ConfigFile(); cf.Config.Labels["arch"] != arch {
			t.Errorf("%s: label arch=%q", arch, cf.Config.Labels["arch"])
		}
	}

	// sign: the index and each platform image, verified with cosign.
	const pass = "multi-key-password"
	kb, err := cosign.GenerateKeyPair(func(bool) ([]byte, error) { return []byte(pass), nil })
	if err != nil {
		t.Fatal(err)
	}
	keys := t.TempDir()
	os.WriteFile(filepath.Join(keys, "cosign.key"), kb.PrivateBytes, 0o600)
	os.WriteFile(filepath.Join(keys, "cosign.pub"), kb.PublicBytes, 0o644)
	os.WriteFile(filepath.Join(keys, "cosign.password"), []byte(pass), 0o600)
	r = step(t, "sign", env, "--build-record", filepath.Join(out, "build.json"), "--key", filepath.Join(keys, "cosign.key"),
		"--password-file", filepath.Join(keys, "cosign.password"), "--tlog-upload=false")
	if r.code != 0 {
		t.Fatalf("sign failed:\n%s", r.stderr)
	}
	v, err := sigs.LoadPublicKey(context.Background(), filepath.Join(keys, "cosign.pub"))
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(dest)
	for _, dg := range []string{digest.String(), rec.Manifests[0].Digest, rec.Manifests[1].Digest} {
		co := &cosign.CheckOpts{SigVerifier: v, IgnoreTlog: true, IgnoreSCT: true, ClaimVerifier: cosign.SimpleClaimVerifier,
			RegistryClientOpts: []ociremote.Option{ociremote.WithRemoteOptions(d.remoteOpts()...)}}
		if _, _, err := cosign.VerifyImageSignatures(context.Background(), ref.Context().Digest(dg), co); err != nil {
			t.Errorf("%s: signature: %v", dg, err)
		}
		co.ClaimVerifier = cosign.IntotoSubjectClaimVerifier
		if _, _, err := cosign.VerifyImageAttestations(context.Background(), ref.Context().Digest(dg), co); err != nil {
			t.Errorf("%s: attestation: %v", dg, err)
		}
	}
}

// TestIndexStep builds linux/amd64 and linux/arm64 apart with the build
// binary (each pushed by digest, no tag), joins them with the index
// binary from their build records, and reads the index back; then every
// refusal: a missing digest, an image without a platform, two images for
// one platform, a tag, exit 1 or 2 with nothing pushed and no file.
func TestIndexStep(t *testing.T) {
	d := startDistribution(t)
	base := d.host + "/base/busybox:idx"
	pushBusyboxIndex(t, base, d.remoteOpts()...)
	ctxDir, out := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("ARG BASE\nFROM ${BASE}\nRUN uname -m > /m\n"), 0o644)
	env := []string{"DOCKER_CONFIG=" + d.dockerConfig(t, d.user, d.password), "SSL_CERT_FILE=" + d.caFile}
	dest := d.host + "/team/joined:1"
	var records []string
	for _, arch := range []string{"amd64", "arm64"} {
		rp := filepath.Join(out, arch+".json")
		r := kiln(t, env, "--context", ctxDir, "-d", dest, "--build-arg", "BASE="+base, "--isolation", "chroot",
			"--custom-platform", arch, "--push-by-digest", "--build-record", rp)
		if r.code != 0 {
			t.Fatalf("%s build failed:\n%s", arch, r.stderr)
		}
		records = append(records, "--build-record", rp)
	}
	ref, _ := name.ParseReference(dest)
	if _, err := remote.Head(ref, d.remoteOpts()...); err == nil {
		t.Fatal("a --push-by-digest build tagged the image")
	}
	r := step(t, "index", env, append([]string{"-d", dest, "--digest-file", filepath.Join(out, "digest"),
		"--annotation", "org.opencontainers.image.source=https://example.com/app"}, records...)...)
	if r.code != 0 {
		t.Fatalf("index failed:\n%s", r.stderr)
	}
	digest := checkPlatformImages(t, dest, []string{"amd64", "arm64"}, "m", d.remoteOpts()...)
	if got, _ := os.ReadFile(filepath.Join(out, "digest")); string(got) != digest.String() {
		t.Errorf("--digest-file %q, index %s", got, digest)
	}
	idx, _ := remote.Index(ref, d.remoteOpts()...)
	if m, _ := idx.IndexManifest(); m.Annotations["org.opencontainers.image.source"] != "https://example.com/app" {
		t.Errorf("annotations %v", m.Annotations)
	}

	// Refusals.
	var amd record.Build
	data, _ := os.ReadFile(filepath.Join(out, "amd64.json"))
	json.Unmarshal(data, &amd)
	noPlatform := d.host + "/team/noplatform:1"
	pushTo(t, noPlatform, imagetest.Image(t, true, func(cf *v1.ConfigFile) { cf.OS, cf.Architecture = "", "" }, imagetest.BaseFiles()), d.remoteOpts()...)
	np := pull(t, noPlatform, d.remoteOpts()...)
	npd, _ := np.Digest()
	repo := ref.Context().Name()
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing digest", []string{repo + "@sha256:" + strings.Repeat("0", 64)}, 1, "sha256:000"},
		{"no platform", []string{repo + "@" + amd.Digest, d.host + "/team/noplatform@" + npd.String()}, 1, "no platform in its config"},
		{"one platform twice", []string{repo + "@" + amd.Digest, repo + "@" + amd.Digest}, 1, "are both for linux/amd64"},
		{"a tag", []string{noPlatform}, 1, "name the image by digest"},
		{"nothing", nil, 2, "no image to join"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := t.TempDir()
			dst := d.host + "/team/refused:1"
			r := step(t, "index", env, append([]string{"-d", dst, "--digest-file", filepath.Join(o, "digest"), "--"}, c.args...)...)
			if r.code != c.code || !strings.Contains(r.stderr, c.want) {
				t.Errorf("exit %d, want %d and %q:\n%s", r.code, c.code, c.want, r.stderr)
			}
			if ents, _ := os.ReadDir(o); len(ents) != 0 {
				t.Errorf("left %v", ents)
			}
			rr, _ := name.ParseReference(dst)
			if _, err := remote.Head(rr, d.remoteOpts()...); err == nil {
				t.Error("the refused index was pushed")
			}
		})
	}
}

// gitlabJob is a job of a .gitlab-ci.yml, its script flattened as GitLab
// flattens nested lists (YAML anchors of command lists).
type gitlabJob struct {
	Image struct {
		Name       string   `json:"name"`
		Entrypoint []string `json:"entrypoint"`
	} `json:"image"`
	Script   []any `json:"script"`
	Parallel struct {
		Matrix []map[string]string `json:"matrix"`
	} `json:"parallel"`
	Needs     []string `json:"needs"`
	Artifacts struct {
		Paths   []string `json:"paths"`
		Reports struct {
			Dotenv string `json:"dotenv"`
		} `json:"reports"`
	} `json:"artifacts"`
}

func (j gitlabJob) script() string {
	var lines []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			lines = append(lines, v)
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(j.Script)
	return strings.Join(lines, "\n")
}

// TestExampleGitLabMultiPlatform runs examples/multiplatform.gitlab-ci.yml
// as GitLab's Kubernetes executor would: the build job once per matrix
// entry, each in a new container from the -debug image building in place
// (arm64's RUN through qemu), its platforms/ artifact kept for the index
// job, which joins them with /ko-app/index; the index and the dotenv
// report are read back.
func TestExampleGitLabMultiPlatform(t *testing.T) {
	var ci map[string]json.RawMessage // jobs, and stages and anchors
	readYAML(t, "../../examples/gitlab/multiplatform.gitlab-ci.yml", &ci)
	var build, index gitlabJob
	if err := json.Unmarshal(ci["build-image"], &build); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(ci["image-index"], &index); err != nil {
		t.Fatal(err)
	}
	if len(build.Parallel.Matrix) != 2 || len(index.Needs) != 1 || index.Needs[0] != "build-image" {
		t.Fatalf("want a build-image matrix and an image-index job needing it: %+v", ci)
	}
	_, debug := stepImages(t)
	d := startDistribution(t)
	base := d.host + "/base/busybox:multi"
	pushBusyboxIndex(t, base, d.remoteOpts()...)
	project := t.TempDir()
	os.WriteFile(filepath.Join(project, "Dockerfile"), []byte("FROM "+base+"\nRUN uname -m > /gitlab-uname\n"), 0o644)
	const dir = "/builds/group/project"
	env := append(imageEnv(t, debug),
		"HOME=/root", "KUBERNETES_SERVICE_HOST=10.96.0.1",
		"CI_PROJECT_DIR="+dir, "CI_REGISTRY="+d.host, "CI_REGISTRY_USER="+d.user, "CI_REGISTRY_PASSWORD="+d.password,
		"CI_REGISTRY_IMAGE="+d.host+"/group/project", "CI_COMMIT_SHORT_SHA=9f8e7d6c")
	var archs []string
	for _, vars := range build.Parallel.Matrix {
		jobEnv := append([]string(nil), env...)
		for k, v := range vars {
			jobEnv = append(jobEnv, k+"="+v)
		}
		if !strings.HasSuffix(vars["KUBERNETES_NODE_SELECTOR_ARCH"], "="+vars["PLATFORM"]) {
			t.Errorf("matrix entry %v: the node selector is not the platform's architecture", vars)
		}
		archs = append(archs, vars["PLATFORM"])
		r := runContainer(t, container{
			rootfs: unpack(t, debug), cwd: dir, env: jobEnv,
			args:  []string{"/busybox/sh", "-e", "-c", build.script()},
			binds: []bind{{project, dir}, {d.caFile, "/etc/ssl/certs/ca-certificates.crt"}},
		})
		if r.code != 0 {
			t.Fatalf("build-image %v failed (%d):\n%s\n%s", vars, r.code, r.stdout, r.stderr)
		}
	}
	if _, err := remote.Head(mustRef(t, d.host+"/group/project:9f8e7d6c"), d.remoteOpts()...); err == nil {
		t.Fatal("a matrix build job tagged the image")
	}
	r := runContainer(t, container{
		rootfs: unpack(t, debug), cwd: dir, env: env,
		args:  []string{"/busybox/sh", "-e", "-c", index.script()},
		binds: []bind{{project, dir}, {d.caFile, "/etc/ssl/certs/ca-certificates.crt"}},
	})
	if r.code != 0 {
		t.Fatalf("image-index failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, d.password) {
		t.Error("the registry password is in the job's log")
	}
	digest := checkPlatformImages(t, d.host+"/group/project:9f8e7d6c", archs, "gitlab-uname", d.remoteOpts()...)
	dotenv, err := os.ReadFile(filepath.Join(project, index.Artifacts.Reports.Dotenv))
	if err != nil || !strings.Contains(string(dotenv), "IMAGE_DIGEST="+digest.String()) {
		t.Errorf("dotenv report: %q (%v)", dotenv, err)
	}
}

// TestExampleArgoMultiPlatform runs examples/argo/multiplatform.yaml as
// Argo would: the build template once per item of the platforms parameter
// (fetch-context, then the build container from the build image in runc,
// in place, arm64's RUN through qemu), each writing its digest output; the
// index template then gets the fan-out's outputs as Argo aggregates them,
// a JSON list, and joins them. Every build pod asks for a node of its
// architecture.
func TestExampleArgoMultiPlatform(t *testing.T) {
	var wt argoWorkflow
	readYAML(t, "../../examples/argo/multiplatform.yaml", &wt)
	templates := map[string]argoTemplate{}
	for _, tp := range wt.Spec.Templates {
		templates[tp.Name] = tp
	}
	main, build, index := templates["main"], templates["build"], templates["index"]
	if len(main.DAG.Tasks) != 2 || main.DAG.Tasks[0].WithParam != "{{workflow.parameters.platforms}}" || main.DAG.Tasks[1].Depends != "build" {
		t.Fatalf("want a build fan-out over the platforms, then index: %+v", main.DAG)
	}
	var platformsJSON string
	for _, p := range wt.Spec.Arguments.Parameters {
		if p.Name == "platforms" {
			platformsJSON = p.Value
		}
	}
	var platforms []string
	if err := json.Unmarshal([]byte(platformsJSON), &platforms); err != nil {
		t.Fatalf("platforms %q: %v", platformsJSON, err)
	}
	buildImage, _ := stepImages(t)
	d := startDistribution(t)
	base := d.host + "/base/busybox:argo-multi"
	pushBusyboxIndex(t, base, d.remoteOpts()...)
	ctxTar := filepath.Join(t.TempDir(), "ctx.tar")
	os.WriteFile(ctxTar, imagetest.Tar(imagetest.Reg("Dockerfile", "FROM "+base+"\nRUN uname -m > /argo-uname\n", 0o644, 0, 0)), 0o644)
	image := d.host + "/acme/app:multi"
	creds := d.dockerConfig(t, d.user, d.password)
	subst := func(s string, vars map[string]string) string {
		for k, v := range vars {
			s = strings.ReplaceAll(s, k, v)
		}
		return s
	}
	wf := map[string]string{"{{workflow.parameters.image}}": image, "{{workflow.parameters.context}}": "tar://" + ctxTar}
	var digests []string
	for _, platform := range platforms {
		vars := map[string]string{"{{inputs.parameters.platform}}": platform}
		for k, v := range wf {
			vars[k] = v
		}
		if subst(build.NodeSelector["kubernetes.io/arch"], vars) != platform {
			t.Errorf("the build pod for %s asks for nodes %v", platform, build.NodeSelector)
		}
		work := t.TempDir()
		var args []string
		init := build.InitContainers[0]
		for _, a := range append(append([]string(nil), init.Command...), init.Args...) {
			args = append(args, strings.ReplaceAll(subst(a, vars), "=/work/", "="+work+"/"))
		}
		if r := step(t, strings.TrimPrefix(args[0], "/ko-app/"), nil, args[1:]...); r.code != 0 {
			t.Fatalf("fetch-context for %s:\n%s", platform, r.stderr)
		}
		args = nil
		for _, a := range append(append([]string(nil), build.Container.Command...), build.Container.Args...) {
			args = append(args, subst(a, vars))
		}
		vols := map[string]string{"work": work, "registry-credentials": creds}
		binds := []bind{{d.caFile, "/etc/ssl/certs/ca-certificates.crt"}}
		for _, m := range build.Container.VolumeMounts {
			binds = append(binds, bind{vols[m.Name], m.MountPath})
		}
		r := runContainer(t, container{
			rootfs: unpack(t, buildImage), args: args, binds: binds,
			env: append(imageEnv(t, buildImage), "HOME=/root", "KUBERNETES_SERVICE_HOST=10.96.0.1", "DOCKER_CONFIG=/kaniko/.docker"),
		})
		if r.code != 0 {
			t.Fatalf("build for %s failed (%d):\n%s\n%s", platform, r.code, r.stdout, r.stderr)
		}
		out, err := os.ReadFile(filepath.Join(work, strings.TrimPrefix(build.Outputs.Parameters[0].ValueFrom.Path, "/work/")))
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, string(out))
	}
	aggregated, _ := json.Marshal(digests) // as Argo aggregates a fan-out's outputs
	vars := map[string]string{"{{inputs.parameters.digests}}": string(aggregated)}
	for k, v := range wf {
		vars[k] = v
	}
	outDir := t.TempDir()
	var args []string
	for _, a := range index.Container.Args {
		args = append(args, strings.ReplaceAll(subst(a, vars), "=/out/", "="+outDir+"/"))
	}
	if !strings.Contains(index.Container.Image, "/index:") {
		t.Errorf("index image %s", index.Container.Image)
	}
	r := step(t, "index", []string{"DOCKER_CONFIG=" + creds, "SSL_CERT_FILE=" + d.caFile}, args...)
	if r.code != 0 {
		t.Fatalf("index failed:\n%s", r.stderr)
	}
	digest := checkPlatformImages(t, image, platforms, "argo-uname", d.remoteOpts()...)
	if got, _ := os.ReadFile(filepath.Join(outDir, "digest")); string(got) != digest.String() {
		t.Errorf("index digest output %q, want %s", got, digest)
	}
}

// TestExampleBuildkiteMultiPlatform runs examples/buildkite/multiplatform.yml
// as the agent-stack-k8s would: the build step once per matrix value
// ({{matrix}} interpolated), each pod asking for a node of that
// architecture, in runc from the -debug image with the pre-command hook
// logging in; each build keeps its digest as build meta-data, which the
// index step (after the wait) reads back with buildkite-agent meta-data get.
func TestExampleBuildkiteMultiPlatform(t *testing.T) {
	type bkContainer struct {
		Image   string                         `json:"image"`
		Command []string                       `json:"command"`
		Args    []string                       `json:"args"`
		Env     []struct{ Name, Value string } `json:"env"`
	}
	type podSpec struct {
		NodeSelector map[string]string `json:"nodeSelector"`
		Containers   []bkContainer     `json:"containers"`
	}
	var pipeline struct {
		Steps []json.RawMessage `json:"steps"`
	}
	readYAML(t, "../../examples/buildkite/multiplatform.yml", &pipeline)
	type stepT struct {
		Matrix  []string `json:"matrix"`
		Plugins []map[string]struct {
			PodSpec podSpec `json:"podSpec"`
		} `json:"plugins"`
	}
	var steps []stepT
	for _, raw := range pipeline.Steps {
		var s stepT
		if json.Unmarshal(raw, &s) == nil && len(s.Plugins) > 0 {
			steps = append(steps, s)
		}
	}
	if len(steps) != 2 || len(steps[0].Matrix) != 2 {
		t.Fatalf("want a matrix build step and an index step: %+v", steps)
	}
	_, debug := stepImages(t)
	const token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJvcmdhbml6YXRpb246YWNtZSJ9.bk-multi-sig"
	agentDir, calls := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(agentDir, "buildkite-agent"), []byte(`#!/busybox/sh
case "$1 $2" in
"oidc request-token") echo `+token+` ;;
"meta-data set") printf '%s' "$4" > "/buildkite/calls/meta-$3" ;;
"meta-data get") cat "/buildkite/calls/meta-$3" ;;
"annotate "*) cat > /buildkite/calls/annotation ;;
*) echo "unexpected: $*" >&2; exit 2 ;;
esac
`), 0o755)
	d := startRegistry(t, registryOptions{addr: "127.0.0.1:443", names: []string{"packages.buildkite.com"}, user: "buildkite", password: token})
	base := d.host + "/acme/images/busybox:multi"
	pushBusyboxIndex(t, base, d.remoteOpts()...)
	checkout := t.TempDir()
	os.WriteFile(filepath.Join(checkout, "Dockerfile"), []byte("FROM packages.buildkite.com/acme/images/busybox:multi\nRUN uname -m > /bk-uname\n"), 0o644)
	hooks, _ := filepath.Abs("../../examples/buildkite/hooks")
	const path = "/buildkite/builds/acme/app"
	run := func(pod podSpec, matrix string) {
		t.Helper()
		c := pod.Containers[0]
		env := append(imageEnv(t, debug), "HOME=/root", "KUBERNETES_SERVICE_HOST=10.96.0.1",
			"BUILDKITE_BUILD_CHECKOUT_PATH="+path, "BUILDKITE_COMMIT=5e6f7a8b")
		for _, e := range c.Env {
			env = append(env, e.Name+"="+e.Value)
		}
		for i, e := range env {
			if strings.HasPrefix(e, "PATH=") {
				env[i] = "PATH=/buildkite/bin:" + strings.TrimPrefix(e, "PATH=")
			}
		}
		script := strings.ReplaceAll(c.Args[0], "{{matrix}}", matrix)
		r := runContainer(t, container{
			rootfs: unpack(t, debug), env: env,
			args:  []string{c.Command[0], c.Command[1], `. "$BUILDKITE_HOOKS_PATH/pre-command" && ` + script},
			hosts: "127.0.0.1 localhost\n127.0.0.1 packages.buildkite.com\n",
			binds: []bind{{checkout, path}, {t.TempDir(), "/tmp"}, {hooks, "/buildkite/hooks"}, {agentDir, "/buildkite/bin"}, {calls, "/buildkite/calls"},
				{d.caFile, "/etc/ssl/certs/ca-certificates.crt"}},
		})
		if r.code != 0 {
			t.Fatalf("step %q failed (%d):\n%s\n%s", matrix, r.code, r.stdout, r.stderr)
		}
		if strings.Contains(r.stdout+r.stderr, token) {
			t.Error("the OIDC token is in the step's log")
		}
	}
	for _, m := range steps[0].Matrix {
		pod := steps[0].Plugins[0]["kubernetes"].PodSpec
		if got := strings.ReplaceAll(pod.NodeSelector["kubernetes.io/arch"], "{{matrix}}", m); got != m {
			t.Errorf("the %s pod asks for nodes %v", m, pod.NodeSelector)
		}
		run(pod, m)
	}
	run(steps[1].Plugins[0]["kubernetes"].PodSpec, "")
	digest := checkPlatformImages(t, "packages.buildkite.com/acme/images/app:5e6f7a8b", steps[0].Matrix, "bk-uname", buildkiteRemote(d, token)...)
	if got, err := os.ReadFile(filepath.Join(calls, "meta-IMAGE_DIGEST")); err != nil || string(got) != digest.String() {
		t.Errorf("IMAGE_DIGEST meta-data %q (%v), want the index %s", got, err, digest)
	}
}

// TestInPlaceTwoPlatforms builds two platforms in one run of the build
// image's /kaniko/executor in a runc container, in place as in a pod: the
// container's file system becomes each platform's image in turn (arm64's
// RUN through qemu), and one index is pushed.
func TestInPlaceTwoPlatforms(t *testing.T) {
	buildImage, _ := stepImages(t)
	d := startDistribution(t)
	base := d.host + "/base/busybox:inplace"
	pushBusyboxIndex(t, base, d.remoteOpts()...)
	ctxDir := t.TempDir()
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM "+base+"\nRUN uname -m > /inplace-uname\n"), 0o644)
	dest := d.host + "/team/inplace:1"
	r := runContainer(t, container{
		rootfs: unpack(t, buildImage),
		args:   []string{"/kaniko/executor", "--context", "/workspace", "--destination", dest, "--custom-platform", "linux/amd64,linux/arm64"},
		env:    append(imageEnv(t, buildImage), "HOME=/root", "KUBERNETES_SERVICE_HOST=10.96.0.1"),
		binds: []bind{{ctxDir, "/workspace"}, {d.dockerConfig(t, d.user, d.password), "/kaniko/.docker"},
			{d.caFile, "/etc/ssl/certs/ca-certificates.crt"}},
	})
	if r.code != 0 {
		t.Fatalf("build failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	contains(t, r.stderr, "in-place isolation")
	checkPlatformImages(t, dest, []string{"amd64", "arm64"}, "inplace-uname", d.remoteOpts()...)
}
