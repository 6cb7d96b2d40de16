package registry

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	ecr "github.com/awslabs/amazon-ecr-credential-helper/ecr-login"
	"github.com/chrismellard/docker-credential-acr-env/pkg/credhelper"
	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/google"
)

// ConfigDirs returns the directories searched for a Docker config.json, in
// kaniko's order: $DOCKER_CONFIG, <kaniko-dir>/.docker, $HOME/.docker.
func ConfigDirs(getenv func(string) string, kanikoDir string) []string {
	var dirs []string
	if d := getenv("DOCKER_CONFIG"); d != "" {
		if fi, err := os.Stat(d); err == nil && !fi.IsDir() {
			d = filepath.Dir(d) // kaniko accepts the file's path too
		}
		dirs = append(dirs, d)
	}
	if kanikoDir != "" {
		dirs = append(dirs, filepath.Join(kanikoDir, ".docker"))
	}
	if h := getenv("HOME"); h != "" {
		dirs = append(dirs, filepath.Join(h, ".docker"))
	}
	return dirs
}

// DockerConfigKeychain resolves credentials from the first config.json found
// in Dirs (or .dockerconfigjson, a mounted kubernetes.io/dockerconfigjson
// Secret's key), with its credential helpers and credsStore.
type DockerConfigKeychain struct {
	// Dirs are searched in order; the first holding config.json is used.
	Dirs []string

	once sync.Once
	cf   *configfile.ConfigFile
	err  error
}

var _ authn.Keychain = (*DockerConfigKeychain)(nil)

// secretKey is the key a kubernetes.io/dockerconfigjson Secret keeps its
// config under, so a directory the Secret is mounted as holds this file.
const secretKey = ".dockerconfigjson"

func (k *DockerConfigKeychain) load() {
	for _, d := range k.Dirs {
		if fi, err := os.Stat(filepath.Join(d, config.ConfigFileName)); err == nil && !fi.IsDir() {
			k.cf, k.err = config.Load(d)
			return
		}
		p := filepath.Join(d, secretKey)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			f, err := os.Open(p)
			if err != nil {
				k.err = err
				return
			}
			defer f.Close()
			if k.cf, k.err = config.LoadFromReader(f); k.err != nil {
				k.err = fmt.Errorf("%s: %w", p, k.err)
				return
			}
			k.cf.Filename = p
			return
		}
	}
}

// Resolve implements authn.Keychain.
func (k *DockerConfigKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	k.once.Do(k.load)
	if k.err != nil {
		return nil, k.err
	}
	if k.cf == nil {
		return authn.Anonymous, nil
	}
	var cfg, empty types.AuthConfig
	for _, key := range []string{target.String(), target.RegistryStr()} {
		if key == name.DefaultRegistry {
			key = authn.DefaultAuthKey
		}
		c, err := k.cf.GetAuthConfig(key)
		if err != nil {
			return nil, err
		}
		c.ServerAddress = ""
		if c != empty {
			cfg = c
			break
		}
	}
	if cfg == empty {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{
		Username:      cfg.Username,
		Password:      cfg.Password,
		Auth:          cfg.Auth,
		IdentityToken: cfg.IdentityToken,
		RegistryToken: cfg.RegistryToken,
	}), nil
}

// Helpers are the credential helpers kaniko v1.28 knows
// (--credential-helpers), all used by default.
var Helpers = []string{"env", "google", "ecr", "acr", "gitlab"}

// ParseHelpers reads --credential-helpers values: names, repeated or
// comma-separated; a single empty value means none.
func ParseHelpers(values []string) ([]string, error) {
	var out []string
	for _, v := range values {
		for _, h := range strings.Split(v, ",") {
			h = strings.TrimSpace(h)
			if h == "" {
				continue
			}
			if !slices.Contains(Helpers, h) {
				return nil, fmt.Errorf("unknown credential helper %q: want one of %s", h, strings.Join(Helpers, ", "))
			}
			out = append(out, h)
		}
	}
	return out, nil
}

