// Package registry talks to container registries for kiln: keychains,
// per-registry TLS and plain-HTTP settings, mirrors, registry maps and
// retries, on top of go-containerregistry's remote package.
package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/kilnbuild/kiln/internal/logging"
	"github.com/kilnbuild/kiln/internal/option"
)

// Options configures a Client. The zero value talks TLS to every registry
// anonymously.
type Options struct {
	// Keychain resolves credentials; nil means anonymous.
	Keychain authn.Keychain
	// Insecure allows plain HTTP for pushes (--insecure).
	Insecure bool
	// InsecurePull allows plain HTTP for pulls (--insecure-pull).
	InsecurePull bool
	// InsecureRegistries allow plain HTTP for both (--insecure-registry).
	InsecureRegistries []string
	// SkipTLSVerify skips certificate checks for pushes (--skip-tls-verify).
	SkipTLSVerify bool
	// SkipTLSVerifyPull skips them for pulls (--skip-tls-verify-pull).
	SkipTLSVerifyPull bool
	// SkipTLSVerifyRegistries skip them per registry.
	SkipTLSVerifyRegistries []string
	// Certificates maps a registry to a CA bundle file (--registry-certificate).
	Certificates map[string]string
	// ClientCertificates maps a registry to "cert.pem,key.pem" (--registry-client-cert).
	ClientCertificates map[string]string
	// Mirrors are tried, in order, for Docker Hub images (--registry-mirror).
	Mirrors []string
	// Map rewrites registries or repository prefixes for pulls (--registry-map).
	Map map[string][]string
	// SkipDefaultRegistryFallback fails when no mirror or mapped registry has
	// the image instead of falling back to the original.
	SkipDefaultRegistryFallback bool
	// PushRetry and PullRetry are retry counts with exponential backoff.
	PushRetry, PullRetry int
	// RetryDelay is the first backoff delay; 0 means one second.
	RetryDelay time.Duration
	// IdleTimeout fails a connection that moves no data for this long (a
	// stalled registry); 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Platform selects an image from an index.
	Platform v1.Platform
	// UserAgent is sent with every request.
	UserAgent string
	// Logger receives progress and warnings.
	Logger *slog.Logger
}

// Client pulls and pushes images.
type Client struct {
	o         Options
	pushTr    http.RoundTripper
	pullTr    http.RoundTripper
	log       *slog.Logger
	keychain  authn.Keychain
	userAgent string
}

// New validates o and returns a Client.
func New(o Options) (*Client, error) {
	c := &Client{o: o, log: o.Logger, keychain: o.Keychain, userAgent: o.UserAgent}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.keychain == nil {
		c.keychain = authn.NewMultiKeychain()
	}
	if c.userAgent == "" {
		c.userAgent = "kiln"
	}
	var err error
	if c.pushTr, err = o.transport(o.SkipTLSVerify); err != nil {
		return nil, err
	}
	if c.pullTr, err = o.transport(o.SkipTLSVerifyPull); err != nil {
		return nil, err
	}
	return c, nil
}

// DefaultIdleTimeout is how long a registry connection may move no data
// before it fails.
const DefaultIdleTimeout = 2 * time.Minute

// idleConn is a connection whose every read and write must make progress
// within idle: a registry that accepts a connection and then stalls
// (during the upload, or before answering) fails it instead of hanging
// the build.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(b []byte) (int, error) {
	c.Conn.SetDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(b)
}

func (c *idleConn) Write(b []byte) (int, error) {
	c.Conn.SetDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(b)
}

// transport returns a RoundTripper choosing TLS settings by registry host.
func (o Options) transport(skipVerifyAll bool) (http.RoundTripper, error) {
	idle := o.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &idleConn{Conn: c, idle: idle}, nil
	}
	base := func() *http.Transport {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		t.DialContext = dial
		t.TLSHandshakeTimeout = min(idle, 30*time.Second)
		return t
	}
	hosts := map[string]*http.Transport{}
	get := func(reg string) *http.Transport {
		if t, ok := hosts[reg]; ok {
			return t
		}
		t := base()
		hosts[reg] = t
		return t
	}
	for reg, file := range o.Certificates {
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, option.New("Certificates", reg+"="+file, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, option.Errorf("Certificates", reg+"="+file, "no PEM certificate in the file")
		}
		get(reg).TLSClientConfig.RootCAs = pool
	}
	for reg, pair := range o.ClientCertificates {
		certFile, keyFile, ok := strings.Cut(pair, ",")
		if !ok {
			return nil, option.Errorf("ClientCertificates", reg+"="+pair, "want registry=cert.pem,key.pem")
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, option.New("ClientCertificates", reg, err)
		}
		get(reg).TLSClientConfig.Certificates = []tls.Certificate{cert}
	}
	for _, reg := range o.SkipTLSVerifyRegistries {
		get(reg).TLSClientConfig.InsecureSkipVerify = true
	}
	def := base()
	if skipVerifyAll {
		def.TLSClientConfig.InsecureSkipVerify = true
		for _, t := range hosts {
			t.TLSClientConfig.InsecureSkipVerify = true
		}
	}
	return &hostTransport{hosts: hosts, def: def}, nil
}

