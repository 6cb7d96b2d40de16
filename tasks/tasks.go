// Package tasks holds kiln's Tekton resources (the kiln-build Task and
// StepAction) and renders the catalog copy under catalog/ from them.
package tasks

//go:generate go run ./gen -out ../catalog

import (
	"embed"
	"fmt"
	"regexp"
	"strings"
)

//go:embed kiln-build.yaml kiln-build-step.yaml kiln-index.yaml kiln-build-multiplatform.yaml
//go:embed catalog-README.md stepaction-README.md index-README.md pipeline-README.md
var sources embed.FS

// ImagePrefix is where released step images live; the catalog names them
// tagged with Version (and pinned by digest at release) instead of ko://
// paths.
const (
	ImagePrefix = "ghcr.io/kilnbuild/kiln"
	Version     = "0.1"
)

// header marks generated files.
const header = "# Generated from tasks/%s by `go generate ./tasks`. DO NOT EDIT.\n"

// Catalog renders the catalog, in the Tekton catalog's one-repository-per-
// resource layout (git-based versioning: the resource's directory holds
// its YAML, README and samples), with an artifacthub-repo.yml at the root
// of each Artifact Hub repository (task/ and stepaction/ are registered
// separately, as kinds tekton-task and tekton-stepaction): file path
// (relative to catalog/) to content. pins maps a released image (ImagePrefix
// + "/" + step) to its digest; images without one are named by tag only.
func Catalog(pins map[string]string) (map[string][]byte, error) {
	out := map[string][]byte{}
	for src, dst := range map[string]string{
		"kiln-build.yaml":               "task/kiln-build/kiln-build.yaml",
		"kiln-build-step.yaml":          "stepaction/kiln-build/kiln-build.yaml",
		"kiln-index.yaml":               "task/kiln-index/kiln-index.yaml",
		"kiln-build-multiplatform.yaml": "pipeline/kiln-build-multiplatform/kiln-build-multiplatform.yaml",
	} {
		data, err := sources.ReadFile(src)
		if err != nil {
			return nil, err
		}
		out[dst] = []byte(fmt.Sprintf(header, src) + resolve(string(data), pins))
	}
	for src, dst := range map[string]string{
		"catalog-README.md":    "task/kiln-build/README.md",
		"stepaction-README.md": "stepaction/kiln-build/README.md",
		"index-README.md":      "task/kiln-index/README.md",
		"pipeline-README.md":   "pipeline/kiln-build-multiplatform/README.md",
	} {
		readme, err := sources.ReadFile(src)
		if err != nil {
			return nil, err
		}
		out[dst] = readme
	}
	out["task/kiln-build/samples/taskrun.yaml"] = []byte(fmt.Sprintf(header, "tasks.go") + sampleTaskRun)
	out["stepaction/kiln-build/samples/task.yaml"] = []byte(fmt.Sprintf(header, "tasks.go") + sampleStepActionTask)
	out["task/kiln-index/samples/taskrun.yaml"] = []byte(fmt.Sprintf(header, "tasks.go") + sampleIndexTaskRun)
	out["pipeline/kiln-build-multiplatform/samples/pipelinerun.yaml"] = []byte(fmt.Sprintf(header, "tasks.go") + samplePipelineRun)
	for _, kind := range []string{"task", "stepaction", "pipeline"} {
		out[kind+"/artifacthub-repo.yml"] = []byte(fmt.Sprintf(header, "tasks.go") + artifactHub)
	}
	return out, nil
}

// koPath is how tasks/ names kiln's step images (ko resolves it).
var koPath = regexp.MustCompile(`ko://github\.com/kilnbuild/kiln/cmd/([a-z-]+)`)

// resolve names released images, tagged and, when pins has the digest,
// pinned, instead of ko:// paths.
func resolve(s string, pins map[string]string) string {
	return koPath.ReplaceAllStringFunc(s, func(m string) string {
		repo := ImagePrefix + "/" + koPath.FindStringSubmatch(m)[1]
		ref := repo + ":" + Version
		if d := pins[repo]; d != "" {
			ref += "@" + d
		}
		return ref
	})
}

