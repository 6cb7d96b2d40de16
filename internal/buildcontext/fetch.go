package buildcontext

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/option"
)

// Record describes a fetched context, for provenance.
type Record struct {
	// Source is the context URI with credentials removed.
	Source string `json:"source"`
	// SubPath is --context-sub-path.
	SubPath string `json:"subPath,omitempty"`
	// Commit is the git commit checked out.
	Commit string `json:"commit,omitempty"`
	// Version is an object version or ETag.
	Version string `json:"version,omitempty"`
	// SHA256 is the digest of a canonical tar of the context: sorted
	// names, zero times and owners, modes and contents kept.
	SHA256 string `json:"sha256"`
	// ChainsGitURL and ChainsGitCommit are what Tekton Chains records as
	// build inputs (CHAINS-GIT_URL, CHAINS-GIT_COMMIT).
	ChainsGitURL    string `json:"chainsGitURL,omitempty"`
	ChainsGitCommit string `json:"chainsGitCommit,omitempty"`
}

// GitOptions are kaniko's --git options.
type GitOptions struct {
	Branch            string
	SingleBranch      bool
	RecurseSubmodules bool
	Depth             int
	InsecureSkipTLS   bool
}

// ParseGitOptions parses "branch=x,single-branch=true,recurse-submodules=true,depth=1".
func ParseGitOptions(s string) (GitOptions, error) {
	var g GitOptions
	if s == "" {
		return g, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return g, option.Errorf("Git", strconv.Quote(s), "want key=value pairs")
		}
		switch k {
		case "branch":
			g.Branch = v
		case "single-branch":
			g.SingleBranch = v == "true"
		case "recurse-submodules":
			g.RecurseSubmodules = v == "true"
		case "insecure-skip-tls":
			g.InsecureSkipTLS = v == "true"
		case "depth":
			if _, err := fmt.Sscan(v, &g.Depth); err != nil || g.Depth < 0 {
				return g, option.Errorf("Git", "depth="+v, "want a number")
			}
		default:
			return g, option.Errorf("Git", strconv.Quote(s), "unknown option %q", k)
		}
	}
	return g, nil
}

// FetchOptions configure Fetch.
type FetchOptions struct {
	// Source is the context URI (kaniko's forms).
	Source string
	// Dest is the directory to place the context in: it must not exist, or
	// be empty.
	Dest string
	// SubPath is --context-sub-path, recorded for the build.
	SubPath string
	Git     GitOptions
	Limits  Limits
	// Stdin serves tar://stdin.
	Stdin io.Reader
	// Getenv reads GIT_TOKEN, GIT_USERNAME and GIT_PASSWORD.
	Getenv func(string) string
	// HTTPClient fetches https contexts; nil means a default client.
	HTTPClient *http.Client
	// Retries for transient network errors, with backoff from RetryDelay.
	Retries    int
	RetryDelay time.Duration
	Logger     *slog.Logger
}

// Fetch places the context o.Source names in o.Dest and returns its
// record. Nothing is left in o.Dest unless the whole fetch succeeded.
func Fetch(ctx context.Context, o FetchOptions) (*Record, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Getenv == nil {
		o.Getenv = func(string) string { return "" }
	}
	if o.Limits == (Limits{}) {
		o.Limits = DefaultLimits
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: time.Hour}
	}
	if err := checkDest(o.Dest); err != nil {
		return nil, err
	}
	parent := filepath.Dir(o.Dest)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(o.Dest)+".kiln-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	rec := &Record{Source: Redact(o.Source), SubPath: o.SubPath}
	if err := fetchInto(ctx, o, tmp, rec); err != nil {
		return nil, err
	}
	if err := CheckLinks(tmp); err != nil {
		return nil, option.New("Context", Redact(o.Source), err)
	}
	if o.SubPath != "" {
		sub, err := OpenContextDir(tmp, o.SubPath)
		if err != nil {
			return nil, err
		}
		sub.Close()
	}
	if rec.SHA256, err = CanonicalDigest(tmp); err != nil {
		return nil, err
	}
	// MkdirTemp made tmp 0700; a later step running as another user
	// must be able to read the context (kaniko's and git's 0755).
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if err := moveInto(tmp, o.Dest); err != nil {
		return nil, err
	}
	return rec, nil
}