// hostTransport sends each request through the transport of its host.
type hostTransport struct {
	hosts map[string]*http.Transport
	def   *http.Transport
}

func (h *hostTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t, ok := h.hosts[r.URL.Host]; ok {
		return t.RoundTrip(r)
	}
	if host, _, err := net.SplitHostPort(r.URL.Host); err == nil {
		if t, ok := h.hosts[host]; ok {
			return t.RoundTrip(r)
		}
	}
	return h.def.RoundTrip(r)
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// RemoteOptions are the client's options for pushes, for code that talks
// to registries through go-containerregistry directly (cosign).
func (c *Client) RemoteOptions() []remote.Option {
	return []remote.Option{
		remote.WithAuthFromKeychain(c.keychain), remote.WithTransport(c.pushTr), remote.WithUserAgent(c.userAgent),
	}
}

// ParseReference parses s, allowing plain HTTP where the options say so
// for a pull (push false) or a push.
func (c *Client) ParseReference(s string, push bool) (name.Reference, error) {
	ref, err := name.ParseReference(s)
	if err != nil {
		return nil, fmt.Errorf("parsing reference %q: %w", s, err)
	}
	if err := CheckRepository(ref.Context().RepositoryStr()); err != nil {
		return nil, fmt.Errorf("parsing reference %q: %w", s, err)
	}
	insecure := contains(c.o.InsecureRegistries, ref.Context().RegistryStr()) ||
		(push && c.o.Insecure) || (!push && c.o.InsecurePull)
	if insecure {
		return name.ParseReference(s, name.Insecure)
	}
	return ref, nil
}

func (c *Client) options(ctx context.Context, push bool, platform v1.Platform) []remote.Option {
	tr := c.pullTr
	if push {
		tr = c.pushTr
	}
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(c.keychain),
		remote.WithTransport(tr),
		remote.WithPlatform(platform),
		remote.WithUserAgent(c.userAgent),
	}
}

// Pull fetches the image ref names for the client's platform, trying
// registry maps and mirrors first where they apply.
func (c *Client) Pull(ctx context.Context, ref string) (v1.Image, error) {
	return c.PullPlatform(ctx, ref, c.o.Platform)
}

// PullPlatform is Pull for the given platform (FROM --platform).
func (c *Client) PullPlatform(ctx context.Context, ref string, platform v1.Platform) (v1.Image, error) {
	candidates, err := c.pullCandidates(ref)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, cand := range candidates {
		var img v1.Image
		err := c.retry(ctx, c.o.PullRetry, "pulling "+cand, func() error {
			r, err := c.ParseReference(cand, false)
			if err != nil {
				return err
			}
			desc, err := remote.Get(r, c.options(ctx, false, platform)...)
			if err != nil {
				return err
			}
			if desc.MediaType.IsIndex() {
				if err := hasPlatform(desc, platform); err != nil {
					return permanent{err}
				}
			}
			img, err = desc.Image()
			if err != nil {
				return err
			}
			// Fetch the config now so a broken image fails here, and refuse
			// an image of another platform (a single-platform image is
			// served whatever platform is asked for): never mislabelled.
			cf, err := img.ConfigFile()
			if err != nil {
				return err
			}
			if have := cf.Platform(); have != nil && platform.Architecture != "" && !have.Satisfies(platform) {
				return permanent{fmt.Errorf("the image is for %s only, not %s: a base must have the platform it is built for", have, &platform)}
			}
			return nil
		})
		if err == nil {
			if cand != ref {
				c.log.Info("pulled through mirror", "image", ref, "from", cand)
			}
			return img, nil
		}
		c.log.Debug("pull failed", "image", cand, "error", err)
		if r, perr := name.ParseReference(cand); perr == nil {
			err = c.authHint(err, r.Context().RegistryStr())
		}
		errs = append(errs, fmt.Errorf("%s: %w", cand, err))
	}
	return nil, fmt.Errorf("pulling image %s: %w", ref, errors.Join(errs...))
}

