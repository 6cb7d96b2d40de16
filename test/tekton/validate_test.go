// Package tekton validates kiln's Tekton resources with tektoncd/pipeline's
// own defaulting and validation. It is a module of its own so that the
// Tekton and Knative libraries never reach a step binary's imports.
package tekton

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tektoncd/pipeline/pkg/apis/config"
	v1 "github.com/tektoncd/pipeline/pkg/apis/pipeline/v1"
	"github.com/tektoncd/pipeline/pkg/apis/pipeline/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/pkg/apis"
	"sigs.k8s.io/yaml"
)

// resource is what every Tekton kind here can do.
type resource interface {
	apis.Defaultable
	apis.Validatable
}

func newResource(kind string) resource {
	switch kind {
	case "Task":
		return &v1.Task{}
	case "StepAction":
		return &v1beta1.StepAction{}
	case "Pipeline":
		return &v1.Pipeline{}
	case "PipelineRun":
		return &v1.PipelineRun{}
	case "TaskRun":
		return &v1.TaskRun{}
	}
	return nil
}

// files lists the Tekton YAML files of the repository.
func files(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{"../../tasks", "../../catalog", "../../examples/tekton"} {
		err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) && !strings.HasSuffix(p, "artifacthub-repo.yml") {
				out = append(out, p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestResourcesValidate(t *testing.T) {
	cfg := config.FromContextOrDefaults(context.Background())
	ctx := config.ToContext(context.Background(), cfg)
	kinds := map[string]int{}
	for _, f := range files(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(data, &meta); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		want := "tekton.dev/v1"
		if meta.Kind == "StepAction" {
			want = "tekton.dev/v1beta1" // StepAction's newest version in Tekton v1.15
		}
		if meta.APIVersion != want {
			t.Errorf("%s: apiVersion %q, want %s", f, meta.APIVersion, want)
			continue
		}
		r := newResource(meta.Kind)
		if r == nil {
			t.Errorf("%s: unknown kind %q", f, meta.Kind)
			continue
		}
		if err := yaml.UnmarshalStrict(data, r); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		// The API server names generateName objects before admission.
		if o, ok := r.(metav1.Object); ok && o.GetName() == "" && o.GetGenerateName() != "" {
			o.SetName(o.GetGenerateName() + "x1y2z")
		}
		r.SetDefaults(ctx)
		if err := r.Validate(ctx); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		kinds[meta.Kind]++
	}
	for _, k := range []string{"Task", "StepAction", "Pipeline", "PipelineRun", "TaskRun"} {
		if kinds[k] == 0 {
			t.Errorf("no %s was validated", k)
		}
	}
}

// TestTaskShape checks what the kiln-build Task promises its users.
func TestTaskShape(t *testing.T) {
	data, err := os.ReadFile("../../tasks/kiln-build.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var task v1.Task
	if err := yaml.UnmarshalStrict(data, &task); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"app.kubernetes.io/version"} {
		if task.Labels[k] == "" {
			t.Errorf("label %s missing", k)
		}
	}
	for _, k := range []string{"tekton.dev/pipelines.minVersion", "tekton.dev/categories", "tekton.dev/tags", "tekton.dev/displayName", "tekton.dev/platforms"} {
		if task.Annotations[k] == "" {
			t.Errorf("annotation %s missing", k)
		}
	}
	results := map[string]bool{}
	for _, r := range task.Spec.Results {
		results[r.Name] = true
	}
	for _, r := range []string{"IMAGE_DIGEST", "IMAGE_URL", "IMAGES", "IMAGE_ARTIFACT_OUTPUTS", "CHAINS-GIT_URL", "CHAINS-GIT_COMMIT"} {
		if !results[r] {
			t.Errorf("result %s missing", r)
		}
	}
	params := map[string]v1.ParamType{}
	for _, p := range task.Spec.Params {
		params[p.Name] = p.Type
	}
	for name, typ := range map[string]v1.ParamType{"IMAGE": v1.ParamTypeString, "DOCKERFILE": v1.ParamTypeString, "CONTEXT": v1.ParamTypeString,
		"EXTRA_ARGS": v1.ParamTypeArray, "BUILDER_IMAGE": v1.ParamTypeString, "BUILD_ARGS": v1.ParamTypeArray} {
		if params[name] != typ {
			t.Errorf("param %s: type %q, want %q", name, params[name], typ)
		}
	}
	for _, s := range task.Spec.Steps {
		if len(s.Command) == 0 {
			t.Errorf("step %s sets no command (Tekton would look the entrypoint up in the registry)", s.Name)
		}
		sc := s.SecurityContext
		if sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("step %s: security context %+v", s.Name, sc)
		}
		if s.Name != "build" && (sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot) {
			t.Errorf("step %s runs as root", s.Name)
		}
	}
}