// OpenSubDir opens the directory --context-sub-path names inside the
// context root: a relative path that stays inside it, its symlinks
// followed inside the context, naming a directory. The root it returns
// holds that directory's handle, so nothing resolves sub again.
func OpenSubDir(root *fsroot.Root, sub string) (*fsroot.Root, error) {
	clean := path.Clean(filepath.ToSlash(sub))
	if path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
		return nil, option.Errorf("ContextSubPath", strconv.Quote(sub), "must be a path inside the context")
	}
	r, err := root.OpenRoot(clean)
	if err != nil {
		return nil, option.Errorf("ContextSubPath", strconv.Quote(sub), "not a directory in the context")
	}
	return r, nil
}

// OpenContextDir opens the context directory dir and the directory sub
// names in it ("" for dir itself) as OpenSubDir does.
func OpenContextDir(dir, sub string) (*fsroot.Root, error) {
	root, err := fsroot.Open(dir)
	if err != nil {
		return nil, option.New("Context", strconv.Quote(dir), err)
	}
	if sub == "" {
		return root, nil
	}
	defer root.Close()
	return OpenSubDir(root, sub)
}

func checkDest(dest string) error {
	if dest == "" {
		return errors.New("no destination directory")
	}
	ents, err := os.ReadDir(dest)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("destination %s: %w", dest, err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("destination %s is not empty", dest)
	}
	return nil
}

