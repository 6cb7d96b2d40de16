// Package results publishes a finished build to the CI system around it:
// Tekton results (with Tekton Chains' type hints), Argo output
// parameters, a GitLab dotenv report and Buildkite meta-data and
// annotation files. It reads what the build handed over and refuses,
// writing nothing, when the inputs are missing or disagree.
package results

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/kilnbuild/kiln/internal/option"
	"github.com/kilnbuild/kiln/internal/output"
	"github.com/kilnbuild/kiln/internal/record"
)

// DefaultMaxResultSize is Tekton's default limit for one result, in bytes.
const DefaultMaxResultSize = 4096

// Options say what to read and where to write.
type Options struct {
	// BuildRecord is the build step's build.json (required).
	BuildRecord string
	// DigestFile and OCILayoutPath, when set, must agree with the record.
	DigestFile, OCILayoutPath string
	// TektonResultsDir receives IMAGE_DIGEST, IMAGE_URL, IMAGES,
	// IMAGE_ARTIFACT_OUTPUTS and, for git contexts, CHAINS-GIT_URL and
	// CHAINS-GIT_COMMIT, one file each ($(results.X.path) lives there).
	TektonResultsDir string
	// ArgoOutputsDir receives the same values as Argo output parameter
	// files.
	ArgoOutputsDir string
	// GitLabDotenv receives a dotenv report (IMAGE_DIGEST=..., ...).
	GitLabDotenv string
	// BuildkiteMetadata receives KEY=VALUE lines for buildkite-agent
	// meta-data set; BuildkiteAnnotation a Markdown annotation.
	BuildkiteMetadata, BuildkiteAnnotation string
	// MaxResultSize limits one Tekton result; 0 means the default.
	MaxResultSize int
}

// Values are the results of one build.
type Values struct {
	Digest, URL, Images, ArtifactOutputs string
	GitURL, GitCommit                    string
}

// Compute reads and checks the inputs and returns the values to publish.
func Compute(o Options) (*Values, error) {
	if o.BuildRecord == "" {
		return nil, option.Errorf("BuildRecord", "", "is required")
	}
	rec, err := record.Read(o.BuildRecord)
	if err != nil {
		return nil, option.New("BuildRecord", "", err)
	}
	if _, err := v1.NewHash(rec.Digest); err != nil {
		return nil, option.Errorf("BuildRecord", o.BuildRecord, "bad digest %q", rec.Digest)
	}
	if o.DigestFile != "" {
		data, err := os.ReadFile(o.DigestFile)
		if err != nil {
			return nil, option.New("DigestFile", "", err)
		}
		if got := strings.TrimSpace(string(data)); got != rec.Digest {
			return nil, option.Errorf("DigestFile", o.DigestFile, "says %s but the build record says %s", got, rec.Digest)
		}
	}
	if o.OCILayoutPath != "" {
		p, err := layout.FromPath(o.OCILayoutPath)
		if err != nil {
			return nil, option.New("OCILayoutPath", "", err)
		}
		// The build's image, or its image index (several platforms).
		h, _ := v1.NewHash(rec.Digest)
		found := false
		if idx, err := p.ImageIndex(); err == nil {
			if m, err := idx.IndexManifest(); err == nil {
				for _, d := range m.Manifests {
					found = found || d.Digest == h
				}
			}
		}
		if found {
			_, err = p.Bytes(h) // its manifest is there too
			found = err == nil
		}
		if !found {
			return nil, option.Errorf("OCILayoutPath", o.OCILayoutPath, "does not hold the built image %s", rec.Digest)
		}
	}
	v := &Values{Digest: rec.Digest}
	var refs []string
	var repo string
	for i, im := range rec.Images {
		if im.Digest != rec.Digest {
			return nil, fmt.Errorf("the build record gives %s the digest %s, not %s", im.Ref, im.Digest, rec.Digest)
		}
		ref, err := name.ParseReference(im.Ref)
		if err != nil {
			return nil, fmt.Errorf("the build record's image %q: %w", im.Ref, err)
		}
		if i == 0 {
			v.URL, repo = ref.Name(), ref.Context().Name()
		}
		refs = append(refs, ref.Context().Name()+"@"+rec.Digest)
	}
	v.Images = strings.Join(refs, ",")
	if repo != "" {
		data, _ := json.Marshal(map[string]string{"uri": repo, "digest": rec.Digest})
		v.ArtifactOutputs = string(data)
	}
	if len(rec.Context) > 0 {
		var c struct {
			ChainsGitURL, ChainsGitCommit string
		}
		json.Unmarshal(rec.Context, &c)
		v.GitURL, v.GitCommit = c.ChainsGitURL, c.ChainsGitCommit
	}
	return v, nil
}

// pairs are the values by result name, empty ones left out.
func (v *Values) pairs() map[string]string {
	out := map[string]string{}
	for k, val := range map[string]string{
		"IMAGE_DIGEST": v.Digest, "IMAGE_URL": v.URL, "IMAGES": v.Images,
		"IMAGE_ARTIFACT_OUTPUTS": v.ArtifactOutputs, "CHAINS-GIT_URL": v.GitURL, "CHAINS-GIT_COMMIT": v.GitCommit,
	} {
		if val != "" {
			out[k] = val
		}
	}
	return out
}

// Emit computes the values and writes every output asked for, all or
// nothing.
func Emit(o Options) (*Values, error) {
	v, err := Compute(o)
	if err != nil {
		return nil, err
	}
	max := o.MaxResultSize
	if max == 0 {
		max = DefaultMaxResultSize
	}
	pairs := v.pairs()
	keys := make([]string, 0, len(pairs))
	for k := range pairs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b output.Batch
	fail := func(err error) (*Values, error) {
		b.Abort()
		return nil, err
	}
	for _, dir := range []struct{ opt, path string }{{"TektonResultsDir", o.TektonResultsDir}, {"ArgoOutputsDir", o.ArgoOutputsDir}} {
		if dir.path == "" {
			continue
		}
		for _, k := range keys {
			if len(pairs[k]) > max {
				return fail(fmt.Errorf("result %s is %d bytes, over the %d-byte result limit", k, len(pairs[k]), max))
			}
			if err := b.Add(filepath.Join(dir.path, k), dir.opt, pairs[k]); err != nil {
				return fail(err)
			}
		}
	}
	env := func(sep string) string {
		var sb strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&sb, "%s%s%s\n", strings.ReplaceAll(k, "-", "_"), sep, pairs[k])
		}
		return sb.String()
	}
	if o.GitLabDotenv != "" {
		if err := b.Add(o.GitLabDotenv, "GitLabDotenv", env("=")); err != nil {
			return fail(err)
		}
	}
	if o.BuildkiteMetadata != "" {
		if err := b.Add(o.BuildkiteMetadata, "BuildkiteMetadata", env("=")); err != nil {
			return fail(err)
		}
	}
	if o.BuildkiteAnnotation != "" {
		var sb strings.Builder
		sb.WriteString("**Image built by kiln**\n\n")
		for _, ref := range strings.Split(v.Images, ",") {
			if ref != "" {
				fmt.Fprintf(&sb, "- `%s`\n", ref)
			}
		}
		if v.GitCommit != "" {
			fmt.Fprintf(&sb, "\nfrom %s at `%s`\n", v.GitURL, v.GitCommit)
		}
		if err := b.Add(o.BuildkiteAnnotation, "BuildkiteAnnotation", sb.String()); err != nil {
			return fail(err)
		}
	}
	if err := b.Commit(); err != nil {
		return nil, err
	}
	return v, nil
}
