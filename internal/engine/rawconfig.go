package engine

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// withHealthStartInterval returns img with Healthcheck.StartInterval set in
// its config. ggcr's config type has no such field, so the raw JSON is
// patched and the manifest rewritten to point at it.
func withHealthStartInterval(img v1.Image, d time.Duration) (v1.Image, error) {
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, err
	}
	var inner map[string]json.RawMessage
	if err := json.Unmarshal(cfg["config"], &inner); err != nil {
		return nil, err
	}
	var hc map[string]json.RawMessage
	if err := json.Unmarshal(inner["Healthcheck"], &hc); err != nil {
		return nil, fmt.Errorf("config has no Healthcheck: %w", err)
	}
	hc["StartInterval"], _ = json.Marshal(int64(d))
	inner["Healthcheck"], _ = json.Marshal(hc)
	cfg["config"], _ = json.Marshal(inner)
	patched, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	return newRawConfigImage(img, patched)
}

// healthStartInterval reads Healthcheck.StartInterval from img's raw
// config, or 0.
func healthStartInterval(img v1.Image) time.Duration {
	raw, err := img.RawConfigFile()
	if err != nil {
		return 0
	}
	var cfg struct {
		Config struct {
			Healthcheck *struct {
				StartInterval time.Duration `json:"StartInterval"`
			} `json:"Healthcheck"`
		} `json:"config"`
	}
	if json.Unmarshal(raw, &cfg) != nil || cfg.Config.Healthcheck == nil {
		return 0
	}
	return cfg.Config.Healthcheck.StartInterval
}

// rawConfigImage is an image whose config blob is replaced.
type rawConfigImage struct {
	v1.Image
	config   []byte
	manifest []byte
}

func newRawConfigImage(base v1.Image, config []byte) (*rawConfigImage, error) {
	m, err := base.Manifest()
	if err != nil {
		return nil, err
	}
	m = m.DeepCopy()
	sum := sha256.Sum256(config)
	m.Config.Digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	m.Config.Size = int64(len(config))
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &rawConfigImage{Image: base, config: config, manifest: raw}, nil
}

var _ v1.Image = (*rawConfigImage)(nil)

func (r *rawConfigImage) RawConfigFile() ([]byte, error) { return r.config, nil }
func (r *rawConfigImage) RawManifest() ([]byte, error)   { return r.manifest, nil }

func (r *rawConfigImage) ConfigFile() (*v1.ConfigFile, error) {
	return v1.ParseConfigFile(bytes.NewReader(r.config))
}

func (r *rawConfigImage) ConfigName() (v1.Hash, error) {
	sum := sha256.Sum256(r.config)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, nil
}

func (r *rawConfigImage) Manifest() (*v1.Manifest, error) {
	return v1.ParseManifest(bytes.NewReader(r.manifest))
}

func (r *rawConfigImage) Digest() (v1.Hash, error) {
	sum := sha256.Sum256(r.manifest)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, nil
}

func (r *rawConfigImage) Size() (int64, error) { return int64(len(r.manifest)), nil }

func (r *rawConfigImage) MediaType() (types.MediaType, error) { return r.Image.MediaType() }

func (r *rawConfigImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	if name, _ := r.ConfigName(); h == name {
		return partial.ConfigLayer(r)
	}
	return r.Image.LayerByDigest(h)
}
