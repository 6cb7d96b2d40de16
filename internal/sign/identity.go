package sign

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/sigstore/cosign/v2/cmd/cosign/cli/options"
	"github.com/sigstore/cosign/v2/cmd/cosign/cli/rekor"
	cosignsign "github.com/sigstore/cosign/v2/cmd/cosign/cli/sign"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	sigs "github.com/sigstore/cosign/v2/pkg/signature"
	"github.com/sigstore/rekor/pkg/generated/client"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	sigopts "github.com/sigstore/sigstore/pkg/signature/options"
	// KMS providers for --key awskms://, gcpkms://, azurekms:// and
	// hashivault://.
	_ "github.com/sigstore/sigstore/pkg/signature/kms/aws"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/azure"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/gcp"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/hashivault"

	"github.com/kilnbuild/kiln/internal/option"
)

// DefaultFulcioURL and DefaultRekorURL are the public Sigstore instances.
const (
	DefaultFulcioURL = "https://fulcio.sigstore.dev"
	DefaultRekorURL  = "https://rekor.sigstore.dev"
)

// identity is who signs: a key, or an ephemeral key with the certificate
// Fulcio issued for an OIDC identity; with tlog set, every signature is
// entered in the transparency log under verifier.
type identity struct {
	sv          signature.SignerVerifier
	cert, chain []byte // PEM; keyless only
	tlog        *tlog
	verifier    []byte // the certificate, or the public key, as PEM
}

// staticOptions attach the certificate chain of a keyless identity.
func (id *identity) staticOptions() []static.Option {
	if id.cert == nil {
		return nil
	}
	return []static.Option{static.WithCertChain(id.cert, id.chain)}
}

// identity loads the signing identity (and, with TlogUpload, the
// transparency log) without revealing secrets in errors.
func (o Options) identity(ctx context.Context) (*identity, error) {
	id, err := o.signer(ctx)
	if err != nil || !o.TlogUpload {
		return id, err
	}
	if id.tlog, err = o.tlog(); err != nil {
		return nil, err
	}
	id.verifier = id.cert
	if id.verifier == nil {
		pub, err := id.sv.PublicKey()
		if err != nil {
			return nil, err
		}
		if id.verifier, err = cryptoutils.MarshalPublicKeyToPEM(pub); err != nil {
			return nil, err
		}
	}
	return id, nil
}

// signer loads the key, or makes the keyless identity.
func (o Options) signer(ctx context.Context) (*identity, error) {
	switch {
	case o.Key != "" && o.IdentityTokenFile != "":
		return nil, errors.New("give a key (option Key) or a keyless identity (option IdentityTokenFile), not both")
	case o.Key != "":
		if !strings.Contains(o.Key, "://") {
			if _, err := os.Stat(o.Key); err != nil {
				return nil, option.New("Key", o.Key, err)
			}
		}
		pf := func(bool) ([]byte, error) { return o.Password, nil }
		sv, err := sigs.SignerVerifierFromKeyRef(ctx, o.Key, pf, nil)
		if err != nil {
			msg := redact(err.Error(), string(o.Password))
			if strings.Contains(msg, "decrypt") {
				return nil, option.Errorf("Key", o.Key, "cannot decrypt the key: wrong COSIGN_PASSWORD? (%s)", msg)
			}
			return nil, option.Errorf("Key", o.Key, "%s", msg)
		}
		// A KMS key is reached now, so an unreachable service fails before
		// anything is signed, naming the key.
		if _, err := sv.PublicKey(sigopts.WithContext(ctx)); err != nil {
			return nil, option.Errorf("Key", o.Key, "reading the public key: %s", redact(err.Error(), string(o.Password)))
		}
		return &identity{sv: sv}, nil
	case o.IdentityTokenFile != "":
		return o.keyless(ctx)
	}
	return nil, errors.New("no signing identity: give option Key (a file, k8s://, or a KMS URI) or option IdentityTokenFile")
}

// keyless makes an ephemeral key and has Fulcio certify it for the
// identity in the OIDC token, as `cosign sign --identity-token` does.
func (o Options) keyless(ctx context.Context) (*identity, error) {
	tok, err := os.ReadFile(o.IdentityTokenFile)
	token := strings.TrimSpace(string(tok))
	if err != nil || token == "" {
		if err == nil {
			err = errors.New("the file is empty")
		}
		return nil, option.Errorf("IdentityTokenFile", o.IdentityTokenFile, "no OIDC token there: %w", err)
	}
	if strings.Count(token, ".") != 2 {
		return nil, option.Errorf("IdentityTokenFile", o.IdentityTokenFile, "not an OIDC token (a JWT has three dot-separated parts)")
	}
	fulcio := o.FulcioURL
	if fulcio == "" {
		fulcio = DefaultFulcioURL
	}
	ko := options.KeyOpts{
		FulcioURL:                fulcio,
		IDToken:                  token,
		FulcioAuthFlow:           "token",
		SkipConfirmation:         true,
		OIDCDisableProviders:     true,
		InsecureSkipFulcioVerify: o.InsecureSkipSCTVerify,
	}
	eph, _, err := cosignsign.SignerFromKeyOpts(ctx, "", "", ko)
	if err != nil {
		return nil, fmt.Errorf("keyless signing: generating a key: %w", err)
	}
	sv, err := cosignsign.KeylessSigner(ctx, ko, eph)
	if err != nil {
		return nil, fmt.Errorf("keyless signing: Fulcio at %s: %s", fulcio, redact(err.Error(), token))
	}
	return &identity{sv: sv, cert: sv.Cert, chain: sv.Chain}, nil
}

// tlog is the transparency log signatures are entered in.
type tlog struct {
	url    string
	client *client.Rekor
}

// tlog returns the Rekor client.
func (o Options) tlog() (*tlog, error) {
	u := o.RekorURL
	if u == "" {
		u = DefaultRekorURL
	}
	c, err := rekor.NewClient(u)
	if err != nil {
		return nil, option.New("RekorURL", u, err)
	}
	return &tlog{url: u, client: c}, nil
}

// uploadSignature enters a simple-signing signature (a hashedrekord
// entry, as cosign sign makes) and returns the bundle to attach.
func (t *tlog) uploadSignature(ctx context.Context, verifier, sig, payload []byte) (*cbundle.RekorBundle, error) {
	h := sha256.New()
	h.Write(payload)
	e, err := cosign.TLogUpload(ctx, t.client, sig, h, verifier)
	if err != nil {
		return nil, t.err(err)
	}
	return cbundle.EntryToBundle(e), nil
}

// uploadAttestation enters a DSSE envelope (a dsse entry, cosign attest's
// default) and returns the bundle to attach.
func (t *tlog) uploadAttestation(ctx context.Context, verifier, env []byte) (*cbundle.RekorBundle, error) {
	e, err := cosign.TLogUploadDSSEEnvelope(ctx, t.client, env, verifier)
	if err != nil {
		return nil, t.err(err)
	}
	return cbundle.EntryToBundle(e), nil
}

func (t *tlog) err(err error) error {
	return fmt.Errorf("uploading to the transparency log at %s (option TlogUpload=false skips it): %w", t.url, err)
}

// redact hides a secret in a message.
func redact(msg, secret string) string {
	if secret == "" {
		return msg
	}
	return strings.ReplaceAll(msg, secret, "***")
}
