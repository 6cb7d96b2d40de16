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

	"github.com/kilnbuild/kiln/internal/option"
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
		return option.New("OCILayoutPath", src, err)
	}
	// The record's digest is an image's, or an image index's (several
	// platforms): the layout's index.json says which.
	var se oci.SignedEntity
	if len(o.Record.Manifests) > 0 {
		idx, err := p.ImageIndex()
		if err == nil {
			var child v1.ImageIndex
			if child, err = idx.ImageIndex(h); err == nil {
				se = signed.ImageIndex(child)
			}
		}
		if err != nil {
			return option.Errorf("OCILayoutPath", src, "does not hold the image index %s: %w", h, err)
		}
	} else {
		img, err := p.Image(h)
		if err != nil {
			return option.Errorf("OCILayoutPath", src, "does not hold %s: %w", h, err)
		}
		se = signed.Image(img)
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
	sig, err := signImage(ctx, id, digest)
	if err != nil {
		return err
	}
	if se, err = mutate.AttachSignatureToEntity(se, sig); err != nil {
		return err
	}
	if o.Attest {
		att, err := o.attestation(ctx, id, digest)
		if err != nil {
			return err
		}
		if se, err = mutate.AttachAttestationToEntity(se, att); err != nil {
			return err
		}
	}
	if _, err := os.Stat(dst); err == nil {
		return option.Errorf("SignedLayoutPath", dst, "already exists")
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".kiln-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	switch se := se.(type) {
	case oci.SignedImageIndex:
		err = cosignlayout.WriteSignedImageIndex(tmp, se)
	case oci.SignedImage:
		err = cosignlayout.WriteSignedImage(tmp, se)
	}
	if err != nil {
		return fmt.Errorf("writing the signed layout: %w", err)
	}
	return os.Rename(tmp, dst)
}