// ParsePins reads a release's image list (what `ko build` prints: one
// repo[:tag]@sha256:<hex> per line) into pins for Catalog.
func ParsePins(data string) (map[string]string, error) {
	pins := map[string]string{}
	for i, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		ref, d, ok := strings.Cut(line, "@")
		if !ok || !digestRE.MatchString(d) {
			return nil, fmt.Errorf("line %d: %q is not repo@sha256:<digest>", i+1, line)
		}
		if j := strings.LastIndex(ref, ":"); j > strings.LastIndex(ref, "/") {
			ref = ref[:j]
		}
		pins[ref] = d
	}
	return pins, nil
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

const sampleTaskRun = `apiVersion: tekton.dev/v1
kind: TaskRun
metadata:
  generateName: kiln-build-
spec:
  taskRef:
    name: kiln-build
  params:
    - name: IMAGE
      value: registry.example.com/team/app:latest
    - name: CONTEXT_SOURCE
      value: git://github.com/kilnbuild/example.git#refs/heads/main
    - name: BUILD_ARGS
      value: ["VERSION=1.0"]
  workspaces:
    - name: source
      emptyDir: {}
    - name: dockerconfig
      secret:
        secretName: registry-credentials
`

const sampleStepActionTask = `apiVersion: tekton.dev/v1
kind: Task
metadata:
  name: build-with-kiln-step
spec:
  params:
    - name: IMAGE
      type: string
  workspaces:
    - name: source
      description: The build context.
    - name: output
      description: The OCI layout and build.json (bind an emptyDir, not the source).
  steps:
    - name: build
      ref:
        name: kiln-build
      params:
        - name: IMAGE
          value: $(params.IMAGE)
        - name: CONTEXT
          value: $(workspaces.source.path)
        - name: OUTPUT
          value: $(workspaces.output.path)
`

const sampleIndexTaskRun = `apiVersion: tekton.dev/v1
kind: TaskRun
metadata:
  generateName: kiln-index-
spec:
  taskRef:
    name: kiln-index
  params:
    - name: IMAGE
      value: registry.example.com/team/app:1.0
    - name: DIGESTS
      value:
        - registry.example.com/team/app@sha256:1111111111111111111111111111111111111111111111111111111111111111
        - registry.example.com/team/app@sha256:2222222222222222222222222222222222222222222222222222222222222222
    - name: EXTRA_ARGS
      value: ["--annotation=org.opencontainers.image.source=https://github.com/kilnbuild/example"]
  workspaces:
    - name: dockerconfig
      secret:
        secretName: registry-credentials
`

// samplePipelineRun builds natively on a node of each architecture.
const samplePipelineRun = `apiVersion: tekton.dev/v1
kind: PipelineRun
metadata:
  generateName: kiln-build-multiplatform-
spec:
  pipelineRef:
    name: kiln-build-multiplatform
  params:
    - name: IMAGE
      value: registry.example.com/team/app:1.0
    - name: PLATFORMS
      value: [amd64, arm64]
    - name: CONTEXT_SOURCE
      value: git://github.com/kilnbuild/example.git#refs/heads/main
  # Each platform's build on a node of its architecture (without this, any
  # node with qemu's binfmt_misc handler builds every platform).
  taskRunSpecs:
    - pipelineTaskName: build
      podTemplate:
        nodeSelector:
          kubernetes.io/arch: $(params.PLATFORM)
  workspaces:
    # Each build fetches CONTEXT_SOURCE into its own pod's emptyDir.
    - name: source
      emptyDir: {}
    - name: dockerconfig
      secret:
        secretName: registry-credentials
`

// artifactHub is the Artifact Hub repository metadata (ownership claim;
// the repositoryID Artifact Hub assigns is added once registered).
const artifactHub = `owners:
  - name: kiln maintainers
    email: maintainers@kilnbuild.dev
`
