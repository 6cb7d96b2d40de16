package tekton

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/tektoncd/pipeline/pkg/apis/config"
	v1 "github.com/tektoncd/pipeline/pkg/apis/pipeline/v1"
	"github.com/tektoncd/pipeline/pkg/reconciler/taskrun/resources"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// binDir holds the step binaries built from this tree.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kiln-tekton-bin-")
	if err != nil {
		panic(err)
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/build", "./cmd/fetch-context", "./cmd/warm-cache", "./cmd/emit-results", "./cmd/sign", "./cmd/index")
	cmd.Dir = "../.."
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building step binaries:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// busyboxImage is a base image holding Debian's static busybox.
func busyboxImage(t *testing.T) gcrv1.Image {
	return busyboxImageFor(t, "/bin/busybox", "amd64")
}

// busyboxImageFor is busyboxImage with the busybox at path, for arch.
func busyboxImageFor(t *testing.T, path, arch string) gcrv1.Image {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("busybox-static is required at %s (test/run provides it): %v", path, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data))})
	tw.Write(data)
	for _, a := range []string{"sh", "echo", "cat", "uname"} {
		tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: types.OCILayer})
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	img, _ = mutate.ConfigFile(img, cf)
	return img
}

// runTask runs a Task as Tekton's controller prepares it: the TaskRun's
// parameters, contexts, results and workspaces substituted with Tekton's own
// functions in the controller's order, then each step's command run with
// the binaries from this tree. Workspaces and /tekton/results live in
// temporary directories. It returns the results directory.
func runTask(t *testing.T, taskFile string, tr *v1.TaskRun, setup ...func(workspace func(string) string)) string {
	t.Helper()
	return runTaskIn(t, t.TempDir(), taskFile, tr, setup...)
}

// runTaskIn is runTask with the workspaces under root, so a second run
// reuses them as a PersistentVolumeClaim workspace is reused. The Task's
// volumes (emptyDir) are new for every run, as they are for every pod.
func runTaskIn(t *testing.T, root, taskFile string, tr *v1.TaskRun, setup ...func(workspace func(string) string)) string {
	t.Helper()
	data, err := os.ReadFile(taskFile)
	if err != nil {
		t.Fatal(err)
	}
	var task v1.Task
	if err := yaml.UnmarshalStrict(data, &task); err != nil {
		t.Fatal(err)
	}
	ctx := config.ToContext(context.Background(), config.FromContextOrDefaults(context.Background()))
	task.SetDefaults(ctx)
	if err := task.Validate(ctx); err != nil {
		t.Fatal(err)
	}
	return runTaskSpec(t, task.Name, &task.Spec, tr, func(ws string) string { return filepath.Join(root, "workspace", ws) }, setup...)
}

// runTaskSpec runs a validated Task spec as runTask does; wsDir gives the
// directory of each of the TaskRun's workspaces, by the Task's name for it.
func runTaskSpec(t *testing.T, taskName string, spec *v1.TaskSpec, tr *v1.TaskRun, wsDir func(string) string, setup ...func(workspace func(string) string)) string {
	t.Helper()
	ctx := config.ToContext(context.Background(), config.FromContextOrDefaults(context.Background()))
	tr.SetDefaults(ctx)
	ts := spec.DeepCopy()
	ts = resources.ApplyParameters(ts, tr, ts.Params...)
	ts = resources.ApplyContexts(ts, taskName, tr)
	ts = resources.ApplyResults(ts)
	ts = resources.ApplyWorkspaces(ctx, ts, ts.Workspaces, tr.Spec.Workspaces, nil)

	run := t.TempDir()
	results := filepath.Join(run, "tekton", "results")
	os.MkdirAll(results, 0o755)
	paths := map[string]string{"/tekton/results": results, "/tekton/home": filepath.Join(run, "home")}
	volumes := map[string]string{}
	for _, v := range ts.Volumes {
		if v.EmptyDir != nil {
			volumes[v.Name] = filepath.Join(run, "volumes", v.Name)
			os.MkdirAll(volumes[v.Name], 0o777)
		}
	}
	mount := func(ms []corev1.VolumeMount) {
		for _, m := range ms {
			if dir, ok := volumes[m.Name]; ok {
				paths[m.MountPath] = dir
			}
		}
	}
	if ts.StepTemplate != nil {
		mount(ts.StepTemplate.VolumeMounts)
	}
	for _, step := range ts.Steps {
		mount(step.VolumeMounts)
	}
	for _, w := range ts.Workspaces {
		for _, b := range tr.Spec.Workspaces {
			if b.Name == w.Name {
				dir := wsDir(w.Name)
				os.MkdirAll(dir, 0o755)
				paths[w.GetMountPath()] = dir
			}
		}
	}
	for _, f := range setup {
		f(wsDir)
	}
	// local maps the pod's paths to the temporary directories, where a
	// value (a whole argument, or what follows a flag's "=") starts with one.
	local := func(s string) string {
		flag, value, isFlag := strings.Cut(s, "=")
		if !isFlag || !strings.HasPrefix(flag, "-") {
			flag, value = "", s
		}
		for from, to := range paths {
			if value == from || strings.HasPrefix(value, from+"/") {
				value = to + strings.TrimPrefix(value, from)
				break
			}
		}
		if flag != "" {
			return flag + "=" + value
		}
		return value
	}
	for _, step := range ts.Steps {
		if len(step.Command) != 1 || !strings.HasPrefix(step.Command[0], "/ko-app/") {
			t.Fatalf("step %s: command %v is not a kiln step binary", step.Name, step.Command)
		}
		var args []string
		for _, a := range step.Args {
			args = append(args, local(a))
		}
		cmd := exec.Command(filepath.Join(binDir, strings.TrimPrefix(step.Command[0], "/ko-app/")), args...)
		if step.WorkingDir != "" {
			cmd.Dir = local(step.WorkingDir)
		}
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "TMPDIR=" + t.TempDir()}
		env := step.Env
		if ts.StepTemplate != nil {
			env = append(append([]corev1.EnvVar(nil), ts.StepTemplate.Env...), env...)
		}
		for _, e := range env {
			cmd.Env = append(cmd.Env, e.Name+"="+local(e.Value))
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("step %s failed (%v) after %v:\n%s\nargs: %q", step.Name, err, time.Since(start), out.String(), args)
		}
		t.Logf("step %s ok", step.Name)
	}
	return results
}

