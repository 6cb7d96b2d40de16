package tasks

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCatalogUpToDate fails when catalog/ differs from what go generate
// writes: the catalog is never edited by hand.
func TestCatalogUpToDate(t *testing.T) {
	files, err := Catalog()
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
