package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"sigs.k8s.io/yaml"

	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/release"
	"github.com/kilnbuild/kiln/internal/rootfs"
)

// The examples' commands run here as each CI system runs them: the step
// image (as a release makes it: binaries under /ko-app, the -debug variant
// composed by internal/release with Debian's busybox) unpacked into a runc
// container with Docker's default capabilities, the job's script or
// command as written in examples/, its variables set as the CI system sets
// them, and a Debian docker-registry with TLS and htpasswd standing in for
// the CI system's registry. The build runs in place, as in a pod.

var (
	stepImagesOnce     sync.Once
	buildImg, debugImg v1.Image
	stepImagesErr      error
)

// koImage is a ko-style step image: the binary at /ko-app/<name> on a
// static base (the system CA bundle is bind-mounted by each test).
func koImage(t *testing.T, bin string) v1.Image {
	data, err := os.ReadFile(filepath.Join(binDir, bin))
	if err != nil {
		t.Fatal(err)
	}
	return imagetest.Image(t, true, func(cf *v1.ConfigFile) {
		cf.Config.Entrypoint = []string{"/ko-app/" + bin}
		cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/ko-app", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	}, []imagetest.File{
		imagetest.Dir("etc", 0o755, 0, 0),
		imagetest.Reg("etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n", 0o644, 0, 0),
		imagetest.Dir("tmp", 0o1777, 0, 0),
		imagetest.Dir("ko-app", 0o755, 0, 0),
		imagetest.Reg("ko-app/"+bin, string(data), 0o755, 0, 0),
	})
}

// stepImages returns the build image and its -debug variant.
func stepImages(t *testing.T) (build, debug v1.Image) {
	t.Helper()
	stepImagesOnce.Do(func() {
		// The build image as a release publishes it: kaniko's layout.
		kidx, err := release.IndexOf(koImage(t, "build"))
		if err == nil {
			kidx, err = release.KanikoLayout(kidx)
		}
		if err != nil {
			stepImagesErr = err
			return
		}
		im, _ := kidx.IndexManifest()
		if buildImg, stepImagesErr = kidx.Image(im.Manifests[0].Digest); stepImagesErr != nil {
			return
		}
		bb, err := os.ReadFile("/bin/busybox")
		if err != nil {
			stepImagesErr = err
			return
		}
		applets, err := exec.Command("/bin/busybox", "--list").Output()
		if err != nil {
			stepImagesErr = err
			return
		}
		files := []imagetest.File{imagetest.Dir("busybox", 0o755, 0, 0), imagetest.Reg("busybox/busybox", string(bb), 0o755, 0, 0)}
		for _, a := range strings.Fields(string(applets)) {
			if a != "busybox" {
				files = append(files, imagetest.Symlink("busybox/"+a, "busybox"))
			}
		}
		shell := imagetest.Image(t, true, nil, files)
		var idx [4]v1.ImageIndex
		for i, img := range []v1.Image{buildImg, shell, koImage(t, "emit-results"), koImage(t, "index")} {
			if idx[i], stepImagesErr = release.IndexOf(img); stepImagesErr != nil {
				return
			}
		}
		debug, err := release.DebugImage(idx[0], idx[1], idx[2], idx[3])
		if err != nil {
			stepImagesErr = err
			return
		}
		im, _ = debug.IndexManifest()
		debugImg, stepImagesErr = debug.Image(im.Manifests[0].Digest)
	})
	if stepImagesErr != nil {
		t.Fatalf("composing the step images: %v", stepImagesErr)
	}
	return buildImg, debugImg
}

