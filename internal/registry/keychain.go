package registry

import (
	"io"
	"os"
	"path/filepath"
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
// in Dirs, with its credential helpers and credsStore.
type DockerConfigKeychain struct {
	// Dirs are searched in order; the first holding config.json is used.
	Dirs []string

	once sync.Once
	cf   *configfile.ConfigFile
	err  error
}

var _ authn.Keychain = (*DockerConfigKeychain)(nil)

func (k *DockerConfigKeychain) load() {
	for _, d := range k.Dirs {
		if fi, err := os.Stat(filepath.Join(d, config.ConfigFileName)); err == nil && !fi.IsDir() {
			k.cf, k.err = config.Load(d)
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

// DefaultKeychain is kaniko's: Docker config files, then the cloud
// keychains kaniko bundles — Google (gcloud and application default
// credentials, for gcr.io and pkg.dev), Amazon ECR (the AWS SDK's usual
// credential chain, for *.dkr.ecr.*.amazonaws.com) and Azure (the
// AZURE_* environment, for *.azurecr.io). Each cloud keychain answers only
// for its own registries and is anonymous elsewhere.
func DefaultKeychain(getenv func(string) string, kanikoDir string) authn.Keychain {
	return authn.NewMultiKeychain(
		&DockerConfigKeychain{Dirs: ConfigDirs(getenv, kanikoDir)},
		google.Keychain,
		authn.NewKeychainFromHelper(ecr.NewECRHelper(ecr.WithLogger(io.Discard))),
		authn.NewKeychainFromHelper(credhelper.NewACRCredentialsHelper()),
	)
}
