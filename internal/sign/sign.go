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
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/in-toto/in-toto-golang/in_toto"
	"github.com/sigstore/cosign/v2/pkg/cosign/attestation"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"github.com/sigstore/cosign/v2/pkg/types"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
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
	// IdentityTokenFile (an OIDC token, e.g. a projected service account
	// token) and FulcioURL configure keyless signing: an ephemeral key
	// certified by Fulcio for the token's identity.
	IdentityTokenFile, FulcioURL string
	// InsecureSkipSCTVerify accepts a Fulcio certificate without checking
	// its certificate transparency timestamp (private Fulcio, testing).
	InsecureSkipSCTVerify bool
	// TlogUpload enters every signature and attestation in the Rekor
	// transparency log at RekorURL, the entry kept in the signature
	// (cosign's bundle) for offline verification.
	TlogUpload bool
	RekorURL   string
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

// Sign signs every image of the record (and attests it); for an image
// index, the index and each platform's image, as `cosign sign --recursive`
// does, the provenance naming them all as its subjects. Everything is
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
		return errors.New("the build record names no pushed image to sign (sign a build made with option NoPush from its layout, with option OCILayoutPath and option SignedLayoutPath)")
	}
	id, err := o.identity(ctx)
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
		digests := []name.Digest{ref.Context().Digest(im.Digest)}
		for _, m := range o.Record.Manifests {
			digests = append(digests, ref.Context().Digest(m.Digest))
		}
		for _, digest := range digests {
			se, err := ociremote.SignedEntity(digest, ropts...)
			if err != nil {
				return fmt.Errorf("reading %s: %w", digest, err)
			}
			sig, err := signImage(ctx, id, digest)
			if err != nil {
				return err
			}
			if se, err = mutate.AttachSignatureToEntity(se, sig); err != nil {
				return err
			}
			if o.Attest {
				att, err := o.attestation(ctx, id, digests[0])
				if err != nil {
					return err
				}
				if se, err = mutate.AttachAttestationToEntity(se, att); err != nil {
					return err
				}
			}
			prepared = append(prepared, preparedSig{digest, se})
		}
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

// signImage makes a cosign "simple signing" signature of digest, entered
// in the transparency log when id has one.
func signImage(ctx context.Context, id *identity, digest name.Digest) (oci.Signature, error) {
	pl, err := (&payload.Cosign{Image: digest}).MarshalJSON()
	if err != nil {
		return nil, err
	}
	raw, err := id.sv.SignMessage(bytes.NewReader(pl), sigopts.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", digest, err)
	}
	opts := id.staticOptions()
	if id.tlog != nil {
		b, err := id.tlog.uploadSignature(ctx, id.verifier, raw, pl)
		if err != nil {
			return nil, fmt.Errorf("signing %s: %w", digest, err)
		}
		opts = append(opts, static.WithBundle(b))
	}
	return static.NewSignature(pl, base64.StdEncoding.EncodeToString(raw), opts...)
}

// attestation makes the DSSE-wrapped SLSA provenance statement of digest,
// entered in the transparency log when id has one.
func (o Options) attestation(ctx context.Context, id *identity, digest name.Digest) (oci.Signature, error) {
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
	// An image index's provenance is also each platform image's.
	if ps, ok := st.(in_toto.ProvenanceStatementSLSA1); ok {
		for _, m := range o.Record.Manifests {
			ps.Subject = append(ps.Subject, in_toto.Subject{Name: digest.Repository.String(), Digest: digestMap(m.Digest)})
		}
		st = ps
	}
	pl, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	env, err := dsse.WrapSigner(id.sv, types.IntotoPayloadType).SignMessage(bytes.NewReader(pl), sigopts.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("attesting %s: %w", digest, err)
	}
	opts := append(id.staticOptions(), static.WithLayerMediaType(types.DssePayloadType),
		static.WithAnnotations(map[string]string{"predicateType": PredicateType}))
	if id.tlog != nil {
		b, err := id.tlog.uploadAttestation(ctx, id.verifier, env)
		if err != nil {
			return nil, fmt.Errorf("attesting %s: %w", digest, err)
		}
		opts = append(opts, static.WithBundle(b))
	}
	return static.NewAttestation(env, opts...)
}
