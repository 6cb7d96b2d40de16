package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/bcrypt"
)

// distribution is a running Debian docker-registry with TLS and htpasswd.
type distribution struct {
	host, caFile, user, password string
	client                       *http.Client
}

func (d *distribution) remoteOpts() []remote.Option {
	return []remote.Option{
		remote.WithTransport(d.client.Transport),
		remote.WithAuth(&authn.Basic{Username: d.user, Password: d.password}),
	}
}

// dockerConfig writes a config.json for user:password and returns its dir.
func (d *distribution) dockerConfig(t *testing.T, user, password string) string {
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, d.host, auth)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func startDistribution(t *testing.T) *distribution {
	return startRegistry(t, registryOptions{addr: "127.0.0.1:0", user: "kiln", password: "s3cr3t-Pa55"})
}

// registryOptions configure startRegistry.
type registryOptions struct {
	addr           string   // listen address; port 0 picks one
	names          []string // DNS names the certificate is for, besides 127.0.0.1 and localhost
	user, password string   // the one htpasswd account
}

// startRegistry runs Debian's docker-registry with TLS (a certificate that
// is its own CA) and htpasswd auth.
func startRegistry(t *testing.T, o registryOptions) *distribution {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("Debian's docker-registry is required (apt-get install docker-registry; .ci/run installs it): %v", err)
	}
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir, o.names...)
	d := &distribution{caFile: certFile, user: o.user, password: o.password}
	hash, err := bcrypt.GenerateFromPassword([]byte(d.password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	os.WriteFile(htpasswd, []byte(d.user+":"+string(hash)+"\n"), 0o600)
	l, err := net.Listen("tcp", o.addr)
	if err != nil {
		t.Fatalf("listening on %s for the registry: %v", o.addr, err)
	}
	d.host = l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  tls:
    certificate: %s
    key: %s
auth:
  htpasswd:
    realm: kiln-test
    path: %s
`, filepath.Join(dir, "data"), d.host, certFile, keyFile, htpasswd)
	cfgFile := filepath.Join(dir, "config.yml")
	os.WriteFile(cfgFile, []byte(cfg), 0o600)
	cmd := exec.Command(bin, "serve", cfgFile)
	logf, _ := os.Create(filepath.Join(dir, "registry.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	d.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := d.client.Get("https://" + d.host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return d
			}
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
			t.Fatalf("docker-registry did not come up (last error %v):\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// selfSigned writes a certificate for 127.0.0.1, localhost and names that
// is its own CA.
func selfSigned(t *testing.T, dir string, names ...string) (string, string, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kiln test registry"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              append([]string{"localhost"}, names...),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestDistributionAuthAndTLS(t *testing.T) {
	d := startDistribution(t)
	base := d.host + "/base/rootfs:1"
	pushTo(t, base, baseImage(t, false), d.remoteOpts()...)
	good := d.dockerConfig(t, d.user, d.password)
	ctx := fullContext(t)
	common := []string{
		"--context", ctx, "--build-arg", "BASE=" + base, "--build-arg", "VERSION=1.2.3", "--label", "extra=from-flag",
	}

	// The Task's dockerconfig workspace bound to a kubernetes.io/dockerconfigjson
	// Secret: the kubelet mounts its key, .dockerconfigjson, the way it
	// mounts every Secret (a symlink through ..data to a timestamped dir).
	t.Run("a mounted dockerconfigjson Secret", func(t *testing.T) {
		secret := t.TempDir()
		cfg, _ := os.ReadFile(filepath.Join(good, "config.json"))
		ts := filepath.Join(secret, "..2026_12_01_00_00_00.000000001")
		os.Mkdir(ts, 0o755)
		os.WriteFile(filepath.Join(ts, ".dockerconfigjson"), cfg, 0o644)
		os.Symlink(filepath.Base(ts), filepath.Join(secret, "..data"))
		os.Symlink("..data/.dockerconfigjson", filepath.Join(secret, ".dockerconfigjson"))
		out := t.TempDir()
		dest := d.host + "/kiln/secret:1"
		args := append([]string{"-d", dest, "--registry-certificate", d.host + "=" + d.caFile,
			"--digest-file", filepath.Join(out, "digest")}, common...)
		if r := kiln(t, []string{"DOCKER_CONFIG=" + secret}, args...); r.code != 0 {
			t.Fatalf("build failed:\n%s", r.stderr)
		}
		digest, _ := os.ReadFile(filepath.Join(out, "digest"))
		if got, _ := pull(t, dest, d.remoteOpts()...).Digest(); got.String() != string(digest) {
			t.Errorf("registry has %s, digest file says %s", got, digest)
		}
	})

	t.Run("push with credentials and CA", func(t *testing.T) {
		out := t.TempDir()
		dest := d.host + "/kiln/full:1"
		args := append([]string{"-d", dest, "--registry-certificate", d.host + "=" + d.caFile,
			"--digest-file", filepath.Join(out, "digest"), "--verbosity", "trace"}, common...)
		r := kiln(t, []string{"DOCKER_CONFIG=" + good}, args...)
		if r.code != 0 {
			t.Fatalf("build failed:\n%s", r.stderr)
		}
		if strings.Contains(r.stderr, d.password) || strings.Contains(r.stderr, base64.StdEncoding.EncodeToString([]byte(d.user+":"+d.password))) {
			t.Error("the registry password appears in the log")
		}
		img := pull(t, dest, d.remoteOpts()...)
		checkFullImage(t, img, types.DockerManifestSchema2)
		digest, _ := os.ReadFile(filepath.Join(out, "digest"))
		if got, _ := img.Digest(); got.String() != string(digest) {
			t.Errorf("registry has %s, digest file says %s", got, digest)
		}
	})

	t.Run("credentials from kaniko dir", func(t *testing.T) {
		kdir := t.TempDir()
		os.MkdirAll(filepath.Join(kdir, ".docker"), 0o700)
		data, _ := os.ReadFile(filepath.Join(good, "config.json"))
		os.WriteFile(filepath.Join(kdir, ".docker", "config.json"), data, 0o600)
		args := append([]string{"-d", d.host + "/kiln/full:kdir", "--skip-tls-verify", "--skip-tls-verify-pull", "--kaniko-dir", kdir}, common...)
		if r := kiln(t, nil, args...); r.code != 0 {
			t.Fatalf("build failed:\n%s", r.stderr)
		}
		pull(t, d.host+"/kiln/full:kdir", d.remoteOpts()...)
	})

	// kaniko v1.28's other credential sources (drop-in issue, item 4).
	gcfg, _ := os.ReadFile(filepath.Join(good, "config.json"))
	hostVar := "KANIKO_" + strings.ToUpper(strings.NewReplacer(".", "_", ":", "_", "-", "_").Replace(d.host))
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"DOCKER_AUTH_CONFIG", []string{"DOCKER_AUTH_CONFIG=" + string(gcfg)}},
		{"env credential helper", []string{hostVar + "_USER=" + d.user, hostVar + "_PASSWORD=" + d.password}},
		{"gitlab credential helper", []string{"CI_REGISTRY=" + d.host, "CI_REGISTRY_USER=" + d.user, "CI_REGISTRY_PASSWORD=" + d.password}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := d.host + "/kiln/full:" + strings.ReplaceAll(tc.name, " ", "-")
			args := append([]string{"-d", dest, "--registry-certificate", d.host + "=" + d.caFile}, common...)
			r := kiln(t, tc.env, args...)
			if r.code != 0 {
				t.Fatalf("build failed:\n%s", r.stderr)
			}
			if strings.Contains(r.stderr, d.password) {
				t.Error("the password appears in the log")
			}
			pull(t, dest, d.remoteOpts()...)
		})
	}
	t.Run("credential helpers off", func(t *testing.T) {
		env := []string{hostVar + "_USER=" + d.user, hostVar + "_PASSWORD=" + d.password}
		args := append([]string{"-d", d.host + "/kiln/full:nohelpers", "--registry-certificate", d.host + "=" + d.caFile, "--credential-helpers", ""}, common...)
		r := kiln(t, env, args...)
		if r.code == 0 {
			t.Fatal("pushed without credentials")
		}
		// A 401 says where kiln looked for credentials for the host.
		contains(t, r.stderr, "credentials looked for in", "config.json: no config.json or .dockerconfigjson in")
	})
	t.Run("login then build, and push a layout built earlier", func(t *testing.T) {
		cfg := t.TempDir()
		login := exec.Command(filepath.Join(binDir, "build"), "login", d.host, "-u", d.user, "--password-stdin")
		login.Env = []string{"DOCKER_CONFIG=" + cfg, "PATH=" + os.Getenv("PATH")}
		login.Stdin = strings.NewReader(d.password + "\n")
		if out, err := login.CombinedOutput(); err != nil {
			t.Fatalf("login: %v\n%s", err, out)
		}
		out := t.TempDir()
		args := append([]string{"--no-push", "--oci-layout-path", filepath.Join(out, "layout"), "--registry-certificate", d.host + "=" + d.caFile}, common...)
		if r := kiln(t, []string{"DOCKER_CONFIG=" + cfg}, args...); r.code != 0 {
			t.Fatalf("build failed:\n%s", r.stderr)
		}
		dest := d.host + "/kiln/pushed:1"
		r := kiln(t, []string{"DOCKER_CONFIG=" + cfg}, "push", filepath.Join(out, "layout"), "-d", dest, "--registry-certificate", d.host+"="+d.caFile)
		if r.code != 0 {
			t.Fatalf("push failed:\n%s", r.stderr)
		}
		checkFullImage(t, pull(t, dest, d.remoteOpts()...), types.DockerManifestSchema2)
	})

	failures := []struct {
		name  string
		env   []string
		extra []string
		want  []string
	}{
		{"wrong credentials", []string{"DOCKER_CONFIG=" + d.dockerConfig(t, d.user, "wrong-password")},
			[]string{"--registry-certificate", d.host + "=" + d.caFile}, []string{"--destination " + d.host + "/kiln/denied:1", "UNAUTHORIZED"}},
		{"wrong credentials, permission check skipped", []string{"DOCKER_CONFIG=" + d.dockerConfig(t, d.user, "wrong-password")},
			[]string{"--registry-certificate", d.host + "=" + d.caFile, "--skip-push-permission-check"}, []string{"UNAUTHORIZED"}},
		{"unknown CA", []string{"DOCKER_CONFIG=" + good}, nil, []string{"certificate signed by unknown authority"}},
	}
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			args := append([]string{"-d", d.host + "/kiln/denied:1", "--digest-file", filepath.Join(out, "digest"),
				"--oci-layout-path", filepath.Join(out, "layout")}, tc.extra...)
			r := kiln(t, tc.env, append(args, common...)...)
			if r.code == 0 {
				t.Fatal("build succeeded")
			}
			contains(t, r.stderr, tc.want...)
			if strings.Contains(r.stderr, "wrong-password") {
				t.Error("the password appears in the error")
			}
			mustNotExist(t, filepath.Join(out, "digest"), filepath.Join(out, "layout"))
			if _, err := remote.Head(mustRef(t, d.host+"/kiln/denied:1"), d.remoteOpts()...); err == nil {
				t.Error("a tag was pushed by a failed build")
			}
		})
	}
}
