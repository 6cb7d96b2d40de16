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
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/tektoncd/pipeline/pkg/apis/config"
	v1 "github.com/tektoncd/pipeline/pkg/apis/pipeline/v1"
	"github.com/tektoncd/pipeline/pkg/reconciler/pipelinerun/resources"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// pipelineResults are a finished PipelineRun's results: strings, and the
// arrays a matrixed task's results aggregate into.
type pipelineResults struct {
	strings map[string]string
	arrays  map[string][]string
}

// runPipeline runs a Pipeline as Tekton's controller would, one TaskRun at
// a time in the Pipeline's order: the PipelineRun's parameters applied with
// Tekton's own functions, a matrixed task fanned out with Tekton's FanOut
// (one TaskRun per combination, their results aggregated into arrays in
// combination order), earlier tasks' results substituted into later tasks'
// parameters, each TaskRun run by runTaskSpec with the Pipeline's
// workspaces shared between them. taskRef names resolve to tasksDir/NAME.yaml.
func runPipeline(t *testing.T, pipelineFile, tasksDir string, pr *v1.PipelineRun, setup ...func(workspace func(string) string)) pipelineResults {
	t.Helper()
	ctx := config.ToContext(context.Background(), config.FromContextOrDefaults(context.Background()))
	var p v1.Pipeline
	data, err := os.ReadFile(pipelineFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		t.Fatal(err)
	}
	p.SetDefaults(ctx)
	if err := p.Validate(ctx); err != nil {
		t.Fatalf("%s: %v", pipelineFile, err)
	}
	pr.SetDefaults(ctx)
	spec, err := resources.ApplyParameters(&p.Spec, pr)
	if err != nil {
		t.Fatal(err)
	}
	spec = resources.ApplyContexts(spec, p.Name, pr)

	root := t.TempDir()
	pipelineWS := func(name string) string { return filepath.Join(root, "workspace", name) }
	bound := map[string]bool{}
	// An emptyDir workspace is every TaskRun's own (it lives in the pod);
	// any other kind is one volume the TaskRuns share.
	perTaskRun := map[string]bool{}
	for _, b := range pr.Spec.Workspaces {
		bound[b.Name] = true
		perTaskRun[b.Name] = b.EmptyDir != nil
		os.MkdirAll(pipelineWS(b.Name), 0o755)
	}
	for _, f := range setup {
		f(pipelineWS)
	}
	strs := map[string]string{}
	arrays := map[string][]string{}
	done := map[string]bool{}
	for _, pt := range spec.Tasks {
		for _, dep := range pt.RunAfter {
			if !done[dep] {
				t.Fatalf("task %s runs after %s, which comes later in the Pipeline", pt.Name, dep)
			}
		}
		var ts *v1.TaskSpec
		taskName := pt.Name
		switch {
		case pt.TaskSpec != nil:
			ts = &pt.TaskSpec.TaskSpec
		case pt.TaskRef != nil:
			taskName = pt.TaskRef.Name
			var task v1.Task
			data, err := os.ReadFile(filepath.Join(tasksDir, taskName+".yaml"))
			if err != nil {
				t.Fatalf("task %s: %v", pt.Name, err)
			}
			if err := yaml.UnmarshalStrict(data, &task); err != nil {
				t.Fatal(err)
			}
			task.SetDefaults(ctx)
			if err := task.Validate(ctx); err != nil {
				t.Fatalf("task %s: %v", taskName, err)
			}
			ts = &task.Spec
		default:
			t.Fatalf("task %s has neither taskRef nor taskSpec", pt.Name)
		}
		params := pt.Params.ReplaceVariables(strs, arrays, nil)
		for _, ref := range v1.PipelineTaskResultRefs(&pt) {
			if !done[ref.PipelineTask] {
				t.Fatalf("task %s reads a result of %s, which has not run", pt.Name, ref.PipelineTask)
			}
		}
		combos := []v1.Params{nil}
		if pt.IsMatrixed() {
			m := pt.Matrix.DeepCopy()
			for i := range m.Params {
				m.Params[i].Value.ApplyReplacements(strs, arrays, nil)
			}
			combos = m.FanOut()
		}
		collected := map[string][]string{}
		for i, combo := range combos {
			var wsb []v1.WorkspaceBinding
			wsDirs := map[string]string{}
			for _, w := range pt.Workspaces {
				if bound[w.Workspace] {
					wsb = append(wsb, v1.WorkspaceBinding{Name: w.Name, EmptyDir: &corev1EmptyDir})
					wsDirs[w.Name] = pipelineWS(w.Workspace)
					if perTaskRun[w.Workspace] {
						wsDirs[w.Name] = filepath.Join(t.TempDir(), w.Name)
					}
				}
			}
			tr := &v1.TaskRun{}
			tr.Name = fmt.Sprintf("%s-%s-%d", pr.Name, pt.Name, i)
			tr.Namespace = pr.Namespace
			tr.Spec.Params = append(append(v1.Params(nil), params...), combo...)
			tr.Spec.Workspaces = wsb
			t.Logf("TaskRun %s (%s) %v", tr.Name, taskName, combo)
			results := runTaskSpec(t, taskName, ts, tr, func(name string) string { return wsDirs[name] })
			for _, r := range ts.Results {
				b, err := os.ReadFile(filepath.Join(results, r.Name))
				if err != nil {
					continue
				}
				collected[r.Name] = append(collected[r.Name], string(b))
			}
		}
		for n, vals := range collected {
			key := "tasks." + pt.Name + ".results." + n
			if pt.IsMatrixed() {
				arrays[key] = vals
			} else {
				strs[key] = vals[0]
			}
		}
		done[pt.Name] = true
	}
	out := pipelineResults{strings: map[string]string{}, arrays: map[string][]string{}}
	for _, r := range spec.Results {
		v := r.Value.DeepCopy()
		v.ApplyReplacements(strs, arrays, nil)
		if v.Type == v1.ParamTypeArray {
			out.arrays[r.Name] = v.ArrayVal
		} else {
			out.strings[r.Name] = v.StringVal
		}
		if strings.Contains(v.StringVal, "$(") {
			t.Errorf("pipeline result %s left unresolved: %s", r.Name, v.StringVal)
		}
	}
	return out
}