// unpack writes img's file system into a new directory.
func unpack(t *testing.T, img v1.Image) string {
	t.Helper()
	root := t.TempDir()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		err = rootfs.ApplyTar(root, rc, rootfs.UnpackOptions{})
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// imageEnv is img's configured environment.
func imageEnv(t *testing.T, img v1.Image) []string {
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf.Config.Env
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// argoWorkflow is what the Argo tests read of a WorkflowTemplate.
type argoWorkflow struct {
	Spec struct {
		Arguments struct {
			Parameters []struct{ Name, Value string } `json:"parameters"`
		} `json:"arguments"`
		Templates []argoTemplate `json:"templates"`
	} `json:"spec"`
}

// argoTemplate is one template of a WorkflowTemplate.
type argoTemplate struct {
	Name         string            `json:"name"`
	NodeSelector map[string]string `json:"nodeSelector"`
	DAG          struct {
		Tasks []struct {
			Name      string `json:"name"`
			Template  string `json:"template"`
			WithParam string `json:"withParam"`
			Depends   string `json:"depends"`
			Arguments struct {
				Parameters []struct{ Name, Value string } `json:"parameters"`
			} `json:"arguments"`
		} `json:"tasks"`
	} `json:"dag"`
	InitContainers []argoContainer `json:"initContainers"`
	Container      argoContainer   `json:"container"`
	Outputs        struct {
		Parameters []struct {
			Name      string                `json:"name"`
			ValueFrom struct{ Path string } `json:"valueFrom"`
		} `json:"parameters"`
	} `json:"outputs"`
}

// argoContainer is a template's container or init container.
type argoContainer struct {
	Image   string   `json:"image"`
	Command []string `json:"command"`
	Args    []string `json:"args"`
	Env     []struct {
		Name      string `json:"name"`
		Value     string `json:"value"`
		ValueFrom *struct {
			SecretKeyRef struct{ Name, Key string } `json:"secretKeyRef"`
		} `json:"valueFrom"`
	} `json:"env"`
	VolumeMounts []struct{ Name, MountPath string } `json:"volumeMounts"`
}

// TestKanikoReadmeInRunc runs kaniko's README pod as it is written, from
// kiln's build image (drop-in issue, items 1 and 3): the image's own
// entrypoint (/kaniko/executor), credentials mounted at
// /kaniko/.docker/config.json, the registry's CA mounted into
// /kaniko/ssl/certs/ and nothing else, and --digest-file=/dev/termination-log,
// a file mounted on its own as Kubernetes mounts it.
func TestKanikoReadmeInRunc(t *testing.T) {
	build, _ := stepImages(t)
	cf, _ := build.ConfigFile()
	if len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/kaniko/executor" {
		t.Fatalf("the build image's entrypoint is %v, want kaniko's /kaniko/executor", cf.Config.Entrypoint)
	}
	d := startDistribution(t)
	base := d.host + "/base/busybox:readme"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)), d.remoteOpts()...)
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM "+base+"\nRUN echo created by the kaniko README > /readme\n"), 0o644)
	certs := t.TempDir()
	ca, _ := os.ReadFile(d.caFile)
	os.WriteFile(filepath.Join(certs, "registry.crt"), ca, 0o644)
	termination := filepath.Join(t.TempDir(), "termination-log")
	os.WriteFile(termination, nil, 0o644)
	dockerCfg := filepath.Join(d.dockerConfig(t, d.user, d.password), "config.json")
	dest := d.host + "/kaniko/readme:1"
	args := append(append([]string{}, cf.Config.Entrypoint...), "--dockerfile=Dockerfile", "--context=dir:///workspace",
		"--destination="+dest, "--digest-file=/dev/termination-log")
	r := runContainer(t, container{
		rootfs: unpack(t, build), env: append(imageEnv(t, build), "HOME=/root", "KUBERNETES_SERVICE_HOST=10.96.0.1"),
		args:  args,
		binds: []bind{{ctx, "/workspace"}, {dockerCfg, "/kaniko/.docker/config.json"}, {certs, "/kaniko/ssl/certs"}, {termination, "/dev/termination-log"}},
	})
	if r.code != 0 {
		t.Fatalf("kaniko's README pod failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	img := pull(t, dest, d.remoteOpts()...)
	digest, _ := img.Digest()
	if got, _ := os.ReadFile(termination); string(got) != digest.String() {
		t.Errorf("/dev/termination-log holds %q, want %s", got, digest)
	}
	if got := imagetest.Flatten(t, img)["readme"].Content; got != "created by the kaniko README\n" {
		t.Errorf("/readme = %q", got)
	}
}

// TestExampleGitLab runs examples/gitlab/.gitlab-ci.yml's job script in
// the -debug image, with GitLab's predefined variables, as GitLab's
// Kubernetes executor does (entrypoint overridden, /busybox/sh found).
func TestExampleGitLab(t *testing.T) {
	var ci map[string]struct {
		Image struct {
			Name       string   `json:"name"`
			Entrypoint []string `json:"entrypoint"`
		} `json:"image"`
		Script    []string `json:"script"`
		Artifacts struct {
			Reports struct {
				Dotenv string `json:"dotenv"`
			} `json:"reports"`
		} `json:"artifacts"`
	}
	readYAML(t, "../../examples/gitlab/.gitlab-ci.yml", &ci)
	job, ok := ci["build-image"]
	if !ok || len(job.Script) == 0 {
		t.Fatalf("no build-image job with a script: %+v", ci)
	}
	if !strings.HasSuffix(job.Image.Name, "-debug") || len(job.Image.Entrypoint) != 1 || job.Image.Entrypoint[0] != "" {
		t.Errorf("image %+v: GitLab needs the -debug image with its entrypoint cleared", job.Image)
	}
	_, debug := stepImages(t)

	d := startDistribution(t)
	base := d.host + "/base/busybox:1"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)), d.remoteOpts()...)
	project := t.TempDir()
	os.WriteFile(filepath.Join(project, "Dockerfile"), []byte("FROM "+base+"\nRUN echo built by gitlab > /ci.txt\n"), 0o644)
	const dir = "/builds/group/project"
	env := append(imageEnv(t, debug),
		"HOME=/root", "KUBERNETES_SERVICE_HOST=10.96.0.1",
		"CI_PROJECT_DIR="+dir, "CI_REGISTRY="+d.host, "CI_REGISTRY_USER="+d.user, "CI_REGISTRY_PASSWORD="+d.password,
		"CI_REGISTRY_IMAGE="+d.host+"/group/project", "CI_COMMIT_SHORT_SHA=1a2b3c4d")
	r := runContainer(t, container{
		rootfs: unpack(t, debug), cwd: dir, env: env,
		args:  []string{"/busybox/sh", "-e", "-c", strings.Join(job.Script, "\n")},
		binds: []bind{{project, dir}, {d.caFile, "/etc/ssl/certs/ca-certificates.crt"}},
	})
	if r.code != 0 {
		t.Fatalf("the job failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, d.password) {
		t.Error("the registry password is in the job's log")
	}
	contains(t, r.stderr, "in-place isolation")
	img := pull(t, d.host+"/group/project:1a2b3c4d", d.remoteOpts()...)
	if got := imagetest.Flatten(t, img)["ci.txt"].Content; got != "built by gitlab\n" {
		t.Errorf("/ci.txt = %q", got)
	}
	digest, _ := img.Digest()
	dotenv, err := os.ReadFile(filepath.Join(project, job.Artifacts.Reports.Dotenv))
	if err != nil || !strings.Contains(string(dotenv), "IMAGE_DIGEST="+digest.String()) {
		t.Errorf("dotenv report %s: %q (%v)", job.Artifacts.Reports.Dotenv, dotenv, err)
	}
	cacheRepo, _ := name.NewRepository(d.host + "/group/project/cache")
	if tags, err := remote.List(cacheRepo, d.remoteOpts()...); err != nil || len(tags) == 0 {
		t.Errorf("the --cache-repo holds no layers: %v %v", tags, err)
	}
}

