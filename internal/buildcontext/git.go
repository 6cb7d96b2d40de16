package buildcontext

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// gitSource is a parsed git context URI: repo#ref#commit.
type gitSource struct {
	url, ref, commit string
}

// parseGit parses kaniko's git context forms. git:// means https, as in
// kaniko; explicit http(s) URLs ending in .git are used as given.
func parseGit(src string) (gitSource, error) {
	parts := strings.Split(src, "#")
	if len(parts) > 3 {
		return gitSource{}, fmt.Errorf("--context %s: want repo#ref#commit", Redact(src))
	}
	g := gitSource{url: parts[0]}
	if len(parts) > 1 {
		g.ref = parts[1]
	}
	if len(parts) > 2 {
		g.commit = parts[2]
	}
	if rest, ok := strings.CutPrefix(g.url, "git://"); ok {
		g.url = "https://" + rest
	}
	if err := checkRef(g.ref); err != nil {
		return gitSource{}, fmt.Errorf("--context %s: ref %w", Redact(src), err)
	}
	if g.commit != "" && !commitHash.MatchString(g.commit) {
		return gitSource{}, fmt.Errorf("--context %s: commit %q is not a commit hash (4 to 64 hex digits)", Redact(src), g.commit)
	}
	if strings.HasPrefix(g.url, "-") {
		return gitSource{}, fmt.Errorf("--context %s: the repository URL may not begin with \"-\"", Redact(src))
	}
	return g, nil
}

// commitHash is a full or abbreviated SHA-1 or SHA-256 commit id.
var commitHash = regexp.MustCompile(`^[0-9a-fA-F]{4,64}$`)

// checkRef refuses what git would not take as a ref name, and anything
// it could read as an option, before git sees it (git check-ref-format's
// rules, on the ref as given: "main", "refs/tags/v1", "pull/1/head").
func checkRef(ref string) error {
	if ref == "" {
		return nil
	}
	bad := strings.HasPrefix(ref, "-") || strings.HasPrefix(ref, "/") || strings.HasSuffix(ref, "/") ||
		strings.HasSuffix(ref, ".") || strings.HasSuffix(ref, ".lock") || strings.Contains(ref, "..") ||
		strings.Contains(ref, "//") || strings.Contains(ref, "@{") || ref == "@"
	for _, r := range ref {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(" ~^:?*[\\", r) {
			bad = true
		}
	}
	for _, c := range strings.Split(ref, "/") {
		if strings.HasPrefix(c, ".") {
			bad = true
		}
	}
	if bad {
		return fmt.Errorf("%q is not a valid git ref name", ref)
	}
	return nil
}

