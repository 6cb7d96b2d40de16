// Package rootfs manages a root directory that stands for an image's
// filesystem: resolving paths inside it, and unpacking image layers over it
// (whiteouts, opaque directories, hard links) without ever leaving it.
package rootfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// maxLinks bounds symlink resolution, as the kernel's ELOOP does.
const maxLinks = 255

// Resolve returns the host path for the image path p inside root, following
// symlinks as the image would see them (absolute targets are taken relative
// to root, ".." stops at root). With followLast false the last element is
// not followed, so a symlink itself can be addressed. The result is always
// inside root; elements that do not exist are joined as they are.
func Resolve(root, p string, followLast bool) (string, error) {
	rest := strings.Split(strings.TrimPrefix(path.Clean("/"+filepath.ToSlash(p)), "/"), "/")
	var cur []string // resolved elements, all inside root
	links := 0
	for len(rest) > 0 {
		elem := rest[0]
		rest = rest[1:]
		switch elem {
		case "", ".":
			continue
		case "..":
			if len(cur) > 0 {
				cur = cur[:len(cur)-1]
			}
			continue
		}
		next := append(append([]string(nil), cur...), elem)
		host := filepath.Join(root, filepath.Join(next...))
		if len(rest) == 0 && !followLast {
			cur = next
			break
		}
		fi, err := os.Lstat(host)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, os.ErrInvalid) || isNotDir(err) {
				cur = next
				continue
			}
			return "", fmt.Errorf("resolving %s in %s: %w", p, root, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		links++
		if links > maxLinks {
			return "", fmt.Errorf("resolving %s in %s: too many levels of symbolic links", p, root)
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", fmt.Errorf("resolving %s in %s: %w", p, root, err)
		}
		target = filepath.ToSlash(target)
		if strings.HasPrefix(target, "/") {
			cur = nil
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return filepath.Join(root, filepath.Join(cur...)), nil
}

func isNotDir(err error) bool {
	var pe *fs.PathError
	return errors.As(err, &pe) && strings.Contains(pe.Err.Error(), "not a directory")
}

// Rel returns the slash-separated image path of host inside root, without
// a leading slash ("" for root itself).
func Rel(root, host string) (string, error) {
	r, err := filepath.Rel(root, host)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", fmt.Errorf("%s is outside %s", host, root)
	}
	if r == "." {
		return "", nil
	}
	return filepath.ToSlash(r), nil
}
