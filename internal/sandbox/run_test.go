package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if IsSandbox() {
		os.Exit(SandboxMain())
	}
	os.Exit(m.Run())
}

// root makes a root directory holding only busybox.
func root(t *testing.T) string {
	t.Helper()
	r := t.TempDir()
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is required: %v", err)
	}
	os.MkdirAll(filepath.Join(r, "bin"), 0o755)
	os.WriteFile(filepath.Join(r, "bin", "busybox"), data, 0o755)
	for _, a := range []string{"sh", "echo", "cat", "ls", "id", "test", "sleep"} {
		os.Symlink("busybox", filepath.Join(r, "bin", a))
	}
	old := time.Unix(1600000000, 0)
	os.Chtimes(r, old, old)
	return r
}

func TestRun(t *testing.T) {
	r := root(t)
	streams := map[string][]string{}
	err := Run(context.Background(), Spec{
		Root: r, Args: []string{"/bin/sh", "-c", "echo one; echo two >&2; id -u; test -c /dev/null && test -e /proc/self/status && echo devices"},
		Env: []string{"PATH=/bin"}, UID: 4321, GID: 4321,
	}, Options{WorkDir: t.TempDir(), Output: func(stream, l string) { streams[stream] = append(streams[stream], l) }})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(streams["stdout"], ","); got != "one,4321,devices" {
		t.Errorf("stdout %q", got)
	}
	if got := strings.Join(streams["stderr"], ","); got != "two" {
		t.Errorf("stderr %q", got)
	}
	// Mount points created for the run are gone, and "/" keeps its time.
	ents, _ := os.ReadDir(r)
	if len(ents) != 1 || ents[0].Name() != "bin" {
		t.Errorf("root holds %v after the run", ents)
	}
	if fi, _ := os.Stat(r); fi.ModTime().Unix() != 1600000000 {
		t.Errorf("root mtime changed to %v", fi.ModTime())
	}
}

