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
	flag.Parse()
	if err := push(*ref, *insecure); err != nil {
		fmt.Fprintln(os.Stderr, "bundle:", err)
		os.Exit(1)
	}
}

func push(ref string, insecure bool) error {
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
	img, err := tasks.Bundle()
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