// TestExampleBuildkite runs examples/buildkite/pipeline.yml's Kubernetes
// step as the agent-stack-k8s runs it, in runc from the -debug image: the
// pod's hooks volume (the ConfigMap made from examples/buildkite/hooks)
// at its mount path, the agent running BUILDKITE_HOOKS_PATH's pre-command
// hook and then the step's command, with a buildkite-agent that answers
// the OIDC token request and records meta-data and annotations. The push
// goes to packages.buildkite.com, which resolves to a local registry on
// :443 accepting that token.
func TestExampleBuildkite(t *testing.T) {
	type mount struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
	}
	var pipeline struct {
		Steps []struct {
			Plugins []map[string]struct {
				PodSpec struct {
					Volumes []struct {
						Name      string `json:"name"`
						ConfigMap struct {
							Name string `json:"name"`
						} `json:"configMap"`
					} `json:"volumes"`
					Containers []struct {
						Image        string   `json:"image"`
						Command      []string `json:"command"`
						Args         []string `json:"args"`
						VolumeMounts []mount  `json:"volumeMounts"`
						Env          []struct {
							Name  string `json:"name"`
							Value string `json:"value"`
						} `json:"env"`
					} `json:"containers"`
				} `json:"podSpec"`
			} `json:"plugins"`
		} `json:"steps"`
	}
	readYAML(t, "../../examples/buildkite/pipeline.yml", &pipeline)
	if len(pipeline.Steps) == 0 || len(pipeline.Steps[0].Plugins) == 0 || len(pipeline.Steps[0].Plugins[0]["kubernetes"].PodSpec.Containers) == 0 {
		t.Fatalf("no kubernetes step: %+v", pipeline)
	}
	pod := pipeline.Steps[0].Plugins[0]["kubernetes"].PodSpec
	ctr := pod.Containers[0]
	if !strings.HasSuffix(ctr.Image, "-debug") {
		t.Errorf("image %s: the command needs the -debug image's shell", ctr.Image)
	}
	_, debug := stepImages(t)

	// The hooks volume: the ConfigMap made from examples/buildkite/hooks.
	var hooksAt string
	for _, v := range pod.Volumes {
		for _, m := range ctr.VolumeMounts {
			if m.Name == v.Name && v.ConfigMap.Name != "" {
				hooksAt = m.MountPath
			}
		}
	}
	env := append(imageEnv(t, debug), "HOME=/root", "KUBERNETES_SERVICE_HOST=10.96.0.1")
	var hooksPath string
	for _, e := range ctr.Env {
		env = append(env, e.Name+"="+e.Value)
		if e.Name == "BUILDKITE_HOOKS_PATH" {
			hooksPath = e.Value
		}
	}
	if !slices.Contains(env, "BUILDKITE_SHELL=/busybox/sh -e -c") {
		t.Error("BUILDKITE_SHELL is not the image's shell: the agent would look for /bin/bash")
	}
	if hooksAt == "" || hooksPath != hooksAt {
		t.Fatalf("the hooks ConfigMap is mounted at %q, BUILDKITE_HOOKS_PATH is %q", hooksAt, hooksPath)
	}

	// buildkite-agent: the OIDC token, meta-data set and annotate.
	const token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJvcmdhbml6YXRpb246YWNtZSJ9.bk-oidc-sig"
	agentDir, calls := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(agentDir, "buildkite-agent"), []byte(`#!/busybox/sh
case "$1 $2" in
"oidc request-token")
	[ "$*" = "oidc request-token --audience https://packages.buildkite.com/acme/images --lifetime 300" ] || { echo "unexpected: $*" >&2; exit 2; }
	echo `+token+` ;;
"meta-data set") printf '%s=%s\n' "$3" "$4" >> /buildkite/calls/meta-data ;;
"annotate "*) echo "$*" > /buildkite/calls/annotate-args; cat > /buildkite/calls/annotation ;;
*) echo "unexpected: $*" >&2; exit 2 ;;
esac
`), 0o755)

	d := startRegistry(t, registryOptions{addr: "127.0.0.1:443", names: []string{"packages.buildkite.com"}, user: "buildkite", password: token})
	base := d.host + "/acme/images/busybox:1"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)), d.remoteOpts()...)
	checkout, tmp := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(checkout, "Dockerfile"), []byte("FROM packages.buildkite.com/acme/images/busybox:1\nRUN echo built by buildkite > /bk.txt\n"), 0o644)
	const path = "/buildkite/builds/acme/app"
	env = append(env, "BUILDKITE_BUILD_CHECKOUT_PATH="+path, "BUILDKITE_COMMIT=0f1e2d3c")
	for i, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			env[i] = "PATH=/buildkite/bin:" + strings.TrimPrefix(e, "PATH=")
		}
	}
	// The agent runs the pre-command hook, then the command.
	if len(ctr.Command) != 2 || len(ctr.Args) != 1 {
		t.Fatalf("command %v %v: want [shell, -c] [script]", ctr.Command, ctr.Args)
	}
	// The agent runs the hook in BUILDKITE_SHELL, keeping what it exports.
	args := []string{ctr.Command[0], ctr.Command[1], `. "$BUILDKITE_HOOKS_PATH/pre-command" && ` + ctr.Args[0]}
	hooks, _ := filepath.Abs("../../examples/buildkite/hooks")
	r := runContainer(t, container{
		rootfs: unpack(t, debug), env: env, args: args,
		hosts: "127.0.0.1 localhost\n127.0.0.1 packages.buildkite.com\n",
		binds: []bind{{checkout, path}, {tmp, "/tmp"}, {hooks, hooksAt}, {agentDir, "/buildkite/bin"}, {calls, "/buildkite/calls"},
			{d.caFile, "/etc/ssl/certs/ca-certificates.crt"}},
	})
	if r.code != 0 {
		t.Fatalf("the step failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, token) {
		t.Error("the OIDC token is in the step's log")
	}
	img := pull(t, "packages.buildkite.com/acme/images/app:0f1e2d3c", buildkiteRemote(d, token)...)
	if got := imagetest.Flatten(t, img)["bk.txt"].Content; got != "built by buildkite\n" {
		t.Errorf("/bk.txt = %q", got)
	}
	digest, _ := img.Digest()
	meta, err := os.ReadFile(filepath.Join(calls, "meta-data"))
	if err != nil || !strings.Contains(string(meta), "IMAGE_DIGEST="+digest.String()+"\n") ||
		!strings.Contains(string(meta), "IMAGE_URL=packages.buildkite.com/acme/images/app:0f1e2d3c\n") {
		t.Errorf("buildkite-agent meta-data set calls: %q (%v)", meta, err)
	}
	if ann, err := os.ReadFile(filepath.Join(calls, "annotation")); err != nil || !strings.Contains(string(ann), digest.String()) {
		t.Errorf("annotation: %q (%v)", ann, err)
	}
	if a, _ := os.ReadFile(filepath.Join(calls, "annotate-args")); !strings.Contains(string(a), "--style success") {
		t.Errorf("annotate %q", a)
	}
}

