package sandbox

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// capSysAdmin is CAP_SYS_ADMIN's bit in the capability sets.
const capSysAdmin = 21

// InContainer reports whether this process looks like it runs in a
// container (Docker, Podman, Kubernetes, or another cgroup-named runtime).
func InContainer() bool {
	for _, f := range []string{"/.dockerenv", "/run/.containerenv"} {
		if _, err := os.Stat(f); err == nil {
			return true
		}
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" || os.Getenv("container") != "" {
		return true
	}
	data, err := os.ReadFile("/proc/1/cgroup")
	if err != nil {
		return false
	}
	s := string(data)
	for _, k := range []string{"docker", "kubepods", "containerd", "libpod", "crio"} {
		if strings.Contains(s, k) {
			return true
		}
	}
	return false
}

// CanChroot reports whether the chroot sandbox can run here: it needs
// CAP_SYS_ADMIN to create mount namespaces and mount /proc.
func CanChroot() bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<capSysAdmin) != 0
		}
	}
	return false
}
