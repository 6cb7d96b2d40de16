package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/record"
)

// gitRepo serves a bare repository (one commit: a Dockerfile and a file)
// with git http-backend, behind a token check, and returns its URL and
// commit.
func gitRepo(t *testing.T, token string) (string, string) {
	return gitRepoServer(t, token, false, nil)
}

// gitRepoServer is gitRepo over HTTPS when tls is set, committing files
// (path to content) instead of the default app/ when given.
func gitRepoServer(t *testing.T, token string, tls bool, files map[string]string) (string, string) {
	t.Helper()
	srv, commit := gitRepoHTTP(t, token, tls, files)
	return srv.URL + "/repo.git", commit
}

// gitRepoHTTP is gitRepoServer returning the server (for its certificate).
func gitRepoHTTP(t *testing.T, token string, tls bool, files map[string]string) (*httptest.Server, string) {
	t.Helper()
	gitPath, err := exec.LookPath("git")
	if err != nil {
		t.Fatalf("git is required: %v", err)
	}
	root, work := t.TempDir(), t.TempDir()
	gitc := func(dir string, args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@e", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@e", "HOME="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	gitc(work, "init", "-q", "-b", "main")
	if files == nil {
		files = map[string]string{
			"app/Dockerfile": "ARG BASE\nFROM ${BASE}\nCOPY msg.txt /msg.txt\nRUN cat /msg.txt > /ran\n",
			"app/msg.txt":    "from git\n",
		}
	}
	for p, content := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(work, p)), 0o755)
		os.WriteFile(filepath.Join(work, p), []byte(content), 0o644)
	}
	gitc(work, "add", ".")
	gitc(work, "commit", "-q", "-m", "ctx")
	commit := gitc(work, "rev-parse", "HEAD")
	gitc(root, "clone", "-q", "--bare", work, "repo.git")
	h := &cgi.Handler{Path: gitPath, Args: []string{"http-backend"}, Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pass, ok := r.BasicAuth(); !ok || pass != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(handler)
	if tls {
		srv.Close()
		srv = httptest.NewTLSServer(handler)
	}
	t.Cleanup(srv.Close)
	return srv, commit
}

