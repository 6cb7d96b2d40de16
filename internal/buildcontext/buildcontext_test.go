package buildcontext

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExcluded(t *testing.T) {
	tests := []struct {
		name     string
		ignore   string // .dockerignore content
		specific string // Dockerfile.dockerignore content, "" for none
		excluded []string
		included []string
	}{
		{
			name:     "patterns and exceptions",
			ignore:   "*.log\nsecret/\n!keep.log\n# comment\nbuild/**/tmp\n",
			excluded: []string{"a.log", "secret", "secret/x", "build/a/b/tmp"},
			included: []string{"keep.log", "src/a.log", "main.go", "build/a/x"},
		},
		{
			name:     "dockerfile-specific file wins",
			ignore:   "*.go\n",
			specific: "*.txt\n",
			excluded: []string{"a.txt"},
			included: []string{"main.go"},
		},
		{
			name:     "no ignore file",
			included: []string{"a", "b/c"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.ignore != "" {
				os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte(tt.ignore), 0o644)
			}
			df := filepath.Join(dir, "Dockerfile")
			if tt.specific != "" {
				os.WriteFile(df+".dockerignore", []byte(tt.specific), 0o644)
			}
			c, err := Open(dir, df)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range tt.excluded {
				if !c.Excluded(p) {
					t.Errorf("%s not excluded", p)
				}
			}
			for _, p := range tt.included {
				if c.Excluded(p) {
					t.Errorf("%s excluded", p)
				}
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct{ src, want string }{
		{filepath.Join(dir, "missing"), "no such file"},
		{file, "not a directory"},
		{"s3://bucket/ctx.tgz", "not supported yet"},
	} {
		if _, err := Open(tc.src, ""); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "option Context") {
			t.Errorf("Open(%q) = %v, want %q", tc.src, err, tc.want)
		}
	}
	if c, err := Open("dir://"+dir, ""); err != nil || c.Dir != dir {
		t.Errorf("dir:// = %v, %v", c, err)
	}
}
