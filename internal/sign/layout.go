package sign

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/sigstore/cosign/v2/pkg/oci"
	cosignlayout "github.com/sigstore/cosign/v2/pkg/oci/layout"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	"github.com/sigstore/cosign/v2/pkg/oci/signed"
)

// SignLayout signs the built image held in the OCI layout src (a --no-push
// build's hand-over) and writes it, its signature and its provenance as a
// cosign layout at dst, which `cosign load --dir` pushes later. dst is
// renamed into place only when complete.
func SignLayout(ctx context.Context, o Options, src, dst string) error {
	if o.Record == nil || o.Record.Digest == "" {
		return errors.New("the build record names no image digest")
	}
	h, err := v1.NewHash(o.Record.Digest)
	if err != nil {
		return err
	}
	p, err := layout.FromPath(src)
	if err != nil {
		return fmt.Errorf("--oci-layout-path %s: %w", src, err)
	}
	img, err := p.Image(h)
	if err != nil {
		return fmt.Errorf("--oci-layout-path %s does not hold %s: %w", src, h, err)
	}
	id, err := o.identity(ctx)
	if err != nil {
		return err
	}
	// The signed payload names the image by the repository it is meant for.
	repo := "kiln.local/image"
	if len(o.Record.Images) > 0 {
		if r, err := name.ParseReference(o.Record.Images[0].Ref, o.NameOptions...); err == nil {
			repo = r.Context().Name()
		}
	}
	digest, err := name.NewDigest(repo+"@"+h.String(), o.NameOptions...)
	if err != nil {
		return err
	}
	var si oci.SignedImage = signed.Image(img)
	sig, err := signImage(ctx, id, digest)
	if err != nil {
		return err
	}
	if si, err = mutate.AttachSignatureToImage(si, sig); err != nil {
		return err
	}
	if o.Attest {
		att, err := o.attestation(ctx, id, digest)
		if err != nil {
			return err
		}
		if si, err = mutate.AttachAttestationToImage(si, att); err != nil {
			return err
		}
	}
	if _, err := os.Stat(dst); err == nil {
		return fmt.Errorf("--signed-layout-path %s already exists", dst)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".kiln-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := cosignlayout.WriteSignedImage(tmp, si); err != nil {
		return fmt.Errorf("writing the signed layout: %w", err)
	}
	return os.Rename(tmp, dst)
}
