package buildcontext

import (
	"context"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestFetchGitMore covers what kaniko's git contexts accept beyond
// TestFetchGit: an abbreviated pinned commit, git:// with
// GIT_PULL_METHOD=http, and unknown refs.
func TestFetchGitMore(t *testing.T) {
	root := t.TempDir()
	srv := gitServer(t, root, "")
	first, _ := makeRepos(t, root, srv.URL, "")
	fetch := func(src string, env map[string]string) (*Record, string, error) {
		dest := filepath.Join(t.TempDir(), "src")
		rec, err := Fetch(context.Background(), FetchOptions{Source: src, Dest: dest, Getenv: func(k string) string { return env[k] }})
		return rec, dest, err
	}
	rec, dest, err := fetch(srv.URL+"/app.git#main#"+first[:8], nil)
	if err != nil || rec.Commit != first || readFile(t, filepath.Join(dest, "version")) != "1\n" {
		t.Errorf("abbreviated commit: %+v %v", rec, err)
	}
	host := strings.TrimPrefix(srv.URL, "http://")
	rec, _, err = fetch("git://"+host+"/app.git#refs/heads/feature", map[string]string{"GIT_PULL_METHOD": "http"})
	if err != nil || rec.Commit != first {
		t.Errorf("git:// with GIT_PULL_METHOD=http: %+v %v", rec, err)
	}
	for _, src := range []string{srv.URL + "/app.git#nosuchbranch", srv.URL + "/app.git#main#" + first[:4] + "ffff", "git@github.com:acme/app.git"} {
		if _, dest, err := fetch(src, nil); err == nil {
			t.Errorf("%s fetched", src)
		} else if _, serr := os.Stat(dest); serr == nil {
			t.Errorf("%s: left %s behind", src, dest)
		}
	}
}

// TestGitSubmoduleAttacks fetches a context whose submodules point at
// another host (which must not see the context's token) and at the
// machine's own repositories (file:// and a local path, refused).
func TestGitSubmoduleAttacks(t *testing.T) {
	const token = "ghp_context-only-token"
	root := t.TempDir()
	srv := gitServer(t, root, token)

	// The other host records what it is sent.
	otherRoot := t.TempDir()
	var mu sync.Mutex
	var sawAuth []string
	gitPath, _ := exec.LookPath("git")
	h := &cgi.Handler{Path: gitPath, Args: []string{"http-backend"}, Env: []string{"GIT_PROJECT_ROOT=" + otherRoot, "GIT_HTTP_EXPORT_ALL=1"}}
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sawAuth = append(sawAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(other.Close)

	work := t.TempDir()
	lib := filepath.Join(work, "lib")
	os.MkdirAll(lib, 0o755)
	run(t, lib, "git", "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(lib, "lib.txt"), []byte("elsewhere\n"), 0o644)
	run(t, lib, "git", "add", ".")
	run(t, lib, "git", "commit", "-q", "-m", "lib")
	run(t, otherRoot, "git", "clone", "-q", "--bare", lib, "lib.git")
	// A repository on this machine a context must never read.
	secret := filepath.Join(t.TempDir(), "secret")
	os.MkdirAll(secret, 0o755)
	run(t, secret, "git", "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(secret, "key"), []byte("machine secret\n"), 0o644)
	run(t, secret, "git", "add", ".")
	run(t, secret, "git", "commit", "-q", "-m", "secret")

	mkApp := func(name, subURL string) {
		app := filepath.Join(work, name)
		os.MkdirAll(app, 0o755)
		run(t, app, "git", "init", "-q", "-b", "main")
		os.WriteFile(filepath.Join(app, "Dockerfile"), []byte("FROM scratch\n"), 0o644)
		run(t, app, "git", "add", ".")
		run(t, app, "git", "commit", "-q", "-m", "app")
		run(t, app, "git", "-c", "protocol.file.allow=always", "submodule", "add", "-q", subURL, "vendor/sub")
		run(t, app, "git", "commit", "-q", "-m", "sub")
		run(t, root, "git", "clone", "-q", "--bare", app, name+".git")
	}
	mkApp("elsewhere", other.URL+"/lib.git")
	mkApp("file", "file://"+secret)
	mkApp("path", secret)

	getenv := func(k string) string {
		if k == "GIT_TOKEN" {
			return token
		}
		return ""
	}
	fetch := func(name string) (string, error) {
		dest := filepath.Join(t.TempDir(), "src")
		_, err := Fetch(context.Background(), FetchOptions{Source: srv.URL + "/" + name + ".git", Dest: dest, Getenv: getenv,
			Git: GitOptions{RecurseSubmodules: true}})
		return dest, err
	}
	dest, err := fetch("elsewhere")
	if err != nil {
		t.Fatalf("submodule on another host: %v", err)
	}
	if got := readFile(t, filepath.Join(dest, "vendor/sub/lib.txt")); got != "elsewhere\n" {
		t.Errorf("submodule content %q", got)
	}
	mu.Lock()
	if len(sawAuth) == 0 {
		t.Error("the other host was never asked")
	}
	for _, a := range sawAuth {
		if a != "" {
			t.Errorf("the other host was sent credentials: %q", a)
		}
	}
	mu.Unlock()
	for _, name := range []string{"file", "path"} {
		dest, err := fetch(name)
		if err == nil || !strings.Contains(err.Error(), "only https and http submodules") {
			t.Errorf("%s submodule: %v", name, err)
		}
		if _, serr := os.Stat(filepath.Join(dest, "vendor/sub/key")); serr == nil {
			t.Errorf("%s submodule: the machine's repository was copied into the context", name)
		}
	}
}
