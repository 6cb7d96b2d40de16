package tasks

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCatalogUpToDate fails when catalog/ differs from what go generate
// writes: the catalog is never edited by hand.
func TestCatalogUpToDate(t *testing.T) {
	files, err := Catalog(nil)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range files {
		got, err := os.ReadFile(filepath.Join("..", "catalog", p))
		if err != nil {
			t.Errorf("catalog/%s: %v (run go generate ./tasks)", p, err)
			continue
		}
		if string(got) != string(want) {
			t.Errorf("catalog/%s differs from tasks/: run go generate ./tasks", p)
		}
	}
	err = filepath.WalkDir(filepath.Join("..", "catalog"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(filepath.Join("..", "catalog"), p)
		if _, ok := files[filepath.ToSlash(rel)]; !ok {
			t.Errorf("catalog/%s is not generated from tasks/: remove it or generate it", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCatalogImages checks every image the catalog names is a released
// step image tagged with Version, pinned when the release lists its
// digest, and that a release's list is read as ko build prints it.
func TestCatalogImages(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	pins, err := ParsePins(ImagePrefix + "/build@" + d + "\n" + ImagePrefix + "/sign:" + Version + "@" + d + "\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pins   map[string]string
		pinned map[string]bool
	}{
		{nil, nil},
		{pins, map[string]bool{"build": true, "sign": true}},
	} {
		files, err := Catalog(tc.pins)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for p, data := range files {
			if !strings.HasSuffix(p, ".yaml") || strings.Contains(p, "/samples/") {
				continue
			}
			if strings.Contains(string(data), "ko://") {
				t.Errorf("%s: a ko:// path is left", p)
			}
			for _, m := range imageRef.FindAllStringSubmatch(string(data), -1) {
				step, tag, digest := m[1], m[2], m[3]
				seen[step] = true
				if _, err := os.Stat(filepath.Join("..", "cmd", step)); err != nil {
					t.Errorf("%s: image %s is no step of cmd/", p, m[0])
				}
				if tag != Version {
					t.Errorf("%s: image %s is not tagged %s", p, m[0], Version)
				}
				if (digest != "") != tc.pinned[step] || (digest != "" && digest != d) {
					t.Errorf("%s: image %s: pinned %q, want pinned=%v", p, m[0], digest, tc.pinned[step])
				}
			}
		}
		for _, step := range []string{"build", "fetch-context", "warm-cache", "sign", "emit-results", "index"} {
			if !seen[step] {
				t.Errorf("the catalog names no %s image", step)
			}
		}
	}
	for _, bad := range []string{"ghcr.io/x/build:1", "ghcr.io/x/build@sha256:12"} {
		if _, err := ParsePins(bad); err == nil {
			t.Errorf("ParsePins(%q) accepted it", bad)
		}
	}
	// Artifact Hub reads one artifacthub-repo.yml at the root of each
	// registered repository: task/ and stepaction/.
	files, _ := Catalog(nil)
	for _, p := range []string{"task/artifacthub-repo.yml", "stepaction/artifacthub-repo.yml", "stepaction/kiln-build/README.md", "task/kiln-build/README.md"} {
		if len(files[p]) == 0 {
			t.Errorf("catalog has no %s", p)
		}
	}
}

var imageRef = regexp.MustCompile(regexp.QuoteMeta(ImagePrefix) + `/([a-z-]+)(?::([^@\s"]+))?(?:@(sha256:[0-9a-f]+))?`)
