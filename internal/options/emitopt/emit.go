package emitopt

import (
	"github.com/kilnbuild/kiln/internal/options"
	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/results"
)

// EmitResults holds the emit-results step's flags.
type EmitResults struct {
	Results results.Options
	Log     options.LogFlags
}

// AddFlags registers the emit-results flags.
func (e *EmitResults) AddFlags(fs *pflag.FlagSet) {
	r := &e.Results
	fs.StringVar(&r.BuildRecord, "build-record", "", "The build record (build.json) the build step wrote. Required.")
	fs.StringVar(&r.DigestFile, "digest-file", "", "The build's --digest-file; must agree with the record.")
	fs.StringVar(&r.OCILayoutPath, "oci-layout-path", "", "The build's --oci-layout-path; must hold the built image.")
	fs.StringVar(&r.TektonResultsDir, "tekton-results-dir", "", "Write Tekton results here (IMAGE_DIGEST, IMAGE_URL, IMAGES, IMAGE_ARTIFACT_OUTPUTS, CHAINS-GIT_URL, CHAINS-GIT_COMMIT), e.g. /tekton/results.")
	fs.StringVar(&r.ArgoOutputsDir, "argo-outputs-dir", "", "Write Argo output parameter files here.")
	fs.StringVar(&r.GitLabDotenv, "gitlab-dotenv", "", "Write a GitLab dotenv report (artifacts:reports:dotenv) here.")
	fs.StringVar(&r.BuildkiteMetadata, "buildkite-metadata", "", "Write KEY=VALUE lines for buildkite-agent meta-data set here.")
	fs.StringVar(&r.BuildkiteAnnotation, "buildkite-annotation", "", "Write a Markdown annotation for buildkite-agent annotate here.")
	fs.IntVar(&r.MaxResultSize, "max-result-size", results.DefaultMaxResultSize, "Largest Tekton result allowed, in bytes.")
	e.Log.AddFlags(fs)
}