// TestMultiPlatformPipeline runs the kiln-build-multiplatform Pipeline end
// to end against a real registry: the kiln-build Task under a matrix over
// linux/amd64 and linux/arm64 (the arm64 RUN through qemu's binfmt_misc
// handler, which test/run registers), then kiln-index joining the two
// images pushed by digest, signing the index and both images. The index,
// each image's RUN output and platform, the results and the tags are read
// back.
func TestMultiPlatformPipeline(t *testing.T) {
	t.Run("shared claim", func(t *testing.T) { testMultiPlatformPipeline(t, false) })
	t.Run("context source", func(t *testing.T) { testMultiPlatformPipeline(t, true) })
}

// testMultiPlatformPipeline reads the context from a claim every build
// shares, or (fetch) has each build fetch a tarball into its own emptyDir.
func testMultiPlatformPipeline(t *testing.T, fetch bool) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	var adds []mutate.IndexAddendum
	for arch, path := range map[string]string{"amd64": "/bin/busybox", "arm64": "/usr/local/lib/kiln-test/busybox.arm64"} {
		adds = append(adds, mutate.IndexAddendum{Add: busyboxImageFor(t, path, arch), Descriptor: gcrv1.Descriptor{Platform: &gcrv1.Platform{OS: "linux", Architecture: arch}}})
	}
	baseRef, _ := name.ParseReference(reg + "/busybox:multi")
	if err := remote.WriteIndex(baseRef, mutate.AppendManifests(empty.Index, adds...)); err != nil {
		t.Fatal(err)
	}
	image := reg + "/team/multi:1"
	arr := func(v ...string) v1.ParamValue { return v1.ParamValue{Type: v1.ParamTypeArray, ArrayVal: v} }
	pr := &v1.PipelineRun{
		ObjectMeta: metav1.ObjectMeta{Name: "multi", Namespace: "default"},
		Spec: v1.PipelineRunSpec{
			Params: v1.Params{
				{Name: "IMAGE", Value: *v1.NewStructuredValues(image)},
				{Name: "PLATFORMS", Value: arr("linux/amd64", "linux/arm64")},
				{Name: "BUILD_ARGS", Value: arr("BASE=" + reg + "/busybox:multi")},
				{Name: "EXTRA_ARGS", Value: arr("--insecure", "--insecure-pull", "--isolation=chroot")},
				{Name: "INDEX_ARGS", Value: arr("--insecure", "--annotation=org.opencontainers.image.title=multi")},
				{Name: "SIGNING_KEY", Value: *v1.NewStructuredValues("/workspace/signing-secrets/cosign.key")},
				{Name: "SIGNING_PASSWORD_FILE", Value: *v1.NewStructuredValues("/workspace/signing-secrets/cosign.password")},
				{Name: "TLOG_UPLOAD", Value: *v1.NewStructuredValues("false")},
				{Name: "SIGN_ARGS", Value: arr("--insecure")},
			},
			Workspaces: []v1.WorkspaceBinding{
				{Name: "source", PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "src"}},
				{Name: "signing-secrets", Secret: &corev1.SecretVolumeSource{SecretName: "cosign"}},
			},
		},
	}
	df := "ARG BASE\nFROM ${BASE}\nARG TARGETARCH\nRUN uname -m > /uname && echo \"$TARGETARCH\" > /arch\n"
	if fetch {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(df)), Typeflag: tar.TypeReg})
		tw.Write([]byte(df))
		tw.Close()
		tarPath := filepath.Join(t.TempDir(), "ctx.tar")
		os.WriteFile(tarPath, buf.Bytes(), 0o644)
		pr.Spec.Params = append(pr.Spec.Params, v1.Param{Name: "CONTEXT_SOURCE", Value: *v1.NewStructuredValues("tar://" + tarPath)},
			v1.Param{Name: "CONTEXT", Value: *v1.NewStructuredValues("src")})
		pr.Spec.Workspaces[0] = v1.WorkspaceBinding{Name: "source", EmptyDir: &corev1EmptyDir}
	}
	res := runPipeline(t, "../../tasks/kiln-build-multiplatform.yaml", "../../tasks", pr, func(ws func(string) string) {
		if !fetch {
			os.WriteFile(filepath.Join(ws("source"), "Dockerfile"), []byte(df), 0o644)
		}
		writeTestKey(t, ws("signing-secrets"))
	})
	ref, _ := name.ParseReference(image)
	idx, err := remote.Index(ref)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	if res.strings["IMAGE_DIGEST"] != d.String() || res.strings["IMAGE_URL"] != image {
		t.Errorf("results %+v, index %s", res, d)
	}
	m, _ := idx.IndexManifest()
	if m.Annotations["org.opencontainers.image.title"] != "multi" || len(m.Manifests) != 2 {
		t.Fatalf("index %+v", m)
	}
	want := map[string]string{"amd64": "x86_64\n", "arm64": "aarch64\n"}
	for i, desc := range m.Manifests {
		arch := []string{"amd64", "arm64"}[i]
		if desc.Platform == nil || desc.Platform.Architecture != arch {
			t.Errorf("entry %d: %v, want linux/%s", i, desc.Platform, arch)
		}
		if got := res.arrays["PLATFORM_DIGESTS"]; len(got) != 2 || got[i] != desc.Digest.String() {
			t.Errorf("PLATFORM_DIGESTS %v, entry %d %s", got, i, desc.Digest)
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		ls, _ := img.Layers()
		rc, _ := ls[len(ls)-1].Uncompressed()
		files := map[string]string{}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			b, _ := io.ReadAll(tr)
			files[h.Name] = string(b)
		}
		if files["uname"] != want[arch] || files["arch"] != arch+"\n" {
			t.Errorf("%s: the RUN layer holds uname %q, arch %q", arch, files["uname"], files["arch"])
		}
		// Signed, each platform image as the index.
		for _, dg := range []string{desc.Digest.String(), d.String()} {
			sig, _ := name.ParseReference(reg + "/team/multi:" + strings.Replace(dg, ":", "-", 1) + ".sig")
			if _, err := remote.Head(sig); err != nil {
				t.Errorf("%s is not signed: %v", dg, err)
			}
		}
	}
	// The platform images were pushed by digest: the only tag not cosign's
	// is the index's.
	tags, _ := remote.List(ref.Context())
	for _, tag := range tags {
		if tag != "1" && !strings.HasSuffix(tag, ".sig") && !strings.HasSuffix(tag, ".att") {
			t.Errorf("unexpected tag %s", tag)
		}
	}
}
