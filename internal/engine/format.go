package engine

import (
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// convertFormat gives img the media types of format ("docker": schema 2,
// "oci"): manifest, config and every layer, the layers' bytes (and so
// their digests) unchanged. A zstd layer has no Docker media type.
func convertFormat(img v1.Image, format string) (v1.Image, error) {
	mt, err := img.MediaType()
	if err != nil {
		return nil, err
	}
	oci := format == "oci"
	if (mt == types.OCIManifestSchema1) == oci {
		return img, nil
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	out := empty.Image
	if oci {
		out = mutate.ConfigMediaType(mutate.MediaType(out, types.OCIManifestSchema1), types.OCIConfigJSON)
	} else {
		out = mutate.ConfigMediaType(mutate.MediaType(out, types.DockerManifestSchema2), types.DockerConfigJSON)
	}
	for i, l := range layers {
		lmt, err := l.MediaType()
		if err != nil {
			return nil, err
		}
		var to types.MediaType
		switch lmt {
		case types.DockerLayer, types.OCILayer:
			to = types.DockerLayer
			if oci {
				to = types.OCILayer
			}
		case types.OCILayerZStd:
			if !oci {
				return nil, fmt.Errorf("layer %d is zstd-compressed, which Docker's schema 2 cannot hold", i)
			}
			to = lmt
		case types.DockerForeignLayer, types.OCIRestrictedLayer:
			return nil, fmt.Errorf("layer %d is a foreign layer (%s)", i, lmt)
		default:
			return nil, errors.New("layer " + fmt.Sprint(i) + " has media type " + string(lmt))
		}
		if out, err = mutate.Append(out, mutate.Addendum{Layer: l, MediaType: to}); err != nil {
			return nil, err
		}
	}
	if out, err = mutate.ConfigFile(out, cf); err != nil {
		return nil, err
	}
	// ggcr's config type has no HEALTHCHECK --start-interval: carry it over.
	if d := healthStartInterval(img); d > 0 {
		return withHealthStartInterval(out, d)
	}
	return out, nil
}