func TestRunFailures(t *testing.T) {
	r := root(t)
	err := Run(context.Background(), Spec{Root: r, Args: []string{"/bin/sh", "-c", "echo last words; exit 42"}, Env: []string{"PATH=/bin"}},
		Options{WorkDir: t.TempDir()})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 42 || len(ee.Tail) != 1 || ee.Tail[0] != "last words" {
		t.Errorf("err = %#v", err)
	}
	err = Run(context.Background(), Spec{Root: r, Args: []string{"nosuch"}, Env: []string{"PATH=/bin"}}, Options{WorkDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "nosuch: executable file not found") {
		t.Errorf("missing program: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = Run(ctx, Spec{Root: r, Args: []string{"/bin/sleep", "30"}, Env: []string{"PATH=/bin"}}, Options{WorkDir: t.TempDir()})
	if err == nil || time.Since(start) > 10*time.Second {
		t.Errorf("cancelled run: %v after %v", err, time.Since(start))
	}
}

func TestDirectRefusesAnotherRoot(t *testing.T) {
	err := Direct(context.Background(), Spec{Root: t.TempDir(), Args: []string{"true"}}, nil, Options{})
	if err == nil || !strings.Contains(err.Error(), "runs with / as root") {
		t.Errorf("err = %v", err)
	}
}

// TestRunUserNS runs as root in a user namespace: the image's ids inside,
// mapped host ids outside, files stored with the image's owners, and no
// privilege over the host (mounting is refused).
func TestRunUserNS(t *testing.T) {
	r := root(t)
	ns, err := NewUserNS(DefaultIDMap(), "")
	if err != nil {
		t.Fatalf("user namespaces are required: %v", err)
	}
	defer ns.Close()
	if err := ns.Check(r); err != nil {
		t.Fatalf("id-mapped mounts are required: %v", err)
	}
	for _, a := range []string{"touch", "chown", "mount", "stat", "mkdir"} {
		os.Symlink("busybox", filepath.Join(r, "bin", a))
	}
	os.MkdirAll(filepath.Join(r, "owned"), 0o755)
	os.Chown(filepath.Join(r, "owned"), 1000, 1000)
	cache := t.TempDir()
	os.Chown(cache, 33, 33)
	tests := []struct {
		name   string
		spec   Spec
		want   string
		onDisk map[string][2]int // path in the root -> uid, gid
	}{{
		name: "root inside, mapped outside",
		spec: Spec{Args: []string{"/bin/sh", "-c", "read a b c < /proc/self/uid_map; echo $a $b $c; id -u; touch /new; mkdir /tree; chown 7:8 /tree; stat -c %u:%g /owned"}},
		want: "0 2147483648 2147483647,0,1000:1000",
		onDisk: map[string][2]int{
			"new": {0, 0}, "tree": {7, 8},
		},
	}, {
		name: "a user of the image",
		spec: Spec{Args: []string{"/bin/sh", "-c", "id -u; id -G; touch /owned/mine"}, UID: 1000, GID: 1000, Groups: []uint32{1000, 27}},
		want: "1000,1000 27",
		onDisk: map[string][2]int{
			"owned/mine": {1000, 1000},
		},
	}, {
		name: "bind and tmpfs mounts owned as inside",
		spec: Spec{
			Args:   []string{"/bin/sh", "-c", "stat -c %u:%g /cache /tmpfs; touch /cache/x"},
			Mounts: []Mount{{Type: "bind", Source: cache, Target: "/cache"}, {Type: "tmpfs", Target: "/tmpfs"}},
			UID:    33, GID: 33,
		},
		want: "33:33,0:0",
	}, {
		name: "no privilege over the host",
		spec: Spec{Args: []string{"/bin/sh", "-c", "mount -t tmpfs none /owned 2>&1 || echo refused"}},
		want: "mount: permission denied (are you root?),refused",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var lines []string
			spec := tc.spec
			spec.Root, spec.Env = r, []string{"PATH=/bin"}
			err := Run(context.Background(), spec, Options{WorkDir: t.TempDir(), UserNS: ns, Output: func(_, l string) { lines = append(lines, l) }})
			if got := strings.Join(lines, ","); got != tc.want || err != nil {
				t.Errorf("output %q, want %q (err %v)", got, tc.want, err)
			}
			for p, ids := range tc.onDisk {
				var st syscall.Stat_t
				if err := syscall.Lstat(filepath.Join(r, p), &st); err != nil {
					t.Errorf("%s: %v", p, err)
				} else if int(st.Uid) != ids[0] || int(st.Gid) != ids[1] {
					t.Errorf("%s owned %d:%d on disk, want %d:%d", p, st.Uid, st.Gid, ids[0], ids[1])
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(cache, "x")); err != nil {
		t.Errorf("cache mount not writable by its owner: %v", err)
	}
}

func TestParseIDMap(t *testing.T) {
	tests := []struct {
		in   string
		want IDMap
		err  bool
	}{
		{in: "100000:65536", want: IDMap{HostID: 100000, Size: 65536}},
		{in: "2147483648", want: IDMap{HostID: 1 << 31, Size: 1<<31 - 1}},
		{in: "0:65536", err: true},         // host root
		{in: "100000:0", err: true},        // empty
		{in: "4294967000:1000", err: true}, // past the last id
		{in: "x:1", err: true},
		{in: "", err: true},
	}
	for _, tt := range tests {
		got, err := ParseIDMap(tt.in)
		if (err != nil) != tt.err || (!tt.err && got != tt.want) {
			t.Errorf("ParseIDMap(%q) = %v, %v", tt.in, got, err)
		}
	}
	if DefaultIDMap().String() != "2147483648:2147483647" {
		t.Errorf("default map %s", DefaultIDMap())
	}
}

// TestRunSharedNet runs two commands in one Net: both are in its network
// namespace (not this process's), which slirp4netns has configured
// (tap0), and a command with NetworkNone is in one of its own.
func TestRunSharedNet(t *testing.T) {
	bin, err := exec.LookPath("slirp4netns")
	if err != nil {
		t.Fatalf("slirp4netns is required: %v", err)
	}
	r := root(t)
	for _, a := range []string{"readlink", "ip"} {
		os.Symlink("busybox", filepath.Join(r, "bin", a))
	}
	n, err := NewSlirpNet(bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(n.ns.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	own, _ := os.Readlink("/proc/self/ns/net")
	run := func(network string) []string {
		var out []string
		err := Run(context.Background(), Spec{
			Root: r, Args: []string{"/bin/sh", "-c", "readlink /proc/self/ns/net; ip link show tap0 >/dev/null 2>&1 && echo tap0; true"},
			Env: []string{"PATH=/bin"}, Network: network,
		}, Options{WorkDir: t.TempDir(), Net: n, Output: func(stream, l string) {
			if stream == "stdout" {
				out = append(out, l)
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for i := range 2 {
		if got := run(NetworkSlirp); len(got) != 2 || got[0] != want || got[1] != "tap0" {
			t.Errorf("RUN %d: %q, want [%s tap0] (this process: %s)", i+1, got, want, own)
		}
	}
	if got := run(NetworkNone); len(got) != 1 || got[0] == want || got[0] == own {
		t.Errorf("NetworkNone: %q, want a namespace of its own without tap0", got)
	}
}