// Chooses the git binary rather than go-git: it fetches shallow clones and
// submodules the way every git server expects, including pinned commits.
func fetchGit(ctx context.Context, o FetchOptions, dir string, rec *Record) error {
	g, err := parseGit(o.Source)
	if err != nil {
		return err
	}
	if _, err := exec.LookPath("git"); err != nil {
		return errors.New("git contexts need the git binary on PATH, and this image has none: fetch the context with the fetch-context step (its image has git) and build from that directory")
	}
	if g.ref == "" {
		if err := checkRef(o.Git.Branch); err != nil {
			return fmt.Errorf("--git branch=: %w", err)
		}
		g.ref = o.Git.Branch
	}
	home, err := os.MkdirTemp("", "kiln-git-home-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(home)
	env := gitEnv(g.url, home, o)
	git := func(args ...string) error {
		return retry(ctx, o, "git "+args[0], func() error {
			cmd := exec.CommandContext(ctx, "git", args...)
			cmd.Dir, cmd.Env = dir, env
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = io.Discard, &out
			if err := cmd.Run(); err != nil {
				msg := strings.TrimSpace(out.String())
				if u, perr := url.Parse(g.url); perr == nil && u.User != nil {
					msg = strings.ReplaceAll(msg, u.User.String(), "REDACTED")
				}
				for _, secret := range []string{o.Getenv("GIT_TOKEN"), o.Getenv("GIT_PASSWORD")} {
					if secret != "" {
						msg = strings.ReplaceAll(msg, secret, "REDACTED")
					}
				}
				err = fmt.Errorf("git %s: %v: %s", args[0], err, msg)
				if strings.Contains(msg, "not found") || strings.Contains(msg, "Authentication failed") ||
					strings.Contains(msg, "could not read Username") || strings.Contains(msg, "terminal prompts disabled") ||
					strings.Contains(msg, "certificate") ||
					strings.Contains(msg, "couldn't find remote ref") || strings.Contains(msg, "401") || strings.Contains(msg, "403") {
					return permanentError{err}
				}
				return err
			}
			return nil
		})
	}
	if err := git("init", "-q", "."); err != nil {
		return err
	}
	if err := git("remote", "add", "origin", g.url); err != nil {
		return err
	}
	depth := []string{}
	if o.Git.Depth > 0 {
		depth = []string{fmt.Sprintf("--depth=%d", o.Git.Depth)}
	}
	ref := g.ref
	if ref == "" {
		ref = "HEAD"
	}
	o.Logger.Info("fetching git context", "repository", Redact(g.url), "ref", ref, "commit", g.commit)
	switch {
	case g.commit != "":
		// Servers allow fetching a reachable commit directly; otherwise
		// fetch the ref's history and check the commit out.
		if err := git("fetch", "-q", "--depth=1", "origin", g.commit); err != nil {
			if err := git(append([]string{"fetch", "-q", "origin", ref}, depth...)...); err != nil {
				return err
			}
		}
		if err := git("checkout", "-q", "--detach", g.commit); err != nil {
			return fmt.Errorf("commit %s: %w", g.commit, err)
		}
	default:
		if err := git(append([]string{"fetch", "-q", "origin", ref}, depth...)...); err != nil {
			return err
		}
		if err := git("checkout", "-q", "--detach", "FETCH_HEAD"); err != nil {
			return err
		}
	}
	if o.Git.RecurseSubmodules {
		if err := git(append([]string{"submodule", "update", "-q", "--init", "--recursive"}, depth...)...); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, "git", "rev-parse", "HEAD")
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("git rev-parse: %w", err)
	}
	head := strings.TrimSpace(string(out))
	if g.commit != "" && !strings.HasPrefix(head, g.commit) {
		return fmt.Errorf("checked out %s, not the pinned commit %s", head, g.commit)
	}
	rec.Commit, rec.ChainsGitCommit = head, head
	rec.ChainsGitURL = Redact(g.url)
	// The context is the tree, not the repository.
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == ".git" {
			if d.IsDir() {
				if err := os.RemoveAll(p); err != nil {
					return err
				}
				return filepath.SkipDir
			}
			return os.Remove(p)
		}
		return nil
	})
}

// gitEnv is git's environment: no prompts, no user or system config, and
// credentials as an HTTP header scoped to the repository's host (never on
// the command line, so never in a process list or a log).
func gitEnv(repo, home string, o FetchOptions) []string {
	env := []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_PROTOCOL_FROM_USER=0"}
	var cfg [][2]string
	user, pass := o.Getenv("GIT_USERNAME"), o.Getenv("GIT_PASSWORD")
	if tok := o.Getenv("GIT_TOKEN"); tok != "" {
		if user == "" {
			user = "x-access-token"
		}
		pass = tok
	}
	if u, err := url.Parse(repo); err == nil && (user != "" || pass != "") {
		scope := u.Scheme + "://" + u.Host + "/"
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		cfg = append(cfg, [2]string{"http." + scope + ".extraHeader", "Authorization: Basic " + auth})
	}
	if o.Git.InsecureSkipTLS {
		cfg = append(cfg, [2]string{"http.sslVerify", "false"})
	}
	cfg = append(cfg, [2]string{"protocol.file.allow", "user"})
	env = append(env, fmt.Sprintf("GIT_CONFIG_COUNT=%d", len(cfg)))
	for i, kv := range cfg {
		env = append(env, fmt.Sprintf("GIT_CONFIG_KEY_%d=%s", i, kv[0]), fmt.Sprintf("GIT_CONFIG_VALUE_%d=%s", i, kv[1]))
	}
	return env
}
