// Package record defines the build record the build step writes for the
// steps after it (sign, emit-results): what was built, from what, how.
package record

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"sort"
	"strings"
	"time"
)

// Build is the record of one successful build.
type Build struct {
	// Images are the destinations with the digest pushed to each.
	Images []Image `json:"images"`
	// Digest is the image's manifest digest.
	Digest string `json:"digest"`
	// MediaType is the image manifest's media type.
	MediaType string `json:"mediaType"`
	// Pushed says whether the image was pushed (not --no-push).
	Pushed bool `json:"pushed"`
	// Dockerfile is where the Dockerfile came from and its digest.
	Dockerfile File `json:"dockerfile"`
	// Context is the build context's record.
	Context json.RawMessage `json:"context,omitempty"`
	// Materials are the images the build read: FROM bases and --from
	// images, by digest.
	Materials []Material `json:"materials"`
	// BuildArgs are the --build-arg values, secrets masked.
	BuildArgs map[string]string `json:"buildArgs,omitempty"`
	// Target is the --target stage.
	Target string `json:"target,omitempty"`
	// Platform is the image's platform; for an image index, its images'
	// platforms, comma-separated.
	Platform string `json:"platform"`
	// Manifests, when Digest is an image index's, are its images, one per
	// platform.
	Manifests []Manifest `json:"manifests,omitempty"`
	// Builder is the kiln version.
	Builder string `json:"builder"`
	// StartedOn and FinishedOn bound the build.
	StartedOn  time.Time `json:"startedOn"`
	FinishedOn time.Time `json:"finishedOn"`
}

// Manifest is one platform's image in an image index.
type Manifest struct {
	Platform  string `json:"platform"`
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	// Materials are the images this platform's build read.
	Materials []Material `json:"materials,omitempty"`
}

// Image is one destination.
type Image struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
}

// File is a file and its sha256.
type File struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

// Material is an image the build read.
type Material struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
	// Use is "base" (FROM) or "copy" (COPY --from, RUN --mount from).
	Use string `json:"use"`
}

// Masked is what a masked value reads as.
const Masked = "***"

var secretName = regexp.MustCompile(`(?i)(PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|APIKEY|API_KEY|PRIVATE_KEY)`)

// MaskArgs returns build args with the values of secret-looking names, and
// of names in secretIDs, masked.
func MaskArgs(args []string, lookup func(string) (string, bool), secretIDs []string) map[string]string {
	out := map[string]string{}
	ids := map[string]bool{}
	for _, id := range secretIDs {
		ids[strings.ToUpper(id)] = true
	}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			if lookup == nil {
				continue
			}
			if v, ok = lookup(k); !ok {
				continue
			}
		}
		if secretName.MatchString(k) || ids[strings.ToUpper(k)] {
			v = Masked
		}
		out[k] = v
	}
	return out
}

// BuilderVersion is kiln's version from the binary's build information.
func BuilderVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return "kiln@" + bi.Main.Version
	}
	return "kiln@(devel)"
}

// SortMaterials orders materials and drops duplicates.
func SortMaterials(m []Material) []Material {
	sort.Slice(m, func(i, j int) bool {
		if m[i].Ref != m[j].Ref {
			return m[i].Ref < m[j].Ref
		}
		return m[i].Use < m[j].Use
	})
	var out []Material
	for i, x := range m {
		if i > 0 && x == m[i-1] {
			continue
		}
		out = append(out, x)
	}
	return out
}

// Read reads a build record.
func Read(path string) (*Build, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var b Build
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("build record %s: %w", path, err)
	}
	return &b, nil
}

// Marshal encodes a record.
func (b *Build) Marshal() ([]byte, error) { return json.MarshalIndent(b, "", "  ") }

// DefaultPath is where a build writes its record when not told: beside
// the digest file, or inside the OCI layout directory.
func DefaultPath(digestFile, layoutDir string) string {
	dir := filepath.Dir(filepath.Clean(digestFile))
	switch {
	case digestFile != "" && dir != "/dev" && !strings.HasPrefix(dir, "/dev/") && !strings.HasPrefix(dir, "/proc"):
		// Not beside /dev/termination-log (kaniko README's digest file).
		return filepath.Join(dir, "build.json")
	case layoutDir != "":
		return filepath.Join(layoutDir, "build.json")
	}
	return ""
}
