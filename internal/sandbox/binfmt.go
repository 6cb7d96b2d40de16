package sandbox

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BinfmtDir is where the kernel lists its binfmt_misc handlers.
const BinfmtDir = "/proc/sys/fs/binfmt_misc"

// ErrNoEmulator says programs of a platform cannot run on this machine.
var ErrNoEmulator = errors.New("this machine cannot run its programs")

// elfIdent is the start of a Linux executable's ELF header for an
// architecture: class (1: 32-bit, 2: 64-bit), data (1: little, 2: big
// endian) and e_machine.
type elfIdent struct {
	class, data byte
	machine     uint16
}

// elfMachines are the ELF identities of the architectures images are
// built for (Go's GOARCH names, as in OCI platforms).
var elfMachines = map[string]elfIdent{
	"386":      {1, 1, 0x03},
	"amd64":    {2, 1, 0x3e},
	"arm":      {1, 1, 0x28},
	"arm64":    {2, 1, 0xb7},
	"ppc64le":  {2, 1, 0x15},
	"ppc64":    {2, 2, 0x15},
	"s390x":    {2, 2, 0x16},
	"riscv64":  {2, 1, 0xf3},
	"mips64le": {2, 1, 0x08},
	"mips64":   {2, 2, 0x08},
	"mipsle":   {1, 1, 0x08},
	"mips":     {1, 2, 0x08},
	"loong64":  {2, 1, 0x102},
}

// header returns the first 20 bytes of an executable (ET_EXEC) for id.
func (id elfIdent) header() []byte {
	h := []byte{0x7f, 'E', 'L', 'F', id.class, id.data, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, byte(id.machine), byte(id.machine >> 8)}
	if id.data == 2 { // big endian e_type and e_machine
		h[16], h[17], h[18], h[19] = 0, 2, byte(id.machine>>8), byte(id.machine)
	}
	return h
}

// natives are the architectures a host architecture runs without an
// emulator.
var natives = map[string][]string{
	"amd64": {"amd64", "386"},
	"arm64": {"arm64"},
}

// CanRun reports whether this machine runs Linux programs of platform p:
// natively (its own architecture) or through an enabled binfmt_misc
// handler matching p's executables (qemu-user-static's). binfmtDir is
// normally BinfmtDir. When binfmt_misc is not mounted there, so that kiln
// cannot tell, it returns nil and known false.
func CanRun(p v1.Platform, binfmtDir string) (known bool, err error) {
	if p.OS != "" && p.OS != "linux" {
		return true, fmt.Errorf("%w: RUN runs Linux programs, not %s ones", ErrNoEmulator, p.OS)
	}
	host := runtime.GOARCH
	for _, a := range append(natives[host], host) {
		if p.Architecture == a {
			return true, nil
		}
	}
	id, ok := elfMachines[p.Architecture]
	if !ok {
		return true, fmt.Errorf("%w: kiln does not know %s executables", ErrNoEmulator, p.Architecture)
	}
	status, err := os.ReadFile(filepath.Join(binfmtDir, "status"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, nil
	}
	if strings.TrimSpace(string(status)) != "enabled" {
		return true, fmt.Errorf("%w: binfmt_misc is disabled (%s/status)", ErrNoEmulator, binfmtDir)
	}
	ents, err := os.ReadDir(binfmtDir)
	if err != nil {
		return false, nil
	}
	exe := id.header()
	for _, e := range ents {
		if n := e.Name(); n == "status" || n == "register" {
			continue
		}
		h, err := readHandler(filepath.Join(binfmtDir, e.Name()))
		if err == nil && h.enabled && h.matches(exe) {
			return true, nil
		}
	}
	return true, fmt.Errorf("%w: no binfmt_misc handler in %s runs %s executables (install and register qemu-user-static, e.g. apt-get install qemu-user-static binfmt-support, or run tonistiigi/binfmt --install %s once on the node)", ErrNoEmulator, binfmtDir, p.Architecture, p.Architecture)
}

// handler is one binfmt_misc entry.
type handler struct {
	enabled     bool
	offset      int
	magic, mask []byte
}

// readHandler parses a binfmt_misc entry file: "enabled", "offset N",
// "magic HEX", "mask HEX" lines (extension handlers have no magic).
func readHandler(path string) (handler, error) {
	var h handler
	f, err := os.Open(path)
	if err != nil {
		return h, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch k {
		case "enabled":
			h.enabled = true
		case "offset":
			fmt.Sscanf(v, "%d", &h.offset)
		case "magic":
			h.magic, _ = hex.DecodeString(v)
		case "mask":
			h.mask, _ = hex.DecodeString(v)
		}
	}
	return h, sc.Err()
}

// matches applies the handler's magic and mask to the start of a file.
func (h handler) matches(file []byte) bool {
	if len(h.magic) == 0 || h.offset < 0 || h.offset+len(h.magic) > len(file) {
		return false
	}
	for i, m := range h.magic {
		b := file[h.offset+i]
		if i < len(h.mask) {
			b &= h.mask[i]
			m &= h.mask[i]
		}
		if b != m {
			return false
		}
	}
	return true
}