// Get fetches the manifest ref names (an image's or an index's), retrying
// as --image-download-retry says.
func (c *Client) Get(ctx context.Context, ref name.Reference) (*remote.Descriptor, error) {
	var desc *remote.Descriptor
	err := c.retry(ctx, c.o.PullRetry, "reading "+ref.String(), func() error {
		var err error
		desc, err = remote.Get(ref, c.options(ctx, false, v1.Platform{})...)
		return err
	})
	return desc, c.authHint(err, ref.Context().RegistryStr())
}

// hasPlatform says whether the index desc describes holds an image for
// platform, naming the platforms it has when not.
func hasPlatform(desc *remote.Descriptor, platform v1.Platform) error {
	if platform.Architecture == "" {
		return nil
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	var have []string
	for _, d := range m.Manifests {
		if d.Platform == nil {
			continue
		}
		if d.Platform.Satisfies(platform) {
			return nil
		}
		have = append(have, d.Platform.String())
	}
	return fmt.Errorf("the index has no image for %s (it has %s)", &platform, strings.Join(have, ", "))
}

// pullCandidates returns the references to try for ref, in order.
func (c *Client) pullCandidates(ref string) ([]string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("parsing reference %q: %w", ref, err)
	}
	reg := r.Context().RegistryStr()
	repo := r.Context().RepositoryStr()
	suffix := ":" + r.Identifier()
	if strings.HasPrefix(r.Identifier(), "sha256:") {
		suffix = "@" + r.Identifier()
	}
	full := reg + "/" + repo
	var out []string
	for orig, news := range c.o.Map {
		o := normalizeRegistry(orig)
		if full == o || strings.HasPrefix(full, o+"/") {
			for _, n := range news {
				out = append(out, strings.TrimSuffix(n, "/")+strings.TrimPrefix(full, o)+suffix)
			}
		}
	}
	if reg == name.DefaultRegistry {
		for _, m := range c.o.Mirrors {
			m = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(m, "https://"), "http://"), "/")
			out = append(out, m+"/"+repo+suffix)
		}
	}
	if len(out) == 0 || !c.o.SkipDefaultRegistryFallback {
		out = append(out, r.String())
	}
	return out, nil
}

// pathComponent is one component of a repository name in the OCI
// distribution grammar.
var pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)

// CheckRepository refuses repository names the distribution grammar
// does not allow ("../x", "a//b", ".hidden"): go-containerregistry
// accepts some of them, and a registry might resolve them as paths.
func CheckRepository(repo string) error {
	for _, c := range strings.Split(repo, "/") {
		if !pathComponent.MatchString(c) {
			return fmt.Errorf("repository %q: %q is not a valid path component", repo, c)
		}
	}
	return nil
}

func normalizeRegistry(s string) string {
	if s == "docker.io" || strings.HasPrefix(s, "docker.io/") {
		return name.DefaultRegistry + strings.TrimPrefix(s, "docker.io")
	}
	return strings.TrimSuffix(s, "/")
}

// Write pushes img to ref, retrying as --push-retry says, and logs progress
// of long uploads.
func (c *Client) Write(ctx context.Context, ref name.Reference, img v1.Image) error {
	return c.authHint(c.write(ctx, ref, img), ref.Context().RegistryStr())
}

func (c *Client) write(ctx context.Context, ref name.Reference, img v1.Image) error {
	return c.retry(ctx, c.o.PushRetry, "pushing "+ref.String(), func() error {
		return remote.Write(ref, img, append(c.options(ctx, true, c.o.Platform), c.progress("push progress", "destination", ref.String()))...)
	})
}

// Upload pushes the blob of l to repo, streamed in one request when l's
// digest is not known yet (a layer.Growing): ggcr commits it under the
// digest l knows once its reader ends. It does not retry beyond ggcr's own
// tries: a later push uploads what it could not.
func (c *Client) Upload(ctx context.Context, repo name.Repository, l v1.Layer) error {
	return c.authHint(remote.WriteLayer(repo, l, append(c.options(ctx, true, c.o.Platform), c.progress("layer upload progress", "repository", repo.String()))...), repo.RegistryStr())
}

// progress is a ggcr progress option whose updates are logged as msg
// with attrs; ggcr closes the channel when the transfer ends.
func (c *Client) progress(msg string, attrs ...any) remote.Option {
	updates := make(chan v1.Update, 16)
	go func() {
		p := &logging.Progress{Log: c.log, Msg: msg, Attrs: attrs}
		for u := range updates {
			p.Total = u.Total
			p.Set(u.Complete)
		}
	}()
	return remote.WithProgress(updates)
}

