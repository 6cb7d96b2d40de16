package tekton

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"sigs.k8s.io/yaml"
)

// TestKoReadsKoYAML builds a step image with ko (a tool dependency of this
// module) through KO_CONFIG_PATH=ko.yaml, against a local registry holding
// a two-platform base the test provides (nothing comes from the internet),
// and checks ko.yaml's settings took effect.
func TestKoReadsKoYAML(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	reg := strings.TrimPrefix(srv.URL, "http://")
	baseRef, _ := name.ParseReference(reg + "/base:static")
	if err := remote.WriteIndex(baseRef, twoPlatformBase(t)); err != nil {
		t.Fatal(err)
	}
	ko := buildKo(t)
	cmd := exec.Command(ko, "build", "--bare", "./cmd/emit-results")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "KO_CONFIG_PATH=ko.yaml", "KO_DOCKER_REPO="+reg+"/kiln/emit-results",
		"KO_DEFAULTBASEIMAGE="+reg+"/base:static", "HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ko build: %v\n%s", err, out)
	}
	ref, err := name.ParseReference(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("ko printed %q: %v", out, err)
	}
	idx, err := remote.Index(ref)
	if err != nil {
		t.Fatalf("ko did not push an index (ko.yaml's defaultPlatforms): %v", err)
	}
	im, _ := idx.IndexManifest()
	var platforms []string
	for _, m := range im.Manifests {
		if m.Platform != nil {
			platforms = append(platforms, m.Platform.OS+"/"+m.Platform.Architecture)
		}
	}
	if strings.Join(platforms, ",") != "linux/amd64,linux/arm64" {
		t.Errorf("platforms %v, want ko.yaml's linux/amd64 and linux/arm64", platforms)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	if len(cf.Config.Entrypoint) == 0 || cf.Config.Entrypoint[0] != "/ko-app/emit-results" {
		t.Errorf("entrypoint %v", cf.Config.Entrypoint)
	}
}

// twoPlatformBase is a linux/amd64 + linux/arm64 base image index.
func twoPlatformBase(t *testing.T) gcrv1.ImageIndex {
	var adds []mutate.IndexAddendum
	for _, arch := range []string{"amd64", "arm64"} {
		img, _ := random.Image(64, 1)
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", arch
		img, _ = mutate.ConfigFile(img, cf)
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: gcrv1.Descriptor{Platform: &gcrv1.Platform{OS: "linux", Architecture: arch}}})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
}

// buildKo builds ko, a tool dependency of this module.
func buildKo(t *testing.T) string {
	ko := filepath.Join(t.TempDir(), "ko")
	build := exec.Command("go", "build", "-o", ko, "github.com/google/ko")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building ko: %v\n%s", err, out)
	}
	return ko
}

// tlsCert writes a self-signed CA certificate for 127.0.0.1 and names,
// returning its file and the key pair to serve with.
func tlsCert(t *testing.T, dir string, names ...string) (string, tls.Certificate) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kiln test registry"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: names,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	file := filepath.Join(dir, "ca.pem")
	os.WriteFile(file, certPEM, 0o644)
	kder, _ := x509.MarshalECPrivateKey(key)
	pair, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	if err != nil {
		t.Fatal(err)
	}
	return file, pair
}

