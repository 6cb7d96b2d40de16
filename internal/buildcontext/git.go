package buildcontext

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/go-git/go-git/v5/storage/filesystem"

	"github.com/kilnbuild/kiln/internal/option"
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
		return gitSource{}, option.Errorf("Context", Redact(src), "want repo#ref#commit")
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
		return gitSource{}, option.Errorf("Context", Redact(src), "ref %w", err)
	}
	if g.commit != "" && !commitHash.MatchString(g.commit) {
		return gitSource{}, option.Errorf("Context", Redact(src), "commit %q is not a commit hash (4 to 64 hex digits)", g.commit)
	}
	if strings.HasPrefix(g.url, "-") {
		return gitSource{}, option.Errorf("Context", Redact(src), "the repository URL may not begin with \"-\"")
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

// gitContextRef is where the fetched ref is kept in the temporary
// repository.
const gitContextRef = plumbing.ReferenceName("refs/kiln/context")

// fetchGit checks the context's commit out into dir, in process with
// go-git (no git binary: the build image has none, as kaniko's has none):
// the ref resolved as git resolves a short name, shallow when --git
// depth= says, a pinned commit fetched directly where the server allows
// it and from the ref's history otherwise, submodules when asked. The
// repository and the work tree are bound to dir (a symlink in the
// repository never leads out of it); credentials (GIT_TOKEN, or
// GIT_USERNAME and GIT_PASSWORD) go only to the repository's own scheme
// and host, never to a submodule elsewhere; submodules may only be http
// or https repositories.
func fetchGit(ctx context.Context, o FetchOptions, dir string, rec *Record) error {
	if strings.HasPrefix(o.Source, "git@") {
		return option.Errorf("Context", Redact(o.Source), "git over ssh is not supported; use git://, https:// or http:// (as kaniko)")
	}
	g, err := parseGit(o.Source)
	if err != nil {
		return err
	}
	if strings.HasPrefix(o.Source, "git://") && o.Getenv("GIT_PULL_METHOD") == "http" {
		g.url = "http://" + strings.TrimPrefix(g.url, "https://") // kaniko's GIT_PULL_METHOD
	}
	u, err := url.Parse(g.url)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return option.Errorf("Context", Redact(o.Source), "a git context is an https or http repository URL")
	}
	if g.ref == "" {
		if err := checkRef(o.Git.Branch); err != nil {
			return option.New("Git", "branch=", err)
		}
		g.ref = o.Git.Branch
	}
	c := newGitClient(ctx, o, u)
	repo, err := initRepo(dir)
	if err != nil {
		return err
	}
	if _, err := repo.CreateRemote(&gitconfig.RemoteConfig{Name: git.DefaultRemoteName, URLs: []string{g.url}}); err != nil {
		return err
	}
	ref := g.ref
	if ref == "" {
		ref = "HEAD"
	}
	o.Logger.Info("fetching git context", "repository", Redact(g.url), "ref", ref, "commit", g.commit)
	remoteRef, err := c.resolve(repo, g.url, ref)
	if err != nil {
		return err
	}
	spec := gitconfig.RefSpec("+" + remoteRef.String() + ":" + gitContextRef.String())
	var want plumbing.Hash
	switch {
	case len(g.commit) == 40 && plumbing.IsHash(g.commit):
		// Servers that allow it serve a reachable commit directly;
		// otherwise the ref's history is fetched and the commit looked up.
		want = plumbing.NewHash(strings.ToLower(g.commit))
		direct := gitconfig.RefSpec(want.String() + ":" + gitContextRef.String())
		if err := c.fetch(repo, g.url, direct, 1); err != nil {
			o.Logger.Debug("fetching the commit directly failed; fetching the ref", "error", err)
			if err := c.fetch(repo, g.url, spec, o.Git.Depth); err != nil {
				return err
			}
		}
		if _, err := repo.CommitObject(want); err != nil {
			return option.Errorf("Context", Redact(o.Source), "commit %s is not in %s's history", g.commit, ref)
		}
	case g.commit != "":
		if err := c.fetch(repo, g.url, spec, o.Git.Depth); err != nil {
			return err
		}
		if want, err = abbreviatedCommit(repo, g.commit); err != nil {
			return option.New("Context", Redact(o.Source), err)
		}
	default:
		if err := c.fetch(repo, g.url, spec, o.Git.Depth); err != nil {
			return err
		}
		if want, err = refCommit(repo, gitContextRef); err != nil {
			return option.Errorf("Context", Redact(o.Source), "%s: %w", ref, err)
		}
	}
	wt, err := repo.Worktree()
	if err != nil {
		return err
	}
	if err := wt.Checkout(&git.CheckoutOptions{Hash: want, Force: true}); err != nil {
		return option.Errorf("Context", Redact(o.Source), "checking out %s: %w", want, err)
	}
	if o.Git.RecurseSubmodules {
		if err := c.submodules(wt, g.url, o.Git.Depth, git.DefaultSubmoduleRecursionDepth); err != nil {
			return err
		}
	}
	rec.Commit, rec.ChainsGitCommit = want.String(), want.String()
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

// initRepo makes an empty repository in dir whose work tree and .git are
// bound to dir: no path the repository names, through symlinks or "..",
// reaches outside it.
func initRepo(dir string) (*git.Repository, error) {
	wt := osfs.New(dir, osfs.WithBoundOS())
	dot, err := wt.Chroot(git.GitDirName)
	if err != nil {
		return nil, err
	}
	return git.Init(filesystem.NewStorage(dot, cache.NewObjectLRUDefault()), wt)
}

// gitClient fetches with a context's options and credentials.
type gitClient struct {
	ctx        context.Context
	o          FetchOptions
	origin     string // scheme://host of the context's repository
	user, pass string
}

func newGitClient(ctx context.Context, o FetchOptions, u *url.URL) *gitClient {
	c := &gitClient{ctx: ctx, o: o, origin: u.Scheme + "://" + u.Host}
	c.user, c.pass = o.Getenv("GIT_USERNAME"), o.Getenv("GIT_PASSWORD")
	if tok := o.Getenv("GIT_TOKEN"); tok != "" {
		if c.user == "" {
			c.user = "x-access-token"
		}
		c.pass = tok
	}
	return c
}

// auth is the credentials for repository URL repo: only for the context's
// own scheme and host. Credentials in the URL itself go with the URL.
func (c *gitClient) auth(repo string) transport.AuthMethod {
	u, err := url.Parse(repo)
	if err != nil || u.Scheme+"://"+u.Host != c.origin || (c.user == "" && c.pass == "") || u.User != nil {
		return nil
	}
	return &githttp.BasicAuth{Username: c.user, Password: c.pass}
}

// resolve finds the remote ref a short name means, in git's order:
// the name itself (HEAD, refs/...), refs/<name>, refs/tags/<name>,
// refs/heads/<name>, refs/remotes/<name>.
func (c *gitClient) resolve(repo *git.Repository, repoURL, name string) (plumbing.ReferenceName, error) {
	remote, err := repo.Remote(git.DefaultRemoteName)
	if err != nil {
		return "", err
	}
	var refs []*plumbing.Reference
	err = retry(c.ctx, c.o, "git ls-remote", func() error {
		var err error
		refs, err = remote.ListContext(c.ctx, &git.ListOptions{Auth: c.auth(repoURL), InsecureSkipTLS: c.o.Git.InsecureSkipTLS})
		return c.classify(err)
	})
	if err != nil {
		return "", fmt.Errorf("git ls-remote %s: %w", Redact(repoURL), err)
	}
	byName := map[plumbing.ReferenceName]*plumbing.Reference{}
	for _, r := range refs {
		byName[r.Name()] = r
	}
	for _, cand := range []string{name, "refs/" + name, "refs/tags/" + name, "refs/heads/" + name, "refs/remotes/" + name} {
		r, ok := byName[plumbing.ReferenceName(cand)]
		if !ok || (cand == name && name != "HEAD" && !strings.HasPrefix(name, "refs/")) {
			continue
		}
		if r.Type() == plumbing.SymbolicReference {
			return r.Target(), nil
		}
		return r.Name(), nil
	}
	return "", permanentError{fmt.Errorf("%s has no ref %q", Redact(repoURL), name)}
}

// fetch fetches spec from the origin of repo (at repoURL), with retries
// for transient failures.
func (c *gitClient) fetch(repo *git.Repository, repoURL string, spec gitconfig.RefSpec, depth int) error {
	err := retry(c.ctx, c.o, "git fetch", func() error {
		err := repo.FetchContext(c.ctx, &git.FetchOptions{
			RemoteName: git.DefaultRemoteName, RefSpecs: []gitconfig.RefSpec{spec}, Depth: depth,
			Auth: c.auth(repoURL), InsecureSkipTLS: c.o.Git.InsecureSkipTLS, Tags: git.NoTags,
		})
		if errors.Is(err, git.NoErrAlreadyUpToDate) {
			return nil
		}
		return c.classify(err)
	})
	if err != nil {
		return fmt.Errorf("git fetch %s %s: %w", Redact(repoURL), spec.Src(), err)
	}
	return nil
}

// classify marks failures a retry cannot fix as permanent, with the
// credentials removed from the message.
func (c *gitClient) classify(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	for _, secret := range []string{c.pass, c.o.Getenv("GIT_TOKEN"), c.o.Getenv("GIT_PASSWORD")} {
		if secret != "" {
			msg = strings.ReplaceAll(msg, secret, "REDACTED")
		}
	}
	clean := errors.New(msg)
	var cert *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	var ns git.NoMatchingRefSpecError
	switch {
	case errors.Is(err, transport.ErrAuthenticationRequired), errors.Is(err, transport.ErrAuthorizationFailed),
		errors.Is(err, transport.ErrRepositoryNotFound), errors.Is(err, transport.ErrInvalidAuthMethod),
		errors.As(err, &cert), errors.As(err, &unknownAuthority), errors.As(err, &ns),
		strings.Contains(msg, "not our ref"), strings.Contains(msg, "not valid"):
		return permanentError{clean}
	}
	return clean
}

// submodules checks out the work tree's submodules at the commits it
// records, levels deep: each from its http(s) URL (a relative one taken
// from parentURL), with credentials only on the context's own host.
func (c *gitClient) submodules(wt *git.Worktree, parentURL string, depth int, levels git.SubmoduleRescursivity) error {
	if levels == git.NoRecurseSubmodules {
		return nil
	}
	subs, err := wt.Submodules()
	if err != nil {
		return fmt.Errorf("submodules: %w", err)
	}
	for _, s := range subs {
		cfg := s.Config()
		subURL, err := submoduleURL(parentURL, cfg.URL)
		if err != nil {
			return fmt.Errorf("submodule %s: %w", cfg.Path, err)
		}
		cfg.URL = subURL
		if err := s.Init(); err != nil && !errors.Is(err, git.ErrSubmoduleAlreadyInitialized) {
			return fmt.Errorf("submodule %s: %w", cfg.Path, err)
		}
		st, err := s.Status()
		if err != nil {
			return fmt.Errorf("submodule %s: %w", cfg.Path, err)
		}
		r, err := s.Repository()
		if err != nil {
			return fmt.Errorf("submodule %s: %w", cfg.Path, err)
		}
		c.o.Logger.Info("fetching git submodule", "path", cfg.Path, "repository", Redact(subURL), "commit", st.Expected.String())
		direct := gitconfig.RefSpec(st.Expected.String() + ":" + gitContextRef.String())
		if err := c.fetch(r, subURL, direct, depth); err != nil {
			// A server that refuses fetching by commit: its branches.
			all := gitconfig.RefSpec("+refs/heads/*:refs/remotes/origin/*")
			if err := c.fetch(r, subURL, all, depth); err != nil {
				return fmt.Errorf("submodule %s: %w", cfg.Path, err)
			}
		}
		swt, err := r.Worktree()
		if err != nil {
			return err
		}
		if err := swt.Checkout(&git.CheckoutOptions{Hash: st.Expected, Force: true}); err != nil {
			return fmt.Errorf("submodule %s: checking out %s: %w", cfg.Path, st.Expected, err)
		}
		if err := c.submodules(swt, subURL, depth, levels-1); err != nil {
			return err
		}
	}
	return nil
}

// submoduleURL is a .gitmodules URL made absolute (a relative one, ./x or
// ../x, against parent, as git resolves it), refused unless https or
// http: a file:// or local path would copy the machine's repositories
// into the context, ssh would use the machine's keys.
func submoduleURL(parent, raw string) (string, error) {
	if strings.HasPrefix(raw, "./") || strings.HasPrefix(raw, "../") {
		p, err := url.Parse(parent)
		if err != nil {
			return "", err
		}
		p.Path = path.Join(p.Path, raw)
		return p.String(), nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("URL %q: only https and http submodules are fetched", Redact(raw))
	}
	return raw, nil
}

// refCommit is the commit a fetched ref names (through an annotated tag).
func refCommit(repo *git.Repository, name plumbing.ReferenceName) (plumbing.Hash, error) {
	ref, err := repo.Reference(name, true)
	if err != nil {
		return plumbing.ZeroHash, err
	}
	if _, err := repo.CommitObject(ref.Hash()); err == nil {
		return ref.Hash(), nil
	}
	tag, err := repo.TagObject(ref.Hash())
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("%s is neither a commit nor a tag", ref.Hash())
	}
	c, err := tag.Commit()
	if err != nil {
		return plumbing.ZeroHash, err
	}
	return c.Hash, nil
}

// abbreviatedCommit finds the commit whose hash starts with prefix in the
// fetched ref's history.
func abbreviatedCommit(repo *git.Repository, prefix string) (plumbing.Hash, error) {
	tip, err := refCommit(repo, gitContextRef)
	if err != nil {
		return plumbing.ZeroHash, err
	}
	prefix = strings.ToLower(prefix)
	iter, err := repo.Log(&git.LogOptions{From: tip})
	if err != nil {
		return plumbing.ZeroHash, err
	}
	defer iter.Close()
	var found []plumbing.Hash
	err = iter.ForEach(func(c *object.Commit) error {
		if strings.HasPrefix(c.Hash.String(), prefix) {
			found = append(found, c.Hash)
		}
		return nil
	})
	if err != nil && !errors.Is(err, plumbing.ErrObjectNotFound) { // a shallow history ends
		return plumbing.ZeroHash, err
	}
	switch len(found) {
	case 0:
		return plumbing.ZeroHash, fmt.Errorf("commit %s is not in the ref's history", prefix)
	case 1:
		return found[0], nil
	}
	return plumbing.ZeroHash, fmt.Errorf("commit %s is ambiguous: %d commits start with it", prefix, len(found))
}
