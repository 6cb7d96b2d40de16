package engine

import (
	"testing"

	"github.com/kilnbuild/kiln/internal/sandbox"
)

func TestParseSettings(t *testing.T) {
	m := sandbox.IDMap{HostID: 100000, Size: 65536}
	for _, tt := range []struct {
		in       string
		iso      Isolation
		isoErr   bool
		userns   UserNS
		usernsOK bool
		net      RunNetwork
		netErr   bool
	}{
		{in: "", iso: IsolationAuto, userns: UserNS{Mode: UserNSAuto}, usernsOK: true, net: RunNetworkAuto},
		{in: "auto", iso: IsolationAuto, userns: UserNS{Mode: UserNSAuto}, usernsOK: true, net: RunNetworkAuto},
		{in: "chroot", iso: IsolationChroot, netErr: true},
		{in: "in-place", iso: IsolationInPlace, netErr: true},
		{in: "required", isoErr: true, userns: UserNS{Mode: UserNSRequired}, usernsOK: true, netErr: true},
		{in: "none", isoErr: true, userns: UserNS{Mode: UserNSNone}, usernsOK: true, net: RunNetworkPrivate},
		{in: "100000:65536", isoErr: true, userns: UserNS{Mode: UserNSRequired, Map: &m}, usernsOK: true, netErr: true},
		{in: "host", isoErr: true, net: RunNetworkHost},
		{in: "private", isoErr: true, net: RunNetworkPrivate},
		{in: "slirp4netns", isoErr: true, net: RunNetworkSlirp},
		{in: "0:10", isoErr: true, netErr: true},
		{in: "Chroot", isoErr: true, netErr: true},
	} {
		iso, err := ParseIsolation(tt.in)
		if (err != nil) != tt.isoErr || iso != tt.iso {
			t.Errorf("ParseIsolation(%q) = %q, %v", tt.in, iso, err)
		}
		u, err := ParseUserNS(tt.in)
		if (err == nil) != tt.usernsOK || u.Mode != tt.userns.Mode || (u.Map == nil) != (tt.userns.Map == nil) || (u.Map != nil && *u.Map != *tt.userns.Map) {
			t.Errorf("ParseUserNS(%q) = %+v, %v", tt.in, u, err)
		}
		n, err := ParseRunNetwork(tt.in)
		if (err != nil) != tt.netErr || n != tt.net {
			t.Errorf("ParseRunNetwork(%q) = %q, %v", tt.in, n, err)
		}
	}
}