// TestKoResolveTasks runs `ko resolve -f tasks/` with ko.yaml as it is
// (for linux/amd64 only: TestKoReadsKoYAML checks ko.yaml's platforms):
// its base image (gcr.io/distroless/...) is
// served by a local TLS registry that the names resolve to inside a
// private mount namespace (its own /etc/hosts), so nothing reaches the
// internet. Every ko:// image becomes a digest reference that the registry
// holds, and each step's command is its image's entrypoint, so Tekton needs
// no registry lookup.
func TestKoResolveTasks(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("unshare (util-linux) is required: %v", err)
	}
	dir := t.TempDir()
	caFile, cert := tlsCert(t, dir, "gcr.io")
	srv := httptest.NewUnstartedServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	l, err := net.Listen("tcp", "127.0.0.1:443")
	if err != nil {
		t.Fatalf("the registry standing in for gcr.io needs 127.0.0.1:443: %v", err)
	}
	srv.Listener = l
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(caFile)
	pool.AppendCertsFromPEM(caPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	base := twoPlatformBase(t)
	for _, repo := range []string{"distroless/static-debian12:latest"} {
		ref, _ := name.ParseReference("127.0.0.1:443/" + repo)
		if err := remote.WriteIndex(ref, base, remote.WithTransport(tr)); err != nil {
			t.Fatal(err)
		}
	}
	hosts := filepath.Join(dir, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost gcr.io\n"), 0o644)

	ko := buildKo(t)
	goEnv := func(k string) string {
		out, _ := exec.Command("go", "env", k).Output()
		return strings.TrimSpace(string(out))
	}
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$KILN_HOSTS" /etc/hosts && exec "$@"`, "sh", ko, "resolve", "--base-import-paths", "--platform=linux/amd64", "-f", "tasks/")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "KO_CONFIG_PATH=ko.yaml", "KO_DOCKER_REPO=127.0.0.1:443/kiln", "SSL_CERT_FILE="+caFile,
		"KILN_HOSTS="+hosts, "HOME="+t.TempDir(), "GOCACHE="+goEnv("GOCACHE"), "GOMODCACHE="+goEnv("GOMODCACHE"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ko resolve: %v\n%s", err, stderr.String())
	}
	if bytes.Contains(out, []byte("ko://")) {
		t.Errorf("ko:// references left:\n%s", out)
	}
	docs := bytes.Split(out, []byte("\n---\n"))
	steps := 0
	for _, doc := range docs {
		var res struct {
			Kind string `json:"kind"`
			Spec struct {
				Image   string   `json:"image"`
				Command []string `json:"command"`
				Params  []struct {
					Name    string `json:"name"`
					Default any    `json:"default"`
				} `json:"params"`
				Steps []struct {
					Name    string   `json:"name"`
					Image   string   `json:"image"`
					Command []string `json:"command"`
				} `json:"steps"`
				// A Pipeline's inline Tasks.
				Tasks []struct {
					TaskSpec *struct {
						Steps []struct {
							Name    string   `json:"name"`
							Image   string   `json:"image"`
							Command []string `json:"command"`
						} `json:"steps"`
					} `json:"taskSpec"`
				} `json:"tasks"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(doc, &res); err != nil {
			t.Fatalf("resolved YAML: %v\n%s", err, doc)
		}
		type step struct {
			name, image string
			command     []string
		}
		var all []step
		if res.Kind == "StepAction" {
			all = append(all, step{"stepaction", res.Spec.Image, res.Spec.Command})
		}
		for _, s := range res.Spec.Steps {
			img := s.Image
			for _, p := range res.Spec.Params {
				if d, ok := p.Default.(string); ok && img == "$(params."+p.Name+")" {
					img = d
				}
			}
			all = append(all, step{s.Name, img, s.Command})
		}
		for _, pt := range res.Spec.Tasks {
			if pt.TaskSpec != nil {
				for _, s := range pt.TaskSpec.Steps {
					all = append(all, step{s.Name, s.Image, s.Command})
				}
			}
		}
		for _, s := range all {
			steps++
			ref, err := name.NewDigest(s.image)
			if err != nil || !strings.HasPrefix(s.image, "127.0.0.1:443/kiln/") {
				t.Errorf("%s %s: image %q is not a digest reference in KO_DOCKER_REPO (%v)", res.Kind, s.name, s.image, err)
				continue
			}
			img, err := remote.Image(ref, remote.WithTransport(tr))
			if err != nil {
				t.Errorf("%s: %s is not in the registry: %v", s.name, ref, err)
				continue
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if len(s.command) == 0 || len(cf.Config.Entrypoint) == 0 || s.command[0] != cf.Config.Entrypoint[0] {
				t.Errorf("%s: command %v, image entrypoint %v", s.name, s.command, cf.Config.Entrypoint)
			}
		}
	}
	// kiln-build's five steps, the StepAction and kiln-index's three.
	if steps != 9 {
		t.Errorf("%d step images resolved, want 9:\n%s", steps, out)
	}
}
