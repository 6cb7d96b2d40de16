// Package sign signs images kiln built and attaches SLSA v1.0 provenance,
// storing both in the registry the way `cosign sign` and `cosign attest`
// do, so `cosign verify` and `cosign verify-attestation` accept them.
package sign

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/cosign/v2/pkg/cosign/attestation"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	sigs "github.com/sigstore/cosign/v2/pkg/signature"
	"github.com/sigstore/cosign/v2/pkg/types"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
	// KMS providers for --key awskms:// and hashivault:// (gcpkms:// and
	// azurekms:// are not linked in yet).
	_ "github.com/sigstore/sigstore/pkg/signature/kms/aws"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/hashivault"
	sigopts "github.com/sigstore/sigstore/pkg/signature/options"
	"github.com/sigstore/sigstore/pkg/signature/payload"

	"github.com/kilnbuild/kiln/internal/record"
)

// PredicateType is SLSA v1.0 provenance's predicate type.
const PredicateType = "https://slsa.dev/provenance/v1"

// Options say what to sign and with what.
type Options struct {
	// Record is the build record; its images are signed.
	Record *record.Build
	// Key is a cosign private key: a file, a Kubernetes secret
	// (k8s://namespace/name) or a KMS URI (awskms://, gcpkms://,
	// azurekms://, hashivault://).
	Key string
	// Password decrypts a key file (COSIGN_PASSWORD).
	Password []byte
	// IdentityTokenFile, FulcioURL and RekorURL configure keyless signing.
	IdentityTokenFile, FulcioURL, RekorURL string
	// TlogUpload uploads signatures to the transparency log (Rekor).
	TlogUpload bool
	// Attest also attaches SLSA provenance.
	Attest bool
	// BuilderID is the SLSA builder id; InvocationID identifies the run.
	BuilderID, InvocationID string
	// Remote are the registry options (auth, transport).
	Remote []remote.Option
	// NameOptions parse the image references (plain HTTP registries).
	NameOptions []name.Option
	// LayoutPath and SignedLayoutPath, when SignedLayoutPath is set, sign
	// the image in the build's OCI layout instead of the registry, writing
	// a cosign layout (see SignLayout).
	LayoutPath, SignedLayoutPath string
	Logger                       *slog.Logger
}

// preparedSig is one image's prepared signature and attestation.
type preparedSig struct {
	digest name.Digest
	se     oci.SignedEntity
}

// Sign signs every image of the record (and attests it). Everything is
// signed before anything is written, so a bad key or password leaves no
// signature behind.
func Sign(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.SignedLayoutPath != "" {
		if err := SignLayout(ctx, o, o.LayoutPath, o.SignedLayoutPath); err != nil {
			return err
		}
		log.Info("signed the layout's image", "digest", o.Record.Digest, "signed-layout", o.SignedLayoutPath)
		return nil
	}
	if o.Record == nil || len(o.Record.Images) == 0 {
		return errors.New("the build record names no pushed image to sign (sign a --no-push build from its layout with --oci-layout-path and --signed-layout-path)")
	}
	if o.TlogUpload {
		return errors.New("--tlog-upload=true: uploading to a transparency log is not supported yet; pass --tlog-upload=false")
	}
	sv, err := o.signer(ctx)
	if err != nil {
		return err
	}
	ropts := []ociremote.Option{ociremote.WithRemoteOptions(append([]remote.Option{remote.WithContext(ctx)}, o.Remote...)...)}
	var prepared []preparedSig
	for _, im := range o.Record.Images {
		ref, err := name.ParseReference(im.Ref, o.NameOptions...)
		if err != nil {
			return fmt.Errorf("image %q: %w", im.Ref, err)
		}
		digest := ref.Context().Digest(im.Digest)
		se, err := ociremote.SignedEntity(digest, ropts...)
		if err != nil {
			return fmt.Errorf("reading %s: %w", digest, err)
		}
		sig, err := signImage(ctx, sv, digest)
		if err != nil {
			return err
		}
		if se, err = mutate.AttachSignatureToEntity(se, sig); err != nil {
			return err
		}
		if o.Attest {
			att, err := o.attestation(ctx, sv, digest)
			if err != nil {
				return err
			}
			if se, err = mutate.AttachAttestationToEntity(se, att); err != nil {
				return err
			}
		}
		prepared = append(prepared, preparedSig{digest, se})
	}
	for _, p := range prepared {
		if err := ociremote.WriteSignatures(p.digest.Repository, p.se, ropts...); err != nil {
			return fmt.Errorf("writing the signature of %s: %w", p.digest, err)
		}
		if o.Attest {
			if err := ociremote.WriteAttestations(p.digest.Repository, p.se, ropts...); err != nil {
				return fmt.Errorf("writing the attestation of %s: %w", p.digest, err)
			}
		}
		log.Info("signed", "image", p.digest.String(), "attested", o.Attest)
	}
	return nil
}

