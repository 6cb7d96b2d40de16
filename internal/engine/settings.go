package engine

import (
	"fmt"

	"github.com/kilnbuild/kiln/internal/sandbox"
)

// Isolation is how a build keeps its stages from the system it runs on.
type Isolation string

const (
	// IsolationAuto is in place only as a step image in a container that
	// cannot create namespaces, else chroot.
	IsolationAuto Isolation = "auto"
	// IsolationChroot builds each stage in a private root directory and
	// runs RUN in namespaces chrooted to it.
	IsolationChroot Isolation = "chroot"
	// IsolationInPlace is kaniko's model: the container's own file system
	// is the stage root.
	IsolationInPlace Isolation = "in-place"
)

// ParseIsolation parses an isolation name; "" is auto.
func ParseIsolation(s string) (Isolation, error) {
	switch i := Isolation(s); i {
	case "", IsolationAuto:
		return IsolationAuto, nil
	case IsolationChroot, IsolationInPlace:
		return i, nil
	}
	return "", fmt.Errorf("isolation %q: want auto, chroot or in-place", s)
}

// UserNS is how chroot isolation maps ids for RUN. The zero value is auto
// with the default mapping.
type UserNS struct {
	// Mode is auto (a user namespace where the kernel allows one, else
	// none and a warning), required (one, or fail) or none.
	Mode UserNSMode
	// Map is the mapping, when not the default (sandbox.DefaultIDMap).
	Map *sandbox.IDMap
}

// UserNSMode says whether RUN gets a user namespace.
type UserNSMode string

// The user namespace modes.
const (
	UserNSAuto     UserNSMode = "auto"
	UserNSRequired UserNSMode = "required"
	UserNSNone     UserNSMode = "none"
)

// ParseUserNS parses auto, required, none or HOSTID[:SIZE] (a mapping,
// required); "" is auto.
func ParseUserNS(s string) (UserNS, error) {
	switch m := UserNSMode(s); m {
	case "", UserNSAuto:
		return UserNS{Mode: UserNSAuto}, nil
	case UserNSRequired, UserNSNone:
		return UserNS{Mode: m}, nil
	}
	m, err := sandbox.ParseIDMap(s)
	if err != nil {
		return UserNS{}, fmt.Errorf("user namespace %q: want auto, required, none or HOSTID[:SIZE]: %w", s, err)
	}
	return UserNS{Mode: UserNSRequired, Map: &m}, nil
}

// String is the setting as it is written.
func (u UserNS) String() string {
	if u.Map != nil {
		return u.Map.String()
	}
	if u.Mode == "" {
		return string(UserNSAuto)
	}
	return string(u.Mode)
}

// chosen reports whether the setting asks for something other than auto.
func (u UserNS) chosen() bool { return u.Mode != "" && u.Mode != UserNSAuto }

// RunNetwork is chroot isolation's network for RUN.
type RunNetwork string

// The RUN networks.
const (
	// RunNetworkAuto is slirp4netns where it is on PATH, else the host's.
	RunNetworkAuto RunNetwork = "auto"
	// RunNetworkHost is the host's network, its loopback included.
	RunNetworkHost RunNetwork = "host"
	// RunNetworkPrivate is a network namespace with loopback only.
	RunNetworkPrivate RunNetwork = "private"
	// RunNetworkSlirp is slirp4netns: out through NAT, never the host's
	// loopback.
	RunNetworkSlirp RunNetwork = "slirp4netns"
)

// ParseRunNetwork parses a RUN network; "" is auto and "none" is private.
func ParseRunNetwork(s string) (RunNetwork, error) {
	switch n := RunNetwork(s); n {
	case "", RunNetworkAuto:
		return RunNetworkAuto, nil
	case "none":
		return RunNetworkPrivate, nil
	case RunNetworkHost, RunNetworkPrivate, RunNetworkSlirp:
		return n, nil
	}
	return "", fmt.Errorf("RUN network %q: want auto, host, private or slirp4netns", s)
}
