package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
	goR, goW *os.File // the init waits on goR until the network is up (gated)
	exitW    *os.File // closing it stops slirp4netns
	cmd      *exec.Cmd
}

// slirpReadyTimeout bounds how long slirp4netns may take to configure.
const slirpReadyTimeout = 30 * time.Second

// newSlirp prepares slirp4netns bin, its resolv.conf in dir; gated, it
// also makes the pipe a sandbox init waits on until start has configured
// its namespace.
func newSlirp(bin, dir string, gated bool) (*slirpNet, error) {
	if bin == "" {
		return nil, errors.New("RUN network slirp4netns: no slirp4netns binary")
	}
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 10.0.2.3\n"), 0o644); err != nil {
		return nil, err
	}
	s := &slirpNet{bin: bin, resolv: resolv}
	if gated {
		var err error
		if s.goR, s.goW, err = os.Pipe(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// start runs slirp4netns for the sandbox init pid, waits until it has
// configured the namespace, then lets the init go on.
func (s *slirpNet) start(pid int) error {
	s.goR.Close() // the init has its copy
	if err := s.run(strconv.Itoa(pid)); err != nil {
		return err
	}
	_, err := s.goW.Write([]byte{1})
	s.goW.Close()
	return err
}

// run starts slirp4netns for the network namespace target names (a pid,
// or with extra, "--netns-type=path" and the path of one of extra, which
// it gets from fd 5 on) and waits until it has configured it.
func (s *slirpNet) run(target string, extra ...*os.File) error {
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
	args := []string{"--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox", "--ready-fd=3", "--exit-fd=4"}
	if len(extra) > 0 {
		args = append(args, "--netns-type=path")
	}
	s.cmd = exec.Command(s.bin, append(args, target, "tap0")...)
	s.cmd.ExtraFiles = append([]*os.File{readyW, exitR}, extra...)
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
	return nil
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

// Net is a network namespace reaching out through slirp4netns, made once
// for the RUNs of a build, as BuildKit reuses its network namespaces: a
// RUN joins it instead of paying for a namespace and a slirp4netns of its
// own (about half of what starting a RUN costs). Nothing of a RUN lives
// on in it: its processes die with the RUN's pid namespace, and their
// sockets with them. Close stops slirp4netns.
type Net struct {
	ns    *os.File // the network namespace
	slirp *slirpNet
}

// NewSlirpNet makes a Net whose slirp4netns is bin; its resolv.conf goes
// into dir.
func NewSlirpNet(bin, dir string) (*Net, error) {
	ns, err := newNetNS()
	if err != nil {
		return nil, fmt.Errorf("creating the RUN network namespace: %w", err)
	}
	d, err := os.MkdirTemp(dir, "net-")
	if err != nil {
		ns.Close()
		return nil, err
	}
	s, err := newSlirp(bin, d, false)
	if err == nil {
		err = s.run("/proc/self/fd/5", ns)
	}
	if err != nil {
		if s != nil {
			s.close()
		}
		ns.Close()
		return nil, err
	}
	return &Net{ns: ns, slirp: s}, nil
}

// Close stops slirp4netns and releases the namespace.
func (n *Net) Close() error {
	if n == nil {
		return nil
	}
	n.slirp.close()
	return n.ns.Close()
}

// newNetNS creates a network namespace with its loopback up and returns a
// handle on it.
func newNetNS() (*os.File, error) {
	var f *os.File
	err := inNetNS(func() error { return unix.Unshare(unix.CLONE_NEWNET) }, func() error {
		var err error
		if f, err = os.Open("/proc/thread-self/ns/net"); err != nil {
			return err
		}
		return loopbackUp()
	})
	if err != nil && f != nil {
		f.Close()
		f = nil
	}
	return f, err
}

// startIn starts cmd in the network namespace ns.
func startIn(ns *os.File, cmd *exec.Cmd) error {
	return inNetNS(func() error {
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("joining the RUN network: %w", err)
		}
		return nil
	}, cmd.Start)
}

// inNetNS runs fn on a thread of its own that enter moves into another
// network namespace (a process forked there is in it too), and moves it
// back afterwards; a thread that cannot go back ends with fn's goroutine,
// never running anything else.
func inNetNS(enter, fn func() error) error {
	c := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // unlocked only back in this process's namespace
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			c <- err
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			c <- err
			return
		}
		err = fn()
		if berr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); berr != nil {
			c <- errors.Join(err, fmt.Errorf("leaving the RUN network: %w", berr))
			return // the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		c <- err
	}()
	return <-c
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
