package options

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/registry"
)

// RegistryFlags are the registry flags shared by build and warm-cache.
type RegistryFlags struct {
	Insecure, InsecurePull           bool
	SkipTLSVerify, SkipTLSVerifyPull bool
	InsecureRegistries               []string
	SkipTLSVerifyRegistries          []string
	Certificates, ClientCertificates []string
	Mirrors, Maps                    []string
	SkipDefaultRegistryFallback      bool
	ImageDownloadRetry               int
	IdleTimeout                      time.Duration
	CredentialHelpers                []string
}

// LogFlags are --verbosity, --log-format and --log-timestamp.
type LogFlags struct {
	Verbosity, Format string
	Timestamp         bool
}

// AddFlags registers the registry flags.
func (r *RegistryFlags) AddFlags(fs *pflag.FlagSet, getenv func(string) string) {
	fs.BoolVar(&r.Insecure, "insecure", false, "Push over plain HTTP.")
	fs.BoolVar(&r.InsecurePull, "insecure-pull", false, "Pull over plain HTTP.")
	fs.BoolVar(&r.SkipTLSVerify, "skip-tls-verify", false, "Push without verifying TLS certificates.")
	fs.BoolVar(&r.SkipTLSVerifyPull, "skip-tls-verify-pull", false, "Pull without verifying TLS certificates.")
	fs.StringArrayVar(&r.InsecureRegistries, "insecure-registry", nil, "Registry to use plain HTTP with; repeatable.")
	fs.StringArrayVar(&r.SkipTLSVerifyRegistries, "skip-tls-verify-registry", nil, "Registry whose certificate is not verified; repeatable.")
	fs.StringArrayVar(&r.Certificates, "registry-certificate", nil, "registry=/path/ca.pem: CA bundle for a registry; repeatable.")
	fs.StringArrayVar(&r.ClientCertificates, "registry-client-cert", nil, "registry=cert.pem,key.pem: client certificate for a registry; repeatable.")
	var mirrors []string
	if m := getenv("KANIKO_REGISTRY_MIRROR"); m != "" {
		mirrors = strings.Split(m, ";")
	}
	fs.StringArrayVar(&r.Mirrors, "registry-mirror", mirrors, "Docker Hub mirror, tried in order before Docker Hub; repeatable (env KANIKO_REGISTRY_MIRROR, ;-separated).")
	var maps []string
	if m := getenv("KANIKO_REGISTRY_MAP"); m != "" {
		maps = []string{m}
	}
	fs.StringArrayVar(&r.Maps, "registry-map", maps, "orig=new[;orig=new]: pull from new instead of orig (registry or repository prefix); repeatable (env KANIKO_REGISTRY_MAP).")
	fs.BoolVar(&r.SkipDefaultRegistryFallback, "skip-default-registry-fallback", false, "Fail when no mirror or mapped registry has the image.")
	fs.IntVar(&r.ImageDownloadRetry, "image-download-retry", 0, "Retries for each pull, with exponential backoff from 1s.")
	fs.StringArrayVar(&r.CredentialHelpers, "credential-helpers", registry.Helpers, "Credential helpers used after DOCKER_AUTH_CONFIG and config.json: env (KANIKO_<HOST>_USER/_PASSWORD), google, ecr, acr, gitlab (CI_REGISTRY); repeatable or comma-separated; an empty value turns them all off.")
	fs.DurationVar(&r.IdleTimeout, "registry-idle-timeout", registry.DefaultIdleTimeout, "A registry connection that moves no data for this long fails (and is retried as --push-retry and --image-download-retry say).")
}

// AddFlags registers the logging flags.
func (l *LogFlags) AddFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&l.Verbosity, "verbosity", "v", "info", "Log level: panic, fatal, error, warn, info, debug, trace.")
	fs.StringVar(&l.Format, "log-format", "color", "Log format: text, color or json.")
	fs.BoolVar(&l.Timestamp, "log-timestamp", false, "Add a timestamp to every log line.")
}

// splitPairs parses repeated key=value flags; each value may hold several
// pairs separated by sep (";" for --registry-map).
func splitPairs(flag string, values []string, sep string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, v := range values {
		parts := []string{v}
		if sep != "" {
			parts = strings.Split(v, sep)
		}
		for _, p := range parts {
			if p == "" {
				continue
			}
			k, val, ok := strings.Cut(p, "=")
			if !ok || k == "" || val == "" {
				return nil, fmt.Errorf("--%s %q: want key=value", flag, p)
			}
			out[k] = append(out[k], val)
		}
	}
	return out, nil
}

func single(m map[string][]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v[len(v)-1]
	}
	return out
}

// RegistryOptions turns the registry flags into registry.Options.
func (r *RegistryFlags) RegistryOptions(getenv func(string) string, kanikoDir string, log *slog.Logger) (registry.Options, error) {
	certs, err := splitPairs("registry-certificate", r.Certificates, "")
	if err != nil {
		return registry.Options{}, err
	}
	clientCerts, err := splitPairs("registry-client-cert", r.ClientCertificates, "")
	if err != nil {
		return registry.Options{}, err
	}
	maps, err := splitPairs("registry-map", r.Maps, ";")
	if err != nil {
		return registry.Options{}, err
	}
	var mirrors []string
	for _, m := range r.Mirrors {
		for _, s := range strings.Split(m, ";") {
			if s != "" {
				mirrors = append(mirrors, s)
			}
		}
	}
	helpers, err := registry.ParseHelpers(r.CredentialHelpers)
	if err != nil {
		return registry.Options{}, fmt.Errorf("--credential-helpers: %w", err)
	}
	return registry.Options{
		Keychain:                    registry.NewKeychain(getenv, kanikoDir, helpers),
		Insecure:                    r.Insecure,
		InsecurePull:                r.InsecurePull,
		InsecureRegistries:          r.InsecureRegistries,
		SkipTLSVerify:               r.SkipTLSVerify,
		SkipTLSVerifyPull:           r.SkipTLSVerifyPull,
		SkipTLSVerifyRegistries:     r.SkipTLSVerifyRegistries,
		Certificates:                single(certs),
		ClientCertificates:          single(clientCerts),
		Mirrors:                     mirrors,
		Map:                         maps,
		SkipDefaultRegistryFallback: r.SkipDefaultRegistryFallback,
		PullRetry:                   r.ImageDownloadRetry,
		IdleTimeout:                 r.IdleTimeout,
		UserAgent:                   userAgent(getenv),
		Logger:                      log,
	}, nil
}

// userAgent is kiln's User-Agent, with UPSTREAM_CLIENT_TYPE appended as
// kaniko appends it ("kiln,<client>").
func userAgent(getenv func(string) string) string {
	if up := getenv("UPSTREAM_CLIENT_TYPE"); up != "" {
		return "kiln," + up
	}
	return "kiln"
}
