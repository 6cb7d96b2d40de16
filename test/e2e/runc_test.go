package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// dockerDefaultCaps is Docker's (and containerd's) default capability set:
// no CAP_SYS_ADMIN.
var dockerDefaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
	"CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

type bind struct{ host, container string }

// runInRunc runs args in a runc container whose root file system holds
// only the build binary at /kaniko/build, with the host's network, the
// given bind mounts and Docker's default capabilities.
func runInRunc(t *testing.T, args []string, binds []bind) result {
	t.Helper()
	rootfs := t.TempDir()
	os.MkdirAll(filepath.Join(rootfs, "kaniko"), 0o755)
	bin, _ := os.ReadFile(filepath.Join(binDir, "build"))
	if err := os.WriteFile(filepath.Join(rootfs, "kaniko", "build"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return runContainer(t, container{
		rootfs: rootfs, args: append([]string{"/kaniko/build"}, args...), binds: binds,
		env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "container=oci", "HOME=/root"},
	})
}

// container is a runc container: a prepared root file system, a process,
// and bind mounts; the host's network, Docker's default capabilities.
type container struct {
	rootfs    string
	args, env []string
	cwd       string // default /
	binds     []bind
	hosts     string // /etc/hosts content; empty: none bound
	// userns, when set, runs the container in a user namespace mapping
	// ids 0..Size-1 to the host's HostID.. (a Kubernetes pod with
	// hostUsers: false); the rootfs and binds must belong to HostID.
	userns *idRange
}

// idRange is a user namespace mapping.
type idRange struct{ HostID, Size int }

// runContainer runs c with runc and returns the process's outcome.
func runContainer(t *testing.T, c container) result {
	t.Helper()
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatalf("runc is required (apt-get install runc; test/run installs it): %v", err)
	}
	bundle := t.TempDir()
	spec := exec.Command(runc, "spec")
	spec.Dir = bundle
	if out, err := spec.CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v\n%s", err, out)
	}
	var cfg map[string]any
	data, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	json.Unmarshal(data, &cfg)
	proc := cfg["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = toAny(c.args)
	proc["env"] = toAny(c.env)
	if c.cwd != "" {
		proc["cwd"] = c.cwd
	}
	caps := toAny(dockerDefaultCaps)
	proc["capabilities"] = map[string]any{"bounding": caps, "effective": caps, "permitted": caps}
	cfg["root"] = map[string]any{"path": c.rootfs, "readonly": false}
	linux := cfg["linux"].(map[string]any)
	var ns []any
	for _, n := range linux["namespaces"].([]any) {
		if n.(map[string]any)["type"] != "network" {
			ns = append(ns, n)
		}
	}
	if c.userns != nil {
		ns = append(ns, map[string]any{"type": "user"})
		m := []any{map[string]any{"containerID": 0, "hostID": c.userns.HostID, "size": c.userns.Size}}
		linux["uidMappings"], linux["gidMappings"] = m, m
	}
	linux["namespaces"] = ns
	mounts := cfg["mounts"].([]any)
	if c.userns != nil {
		// sysfs needs a network namespace of the user namespace's own, and
		// this container has the host's: bind /sys, as runc's rootless spec
		// does.
		var kept []any
		for _, m := range mounts {
			switch m.(map[string]any)["destination"] {
			case "/sys":
				kept = append(kept, map[string]any{"destination": "/sys", "type": "none", "source": "/sys", "options": []any{"rbind", "nosuid", "noexec", "nodev", "ro"}})
			case "/sys/fs/cgroup":
			default:
				kept = append(kept, m)
			}
		}
		mounts = kept
	}
	binds := c.binds
	if c.hosts != "" {
		hosts := filepath.Join(bundle, "hosts")
		os.WriteFile(hosts, []byte(c.hosts), 0o644)
		binds = append(binds, bind{hosts, "/etc/hosts"})
	}
	for _, b := range binds {
		mounts = append(mounts, map[string]any{"destination": b.container, "type": "bind", "source": b.host, "options": []any{"rbind", "rw"}})
	}
	cfg["mounts"] = mounts
	data, _ = json.MarshalIndent(cfg, "", " ")
	os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644)
	id := fmt.Sprintf("kiln-e2e-%d", time.Now().UnixNano())
	cmd := exec.Command(runc, "run", "--bundle", bundle, id)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	exec.Command(runc, "delete", "--force", id).Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("runc run: %v", err)
	}
	return r
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// TestRunInPlaceInRunc builds the RUN fixture with kaniko's model: the build
// binary in an ordinary container (no CAP_SYS_ADMIN), the container's own
// / as the image root.
func TestRunInPlaceInRunc(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:inplace"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	ctx := copyTree(t, "testdata/run")
	secrets := t.TempDir()
	os.WriteFile(filepath.Join(secrets, "token"), []byte(secretValue), 0o600)
	out := t.TempDir()
	dest := reg + "/kiln/inplace:1"
	r := runInRunc(t, []string{
		"--context", "/workspace", "-d", dest, "--insecure", "--insecure-pull", "--isolation", "in-place",
		"--build-arg", "BASE=" + base, "--build-arg", "GREETING=hola", "--secret", "id=token,src=/secrets/token",
		"--digest-file", "/out/digest", "--log-format", "text", "--verbosity", "debug",
	}, []bind{{ctx, "/workspace"}, {out, "/out"}, {secrets, "/secrets"}})
	if r.code != 0 {
		t.Fatalf("in-place build in runc failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	contains(t, r.stderr, "in-place isolation")
	img := pull(t, dest)
	checkRunImage(t, img, r.stderr+r.stdout)
	digest, _ := os.ReadFile(filepath.Join(out, "digest"))
	if d, _ := img.Digest(); d.String() != string(digest) {
		t.Errorf("digest file %q, registry %s", digest, d)
	}
	// The mounted context was left alone.
	if _, err := os.Stat(filepath.Join(ctx, "Dockerfile")); err != nil {
		t.Error("the build context was emptied")
	}
	if strings.Contains(r.stderr, secretValue) {
		t.Error("the secret appears in the log")
	}
}