// WriteIndex pushes idx with its images to ref, retrying as --push-retry
// says.
func (c *Client) WriteIndex(ctx context.Context, ref name.Reference, idx v1.ImageIndex) error {
	return c.authHint(c.retry(ctx, c.o.PushRetry, "pushing "+ref.String(), func() error {
		return remote.WriteIndex(ref, idx, append(c.options(ctx, true, c.o.Platform), c.progress("push progress", "destination", ref.String()))...)
	}), ref.Context().RegistryStr())
}

// Tag points tag at t (an image or an index), whose manifest is already in
// tag's repository, retrying as --push-retry says.
func (c *Client) Tag(ctx context.Context, tag name.Tag, t remote.Taggable) error {
	return c.authHint(c.retry(ctx, c.o.PushRetry, "tagging "+tag.String(), func() error {
		return remote.Tag(tag, t, c.options(ctx, true, c.o.Platform)...)
	}), tag.Context().RegistryStr())
}

// authHint adds to a registry's 401 or 403 where kiln looked for
// credentials for it, and what it found (never a secret).
func (c *Client) authHint(err error, host string) error {
	var terr *transport.Error
	if err == nil || !errors.As(err, &terr) || (terr.StatusCode != http.StatusUnauthorized && terr.StatusCode != http.StatusForbidden) {
		return err
	}
	if ex, ok := c.keychain.(interface{ Explain(string) string }); ok {
		return fmt.Errorf("%w (%s)", err, ex.Explain(host))
	}
	return err
}

// CheckPush verifies the credentials allow pushing to ref's repository.
func (c *Client) CheckPush(ctx context.Context, ref name.Reference) error {
	auth, err := authn.Resolve(ctx, c.keychain, ref.Context())
	if err != nil {
		return fmt.Errorf("resolving credentials for %s: %w", ref.Context(), err)
	}
	if err := remote.CheckPushPermission(ref, authn.NewMultiKeychain(staticKeychain{auth}), c.pushTr); err != nil {
		return fmt.Errorf("checking push permission for %s: %w", ref, c.authHint(err, ref.Context().RegistryStr()))
	}
	return nil
}

type staticKeychain struct{ a authn.Authenticator }

func (s staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return s.a, nil }

// permanent is a failure no retry changes.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// retry runs fn up to n+1 times with exponential backoff, stopping at a
// permanent failure.
func (c *Client) retry(ctx context.Context, n int, what string, fn func() error) error {
	delay := c.o.RetryDelay
	if delay == 0 {
		delay = time.Second
	}
	var err error
	for i := 0; ; i++ {
		if err = fn(); err == nil || i >= n {
			return err
		}
		var p permanent
		if errors.As(err, &p) {
			return err
		}
		c.log.Warn("retrying", "what", what, "attempt", i+1, "of", n, "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// ParsePlatform parses os/arch[/variant]; empty means the host platform.
func ParsePlatform(s string) (v1.Platform, error) {
	if s == "" {
		p := v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
		if p.Architecture == "arm" {
			p.Variant = "v7"
		}
		return p, nil
	}
	if !strings.Contains(s, "/") {
		// An architecture alone, as docker build --platform and Kubernetes'
		// kubernetes.io/arch label name it: Linux.
		if p, ok := bareArch[s]; ok {
			return p, nil
		}
		return v1.Platform{}, fmt.Errorf("platform %q: want os/arch[/variant], or a known architecture (amd64, arm64, ...)", s)
	}
	p, err := v1.ParsePlatform(s)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return v1.Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]", s)
	}
	return *p, nil
}

// bareArch are the architectures a platform may name alone, with the
// Linux platform each means (containerd's normalisation).
var bareArch = map[string]v1.Platform{
	"amd64":   {OS: "linux", Architecture: "amd64"},
	"x86_64":  {OS: "linux", Architecture: "amd64"},
	"386":     {OS: "linux", Architecture: "386"},
	"arm64":   {OS: "linux", Architecture: "arm64"},
	"aarch64": {OS: "linux", Architecture: "arm64"},
	"arm":     {OS: "linux", Architecture: "arm", Variant: "v7"},
	"armhf":   {OS: "linux", Architecture: "arm", Variant: "v7"},
	"armel":   {OS: "linux", Architecture: "arm", Variant: "v6"},
	"ppc64le": {OS: "linux", Architecture: "ppc64le"},
	"s390x":   {OS: "linux", Architecture: "s390x"},
	"riscv64": {OS: "linux", Architecture: "riscv64"},
	"loong64": {OS: "linux", Architecture: "loong64"},
}