func TestFetchContextAndBuildFromGit(t *testing.T) {
	const token = "glpat-e2e-secret-token"
	repo, commit := gitRepo(t, token)
	reg := imagetest.Registry(t)
	base := reg + "/busybox:git"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	env := []string{"GIT_TOKEN=" + token}

	// The pipeline way: fetch-context into a workspace, then build from it.
	ws := t.TempDir()
	results := t.TempDir()
	r := step(t, "fetch-context", env, "--context", repo+"#main#"+commit, "--dest", filepath.Join(ws, "src"),
		"--context-sub-path", "app", "--results-dir", results)
	if r.code != 0 {
		t.Fatalf("fetch-context failed:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr, token) {
		t.Error("the token appears in fetch-context's log")
	}
	var rec map[string]string
	data, _ := os.ReadFile(filepath.Join(ws, "context.json"))
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatalf("context.json: %v\n%s", err, data)
	}
	if rec["commit"] != commit || rec["source"] != repo+"#main#"+commit || !strings.HasPrefix(rec["sha256"], "sha256:") || rec["subPath"] != "app" {
		t.Errorf("record %v", rec)
	}
	if strings.Contains(string(data), token) {
		t.Error("the token appears in the record")
	}
	if got, _ := os.ReadFile(filepath.Join(results, "CHAINS-GIT_COMMIT")); string(got) != commit {
		t.Errorf("CHAINS-GIT_COMMIT = %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(results, "CHAINS-GIT_URL")); string(got) != repo {
		t.Errorf("CHAINS-GIT_URL = %q", got)
	}
	out := t.TempDir()
	r = kiln(t, nil, "--context", filepath.Join(ws, "src"), "--context-sub-path", "app", "--build-arg", "BASE="+base,
		"--insecure-pull", "--no-push", "--digest-file", filepath.Join(out, "d1"), "--reproducible", "--isolation", "chroot")
	if r.code != 0 {
		t.Fatalf("build from the fetched context failed:\n%s", r.stderr)
	}
	// The build record carries fetch-context's record of the context.
	br, err := record.Read(filepath.Join(out, "build.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ctxRec map[string]string
	json.Unmarshal(br.Context, &ctxRec)
	if ctxRec["commit"] != commit || ctxRec["chainsGitURL"] != repo {
		t.Errorf("build record context %s", br.Context)
	}

	// The kaniko way: build --context straight from git.
	dest := reg + "/kiln/fromgit:1"
	r = kiln(t, env, "--context", repo+"#refs/heads/main", "--context-sub-path", "app", "--build-arg", "BASE="+base,
		"-d", dest, "--insecure", "--insecure-pull", "--digest-file", filepath.Join(out, "d2"), "--reproducible", "--isolation", "chroot")
	if r.code != 0 {
		t.Fatalf("build --context git failed:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr, token) {
		t.Error("the token appears in the build log")
	}
	fs := imagetest.Flatten(t, pull(t, dest))
	if fs["ran"].Content != "from git\n" {
		t.Errorf("/ran = %q", fs["ran"].Content)
	}
	d1, _ := os.ReadFile(filepath.Join(out, "d1"))
	d2, _ := os.ReadFile(filepath.Join(out, "d2"))
	if string(d1) != string(d2) {
		t.Errorf("the two ways differ: %s vs %s", d1, d2)
	}

	// A wrong token fails clearly, without the token, leaving nothing.
	bad := filepath.Join(t.TempDir(), "src")
	r = step(t, "fetch-context", []string{"GIT_TOKEN=nope-not-it"}, "--context", repo, "--dest", bad)
	if r.code != 1 || strings.Contains(r.stderr, "nope-not-it") {
		t.Errorf("wrong token: exit %d\n%s", r.code, r.stderr)
	}
	mustNotExist(t, bad, filepath.Join(filepath.Dir(bad), "context.json"))
}

func TestFetchContextStdinAndHostile(t *testing.T) {
	ws := t.TempDir()
	cmd := exec.Command(filepath.Join(binDir, "fetch-context"), "--context", "tar://stdin", "--dest", filepath.Join(ws, "src"))
	cmd.Stdin = strings.NewReader(string(imagetest.Tar(imagetest.Reg("Dockerfile", "FROM scratch\n", 0o644, 0, 0))))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar://stdin: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(ws, "src", "Dockerfile")); string(b) != "FROM scratch\n" {
		t.Errorf("Dockerfile = %q", b)
	}
	evil := filepath.Join(t.TempDir(), "evil.tar")
	os.WriteFile(evil, imagetest.Tar(imagetest.Reg("ok", "x", 0o644, 0, 0), imagetest.Symlink("escape", "../../../etc")), 0o644)
	out := t.TempDir()
	r := step(t, "fetch-context", nil, "--context", "tar://"+evil, "--dest", filepath.Join(out, "src"))
	if r.code != 1 || !strings.Contains(r.stderr, `"escape"`) {
		t.Errorf("hostile archive: exit %d\n%s", r.code, r.stderr)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
	// The security issue's finding 7: a chain of links, each lexically
	// inside, that leaves the context; and --context-sub-path out of it.
	chain := filepath.Join(t.TempDir(), "chain.tar")
	os.WriteFile(chain, imagetest.Tar(imagetest.Dir("x", 0o755, 0, 0), imagetest.Symlink("x/l1", ".."), imagetest.Symlink("l2", "x/l1/..")), 0o644)
	r = step(t, "fetch-context", nil, "--context", "tar://"+chain, "--dest", filepath.Join(out, "src"))
	if r.code != 1 || !strings.Contains(r.stderr, `"l2"`) || !strings.Contains(r.stderr, "leaves the context") {
		t.Errorf("symlink chain: exit %d\n%s", r.code, r.stderr)
	}
	ok := filepath.Join(t.TempDir(), "ok.tar")
	os.WriteFile(ok, imagetest.Tar(imagetest.Reg("Dockerfile", "FROM scratch\n", 0o644, 0, 0)), 0o644)
	r = step(t, "fetch-context", nil, "--context", "tar://"+ok, "--dest", filepath.Join(out, "src"), "--context-sub-path", "../..")
	if r.code != 1 || !strings.Contains(r.stderr, "--context-sub-path") {
		t.Errorf("--context-sub-path ../..: exit %d\n%s", r.code, r.stderr)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
	r = kiln(t, nil, "--context", filepath.Join(ws, "src"), "--context-sub-path", "../..", "--no-push")
	if r.code == 0 || !strings.Contains(r.stderr, "--context-sub-path") {
		t.Errorf("build --context-sub-path ../..: exit %d\n%s", r.code, r.stderr)
	}
}

// TestBuildFromGitScheme uses kaniko's git:// form, which (as in kaniko)
// means https: the server here has a self-signed certificate, so the test
// passes --git insecure-skip-tls=true.
func TestBuildFromGitScheme(t *testing.T) {
	const token = "git-scheme-token"
	repo, commit := gitRepoServer(t, token, true, nil)
	reg := imagetest.Registry(t)
	base := reg + "/busybox:gitscheme"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	src := "git://" + strings.TrimPrefix(repo, "https://") + "#refs/heads/main#" + commit
	out := t.TempDir()
	r := kiln(t, []string{"GIT_TOKEN=" + token}, "--context", src, "--git", "insecure-skip-tls=true,depth=1",
		"--context-sub-path", "app", "--build-arg", "BASE="+base, "--insecure-pull", "--no-push",
		"--tar-path", filepath.Join(out, "img.tar"), "--isolation", "chroot")
	if r.code != 0 {
		t.Fatalf("build --context git:// failed:\n%s", r.stderr)
	}
	contains(t, r.stderr, "fetched context", commit)
	// Without skipping TLS verification the self-signed server is refused.
	r = kiln(t, []string{"GIT_TOKEN=" + token}, "--context", src, "--context-sub-path", "app",
		"--build-arg", "BASE="+base, "--insecure-pull", "--no-push")
	if r.code == 0 || !strings.Contains(r.stderr, "certificate") {
		t.Errorf("an unverified TLS server: exit %d, want a refusal naming its certificate:\n%s", r.code, r.stderr)
	}
}
