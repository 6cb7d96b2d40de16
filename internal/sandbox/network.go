package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// slirpNet gives a sandbox's network namespace a way out through
// slirp4netns (user-mode networking: the sandbox reaches what this host
// reaches, except this host's loopback, through NAT; nothing reaches in).
type slirpNet struct {
	bin      string
	resolv   string   // resolv.conf naming slirp4netns's DNS
	goR, goW *os.File // the init waits on goR until the network is up
	exitW    *os.File // closing it stops slirp4netns
	cmd      *exec.Cmd
}

// slirpReadyTimeout bounds how long slirp4netns may take to configure.
const slirpReadyTimeout = 30 * time.Second

func newSlirp(bin, dir string) (*slirpNet, error) {
	if bin == "" {
		return nil, errors.New("RUN network slirp4netns: no slirp4netns binary")
	}
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 10.0.2.3\n"), 0o644); err != nil {
		return nil, err
	}
	goR, goW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	return &slirpNet{bin: bin, resolv: resolv, goR: goR, goW: goW}, nil
}

// start runs slirp4netns for the sandbox init pid, waits until it has
// configured the namespace, then lets the init go on.
func (s *slirpNet) start(pid int) error {
	s.goR.Close() // the init has its copy
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer readyR.Close()
	exitR, exitW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return err
	}
	s.exitW = exitW
	s.cmd = exec.Command(s.bin, "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox",
		"--ready-fd=3", "--exit-fd=4", strconv.Itoa(pid), "tap0")
	s.cmd.ExtraFiles = []*os.File{readyW, exitR}
	s.cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	err = s.cmd.Start()
	readyW.Close()
	exitR.Close()
	if err != nil {
		return fmt.Errorf("starting slirp4netns: %w", err)
	}
	readyR.SetReadDeadline(time.Now().Add(slirpReadyTimeout))
	buf := make([]byte, 1)
	if _, err := readyR.Read(buf); err != nil {
		return fmt.Errorf("slirp4netns did not configure the RUN network: %w", err)
	}
	_, err = s.goW.Write([]byte{1})
	s.goW.Close()
	return err
}

// close stops slirp4netns.
func (s *slirpNet) close() {
	s.goR.Close()
	s.goW.Close()
	if s.exitW != nil {
		s.exitW.Close()
	}
	if s.cmd != nil && s.cmd.Process != nil {
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			s.cmd.Process.Kill()
			<-done
		}
	}
}

// loopbackUp brings up lo in the current (new) network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP | unix.IFF_RUNNING)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
