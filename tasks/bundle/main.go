// Command bundle publishes kiln's Tekton catalog as a Tekton bundle:
//
//	go run ./tasks/bundle --ref registry.example.com/tekton/kiln:0.1
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kilnbuild/kiln/tasks"
)

func main() {
	ref := flag.String("ref", "", "where to push the bundle")
	insecure := flag.Bool("insecure", false, "allow plain HTTP")
	images := flag.String("images", "", "the release's image list (ko build's output) to pin the step images by digest")
	flag.Parse()
	if err := push(*ref, *insecure, *images); err != nil {
		fmt.Fprintln(os.Stderr, "bundle:", err)
		os.Exit(1)
	}
}

func push(ref string, insecure bool, images string) error {
	if ref == "" {
		return fmt.Errorf("--ref is required")
	}
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return err
	}
	var pins map[string]string
	if images != "" {
		data, err := os.ReadFile(images)
		if err != nil {
			return err
		}
		if pins, err = tasks.ParsePins(string(data)); err != nil {
			return fmt.Errorf("--images %s: %w", images, err)
		}
	}
	img, err := tasks.Bundle(pins)
	if err != nil {
		return err
	}
	if err := remote.Write(r, img, remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return err
	}
	d, _ := img.Digest()
	fmt.Println(r.Context().Name() + "@" + d.String())
	return nil
}
