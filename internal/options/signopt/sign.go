package signopt

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/record"
	"github.com/kilnbuild/kiln/internal/registry"
	"github.com/kilnbuild/kiln/internal/sign"
)

// Sign holds the sign step's flags.
type Sign struct {
	BuildRecord, Key, IdentityTokenFile, FulcioURL, RekorURL string
	PasswordFile, LayoutPath, SignedLayoutPath               string
	BuilderID, InvocationID                                  string
	TlogUpload, Attest, IfSet, InsecureSkipSCTVerify         bool
	KanikoDir                                                string
	Registry                                                 options.RegistryFlags
	Log                                                      options.LogFlags
}

// AddFlags registers the sign flags.
func (s *Sign) AddFlags(fs *pflag.FlagSet, getenv func(string) string) {
	fs.StringVar(&s.BuildRecord, "build-record", "", "The build record (build.json): its images are signed. Required.")
	fs.StringVar(&s.Key, "key", "", "cosign private key: a file (password in COSIGN_PASSWORD), k8s://namespace/secret, or a KMS URI (awskms://, gcpkms://, azurekms://, hashivault://).")
	fs.StringVar(&s.LayoutPath, "oci-layout-path", "", "The build's OCI layout, for signing a --no-push build (with --signed-layout-path).")
	fs.StringVar(&s.SignedLayoutPath, "signed-layout-path", "", "Sign the image in --oci-layout-path and write it with its signature and provenance here, as a cosign layout (cosign load --dir pushes it).")
	fs.StringVar(&s.PasswordFile, "password-file", "", "A file holding the key's password (instead of COSIGN_PASSWORD), e.g. from a mounted secret.")
	fs.StringVar(&s.IdentityTokenFile, "identity-token-file", "", "Keyless: a file holding an OIDC token (a projected service account token); an ephemeral key is certified by Fulcio for its identity.")
	fs.StringVar(&s.FulcioURL, "fulcio-url", sign.DefaultFulcioURL, "Keyless: the Fulcio certificate authority.")
	fs.BoolVar(&s.InsecureSkipSCTVerify, "insecure-skip-sct-verify", false, "Keyless: accept Fulcio's certificate without checking its certificate transparency timestamp (a private Fulcio without a CT log; testing).")
	fs.StringVar(&s.RekorURL, "rekor-url", sign.DefaultRekorURL, "The Rekor transparency log.")
	fs.BoolVar(&s.TlogUpload, "tlog-upload", true, "Enter every signature and attestation in the Rekor transparency log, as cosign does (false for air-gapped registries; verify with --insecure-ignore-tlog).")
	fs.BoolVar(&s.Attest, "attest", true, "Also attach SLSA v1.0 provenance built from the build record.")
	fs.StringVar(&s.BuilderID, "builder-id", sign.DefaultBuilderID, "SLSA builder id in the provenance.")
	fs.StringVar(&s.InvocationID, "invocation-id", "", "Identifies this run in the provenance (e.g. the TaskRun's UID).")
	fs.BoolVar(&s.IfSet, "if-set", false, "Do nothing, successfully, when neither --key nor --identity-token-file is given.")
	kdir := getenv("KANIKO_DIR")
	if kdir == "" {
		kdir = "/kaniko"
	}
	fs.StringVar(&s.KanikoDir, "kaniko-dir", kdir, "kiln's directory: .docker/config.json is looked up there.")
	s.Registry.AddFlags(fs, getenv)
	s.Log.AddFlags(fs)
}

// Skip reports whether there is nothing to sign with (--if-set).
func (s *Sign) Skip() bool { return s.IfSet && s.Key == "" && s.IdentityTokenFile == "" }

// Options returns the engine's options.
func (s *Sign) Options(getenv func(string) string, log *slog.Logger) (sign.Options, error) {
	if s.BuildRecord == "" {
		return sign.Options{}, errors.New("--build-record is required")
	}
	rec, err := record.Read(s.BuildRecord)
	if err != nil {
		return sign.Options{}, err
	}
	ro, err := s.Registry.RegistryOptions(getenv, s.KanikoDir, log)
	if err != nil {
		return sign.Options{}, err
	}
	client, err := registry.New(ro)
	if err != nil {
		return sign.Options{}, err
	}
	var nameOpts []name.Option
	if s.Registry.Insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	o := sign.Options{
		Record: rec, Key: s.Key, IdentityTokenFile: s.IdentityTokenFile, FulcioURL: s.FulcioURL, RekorURL: s.RekorURL,
		InsecureSkipSCTVerify: s.InsecureSkipSCTVerify,
		TlogUpload:            s.TlogUpload, Attest: s.Attest, BuilderID: s.BuilderID, InvocationID: s.InvocationID,
		Remote: client.RemoteOptions(), NameOptions: nameOpts, Logger: log,
		LayoutPath: s.LayoutPath, SignedLayoutPath: s.SignedLayoutPath,
	}
	if s.SignedLayoutPath != "" && s.LayoutPath == "" {
		return sign.Options{}, errors.New("--signed-layout-path needs --oci-layout-path")
	}
	if pw, ok := lookup(getenv, "COSIGN_PASSWORD"); ok {
		o.Password = []byte(pw)
	}
	if s.PasswordFile != "" {
		pw, err := os.ReadFile(s.PasswordFile)
		if err != nil {
			return sign.Options{}, fmt.Errorf("--password-file: %w", err)
		}
		o.Password = bytes.TrimRight(pw, "\r\n")
	}
	return o, nil
}

func lookup(getenv func(string) string, k string) (string, bool) {
	v := getenv(k)
	return v, v != ""
}