// Keychain is kaniko's order of credentials: DOCKER_AUTH_CONFIG (a
// config.json document in a variable, GitLab's convention, which docker's
// own CLI puts first), the first config.json found in the config
// directories, then the credential helpers asked for. It can say, for an
// authentication failure, where it looked.
type Keychain struct {
	sources []keySource
}

type keySource struct {
	name    string
	kc      authn.Keychain
	explain func(host string) string // what it had for host
}

var _ authn.Keychain = (*Keychain)(nil)

// DefaultKeychain is Keychain with every helper.
func DefaultKeychain(getenv func(string) string, kanikoDir string) *Keychain {
	return NewKeychain(getenv, kanikoDir, Helpers)
}

// NewKeychain builds the keychain: each cloud helper answers only for its
// own registries and is anonymous elsewhere.
func NewKeychain(getenv func(string) string, kanikoDir string, helpers []string) *Keychain {
	k := &Keychain{}
	if v := getenv("DOCKER_AUTH_CONFIG"); v != "" {
		cf, err := config.LoadFromReader(strings.NewReader(v))
		dk := &DockerConfigKeychain{cf: cf, err: err}
		dk.once.Do(func() {})
		if err != nil {
			dk.err = fmt.Errorf("DOCKER_AUTH_CONFIG: %w", err)
		}
		k.add("DOCKER_AUTH_CONFIG", dk, dk.explain)
	}
	files := &DockerConfigKeychain{Dirs: ConfigDirs(getenv, kanikoDir)}
	k.add("config.json", files, files.explain)
	for _, h := range helpers {
		switch h {
		case "env":
			e := envKeychain{getenv}
			k.add("env", e, e.explain)
		case "google":
			k.add("google", google.Keychain, nil)
		case "ecr":
			k.add("ecr", authn.NewKeychainFromHelper(ecr.NewECRHelper(ecr.WithLogger(io.Discard))), nil)
		case "acr":
			k.add("acr", authn.NewKeychainFromHelper(credhelper.NewACRCredentialsHelper()), nil)
		case "gitlab":
			g := gitlabKeychain{getenv}
			k.add("gitlab", g, g.explain)
		}
	}
	return k
}

func (k *Keychain) add(name string, kc authn.Keychain, explain func(string) string) {
	k.sources = append(k.sources, keySource{name, kc, explain})
}

// Resolve returns the first credentials a source has for target.
func (k *Keychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	for _, s := range k.sources {
		a, err := s.kc.Resolve(target)
		if err != nil {
			return nil, err
		}
		if a != authn.Anonymous {
			return a, nil
		}
	}
	return authn.Anonymous, nil
}

// Explain says where credentials for host were looked for, and what was
// found: for an authentication error's message. Never a secret.
func (k *Keychain) Explain(host string) string {
	var parts []string
	for _, s := range k.sources {
		what := "no credentials for " + host
		if s.explain != nil {
			what = s.explain(host)
		} else if a, err := s.kc.Resolve(registryResource(host)); err == nil && a != authn.Anonymous {
			what = "credentials for " + host
		}
		parts = append(parts, s.name+": "+what)
	}
	return "credentials looked for in " + strings.Join(parts, "; ")
}

func registryResource(host string) authn.Resource {
	r, err := name.NewRegistry(host)
	if err != nil {
		r, _ = name.NewRegistry("invalid.invalid")
	}
	return r
}

// explain says which config file was read and whether it had host.
func (k *DockerConfigKeychain) explain(host string) string {
	k.once.Do(k.load)
	src := "(from the variable)"
	if k.cf == nil && k.err == nil {
		return "no config.json or .dockerconfigjson in " + strings.Join(k.Dirs, ", ")
	}
	if k.cf != nil && k.cf.Filename != "" {
		src = k.cf.Filename
	}
	if k.err != nil {
		return k.err.Error()
	}
	if a, err := k.Resolve(registryResource(host)); err == nil && a != authn.Anonymous {
		return src + " has credentials for " + host
	}
	return src + " has no entry for " + host
}

