package buildcontext

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func zst(b []byte) []byte {
	var buf bytes.Buffer
	w, _ := zstd.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

var goodTar = imagetest.Tar(
	imagetest.Dir("src", 0o755, 0, 0),
	imagetest.Reg("src/main.go", "package main\n", 0o644, 1000, 1000),
	imagetest.Reg("Dockerfile", "FROM scratch\n", 0o644, 0, 0),
	imagetest.Symlink("src/link", "main.go"),
)

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFetchArchives(t *testing.T) {
	dir := t.TempDir()
	tgz := filepath.Join(dir, "ctx.tar.gz")
	os.WriteFile(tgz, gz(goodTar), 0o644)
	tzst := filepath.Join(dir, "ctx.tar.zst")
	os.WriteFile(tzst, zst(goodTar), 0o644)
	plain := filepath.Join(dir, "ctx.tar")
	os.WriteFile(plain, goodTar, 0o644)
	sum := sha256.Sum256(gz(goodTar))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ctx.tgz" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("ETag", `"v1"`)
		w.Write(gz(goodTar))
	}))
	defer srv.Close()
	var digests []string
	for _, tc := range []struct {
		src   string
		stdin []byte
		ver   string
	}{
		{src: "tar://" + tgz}, {src: "tar://" + tzst}, {src: "tar://" + plain},
		{src: "tar://stdin", stdin: gz(goodTar)},
		{src: srv.URL + "/ctx.tgz#sha256=" + hex.EncodeToString(sum[:]), ver: `"v1"`},
	} {
		dest := filepath.Join(t.TempDir(), "ctx")
		rec, err := Fetch(context.Background(), FetchOptions{Source: tc.src, Dest: dest, Stdin: bytes.NewReader(tc.stdin)})
		if err != nil {
			t.Fatalf("%s: %v", tc.src, err)
		}
		if got := readFile(t, filepath.Join(dest, "src/main.go")); got != "package main\n" {
			t.Errorf("%s: main.go = %q", tc.src, got)
		}
		if l, _ := os.Readlink(filepath.Join(dest, "src/link")); l != "main.go" {
			t.Errorf("%s: link -> %q", tc.src, l)
		}
		if rec.Version != tc.ver {
			t.Errorf("%s: version %q", tc.src, rec.Version)
		}
		// A later step running as another user reads the context.
		if st, err := os.Stat(dest); err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %s mode %v, %v: want 0755", tc.src, dest, st.Mode(), err)
		}
		digests = append(digests, rec.SHA256)
	}
	for _, d := range digests[1:] {
		if d != digests[0] || !strings.HasPrefix(d, "sha256:") {
			t.Errorf("canonical digests differ: %v", digests)
		}
	}
	// A wrong pin and a missing file fail and leave nothing.
	for src, want := range map[string]string{
		srv.URL + "/ctx.tgz#sha256=" + strings.Repeat("0", 64): "sha256 mismatch: want " + strings.Repeat("0", 64),
		srv.URL + "/missing.tgz":                               "404 Not Found",
		"tar:///nonexistent.tar":                               "open /nonexistent.tar: no such file or directory",
		"ftp://host/ctx.tgz":                                   `unknown context scheme "ftp"`,
		"s3://nokey":                                           "want scheme://bucket/path/to/context.tar.gz",
	} {
		dest := filepath.Join(t.TempDir(), "ctx")
		if _, err := Fetch(context.Background(), FetchOptions{Source: src, Dest: dest}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error saying %q", src, err, want)
		}
		if _, err := os.Stat(dest); err == nil {
			t.Errorf("%s: left %s behind", src, dest)
		}
	}
}

