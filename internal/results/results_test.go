package results

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/internal/record"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func writeRecord(t *testing.T, dir string, mod func(*record.Build)) string {
	t.Helper()
	r := record.Build{
		Digest: digest, Pushed: true,
		Images:  []record.Image{{Ref: "registry.example.com/team/app:1.0", Digest: digest}, {Ref: "registry.example.com/team/app:latest", Digest: digest}},
		Context: json.RawMessage(`{"source":"https://git.example.com/app.git","chainsGitURL":"https://git.example.com/app.git","chainsGitCommit":"abc123"}`),
	}
	if mod != nil {
		mod(&r)
	}
	data, _ := r.Marshal()
	p := filepath.Join(dir, "build.json")
	os.WriteFile(p, data, 0o644)
	return p
}

func TestEmit(t *testing.T) {
	dir := t.TempDir()
	rec := writeRecord(t, dir, nil)
	digestFile := filepath.Join(dir, "digest")
	os.WriteFile(digestFile, []byte(digest), 0o644)
	out := t.TempDir()
	o := Options{
		BuildRecord: rec, DigestFile: digestFile,
		TektonResultsDir: filepath.Join(out, "tekton"), ArgoOutputsDir: filepath.Join(out, "argo"),
		GitLabDotenv: filepath.Join(out, "build.env"), BuildkiteMetadata: filepath.Join(out, "bk.env"), BuildkiteAnnotation: filepath.Join(out, "bk.md"),
	}
	if _, err := Emit(o); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"IMAGE_DIGEST":           digest,
		"IMAGE_URL":              "registry.example.com/team/app:1.0",
		"IMAGES":                 "registry.example.com/team/app@" + digest + ",registry.example.com/team/app@" + digest,
		"IMAGE_ARTIFACT_OUTPUTS": `{"digest":"` + digest + `","uri":"registry.example.com/team/app"}`,
		"CHAINS-GIT_URL":         "https://git.example.com/app.git",
		"CHAINS-GIT_COMMIT":      "abc123",
	}
	for _, d := range []string{"tekton", "argo"} {
		for k, v := range want {
			got, err := os.ReadFile(filepath.Join(out, d, k))
			if err != nil || string(got) != v {
				t.Errorf("%s/%s = %q, %v; want %q", d, k, got, err, v)
			}
		}
	}
	env, _ := os.ReadFile(filepath.Join(out, "build.env"))
	if !strings.Contains(string(env), "IMAGE_DIGEST="+digest+"\n") || !strings.Contains(string(env), "CHAINS_GIT_COMMIT=abc123\n") {
		t.Errorf("dotenv:\n%s", env)
	}
	md, _ := os.ReadFile(filepath.Join(out, "bk.md"))
	if !strings.Contains(string(md), "registry.example.com/team/app@"+digest) {
		t.Errorf("annotation:\n%s", md)
	}
}

func TestEmitRefuses(t *testing.T) {
	dir := t.TempDir()
	good := writeRecord(t, dir, nil)
	other := filepath.Join(dir, "other-digest")
	os.WriteFile(other, []byte("sha256:"+strings.Repeat("f", 64)), 0o644)
	bigDir := t.TempDir()
	big := writeRecord(t, bigDir, func(r *record.Build) {
		for i := 0; i < 80; i++ {
			r.Images = append(r.Images, record.Image{Ref: "registry.example.com/team/app:tag" + strings.Repeat("x", 20), Digest: digest})
		}
	})
	badDir := t.TempDir()
	bad := writeRecord(t, badDir, func(r *record.Build) { r.Images[1].Digest = "sha256:" + strings.Repeat("e", 64) })
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"no record", Options{}, "option BuildRecord: is required"},
		{"missing record", Options{BuildRecord: filepath.Join(dir, "nope.json")}, "option BuildRecord"},
		{"digest file disagrees", Options{BuildRecord: good, DigestFile: other}, "says sha256:ffff"},
		{"record disagrees with itself", Options{BuildRecord: bad}, "not " + digest},
		{"layout without the image", Options{BuildRecord: good, OCILayoutPath: t.TempDir()}, "option OCILayoutPath"},
		{"result too large", Options{BuildRecord: big, MaxResultSize: 4096}, "over the 4096-byte result limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			tc.o.TektonResultsDir = filepath.Join(out, "tekton")
			tc.o.GitLabDotenv = filepath.Join(out, "build.env")
			_, err := Emit(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("written despite the error: %v", ents)
			}
		})
	}
}