// signer loads the signing identity without revealing it in errors.
func (o Options) signer(ctx context.Context) (signature.SignerVerifier, error) {
	switch {
	case o.Key != "" && o.IdentityTokenFile != "":
		return nil, errors.New("give a key or a keyless identity, not both")
	case o.Key != "":
		if !strings.Contains(o.Key, "://") {
			if _, err := os.Stat(o.Key); err != nil {
				return nil, fmt.Errorf("--key %s: %w", o.Key, err)
			}
		}
		pf := func(bool) ([]byte, error) { return o.Password, nil }
		sv, err := sigs.SignerVerifierFromKeyRef(ctx, o.Key, pf, nil)
		if err != nil {
			msg := err.Error()
			if o.Password != nil {
				msg = strings.ReplaceAll(msg, string(o.Password), "***")
			}
			if strings.Contains(msg, "decrypt") {
				return nil, fmt.Errorf("--key %s: cannot decrypt the key: wrong COSIGN_PASSWORD? (%s)", o.Key, msg)
			}
			return nil, fmt.Errorf("--key %s: %s", o.Key, msg)
		}
		return sv, nil
	case o.IdentityTokenFile != "":
		tok, err := os.ReadFile(o.IdentityTokenFile)
		if err != nil || len(bytes.TrimSpace(tok)) == 0 {
			return nil, fmt.Errorf("--identity-token-file %s: no OIDC token there (%v)", o.IdentityTokenFile, err)
		}
		fulcio := o.FulcioURL
		if fulcio == "" {
			fulcio = "https://fulcio.sigstore.dev"
		}
		client := &http.Client{Timeout: 10 * time.Second}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(fulcio, "/")+"/api/v2/configuration", nil)
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("keyless signing: Fulcio at %s is unreachable: %v", fulcio, err)
		}
		resp.Body.Close()
		return nil, fmt.Errorf("keyless signing through Fulcio (%s) is not supported yet", fulcio)
	}
	return nil, errors.New("no signing identity: give --key (a file, k8s://, or a KMS URI) or --identity-token-file")
}

// signImage makes a cosign "simple signing" signature of digest.
func signImage(ctx context.Context, sv signature.SignerVerifier, digest name.Digest) (oci.Signature, error) {
	pl, err := (&payload.Cosign{Image: digest}).MarshalJSON()
	if err != nil {
		return nil, err
	}
	raw, err := sv.SignMessage(bytes.NewReader(pl), sigopts.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", digest, err)
	}
	return static.NewSignature(pl, base64.StdEncoding.EncodeToString(raw))
}

// attestation makes the DSSE-wrapped SLSA provenance statement of digest.
func (o Options) attestation(ctx context.Context, sv signature.SignerVerifier, digest name.Digest) (oci.Signature, error) {
	pred, err := json.Marshal(NewPredicate(o.Record, o.BuilderID, o.InvocationID))
	if err != nil {
		return nil, err
	}
	h := strings.TrimPrefix(digest.DigestStr(), "sha256:")
	st, err := attestation.GenerateStatement(attestation.GenerateOpts{
		Predicate: bytes.NewReader(pred), Type: "slsaprovenance1", Digest: h, Repo: digest.Repository.String(),
	})
	if err != nil {
		return nil, err
	}
	pl, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	env, err := dsse.WrapSigner(sv, types.IntotoPayloadType).SignMessage(bytes.NewReader(pl), sigopts.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("attesting %s: %w", digest, err)
	}
	return static.NewAttestation(env, static.WithLayerMediaType(types.DssePayloadType),
		static.WithAnnotations(map[string]string{"predicateType": PredicateType}))
}