func TestHostileArchives(t *testing.T) {
	big := strings.Repeat("x", 2048)
	tests := []struct {
		name  string
		files []imagetest.File
		lim   Limits
		want  string
	}{
		{"traversal", []imagetest.File{imagetest.Reg("../escape", "x", 0o644, 0, 0)}, Limits{}, `"../escape": the name leaves the context`},
		{"nested traversal", []imagetest.File{imagetest.Reg("a/../../escape", "x", 0o644, 0, 0)}, Limits{}, "leaves the context"},
		{"absolute name", []imagetest.File{imagetest.Reg("/etc/evil", "x", 0o644, 0, 0)}, Limits{}, `"/etc/evil": absolute names`},
		{"symlink escaping", []imagetest.File{imagetest.Symlink("up", "../../etc")}, Limits{}, `"up": symlink to "../../etc" leaves`},
		{"absolute symlink", []imagetest.File{imagetest.Symlink("abs", "/etc/passwd")}, Limits{}, "absolute path"},
		{"symlink chain leaving", []imagetest.File{imagetest.Dir("x", 0o755, 0, 0), imagetest.Symlink("x/l1", ".."), imagetest.Symlink("l2", "x/l1/..")}, Limits{}, `"l2": symlink to "x/l1/.." leaves the context through another symlink`},
		{"symlink chain through a later link", []imagetest.File{imagetest.Symlink("a", "b/c"), imagetest.Symlink("b", "..")}, Limits{}, "leaves the context"},
		{"symlink loop", []imagetest.File{imagetest.Symlink("l1", "l2"), imagetest.Symlink("l2", "l1")}, Limits{}, "symlink loop"},
		{"write through a symlink", []imagetest.File{imagetest.Dir("d", 0o755, 0, 0), imagetest.Symlink("s", "d"), imagetest.Reg("s/f", "x", 0o644, 0, 0)}, Limits{}, "parent \"s\" is a symlink"},
		{"hard link escaping", []imagetest.File{{Path: "h", Type: '1', Link: "../../etc/passwd"}}, Limits{}, "hard link"},
		{"device", []imagetest.File{{Path: "dev/sda", Type: '4'}}, Limits{}, "device nodes"},
		{"fifo", []imagetest.File{{Path: "pipe", Type: '6'}}, Limits{}, "fifos"},
		{"too large", []imagetest.File{imagetest.Reg("a", big, 0o644, 0, 0), imagetest.Reg("b", big, 0o644, 0, 0)}, Limits{MaxBytes: 3000}, "--max-context-size"},
		{"too many files", []imagetest.File{imagetest.Reg("a", "", 0o644, 0, 0), imagetest.Reg("b", "", 0o644, 0, 0), imagetest.Reg("c", "", 0o644, 0, 0)}, Limits{MaxFiles: 2}, "--max-context-files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := filepath.Join(t.TempDir(), "evil.tar")
			os.WriteFile(src, imagetest.Tar(tt.files...), 0o644)
			parent := t.TempDir()
			dest := filepath.Join(parent, "ctx")
			_, err := Fetch(context.Background(), FetchOptions{Source: "tar://" + src, Dest: dest, Limits: tt.lim})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 0 {
				t.Errorf("left behind: %v", ents)
			}
		})
	}
}

func TestContextLinksAndSubPath(t *testing.T) {
	// Links that stay inside, dangling ones whose targets stay inside, and
	// a chain that comes back are all fine.
	src := filepath.Join(t.TempDir(), "ok.tar")
	os.WriteFile(src, imagetest.Tar(
		imagetest.Dir("x/y", 0o755, 0, 0),
		imagetest.Symlink("x/up", ".."),
		imagetest.Symlink("back", "x/up/x/y"),
		imagetest.Symlink("later", "x/not-yet"),
		imagetest.Symlink("self", "."),
	), 0o644)
	dest := filepath.Join(t.TempDir(), "ctx")
	if _, err := Fetch(context.Background(), FetchOptions{Source: "tar://" + src, Dest: dest, SubPath: "back"}); err != nil {
		t.Fatal(err)
	}
	if got, err := OpenContextDir(dest, "back"); err != nil {
		t.Errorf("OpenContextDir(back): %v", err)
	} else {
		if got.Path() != filepath.Join(dest, "x/y") {
			t.Errorf("OpenContextDir(back).Path() = %q", got.Path())
		}
		if dir, sub := got.Origin(); dir != dest || sub != "x/y" {
			t.Errorf("OpenContextDir(back).Origin() = %q, %q", dir, sub)
		}
		got.Close()
	}
	for _, sub := range []string{"../..", "/etc", "x/../../..", "missing"} {
		if _, err := OpenContextDir(dest, sub); err == nil || !strings.Contains(err.Error(), "option ContextSubPath") {
			t.Errorf("OpenContextDir(%q): %v", sub, err)
		}
		d2 := filepath.Join(t.TempDir(), "ctx")
		if _, err := Fetch(context.Background(), FetchOptions{Source: "tar://" + src, Dest: d2, SubPath: sub}); err == nil {
			t.Errorf("Fetch with --context-sub-path %q succeeded", sub)
		}
	}
}

