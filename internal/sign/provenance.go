package sign

import (
	"encoding/json"
	"strings"

	"github.com/kilnbuild/kiln/internal/record"
)

// BuildType identifies kiln builds in SLSA provenance.
const BuildType = "https://kilnbuild.dev/provenance/build/v1"

// DefaultBuilderID is the SLSA builder id when none is configured.
const DefaultBuilderID = "https://kilnbuild.dev/builder/kiln-build"

type resourceDescriptor struct {
	URI    string            `json:"uri,omitempty"`
	Name   string            `json:"name,omitempty"`
	Digest map[string]string `json:"digest"`
}

// Predicate is a SLSA v1.0 provenance predicate.
type Predicate struct {
	BuildDefinition struct {
		BuildType            string               `json:"buildType"`
		ExternalParameters   map[string]any       `json:"externalParameters"`
		InternalParameters   map[string]any       `json:"internalParameters,omitempty"`
		ResolvedDependencies []resourceDescriptor `json:"resolvedDependencies"`
	} `json:"buildDefinition"`
	RunDetails struct {
		Builder struct {
			ID      string            `json:"id"`
			Version map[string]string `json:"version,omitempty"`
		} `json:"builder"`
		Metadata struct {
			InvocationID string `json:"invocationId,omitempty"`
			StartedOn    string `json:"startedOn"`
			FinishedOn   string `json:"finishedOn"`
		} `json:"metadata"`
	} `json:"runDetails"`
}

// digestMap turns "sha256:hex" into {"sha256": "hex"}.
func digestMap(d string) map[string]string {
	alg, hex, ok := strings.Cut(d, ":")
	if !ok {
		return map[string]string{}
	}
	return map[string]string{alg: hex}
}

// NewPredicate builds the provenance of a build from its record.
func NewPredicate(r *record.Build, builderID, invocationID string) Predicate {
	var p Predicate
	p.BuildDefinition.BuildType = BuildType
	ext := map[string]any{
		"dockerfile": r.Dockerfile.Path,
		"platform":   r.Platform,
	}
	if r.Target != "" {
		ext["target"] = r.Target
	}
	if len(r.BuildArgs) > 0 {
		ext["buildArgs"] = r.BuildArgs
	}
	var ctxRec struct {
		Source, SHA256, Commit string
	}
	if len(r.Context) > 0 {
		json.Unmarshal(r.Context, &ctxRec)
		ext["context"] = ctxRec.Source
	}
	p.BuildDefinition.ExternalParameters = ext
	p.BuildDefinition.InternalParameters = map[string]any{"dockerfileSha256": r.Dockerfile.SHA256}
	deps := []resourceDescriptor{}
	if ctxRec.SHA256 != "" {
		d := resourceDescriptor{URI: ctxRec.Source, Name: "context", Digest: digestMap(ctxRec.SHA256)}
		if ctxRec.Commit != "" {
			d.Digest["gitCommit"] = ctxRec.Commit
		}
		deps = append(deps, d)
	}
	for _, m := range r.Materials {
		deps = append(deps, resourceDescriptor{URI: "oci://" + m.Ref, Name: m.Use, Digest: digestMap(m.Digest)})
	}
	p.BuildDefinition.ResolvedDependencies = deps
	if builderID == "" {
		builderID = DefaultBuilderID
	}
	p.RunDetails.Builder.ID = builderID
	p.RunDetails.Builder.Version = map[string]string{"kiln": r.Builder}
	p.RunDetails.Metadata.InvocationID = invocationID
	p.RunDetails.Metadata.StartedOn = r.StartedOn.UTC().Format("2006-01-02T15:04:05Z")
	p.RunDetails.Metadata.FinishedOn = r.FinishedOn.UTC().Format("2006-01-02T15:04:05Z")
	return p
}