// moveInto renames the finished context into place; a destination that
// exists (a mounted workspace) gets the entries moved into it.
func moveInto(tmp, dest string) error {
	if _, err := os.Stat(dest); errors.Is(err, fs.ErrNotExist) {
		return os.Rename(tmp, dest)
	}
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.Rename(filepath.Join(tmp, e.Name()), filepath.Join(dest, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func fetchInto(ctx context.Context, o FetchOptions, dir string, rec *Record) error {
	src := o.Source
	scheme, rest, hasScheme := strings.Cut(src, "://")
	switch {
	case !hasScheme || scheme == "dir":
		return copyDir(rest, dir, o.Limits, hasScheme, src)
	case scheme == "tar":
		var r io.Reader
		if rest == "stdin" {
			if o.Stdin == nil {
				return errors.New("tar://stdin: no standard input")
			}
			r = o.Stdin
		} else {
			f, err := os.Open(rest)
			if err != nil {
				return option.New("Context", src, err)
			}
			defer f.Close()
			r = f
		}
		return extractArchive(r, dir, o.Limits)
	case IsGit(src):
		return fetchGit(ctx, o, dir, rec)
	case isAzureBlob(src, o.Getenv):
		return fetchObject(ctx, o, dir, rec, azureBlob(o, strings.SplitN(src, "#", 2)[0]), "")
	case scheme == "http" || scheme == "https":
		return fetchHTTP(ctx, o, dir, rec)
	case scheme == "s3":
		bucket, key, err := splitBucket(src, rest)
		if err != nil {
			return err
		}
		return fetchObject(ctx, o, dir, rec, s3Object(o, bucket, key), "")
	case scheme == "gs":
		bucket, key, err := splitBucket(src, rest)
		if err != nil {
			return err
		}
		return fetchObject(ctx, o, dir, rec, gcsObject(o, bucket, key), "")
	}
	return option.Errorf("Context", Redact(src), "unknown context scheme %q", scheme)
}

// IsGit reports whether a context URI names a git repository: git://, or
// an http(s) URL whose path ends in .git.
func IsGit(src string) bool {
	if strings.HasPrefix(src, "git://") || strings.HasPrefix(src, "git@") {
		return true
	}
	if !strings.HasPrefix(src, "http://") && !strings.HasPrefix(src, "https://") {
		return false
	}
	u, err := url.Parse(strings.SplitN(src, "#", 2)[0])
	return err == nil && strings.HasSuffix(u.Path, ".git")
}

// extractArchive unpacks a (possibly compressed) tar.
func extractArchive(r io.Reader, dir string, lim Limits) error {
	tr, done, err := layer.Decompress(r)
	if err != nil {
		return err
	}
	defer done()
	return Extract(tr, dir, lim)
}

// copyDir copies a local directory context (fetch-context of a path).
func copyDir(src, dir string, lim Limits, hasScheme bool, orig string) error {
	if !hasScheme {
		src = orig
	}
	fi, err := os.Stat(src)
	if err != nil {
		return option.New("Context", orig, err)
	}
	if !fi.IsDir() {
		return option.Errorf("Context", orig, "not a directory")
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(writeCanonical(pw, src, false))
	}()
	return Extract(pr, dir, lim)
}

// CanonicalDigest is the sha256 of a canonical tar of dir: names sorted,
// times and owners zeroed, modes, link targets and contents kept.
func CanonicalDigest(dir string) (string, error) {
	root, err := fsroot.Open(dir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	return CanonicalDigestOf(root)
}

// CanonicalDigestOf is CanonicalDigest of the tree root holds.
func CanonicalDigestOf(root *fsroot.Root) (string, error) {
	h := sha256.New()
	if err := writeCanonicalRoot(h, root, true); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// writeCanonical writes the canonical tar of dir to w. The tree is walked
// through handles (fsroot.Dir), never by path: nothing is followed, so a
// directory or file swapped for a link meanwhile is read as the link it
// now is, or refused, never through it.
func writeCanonical(w io.Writer, dir string, zeroTimes bool) error {
	root, err := fsroot.Open(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return writeCanonicalRoot(w, root, zeroTimes)
}

// writeCanonicalRoot is writeCanonical of the tree root holds.
func writeCanonicalRoot(w io.Writer, root *fsroot.Root, zeroTimes bool) error {
	tw := tar.NewWriter(w)
	if err := writeCanonicalDir(tw, root.Dir(), "", zeroTimes); err != nil {
		return err
	}
	return tw.Close()
}

// writeCanonicalDir writes the entries of d, whose path in the tar is rel
// ("" or ending in "/"), in name order, and those below them.
func writeCanonicalDir(tw *tar.Writer, d *fsroot.Dir, rel string, zeroTimes bool) error {
	names, err := d.ReadDir()
	if err != nil {
		return err
	}
	for _, name := range names {
		info, err := d.Lstat(name)
		if err != nil {
			return err
		}
		mode := info.Mode()
		link := ""
		switch {
		case mode&fs.ModeSymlink != 0:
			if link, err = d.Readlink(name); err != nil {
				return err
			}
		case !mode.IsDir() && !mode.IsRegular():
			continue // sockets and devices have no place in a context
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name = rel + name
		if mode.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		if zeroTimes {
			h.ModTime = time.Unix(0, 0)
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		switch {
		case mode.IsRegular():
			f, err := d.Open(name)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return err
			}
		case mode.IsDir():
			sub, err := d.OpenDirAt(name)
			if err != nil {
				return err
			}
			err = writeCanonicalDir(tw, sub, h.Name, zeroTimes)
			sub.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// Redact removes credentials (user info, tokens in queries) from a URI.
func Redact(s string) string {
	s, frag, hasFrag := strings.Cut(s, "#")
	if hasFrag {
		return redactURL(s) + "#" + frag
	}
	return redactURL(s)
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return s
	}
	u.User = nil
	q := u.Query()
	for k := range q {
		lk := strings.ToLower(k)
		if strings.Contains(lk, "token") || strings.Contains(lk, "sig") || strings.Contains(lk, "key") || strings.Contains(lk, "secret") || strings.Contains(lk, "password") {
			q.Set(k, "REDACTED")
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// retry runs fn with exponential backoff and jitter.
func retry(ctx context.Context, o FetchOptions, what string, fn func() error) error {
	delay := o.RetryDelay
	if delay == 0 {
		delay = time.Second
	}
	var err error
	for i := 0; ; i++ {
		if err = fn(); err == nil || i >= o.Retries || !transient(err) {
			return err
		}
		o.Logger.Warn("retrying", "what", what, "attempt", i+1, "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay + time.Duration(rand.Int64N(int64(delay)/2+1))):
		}
		delay *= 2
	}
}

// permanentError is a failure a retry cannot fix.
type permanentError struct{ error }

func (p permanentError) Unwrap() error { return p.error }

func transient(err error) bool {
	var p permanentError
	return !errors.As(err, &p)
}