func TestKilnBuildTask(t *testing.T) {
	for _, signed := range []bool{false, true} {
		t.Run(fmt.Sprintf("signed=%v", signed), func(t *testing.T) { testKilnBuildTask(t, signed) })
	}
}

func testKilnBuildTask(t *testing.T, signed bool) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	base, _ := name.ParseReference(reg + "/busybox:1")
	if err := remote.Write(base, busyboxImage(t)); err != nil {
		t.Fatal(err)
	}
	// The context arrives as a tarball fetched by the fetch-context step.
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	df := "ARG BASE\nFROM ${BASE}\nARG GREETING\nRUN echo \"$GREETING\" > /greeting\n"
	tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(df)), Typeflag: tar.TypeReg})
	tw.Write([]byte(df))
	tw.Close()
	tarPath := filepath.Join(t.TempDir(), "ctx.tar")
	os.WriteFile(tarPath, ctxTar.Bytes(), 0o644)

	image := reg + "/team/app:1"
	tr := &v1.TaskRun{
		ObjectMeta: metav1.ObjectMeta{Name: "kiln-build-run", Namespace: "default"},
		Spec: v1.TaskRunSpec{
			Params: v1.Params{
				{Name: "IMAGE", Value: *v1.NewStructuredValues(image)},
				{Name: "CONTEXT", Value: *v1.NewStructuredValues("src")},
				{Name: "CONTEXT_SOURCE", Value: *v1.NewStructuredValues("tar://" + tarPath)},
				{Name: "BUILD_ARGS", Value: *v1.NewStructuredValues("BASE="+reg+"/busybox:1", "GREETING=hello from tekton")},
				{Name: "EXTRA_ARGS", Value: *v1.NewStructuredValues("--insecure", "--insecure-pull", "--isolation=chroot", "--reproducible")},
			},
			Workspaces: []v1.WorkspaceBinding{{Name: "source", EmptyDir: &corev1EmptyDir}},
		},
	}
	var setup []func(func(string) string)
	if signed {
		tr.Spec.Workspaces = append(tr.Spec.Workspaces, v1.WorkspaceBinding{Name: "signing-secrets", EmptyDir: &corev1EmptyDir})
		tr.Spec.Params = append(tr.Spec.Params,
			v1.Param{Name: "SIGNING_KEY", Value: *v1.NewStructuredValues("/workspace/signing-secrets/cosign.key")},
			v1.Param{Name: "SIGNING_PASSWORD_FILE", Value: *v1.NewStructuredValues("/workspace/signing-secrets/cosign.password")},
			v1.Param{Name: "TLOG_UPLOAD", Value: *v1.NewStructuredValues("false")},
			v1.Param{Name: "SIGN_ARGS", Value: *v1.NewStructuredValues("--insecure")})
		setup = append(setup, func(ws func(string) string) {
			writeTestKey(t, ws("signing-secrets"))
		})
	}
	results := runTask(t, "../../tasks/kiln-build.yaml", tr, setup...)
	read := func(n string) string {
		b, err := os.ReadFile(filepath.Join(results, n))
		if err != nil {
			t.Fatalf("result %s: %v", n, err)
		}
		return string(b)
	}
	ref, _ := name.ParseReference(image)
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	if got := read("IMAGE_DIGEST"); got != d.String() {
		t.Errorf("IMAGE_DIGEST %s, registry %s", got, d)
	}
	if got := read("IMAGE_URL"); got != image {
		t.Errorf("IMAGE_URL %q", got)
	}
	if got := read("IMAGES"); got != reg+"/team/app@"+d.String() {
		t.Errorf("IMAGES %q", got)
	}
	if got := read("IMAGE_ARTIFACT_OUTPUTS"); !strings.Contains(got, `"uri":"`+reg+`/team/app"`) {
		t.Errorf("IMAGE_ARTIFACT_OUTPUTS %q", got)
	}
	ls, _ := img.Layers()
	rc, _ := ls[len(ls)-1].Uncompressed()
	b, _ := io.ReadAll(rc)
	if !bytes.Contains(b, []byte("hello from tekton")) {
		t.Error("the RUN's output is not in the pushed image")
	}
	// Signed runs leave cosign's signature and attestation tags.
	for _, suffix := range []string{".sig", ".att"} {
		tag, _ := name.ParseReference(reg + "/team/app:" + strings.Replace(d.String(), ":", "-", 1) + suffix)
		_, err := remote.Head(tag)
		if signed != (err == nil) {
			t.Errorf("%s present = %v, want %v", tag, err == nil, signed)
		}
	}
}

