package buildopt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/internal/options"
	"github.com/kilnbuild/kiln/internal/output"
	"github.com/kilnbuild/kiln/internal/record"
	"github.com/kilnbuild/kiln/internal/registry"
)

// Subcommands are kaniko v1.28's executor subcommands: version, login
// and push.
var Subcommands = []string{"version", "login", "push"}

// Version is the text `build version` and `build --version` print.
func Version() string { return record.BuilderVersion() }

// Login is `login REGISTRY -u USER (-p PASSWORD | --password-stdin)`.
type Login struct {
	Username, Password string
	PasswordStdin      bool
	KanikoDir          string
}

// RunLogin parses and runs login, returning the exit code.
func RunLogin(args []string, stdin io.Reader, stderr io.Writer, getenv func(string) string) int {
	fs := pflag.NewFlagSet("login", pflag.ContinueOnError)
	var l Login
	fs.StringVarP(&l.Username, "username", "u", "", "Username for the registry.")
	fs.StringVarP(&l.Password, "password", "p", "", "Password for the registry (prefer --password-stdin).")
	fs.BoolVar(&l.PasswordStdin, "password-stdin", false, "Read the password from standard input.")
	kdir := getenv("KANIKO_DIR")
	if kdir == "" {
		kdir = "/kaniko"
	}
	fs.StringVar(&l.KanikoDir, "kaniko-dir", kdir, "kiln's directory: credentials go to its .docker/config.json unless DOCKER_CONFIG is set.")
	if code, done := options.ParseWithArgs(fs, "Usage: build login REGISTRY -u USER (-p PASSWORD | --password-stdin)\n\nStores registry credentials where build reads them.", args, stderr); done {
		return code
	}
	err := func() error {
		if fs.NArg() != 1 {
			return errors.New("name one registry")
		}
		if l.Username == "" {
			return errors.New("--username is required")
		}
		if (l.Password == "") == !l.PasswordStdin {
			return errors.New("give the password with --password or --password-stdin, not both")
		}
		if l.PasswordStdin {
			data, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
			if err != nil {
				return err
			}
			l.Password = strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
			if l.Password == "" {
				return errors.New("the password on standard input is empty")
			}
		}
		return registry.Login(registry.LoginDir(getenv, l.KanikoDir), fs.Arg(0), l.Username, l.Password)
	}()
	if err != nil {
		return options.Refuse(nil, stderr, "login", err)
	}
	return 0
}

// RunPush is `push PATH -d DEST...`: a docker tarball (a file) or an OCI
// layout (a directory) built earlier, pushed like a build's image.
func RunPush(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) int {
	fs := pflag.NewFlagSet("push", pflag.ContinueOnError)
	var reg options.RegistryFlags
	var log options.LogFlags
	var dests []string
	var skipCheck bool
	var pushRetry int
	reg.AddFlags(fs, getenv)
	log.AddFlags(fs)
	fs.StringArrayVarP(&dests, "destination", "d", nil, "Image reference to push to; repeatable.")
	fs.BoolVar(&skipCheck, "skip-push-permission-check", false, "Do not check that every destination accepts a push first.")
	fs.IntVar(&pushRetry, "push-retry", 0, "Retries for each push, with exponential backoff from 1s.")
	kdir := getenv("KANIKO_DIR")
	if kdir == "" {
		kdir = "/kaniko"
	}
	if code, done := options.ParseWithArgs(fs, "Usage: build push PATH -d DESTINATION...\n\nPushes a docker tarball or an OCI layout built earlier.", args, stderr); done {
		return code
	}
	l, err := log.Logger(stderr, getenv)
	if err != nil {
		return options.Refuse(nil, stderr, "push", err)
	}
	if fs.NArg() != 1 || len(dests) == 0 {
		return options.Refuse(l, stderr, "push", errors.New("name one image path and at least one --destination"))
	}
	ro, err := reg.RegistryOptions(getenv, kdir, l)
	if err != nil {
		return options.Refuse(l, stderr, "push", err)
	}
	ro.PushRetry = pushRetry
	client, err := registry.New(ro)
	if err != nil {
		return options.Refuse(l, stderr, "push", err)
	}
	var refs []name.Reference
	for _, d := range dests {
		r, err := client.ParseReference(d, true)
		if err != nil {
			return options.Refuse(l, stderr, "push", fmt.Errorf("--destination %q: %w", d, err))
		}
		refs = append(refs, r)
	}
	if err := push(ctx, fs.Arg(0), refs, skipCheck, client, l); err != nil {
		return options.Fail(l, "push", err)
	}
	return 0
}

func push(ctx context.Context, path string, refs []name.Reference, skipCheck bool, client *registry.Client, log *slog.Logger) error {
	img, err := loadImage(path)
	if err != nil {
		return err
	}
	if !skipCheck {
		for _, r := range refs {
			if err := client.CheckPush(ctx, r); err != nil {
				return fmt.Errorf("--destination %s: %w", r, err)
			}
		}
	}
	return output.Write(ctx, img, output.Options{Destinations: refs}, client, log)
}

// loadImage reads the image at path: an OCI layout's one image, or a
// docker tarball's.
func loadImage(path string) (v1.Image, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	if !fi.IsDir() {
		img, err := tarball.ImageFromPath(path, nil)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", path, err)
		}
		return img, nil
	}
	p, err := layout.FromPath(filepath.Clean(path))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	if len(m.Manifests) != 1 {
		return nil, fmt.Errorf("image %s: the layout holds %d images; push takes a layout of one", path, len(m.Manifests))
	}
	return idx.Image(m.Manifests[0].Digest)
}
