// Command debugimage publishes kiln's build step image as kaniko users
// expect it (/kaniko/executor, /kaniko/ssl/certs, /kaniko/.docker) and its
// -debug variant, for CI systems that run a job's script in the build
// container (GitLab CI, Buildkite): the same plus a busybox shell under
// /busybox and the emit-results and index binaries.
//
//	KO_CONFIG_PATH=ko.yaml ko build --bare ./cmd/build         # -> BUILD
//	KO_CONFIG_PATH=ko.yaml ko build --bare ./cmd/emit-results  # -> EMIT
//	KO_CONFIG_PATH=ko.yaml ko build --bare ./cmd/index         # -> INDEX
//	go run ./tasks/debugimage --build BUILD --shell none --tag ghcr.io/kilnbuild/kiln/build:0.1
//	go run ./tasks/debugimage --build BUILD --add EMIT --add INDEX \
//	    --shell gcr.io/distroless/static-debian12:debug --tag ghcr.io/kilnbuild/kiln/build:0.1-debug
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kilnbuild/kiln/internal/release"
)

type refs []string

func (r *refs) String() string     { return strings.Join(*r, ",") }
func (r *refs) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	build := flag.String("build", "", "the build step image (ko-built; an index or an image)")
	shell := flag.String("shell", "gcr.io/distroless/static-debian12:debug", "an image holding a static busybox under /busybox; none publishes the build image without it")
	tag := flag.String("tag", "", "where to push the -debug image")
	insecure := flag.Bool("insecure", false, "allow plain HTTP registries")
	var extras refs
	flag.Var(&extras, "add", "a ko-built step image whose /ko-app binaries to add (repeatable)")
	flag.Parse()
	if err := run(*build, *shell, *tag, extras, *insecure); err != nil {
		fmt.Fprintln(os.Stderr, "debugimage:", err)
		os.Exit(1)
	}
}

func run(build, shell, tag string, extras []string, insecure bool) error {
	if build == "" || tag == "" {
		return fmt.Errorf("--build and --tag are required")
	}
	var nopts []name.Option
	if insecure {
		nopts = append(nopts, name.Insecure)
	}
	ropts := []remote.Option{remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	index := func(flagName, s string) (v1.ImageIndex, error) {
		ref, err := name.ParseReference(s, nopts...)
		if err != nil {
			return nil, fmt.Errorf("--%s %q: %w", flagName, s, err)
		}
		desc, err := remote.Get(ref, ropts...)
		if err != nil {
			return nil, fmt.Errorf("--%s %s: %w", flagName, s, err)
		}
		if desc.MediaType.IsIndex() {
			return desc.ImageIndex()
		}
		img, err := desc.Image()
		if err != nil {
			return nil, err
		}
		return release.IndexOf(img)
	}
	b, err := index("build", build)
	if err != nil {
		return err
	}
	if b, err = release.KanikoLayout(b); err != nil {
		return err
	}
	if shell == "none" {
		return push(tag, b, nopts, ropts)
	}
	sh, err := index("shell", shell)
	if err != nil {
		return err
	}
	var xs []v1.ImageIndex
	for _, x := range extras {
		xi, err := index("add", x)
		if err != nil {
			return err
		}
		xs = append(xs, xi)
	}
	debug, err := release.DebugImage(b, sh, xs...)
	if err != nil {
		return err
	}
	return push(tag, debug, nopts, ropts)
}

func push(tag string, idx v1.ImageIndex, nopts []name.Option, ropts []remote.Option) error {
	ref, err := name.ParseReference(tag, nopts...)
	if err != nil {
		return fmt.Errorf("--tag %q: %w", tag, err)
	}
	if err := remote.WriteIndex(ref, idx, ropts...); err != nil {
		return fmt.Errorf("pushing %s: %w", ref, err)
	}
	d, _ := idx.Digest()
	fmt.Println(ref.Context().Name() + "@" + d.String())
	return nil
}
