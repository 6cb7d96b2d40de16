package fsroot

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// refuseOpenat2Env, set in a re-executed test binary, names the errno
// (ENOSYS or EPERM) a seccomp filter answers openat2 with, as on a kernel
// without it or under a container runtime's profile older than it.
const refuseOpenat2Env = "FSROOT_TEST_REFUSE_OPENAT2"

func TestMain(m *testing.M) {
	if name := os.Getenv(refuseOpenat2Env); name != "" {
		if err := refuseOpenat2(refusals[name]); err != nil {
			fmt.Fprintf(os.Stderr, "installing the seccomp filter: %v\n", err)
			os.Exit(3)
		}
	}
	os.Exit(m.Run())
}

var refusals = map[string]unix.Errno{"ENOSYS": unix.ENOSYS, "EPERM": unix.EPERM}

// refuseOpenat2 makes every thread's openat2 fail with errno.
func refuseOpenat2(errno unix.Errno) error {
	var arch uint32
	switch runtime.GOARCH {
	case "amd64":
		arch = unix.AUDIT_ARCH_X86_64
	case "arm64":
		arch = unix.AUDIT_ARCH_AARCH64
	default:
		return fmt.Errorf("no seccomp architecture for %s", runtime.GOARCH)
	}
	if errno == 0 {
		return errors.New("unknown errno")
	}
	const ldW, jeqK, retK = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_RET | unix.BPF_K
	filter := []unix.SockFilter{
		{Code: ldW, K: 4}, // seccomp_data.arch
		{Code: jeqK, K: arch, Jt: 0, Jf: 3},
		{Code: ldW, K: 0}, // seccomp_data.nr
		{Code: jeqK, K: unix.SYS_OPENAT2, Jt: 0, Jf: 1},
		{Code: retK, K: unix.SECCOMP_RET_ERRNO | uint32(errno)},
		{Code: retK, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); e != 0 {
		return e
	}
	return nil
}

// TestOpenInRootFallback performs TestOpenInRootConfined's attacks (links
// out of the root, ".." climbs, a directory moved out and back during
// lookups) where openat2 is refused, with ENOSYS and with EPERM: the
// fallback, securejoin's O_PATH walk, keeps every lookup inside the root.
// Each runs in a re-executed test binary under a seccomp filter, which
// TestOpenInRootConfined checks is in effect.
func TestOpenInRootFallback(t *testing.T) {
	for name := range refusals {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestOpenInRootConfined$", "-test.count", "1", "-test.v")
			cmd.Env = append(os.Environ(), refuseOpenat2Env+"="+name)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "--- PASS: TestOpenInRootConfined") {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}

// checkRefusal, in a re-executed test binary, fails the test unless the
// seccomp filter answers openat2 as asked.
func checkRefusal(t *testing.T, dir *os.File) {
	name := os.Getenv(refuseOpenat2Env)
	if name == "" {
		return
	}
	_, err := unix.Openat2(int(dir.Fd()), ".", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC})
	if !errors.Is(err, syscall.Errno(refusals[name])) {
		t.Fatalf("openat2 = %v under the filter, want %s", err, name)
	}
}
