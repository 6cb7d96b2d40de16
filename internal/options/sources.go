package options

import (
	"maps"

	"github.com/kilnbuild/kiln/internal/option"
)

// sources names, for every option an engine's error may name
// (option.Error), the flag or environment variable a step sets it from.
// Fail and Refuse put these in the options' place, so a step's user reads
// the flag they typed. A name means one option in every step.
var sources = map[string]string{
	// build
	"Isolation": "--isolation", "UserNS": "--userns", "RunNetwork": "--run-network", "Force": "--force",
	"ImageFormat": "--image-format", "Dockerfile": "--dockerfile", "Target": "--target",
	"Destinations": "--destination", "Platform": "--custom-platform", "Platforms": "--custom-platform",
	"PreCleanup": "--pre-cleanup", "Materialize": "--materialize", "Cleanup": "--cleanup",
	"Compression": "--compression", "SnapshotMode": "--snapshot-mode", "Cache": "--cache",
	"Secrets": "--secret", "Profile": "--profile",
	"Certificates": "--registry-certificate", "ClientCertificates": "--registry-client-cert",
	// outputs
	"TarPath": "--tar-path", "OCILayoutPath": "--oci-layout-path", "DigestFile": "--digest-file",
	"ImageNameWithDigestFile": "--image-name-with-digest-file", "ImageNameTagWithDigestFile": "--image-name-tag-with-digest-file",
	"BuildRecord": "--build-record", "BuilderOutput": "$BUILDER_OUTPUT",
	// the context (build, fetch-context)
	"Context": "--context", "Git": "--git", "ContextSubPath": "--context-sub-path",
	// sign
	"Key": "--key", "IdentityTokenFile": "--identity-token-file", "RekorURL": "--rekor-url", "TlogUpload": "--tlog-upload",
	"SignedLayoutPath": "--signed-layout-path", "NoPush": "--no-push",
	// fetch-context, emit-results, warm-cache, index
	"TektonResultsDir": "--tekton-results-dir", "ArgoOutputsDir": "--argo-outputs-dir",
	"Record": "--record", "ResultsDir": "--results-dir", "GitLabDotenv": "--gitlab-dotenv",
	"BuildkiteMetadata": "--buildkite-metadata", "BuildkiteAnnotation": "--buildkite-annotation", "Images": "--image",
	// logging, every step
	"Verbosity": "--verbosity", "LogFormat": "--log-format",
}

// Named is err with its options named by their sources.
func Named(err error) error { return option.Name(err, sources) }

// Sources is a copy of the table of option sources.
func Sources() map[string]string { return maps.Clone(sources) }
