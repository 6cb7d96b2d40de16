// Package indexopt holds the index step's flags.
package indexopt

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/imageindex"
	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/output"
	"github.com/kilnbuild/kiln/internal/registry"
)

// Index holds the index step's flags.
type Index struct {
	Destinations, Images, BuildRecords, Annotations []string
	DigestFile, ImageNameWithDigestFile             string
	ImageNameTagWithDigestFile, OutputRecord        string
	OCILayoutPath                                   string
	PushRetry                                       int
	KanikoDir                                       string
	Registry                                        options.RegistryFlags
	Log                                             options.LogFlags
}

// AddFlags registers the index flags.
func (x *Index) AddFlags(fs *pflag.FlagSet, getenv func(string) string) {
	fs.StringArrayVarP(&x.Destinations, "destination", "d", nil, "Where to push the index (repository:tag); repeatable. Required.")
	fs.StringArrayVarP(&x.Images, "image", "i", nil, "An image to join, as REPOSITORY@sha256:… (or a bare sha256:… in the first destination's repository, or a JSON array of these, as Argo aggregates a fan-out's outputs); an image index contributes its images; repeatable. Arguments count as --image too.")
	fs.StringArrayVar(&x.BuildRecords, "build-record", nil, "A build record (build.json) whose pushed image joins, or a glob pattern of them (platforms/*.json, as a matrix's artifacts arrive); repeatable.")
	fs.StringArrayVar(&x.Annotations, "annotation", nil, "KEY=VALUE annotation on the index; repeatable.")
	fs.StringVar(&x.DigestFile, "digest-file", "", "Write the index digest (sha256:..., no newline) to this file.")
	fs.StringVar(&x.ImageNameWithDigestFile, "image-name-with-digest-file", "", "Write repo@digest, one line per destination, to this file.")
	fs.StringVar(&x.ImageNameTagWithDigestFile, "image-name-tag-with-digest-file", "", "Write repo:tag@digest, one line per destination, to this file.")
	fs.StringVar(&x.OutputRecord, "output-record", "", "Write the index's build record (build.json: the index and each platform's image) here, for sign and emit-results.")
	fs.StringVar(&x.OCILayoutPath, "oci-layout-path", "", "Also write the index and its images into this OCI image layout directory.")
	fs.IntVar(&x.PushRetry, "push-retry", 0, "Retries for each push, with exponential backoff from 1s.")
	kdir := getenv("KANIKO_DIR")
	if kdir == "" {
		kdir = "/kaniko"
	}
	fs.StringVar(&x.KanikoDir, "kaniko-dir", kdir, "kiln's directory: .docker/config.json is looked up there.")
	x.Registry.AddFlags(fs, getenv)
	x.Log.AddFlags(fs)
}

// Options validates the flags and returns the engine's options; args are
// the command line's arguments (more images).
func (x *Index) Options(args []string, getenv func(string) string, log *slog.Logger) (imageindex.Options, error) {
	if len(x.Destinations) == 0 {
		return imageindex.Options{}, errors.New("no --destination given: name where the index goes")
	}
	images := append(append([]string(nil), x.Images...), args...)
	if len(images) == 0 && len(x.BuildRecords) == 0 {
		return imageindex.Options{}, errors.New("no image to join: name them with --image REPOSITORY@DIGEST, as arguments, or with --build-record")
	}
	annotations := map[string]string{}
	for _, a := range x.Annotations {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return imageindex.Options{}, fmt.Errorf("--annotation %q: want KEY=VALUE", a)
		}
		annotations[k] = v
	}
	ro, err := x.Registry.RegistryOptions(getenv, x.KanikoDir, log)
	if err != nil {
		return imageindex.Options{}, err
	}
	// The images are read where the index goes: --insecure and
	// --skip-tls-verify cover both.
	ro.InsecurePull = ro.InsecurePull || ro.Insecure
	ro.SkipTLSVerifyPull = ro.SkipTLSVerifyPull || ro.SkipTLSVerify
	ro.PushRetry = x.PushRetry
	client, err := registry.New(ro)
	if err != nil {
		return imageindex.Options{}, err
	}
	var dests []name.Reference
	for _, d := range x.Destinations {
		ref, err := client.ParseReference(d, true)
		if err != nil {
			return imageindex.Options{}, fmt.Errorf("--destination %q: %w", d, err)
		}
		dests = append(dests, ref)
	}
	return imageindex.Options{
		Images: images, Records: x.BuildRecords, Annotations: annotations,
		Output: output.Options{
			Destinations: dests, DigestFile: x.DigestFile, OCILayoutPath: x.OCILayoutPath,
			ImageNameWithDigestFile: x.ImageNameWithDigestFile, ImageNameTagWithDigestFile: x.ImageNameTagWithDigestFile,
			BuildRecord: x.OutputRecord,
		},
		Registry: client, Pusher: client, Logger: log,
	}, nil
}