// writeTestKey writes a cosign key pair into dir with test/keygen.
func writeTestKey(t *testing.T, dir string) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	cmd := exec.Command("go", "run", "./test/keygen", "-out", dir, "-password", "tekton-test-pass")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
}

// TestReusedWorkspace runs the Task twice on one source workspace (a
// PersistentVolumeClaim kept between runs), with the Dockerfile at the
// workspace's root (DOCKERFILE relative to it, as kaniko's catalog Task
// takes it) and `COPY . /app`: the second image is the first, byte for
// byte, because no step writes into the workspace.
func TestReusedWorkspace(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	base, _ := name.ParseReference(reg + "/busybox:1")
	if err := remote.Write(base, busyboxImage(t)); err != nil {
		t.Fatal(err)
	}
	image := reg + "/team/reused:1"
	tr := &v1.TaskRun{
		ObjectMeta: metav1.ObjectMeta{Name: "kiln-build-reused", Namespace: "default"},
		Spec: v1.TaskRunSpec{
			Params: v1.Params{
				{Name: "IMAGE", Value: *v1.NewStructuredValues(image)},
				{Name: "CONTEXT", Value: *v1.NewStructuredValues("app")},
				{Name: "DOCKERFILE", Value: *v1.NewStructuredValues("build/Dockerfile")},
				{Name: "BUILD_ARGS", Value: v1.ParamValue{Type: v1.ParamTypeArray, ArrayVal: []string{"BASE=" + reg + "/busybox:1"}}},
				{Name: "EXTRA_ARGS", Value: *v1.NewStructuredValues("--insecure", "--insecure-pull", "--isolation=chroot", "--reproducible")},
			},
			Workspaces: []v1.WorkspaceBinding{{Name: "source", EmptyDir: &corev1EmptyDir}},
		},
	}
	root := t.TempDir()
	setup := func(ws func(string) string) {
		src := ws("source")
		os.MkdirAll(filepath.Join(src, "build"), 0o755)
		os.MkdirAll(filepath.Join(src, "app"), 0o755)
		os.WriteFile(filepath.Join(src, "build", "Dockerfile"), []byte("ARG BASE\nFROM ${BASE}\nCOPY . /app\n"), 0o644)
		os.WriteFile(filepath.Join(src, "app", "main.txt"), []byte("the app\n"), 0o644)
	}
	var digests []string
	for i := 0; i < 2; i++ {
		results := runTaskIn(t, root, "../../tasks/kiln-build.yaml", tr, setup)
		d, err := os.ReadFile(filepath.Join(results, "IMAGE_DIGEST"))
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, string(d))
	}
	if digests[0] != digests[1] {
		t.Errorf("the second build on the reused workspace is %s, the first %s", digests[1], digests[0])
	}
	ref, _ := name.ParseReference(image)
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	rc, _ := ls[len(ls)-1].Uncompressed()
	tr2 := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr2.Next()
		if err != nil {
			break
		}
		names = append(names, strings.TrimSuffix(h.Name, "/"))
	}
	if want := []string{"app", "app/main.txt"}; strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("COPY . /app layer holds %v, want %v", names, want)
	}
	ents, _ := os.ReadDir(filepath.Join(root, "workspace", "source"))
	for _, e := range ents {
		if e.Name() != "build" && e.Name() != "app" {
			t.Errorf("a step wrote %s into the source workspace", e.Name())
		}
	}
}