// TestExampleArgo runs examples/argo/workflowtemplate.yaml's build template
// as Argo runs it: the workflow parameters substituted, the fetch-context
// init container (the fetch-context binary, git in process)
// filling the work volume from a git server that wants a token, then the
// build container in the build image (no shell) with the registry
// credentials mounted; the digest output parameter is read back.
func TestExampleArgo(t *testing.T) {
	var wt argoWorkflow
	readYAML(t, "../../examples/argo/workflowtemplate.yaml", &wt)
	if len(wt.Spec.Templates) != 1 || len(wt.Spec.Templates[0].InitContainers) != 1 {
		t.Fatalf("want one template with a fetch-context init container: %+v", wt.Spec.Templates)
	}
	tmpl := wt.Spec.Templates[0]
	build, _ := stepImages(t)

	const token = "ghp-argo-e2e-token"
	d := startDistribution(t)
	base := d.host + "/base/busybox:argo"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)), d.remoteOpts()...)
	repo, commit := gitRepoServer(t, token, false, map[string]string{
		"Dockerfile": "FROM " + base + "\nCOPY msg.txt /msg.txt\nRUN cat /msg.txt > /argo.txt\n",
		"msg.txt":    "built by argo\n",
	})
	params := map[string]string{
		"{{workflow.parameters.context}}": repo + "#main",
		"{{workflow.parameters.image}}":   d.host + "/acme/app:argo",
	}
	secrets := map[string]string{"git-credentials/token": token}
	work := t.TempDir()
	vols := map[string]string{"work": work, "registry-credentials": d.dockerConfig(t, d.user, d.password)}
	subst := func(c argoContainer, local bool) ([]string, []string) {
		var args, env []string
		for _, a := range append(append([]string(nil), c.Command...), c.Args...) {
			for k, v := range params {
				a = strings.ReplaceAll(a, k, v)
			}
			if local {
				a = strings.ReplaceAll(a, "=/work/", "="+work+"/")
			}
			args = append(args, a)
		}
		for _, e := range c.Env {
			v := e.Value
			if e.ValueFrom != nil {
				v = secrets[e.ValueFrom.SecretKeyRef.Name+"/"+e.ValueFrom.SecretKeyRef.Key]
			}
			env = append(env, e.Name+"="+v)
		}
		return args, env
	}

	init := tmpl.InitContainers[0]
	if !strings.Contains(init.Image, "/fetch-context:") {
		t.Errorf("init container image %s, want kiln's fetch-context", init.Image)
	}
	args, env := subst(init, true)
	r := step(t, strings.TrimPrefix(args[0], "/ko-app/"), env, args[1:]...)
	if r.code != 0 {
		t.Fatalf("fetch-context init container failed:\n%s", r.stderr)
	}

	main := tmpl.Container
	if strings.HasSuffix(main.Image, "-debug") || !strings.Contains(main.Image, "/build:") {
		t.Errorf("build container image %s, want the build image", main.Image)
	}
	args, env = subst(main, false)
	binds := []bind{{d.caFile, "/etc/ssl/certs/ca-certificates.crt"}}
	for _, m := range main.VolumeMounts {
		binds = append(binds, bind{vols[m.Name], m.MountPath})
	}
	r = runContainer(t, container{
		rootfs: unpack(t, build), args: args, binds: binds,
		env: append(append(imageEnv(t, build), "HOME=/root", "KUBERNETES_SERVICE_HOST=10.96.0.1"), env...),
	})
	if r.code != 0 {
		t.Fatalf("build container failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	contains(t, r.stderr, "in-place isolation")
	img := pull(t, d.host+"/acme/app:argo", d.remoteOpts()...)
	if got := imagetest.Flatten(t, img)["argo.txt"].Content; got != "built by argo\n" {
		t.Errorf("/argo.txt = %q", got)
	}
	digest, _ := img.Digest()
	out := tmpl.Outputs.Parameters[0]
	if got, err := os.ReadFile(filepath.Join(work, strings.TrimPrefix(out.ValueFrom.Path, "/work/"))); err != nil || string(got) != digest.String() {
		t.Errorf("output parameter %s = %q (%v), want %s", out.Name, got, err, digest)
	}
	// The build record carries the commit fetch-context recorded.
	if rec, err := os.ReadFile(filepath.Join(work, "build.json")); err != nil || !strings.Contains(string(rec), commit) {
		t.Errorf("build record lacks the commit %s: %s (%v)", commit, rec, err)
	}
}

// TestExampleCloudBuild runs examples/cloudbuild/cloudbuild.yaml's step as
// Cloud Build runs it: the build image's entrypoint with the step's args
// (substitutions applied), /workspace mounted, HOME=/builder/home and
// BUILDER_OUTPUT=/builder/outputs. Credentials come from the build's
// service account through the metadata server (here a local one, named by
// GCE_METADATA_HOST), and us-docker.pkg.dev resolves to a local registry
// that accepts the token as Artifact Registry does (user _token).
// The pushed image is read back and $BUILDER_OUTPUT/images lists it.
func TestExampleCloudBuild(t *testing.T) {
	var cfg struct {
		Steps []struct {
			Name string   `json:"name"`
			Args []string `json:"args"`
		} `json:"steps"`
	}
	readYAML(t, "../../examples/cloudbuild/cloudbuild.yaml", &cfg)
	if len(cfg.Steps) != 1 || !strings.HasPrefix(cfg.Steps[0].Name, "ghcr.io/kilnbuild/kiln/build:") {
		t.Fatalf("want one step in kiln's build image: %+v", cfg.Steps)
	}
	const accessToken = "ya29.cloud-build-service-account-token"
	meta := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		if r.Header.Get("Metadata-Flavor") != "Google" {
			http.Error(w, "missing Metadata-Flavor", http.StatusForbidden)
			return
		}
		switch {
		case strings.HasPrefix(r.URL.Path, "/computeMetadata/v1/instance/service-accounts/default/token"):
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"access_token":%q,"expires_in":3599,"token_type":"Bearer"}`, accessToken)
		case r.URL.Path == "/computeMetadata/v1/project/project-id":
			io.WriteString(w, "acme-prod")
		case r.URL.Path == "/computeMetadata/v1/instance/service-accounts/default/email":
			io.WriteString(w, "builds@acme-prod.iam.gserviceaccount.com")
		default:
			http.NotFound(w, r)
		}
	}))
	defer meta.Close()

	d := startRegistry(t, registryOptions{addr: "127.0.0.1:443", names: []string{"us-docker.pkg.dev"}, user: "_token", password: accessToken})
	base := d.host + "/acme-prod/images/busybox:1"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)), d.remoteOpts()...)
	workspace, outputs, home := t.TempDir(), t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(workspace, "Dockerfile"), []byte("FROM us-docker.pkg.dev/acme-prod/images/busybox:1\nRUN echo built on cloud build > /cb.txt\n"), 0o644)
	subst := strings.NewReplacer("$PROJECT_ID", "acme-prod", "$SHORT_SHA", "1a2b3c4")
	build, _ := stepImages(t)
	bcf, _ := build.ConfigFile()
	args := append([]string(nil), bcf.Config.Entrypoint...)
	for _, a := range cfg.Steps[0].Args {
		args = append(args, subst.Replace(a))
	}
	env := append(imageEnv(t, build), "HOME=/builder/home", "BUILDER_OUTPUT=/builder/outputs",
		"PROJECT_ID=acme-prod", "BUILD_ID=5f0e", "GCE_METADATA_HOST="+strings.TrimPrefix(meta.URL, "http://"))
	// Cloud Build runs steps with Docker, which puts /.dockerenv in every
	// container (with Docker's default capabilities, kiln builds in place).
	rootfs := unpack(t, build)
	os.WriteFile(filepath.Join(rootfs, ".dockerenv"), nil, 0o644)
	r := runContainer(t, container{
		rootfs: rootfs, env: env, args: args, cwd: "/workspace",
		hosts: "127.0.0.1 localhost\n127.0.0.1 us-docker.pkg.dev\n",
		binds: []bind{{workspace, "/workspace"}, {outputs, "/builder/outputs"}, {home, "/builder/home"},
			{d.caFile, "/etc/ssl/certs/ca-certificates.crt"}},
	})
	if r.code != 0 {
		t.Fatalf("the step failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, accessToken) {
		t.Error("the access token is in the step's log")
	}
	dest := "us-docker.pkg.dev/acme-prod/images/app:1a2b3c4"
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := d.client.Transport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == "us-docker.pkg.dev:443" {
			addr = "127.0.0.1:443"
		}
		return dialer.DialContext(ctx, network, addr)
	}
	img := pull(t, dest, remote.WithTransport(tr), remote.WithAuth(&authn.Basic{Username: "_token", Password: accessToken}))
	if got := imagetest.Flatten(t, img)["cb.txt"].Content; got != "built on cloud build\n" {
		t.Errorf("/cb.txt = %q", got)
	}
	digest, _ := img.Digest()
	// kaniko's $BUILDER_OUTPUT/images: one {"name","digest"} line per destination.
	data, err := os.ReadFile(filepath.Join(outputs, "images"))
	if err != nil {
		t.Fatalf("$BUILDER_OUTPUT/images: %v", err)
	}
	var out struct{ Name, Digest string }
	if lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n"); len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &out) != nil ||
		out.Name != dest || out.Digest != digest.String() {
		t.Errorf("$BUILDER_OUTPUT/images = %q, want %s at %s", data, dest, digest)
	}
	if got, _ := os.ReadFile(filepath.Join(workspace, "digest")); string(got) != digest.String() {
		t.Errorf("--digest-file: %q", got)
	}
}

// TestGitContextInBuildImage runs kaniko's README git invocation in runc
// from the build image as shipped, which has no git binary:
// --context=git://…#ref#commit with GIT_TOKEN, the git server's CA in
// /kaniko/ssl/certs, shallow (--git depth=1); the pushed image is read
// back.
func TestGitContextInBuildImage(t *testing.T) {
	const token = "ghp_build-image-git-token"
	srv, commit := gitRepoHTTP(t, token, true, nil)
	build, _ := stepImages(t)
	rootfs := unpack(t, build)
	for _, dir := range []string{"bin", "usr/bin", "usr/local/bin", "ko-app", "kaniko"} {
		if _, err := os.Stat(filepath.Join(rootfs, dir, "git")); err == nil {
			t.Fatalf("the build image has /%s/git", dir)
		}
	}
	certs := t.TempDir()
	os.WriteFile(filepath.Join(certs, "git.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	reg := imagetest.Registry(t)
	base := reg + "/busybox:gitimage"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	dest := reg + "/kaniko/fromgit:1"
	cf, _ := build.ConfigFile()
	src := "git://" + strings.TrimPrefix(srv.URL, "https://") + "/repo.git#refs/heads/main#" + commit
	args := append(append([]string{}, cf.Config.Entrypoint...), "--context="+src, "--context-sub-path=app",
		"--git=depth=1", "--destination="+dest, "--build-arg=BASE="+base, "--insecure", "--insecure-pull")
	r := runContainer(t, container{
		rootfs: rootfs, env: append(imageEnv(t, build), "HOME=/root", "KUBERNETES_SERVICE_HOST=10.96.0.1", "GIT_TOKEN="+token),
		args:  args,
		binds: []bind{{certs, "/kaniko/ssl/certs"}},
	})
	if r.code != 0 {
		t.Fatalf("build --context git:// in the build image failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, token) {
		t.Error("the git token is in the log")
	}
	img := pull(t, dest)
	if got := imagetest.Flatten(t, img)["ran"].Content; got != "from git\n" {
		t.Errorf("/ran = %q", got)
	}
}

// TestJenkins runs, in runc from the -debug image, the Kubernetes-agent
// pipelines of the CloudBees CI document (seed: its pod and `sh` step
// transcribed as written, with kaniko's image swapped for kiln's) and of
// examples/jenkins/Jenkinsfile: the docker-registry Secret's
// .dockerconfigjson projected to /kaniko/.docker/config.json, the `sh`
// step run by the container step's shell (/busybox/sh) in the workspace.
// The registries resolve to a local one on :443; the pushed images are
// read back.
func TestJenkins(t *testing.T) {
	_, debug := stepImages(t)
	d := startRegistry(t, registryOptions{addr: "127.0.0.1:443", names: []string{"index.docker.io", "registry.example.com"},
		user: "jenkins", password: "jenkins-registry-pass"})
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := d.client.Transport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if strings.HasSuffix(addr, ":443") {
			addr = "127.0.0.1:443"
		}
		return dialer.DialContext(ctx, network, addr)
	}
	auth := remote.WithAuth(&authn.Basic{Username: d.user, Password: d.password})
	busybox := imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t))
	// The document's Dockerfile starts FROM jenkins/inbound-agent:latest.
	if err := remote.Write(mustRef(t, "jenkins/inbound-agent:latest"), busybox, remote.WithTransport(tr), auth); err != nil {
		t.Fatal(err)
	}
	// The Secret, as kubectl create secret docker-registry writes it.
	basic := base64.StdEncoding.EncodeToString([]byte(d.user + ":" + d.password))
	secret := fmt.Sprintf(`{"auths":{"https://index.docker.io/v1/":{"auth":%q},"registry.example.com":{"auth":%q}}}`, basic, basic)
	run := func(t *testing.T, script string, env []string, files map[string]string) {
		t.Helper()
		ws, tmp, dockerDir := t.TempDir(), t.TempDir(), t.TempDir()
		for p, c := range files {
			os.WriteFile(filepath.Join(ws, p), []byte(c), 0o644)
		}
		// items: key .dockerconfigjson, path config.json
		os.WriteFile(filepath.Join(dockerDir, "config.json"), []byte(secret), 0o644)
		// Jenkins writes the step's script beside the workspace (ws@tmp) and
		// runs it with the container step's shell.
		os.WriteFile(filepath.Join(tmp, "script.sh"), []byte(script), 0o755)
		const wsPath = "/home/jenkins/agent/workspace/app"
		r := runContainer(t, container{
			rootfs: unpack(t, debug), cwd: wsPath,
			env:   append(append(imageEnv(t, debug), "HOME=/root", "KUBERNETES_SERVICE_HOST=10.96.0.1", "WORKSPACE="+wsPath), env...),
			args:  []string{"/busybox/sh", "-xe", wsPath + "@tmp/script.sh"},
			hosts: "127.0.0.1 localhost index.docker.io registry.example.com\n",
			binds: []bind{{ws, wsPath}, {tmp, wsPath + "@tmp"}, {dockerDir, "/kaniko/.docker"}, {d.caFile, "/kaniko/ssl/certs/ca.crt"}},
		})
		if r.code != 0 {
			t.Fatalf("the sh step failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		if strings.Contains(r.stdout+r.stderr, d.password) || strings.Contains(r.stdout+r.stderr, basic) {
			t.Error("the registry password is in the step's log")
		}
	}

	t.Run("CloudBees document", func(t *testing.T) {
		seed, err := os.ReadFile("../../../shared/seeds/000_84a417291200b1fa.txt")
		if err == nil && !bytes.Contains(seed, []byte("container(name: 'kaniko', shell: '/busybox/sh')")) {
			t.Fatal("the CloudBees document no longer has the container step this test transcribes")
		}
		// The document's step, <docker-username> filled in.
		script := "#!/busybox/sh\necho \"FROM jenkins/inbound-agent:latest\" > Dockerfile\n/kaniko/executor --context `pwd` --destination kiln/hello-kaniko:latest\n"
		run(t, script, nil, nil)
		img := pull(t, "kiln/hello-kaniko:latest", remote.WithTransport(tr), auth)
		if got, want := imagetest.Flatten(t, img)["bin/busybox"].Header.Size, imagetest.Flatten(t, busybox)["bin/busybox"].Header.Size; got != want {
			t.Errorf("the pushed image is not FROM jenkins/inbound-agent: busybox %d bytes, want %d", got, want)
		}
	})

	t.Run("examples/jenkins/Jenkinsfile", func(t *testing.T) {
		jf, err := os.ReadFile("../../examples/jenkins/Jenkinsfile")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"image: ghcr.io/kilnbuild/kiln/build:0.1-debug", "mountPath: /kaniko/.docker", "key: .dockerconfigjson", "path: config.json", "shell: '/busybox/sh'"} {
			if !bytes.Contains(jf, []byte(want)) {
				t.Errorf("Jenkinsfile lacks %q", want)
			}
		}
		m := regexp.MustCompile(`(?m)^\s*sh '(.*)'$`).FindSubmatch(jf)
		if m == nil {
			t.Fatal("no sh step in the Jenkinsfile")
		}
		if err := remote.Write(mustRef(t, "registry.example.com/base/busybox:1"), busybox, remote.WithTransport(tr), auth); err != nil {
			t.Fatal(err)
		}
		run(t, string(m[1])+"\n", []string{"GIT_COMMIT=9f8e7d6c"},
			map[string]string{"Dockerfile": "FROM registry.example.com/base/busybox:1\nRUN echo built by jenkins > /j.txt\n"})
		img := pull(t, "registry.example.com/team/app:9f8e7d6c", remote.WithTransport(tr), auth)
		if got := imagetest.Flatten(t, img)["j.txt"].Content; got != "built by jenkins\n" {
			t.Errorf("/j.txt = %q", got)
		}
	})
}

// buildkiteRemote reads packages.buildkite.com from the local registry
// standing in for it on 127.0.0.1:443, with the job's OIDC token.
func buildkiteRemote(d *distribution, token string) []remote.Option {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := d.client.Transport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == "packages.buildkite.com:443" {
			addr = "127.0.0.1:443"
		}
		return dialer.DialContext(ctx, network, addr)
	}
	return []remote.Option{remote.WithTransport(tr), remote.WithAuth(&authn.Basic{Username: "buildkite", Password: token})}
}
