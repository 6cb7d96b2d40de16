package rootfs

import (
	"bufio"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// IgnoreList is a set of image paths that in-place builds leave alone:
// never emptied, unpacked over or snapshotted, with everything below them.
type IgnoreList struct {
	paths map[string]bool // clean, without leading slash
}

// NewIgnoreList returns a list of the given absolute paths.
func NewIgnoreList(paths ...string) *IgnoreList {
	l := &IgnoreList{paths: map[string]bool{}}
	for _, p := range paths {
		l.Add(p)
	}
	return l
}

// Add adds an absolute path.
func (l *IgnoreList) Add(p string) {
	c := strings.TrimPrefix(path.Clean("/"+filepath.ToSlash(p)), "/")
	if c != "" {
		l.paths[c] = true
	}
}

// Ignored reports whether the image path p (with or without a leading
// slash) is on the list or below an entry.
func (l *IgnoreList) Ignored(p string) bool {
	if l == nil {
		return false
	}
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	for c != "" && c != "." {
		if l.paths[c] {
			return true
		}
		i := strings.LastIndexByte(c, '/')
		if i < 0 {
			break
		}
		c = c[:i]
	}
	return false
}

// HoldsIgnored reports whether an ignored path lies strictly below p
// (clean, without a leading slash; "" is the root).
func (l *IgnoreList) HoldsIgnored(p string) bool {
	if l == nil {
		return false
	}
	if p == "" {
		return len(l.paths) > 0
	}
	for q := range l.paths {
		if strings.HasPrefix(q, p+"/") {
			return true
		}
	}
	return false
}

// Paths returns the entries, sorted by length.
func (l *IgnoreList) Paths() []string {
	var out []string
	for p := range l.paths {
		out = append(out, "/"+p)
	}
	return out
}

// MountPoints reads the mount points of a mountinfo file
// (/proc/self/mountinfo), except "/".
func MountPoints(mountinfo string) ([]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp != "/" {
			out = append(out, mp)
		}
	}
	return out, s.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Clear removes everything under root except ignored paths and the
// directories that lead to them, as kaniko does between stages. Nothing
// is followed: a symlink is removed, never what it points to.
func Clear(root string, ignore *IgnoreList) error {
	fr, err := openRoot(root, ignore)
	if err != nil {
		return err
	}
	defer fr.Close()
	if err := fr.Dir().Clear(); err != nil {
		return fmt.Errorf("emptying %s: %w", root, err)
	}
	return nil
}