// envKeychain is the kaniko v1.28 env credential helper: KANIKO_<HOST>_USER
// and KANIKO_<HOST>_PASSWORD, the host upper-cased with ".", "-" and ":"
// as "_", tried for the host and each of its parent domains.
type envKeychain struct{ getenv func(string) string }

func envNames(host string) [][2]string {
	h := strings.ToUpper(strings.NewReplacer("-", "_", ":", "_").Replace(host))
	labels := strings.Split(h, ".")
	var out [][2]string
	for i := range labels {
		n := "KANIKO_" + strings.Join(labels[i:], "_")
		out = append(out, [2]string{n + "_USER", n + "_PASSWORD"})
	}
	return out
}

func (e envKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	for _, n := range envNames(target.RegistryStr()) {
		user, pass := e.getenv(n[0]), e.getenv(n[1])
		if user != "" && pass != "" {
			return authn.FromConfig(authn.AuthConfig{Username: user, Password: pass}), nil
		}
	}
	return authn.Anonymous, nil
}

func (e envKeychain) explain(host string) string {
	names := envNames(host)
	for _, n := range names {
		if e.getenv(n[0]) != "" && e.getenv(n[1]) != "" {
			return n[0] + " and " + n[1] + " are set"
		}
	}
	return "no " + names[0][0] + "/_PASSWORD"
}

// gitlabKeychain is kaniko v1.28's gitlab helper: on GitLab CI, the job's
// registry ($CI_REGISTRY) with $CI_REGISTRY_USER and $CI_REGISTRY_PASSWORD.
type gitlabKeychain struct{ getenv func(string) string }

func (g gitlabKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	reg := g.getenv("CI_REGISTRY")
	if reg == "" || !sameHost(reg, target.RegistryStr()) {
		return authn.Anonymous, nil
	}
	user, pass := g.getenv("CI_REGISTRY_USER"), g.getenv("CI_REGISTRY_PASSWORD")
	if user == "" || pass == "" {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: pass}), nil
}

func (g gitlabKeychain) explain(host string) string {
	reg := g.getenv("CI_REGISTRY")
	switch {
	case reg == "":
		return "CI_REGISTRY is not set"
	case !sameHost(reg, host):
		return "CI_REGISTRY is " + reg + ", not " + host
	case g.getenv("CI_REGISTRY_USER") == "" || g.getenv("CI_REGISTRY_PASSWORD") == "":
		return "CI_REGISTRY_USER or CI_REGISTRY_PASSWORD is not set"
	}
	return "CI_REGISTRY_USER and CI_REGISTRY_PASSWORD are set"
}

// sameHost compares a registry setting (maybe a URL) with a host[:port].
func sameHost(setting, host string) bool {
	setting = strings.TrimPrefix(strings.TrimPrefix(setting, "https://"), "http://")
	setting = strings.TrimSuffix(setting, "/")
	return strings.EqualFold(setting, host) || strings.EqualFold(strings.Split(setting, ":")[0], strings.Split(host, ":")[0]) && !strings.Contains(setting, ":")
}

// LoginDir is where login stores credentials: $DOCKER_CONFIG, else
// <kaniko-dir>/.docker (the kaniko image's DOCKER_CONFIG).
func LoginDir(getenv func(string) string, kanikoDir string) string {
	if d := getenv("DOCKER_CONFIG"); d != "" {
		return d
	}
	return filepath.Join(kanikoDir, ".docker")
}

// Login stores user and password for registry in the config.json of dir
// (its credsStore or credential helper where it names one), as
// `docker login` and kaniko v1.28's `executor login` do.
func Login(dir, registry, user, password string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	cf, err := config.Load(dir)
	if err != nil {
		return fmt.Errorf("reading %s: %w", filepath.Join(dir, config.ConfigFileName), err)
	}
	key := registry
	if key == name.DefaultRegistry || key == "docker.io" {
		key = authn.DefaultAuthKey
	}
	if err := cf.GetCredentialsStore(key).Store(types.AuthConfig{ServerAddress: key, Username: user, Password: password}); err != nil {
		return fmt.Errorf("storing credentials for %s: %w", registry, err)
	}
	return cf.Save()
}
