// Package tasks holds kiln's Tekton resources (the kiln-build Task and
// StepAction) and renders the catalog copy under catalog/ from them.
package tasks

//go:generate go run ./gen -out ../catalog

import (
	"embed"
	"fmt"
	"strings"
)

//go:embed kiln-build.yaml kiln-build-step.yaml catalog-README.md
var sources embed.FS

// ImagePrefix is where released step images live; the catalog names them
// with Version instead of ko:// paths.
const (
	ImagePrefix = "ghcr.io/kilnbuild/kiln"
	Version     = "0.1"
)

// header marks generated files.
const header = "# Generated from tasks/%s by `go generate ./tasks`. DO NOT EDIT.\n"

// Catalog renders the catalog, in the Tekton catalog's one-repository-per-
// resource layout: file path (relative to catalog/) to content.
func Catalog() (map[string][]byte, error) {
	out := map[string][]byte{}
	for src, dst := range map[string]string{
		"kiln-build.yaml":      "task/kiln-build/kiln-build.yaml",
		"kiln-build-step.yaml": "stepaction/kiln-build/kiln-build.yaml",
	} {
		data, err := sources.ReadFile(src)
		if err != nil {
			return nil, err
		}
		out[dst] = []byte(fmt.Sprintf(header, src) + resolve(string(data)))
	}
	readme, err := sources.ReadFile("catalog-README.md")
	if err != nil {
		return nil, err
	}
	out["task/kiln-build/README.md"] = readme
	out["task/kiln-build/samples/taskrun.yaml"] = []byte(fmt.Sprintf(header, "tasks.go") + sampleTaskRun)
	out["artifacthub-repo.yml"] = []byte(fmt.Sprintf(header, "tasks.go") + artifactHub)
	return out, nil
}

// resolve names released images instead of ko:// paths.
func resolve(s string) string {
	return strings.ReplaceAll(s, "ko://github.com/kilnbuild/kiln/cmd/", ImagePrefix+"/")
}

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

const artifactHub = `repositoryID: kilnbuild-kiln
owners:
  - name: kiln maintainers
    email: maintainers@kilnbuild.dev
`