// gitServer serves bare repositories under root with git http-backend,
// requiring Basic auth when token is set.
func gitServer(t *testing.T, root, token string) *httptest.Server {
	t.Helper()
	gitPath, err := exec.LookPath("git")
	if err != nil {
		t.Fatalf("git is required: %v", err)
	}
	h := &cgi.Handler{Path: gitPath, Args: []string{"http-backend"}, Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token != "" {
			_, pass, ok := r.BasicAuth()
			if !ok || pass != token {
				w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func run(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@e", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@e", "HOME="+dir, "GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// makeRepos creates bare repos app.git (two commits on main, a tag, a
// branch, a submodule) and lib.git under root.
func makeRepos(t *testing.T, root, base, token string) (first, second string) {
	work := t.TempDir()
	lib := filepath.Join(work, "lib")
	os.MkdirAll(lib, 0o755)
	run(t, lib, "git", "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(lib, "lib.txt"), []byte("library\n"), 0o644)
	run(t, lib, "git", "add", ".")
	run(t, lib, "git", "commit", "-q", "-m", "lib")
	run(t, root, "git", "clone", "-q", "--bare", lib, "lib.git")
	app := filepath.Join(work, "app")
	os.MkdirAll(app, 0o755)
	run(t, app, "git", "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(app, "Dockerfile"), []byte("FROM scratch\nCOPY . /\n"), 0o644)
	os.WriteFile(filepath.Join(app, "version"), []byte("1\n"), 0o644)
	run(t, app, "git", "add", ".")
	run(t, app, "git", "commit", "-q", "-m", "one")
	first = run(t, app, "git", "rev-parse", "HEAD")
	run(t, app, "git", "tag", "v1")
	auth := "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("x:"+token))
	run(t, app, "git", "-c", "http.extraHeader="+auth, "submodule", "add", "-q", base+"/lib.git", "vendor/lib")
	os.WriteFile(filepath.Join(app, "version"), []byte("2\n"), 0o644)
	run(t, app, "git", "commit", "-q", "-am", "two")
	second = run(t, app, "git", "rev-parse", "HEAD")
	run(t, app, "git", "branch", "feature", first)
	run(t, root, "git", "clone", "-q", "--bare", app, "app.git")
	return first, second
}

func TestFetchGit(t *testing.T) {
	root := t.TempDir()
	const token = "ghp_s3cr3t-token-value"
	srv := gitServer(t, root, token)
	first, second := makeRepos(t, root, srv.URL, token)
	getenv := func(k string) string {
		if k == "GIT_TOKEN" {
			return token
		}
		return ""
	}
	tests := []struct {
		name, src  string
		git        GitOptions
		wantCommit string
		version    string
		submodule  bool
	}{
		{"default branch", srv.URL + "/app.git", GitOptions{}, second, "2\n", false},
		{"branch in the URI", srv.URL + "/app.git#refs/heads/feature", GitOptions{}, first, "1\n", false},
		{"tag", srv.URL + "/app.git#v1", GitOptions{}, first, "1\n", false},
		{"pinned commit", srv.URL + "/app.git#main#" + first, GitOptions{}, first, "1\n", false},
		{"branch option, shallow, submodules", srv.URL + "/app.git", GitOptions{Branch: "main", Depth: 1, RecurseSubmodules: true}, second, "2\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "src")
			var logs bytes.Buffer
			rec, err := Fetch(context.Background(), FetchOptions{Source: tt.src, Dest: dest, Git: tt.git, Getenv: getenv, Logger: testLogger(&logs)})
			if err != nil {
				t.Fatal(err)
			}
			if rec.Commit != tt.wantCommit || rec.ChainsGitCommit != tt.wantCommit || rec.ChainsGitURL != srv.URL+"/app.git" {
				t.Errorf("record %+v, want commit %s", rec, tt.wantCommit)
			}
			if got := readFile(t, filepath.Join(dest, "version")); got != tt.version {
				t.Errorf("version %q", got)
			}
			if _, err := os.Stat(filepath.Join(dest, ".git")); err == nil {
				t.Error(".git left in the context")
			}
			_, err = os.Stat(filepath.Join(dest, "vendor/lib/lib.txt"))
			if tt.submodule != (err == nil) {
				t.Errorf("submodule present = %v, want %v", err == nil, tt.submodule)
			}
			if strings.Contains(logs.String(), token) || strings.Contains(fmt.Sprint(rec), token) {
				t.Error("the token leaked into the log or the record")
			}
		})
	}
	// Wrong token: a clear error without the token, nothing left.
	dest := filepath.Join(t.TempDir(), "src")
	_, err := Fetch(context.Background(), FetchOptions{Source: srv.URL + "/app.git", Dest: dest, Getenv: func(k string) string {
		if k == "GIT_TOKEN" {
			return "wrong-token-value"
		}
		return ""
	}})
	if err == nil || strings.Contains(err.Error(), "wrong-token-value") {
		t.Errorf("wrong token: %v", err)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Error("failed git fetch left the destination")
	}
	// A pinned commit that does not exist is refused.
	if _, err := Fetch(context.Background(), FetchOptions{Source: srv.URL + "/app.git#main#" + strings.Repeat("a", 40), Dest: filepath.Join(t.TempDir(), "x"), Getenv: getenv}); err == nil {
		t.Error("unknown commit fetched")
	}
}

func TestParseGit(t *testing.T) {
	g, _ := parseGit("git://github.com/acme/app.git#refs/heads/dev#abc123")
	if g.url != "https://github.com/acme/app.git" || g.ref != "refs/heads/dev" || g.commit != "abc123" {
		t.Errorf("%+v", g)
	}
	for src, want := range map[string]bool{"git://h/r.git": true, "https://h/r.git#main": true, "https://h/ctx.tar.gz": false, "dir:///x": false} {
		if IsGit(src) != want {
			t.Errorf("IsGit(%q) = %v", src, !want)
		}
	}
	if r := Redact("https://user:pass@h/x.tgz?token=abc&a=b"); strings.Contains(r, "pass") || strings.Contains(r, "abc") {
		t.Errorf("Redact = %s", r)
	}
	if _, err := ParseGitOptions("branch=main,depth=x"); err == nil {
		t.Error("bad depth accepted")
	}
	// Refs and commits are checked before git sees them: nothing can pass
	// as an option.
	for _, src := range []string{
		"git://h/r.git#--upload-pack=touch /tmp/pwned", "git://h/r.git#-c", "git://h/r.git#main#--exec=x",
		"git://h/r.git#a..b", "git://h/r.git#ref with space", "git://h/r.git#main#xyz", "git://h/r.git#.hidden/x",
	} {
		if _, err := parseGit(src); err == nil {
			t.Errorf("parseGit(%q) accepted", src)
		}
	}
	for _, src := range []string{"git://h/r.git#refs/pull/1/head", "git://h/r.git#v1.2.3#0123abcd", "git://h/r.git#feature/x-y_z"} {
		if _, err := parseGit(src); err != nil {
			t.Errorf("parseGit(%q): %v", src, err)
		}
	}
}

// swapWriter calls swap once the canonical tar written so far holds at:
// between the walk's look at an entry and what it reads of it next.
type swapWriter struct {
	bytes.Buffer
	at      string
	swap    func()
	swapped bool
}

func (w *swapWriter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if !w.swapped && bytes.Contains(w.Bytes(), []byte(w.at)) {
		w.swapped = true
		w.swap()
	}
	return n, err
}

// TestCanonicalTarSourceSwap performs the attack of a context changed
// while it is read (the digest, the dir:// copy): nothing outside the
// context is read, not a file's content, not a directory's names, not a
// link's target.
func TestCanonicalTarSourceSwap(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "f"), []byte("SECRET"), 0o644)
	// Named to be listed before f.
	os.WriteFile(filepath.Join(outside, "a-outside-name"), []byte("x"), 0o644)
	os.Symlink("OUTSIDE-TARGET", filepath.Join(outside, "b-link"))
	for _, tc := range []struct {
		name, at string
		// wantErr: the walk meets the link; else it goes on reading the
		// directory it holds (moved, still inside the context).
		wantErr bool
		swap    func(ctxDir string)
	}{
		{"file becomes a link", "sub/f", true, func(ctxDir string) {
			os.Remove(filepath.Join(ctxDir, "sub", "f"))
			os.Symlink(filepath.Join(outside, "f"), filepath.Join(ctxDir, "sub", "f"))
		}},
		{"directory becomes a link after its file's header", "sub/f", false, func(ctxDir string) {
			os.Rename(filepath.Join(ctxDir, "sub"), filepath.Join(ctxDir, "moved"))
			os.Symlink(outside, filepath.Join(ctxDir, "sub"))
		}},
		{"directory becomes a link before it is listed", "sub/", true, func(ctxDir string) {
			os.Rename(filepath.Join(ctxDir, "sub"), filepath.Join(ctxDir, "moved"))
			os.Symlink(outside, filepath.Join(ctxDir, "sub"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctxDir := t.TempDir()
			os.MkdirAll(filepath.Join(ctxDir, "sub"), 0o755)
			os.WriteFile(filepath.Join(ctxDir, "sub", "f"), []byte("inside"), 0o644)
			os.Symlink("inside-target", filepath.Join(ctxDir, "sub", "l"))
			w := &swapWriter{at: tc.at, swap: func() { tc.swap(ctxDir) }}
			err := writeCanonical(w, ctxDir, true)
			if !w.swapped {
				t.Fatalf("%s was never written", tc.at)
			}
			for _, leak := range []string{"SECRET", "a-outside-name", "OUTSIDE-TARGET"} {
				if bytes.Contains(w.Bytes(), []byte(leak)) {
					t.Errorf("the tar holds %s from outside the context (err %v)", leak, err)
				}
			}
			if (err != nil) != tc.wantErr {
				t.Errorf("err = %v, want an error: %v", err, tc.wantErr)
			}
		})
	}
}
