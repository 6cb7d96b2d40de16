package rootfs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// UnpackOptions configures Unpack.
type UnpackOptions struct {
	// Logger receives debug messages about skipped entries.
	Logger *slog.Logger
	// Ignore lists paths left alone (in-place builds): entries there are
	// skipped.
	Ignore *IgnoreList
}

// Unpack applies the layers of img, lowest first, over root.
func Unpack(ctx context.Context, root string, img v1.Image, o UnpackOptions) error {
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("listing layers: %w", err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		if size, err := l.Size(); err == nil {
			log.Debug("extracting layer", "layer", fmt.Sprintf("%d/%d", i+1, len(layers)), "bytes", size)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("opening layer %d: %w", i, err)
		}
		err = ApplyTar(root, rc, o)
		rc.Close()
		if err != nil {
			d, _ := l.Digest()
			return fmt.Errorf("unpacking layer %d (%s): %w", i, d, err)
		}
	}
	return nil
}

type dirTime struct {
	host  string
	mtime time.Time
}

// ApplyTar applies one layer tar stream over root. Entries whose names
// leave the root, and hard links to targets outside it, are refused.
func ApplyTar(root string, r io.Reader, o UnpackOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tr := tar.NewReader(r)
	created := map[string]bool{} // image paths written by this layer
	var dirs []dirTime
	canChown := os.Geteuid() == 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w", err)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "" {
			if hdr.Typeflag == tar.TypeDir {
				applyMeta(root, hdr, canChown)
			}
			continue
		}
		if o.Ignore.Ignored(name) {
			log.Debug("skipping ignored path while unpacking", "path", name)
			continue
		}
		dir, base := path.Split(name)
		parent, err := Resolve(root, dir, true)
		if err != nil {
			return err
		}
		if base == opaqueMarker {
			if err := clearDir(root, parent, created, o.Ignore); err != nil {
				return fmt.Errorf("opaque directory %s: %w", dir, err)
			}
			continue
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			victim := filepath.Join(parent, strings.TrimPrefix(base, whiteoutPrefix))
			if rel, err := Rel(root, victim); err != nil || o.Ignore.Ignored(rel) {
				continue
			}
			if err := os.RemoveAll(victim); err != nil {
				return fmt.Errorf("whiteout %s: %w", name, err)
			}
			continue
		}
		host := filepath.Join(parent, base)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return fmt.Errorf("creating parent of %s: %w", name, err)
		}
		if rel, err := Rel(root, host); err == nil {
			created[rel] = true
		}
		fi, lerr := os.Lstat(host)
		exists := lerr == nil
		if exists && !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			if err := os.RemoveAll(host); err != nil {
				return fmt.Errorf("replacing %s: %w", name, err)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if !exists || !fi.IsDir() {
				if err := os.Mkdir(host, 0o755); err != nil {
					return fmt.Errorf("creating directory %s: %w", name, err)
				}
			}
			dirs = append(dirs, dirTime{host, hdr.ModTime})
		case tar.TypeReg, tar.TypeRegA:
			f, err := os.OpenFile(host, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o600)
			if err != nil {
				return fmt.Errorf("creating %s: %w", name, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("writing %s: %w", name, err)
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, host); err != nil {
				return fmt.Errorf("creating symlink %s: %w", name, err)
			}
		case tar.TypeLink:
			target, err := cleanName(hdr.Linkname)
			if err != nil {
				return fmt.Errorf("hard link %s: %w", name, err)
			}
			th, err := Resolve(root, target, false)
			if err != nil {
				return err
			}
			if err := os.Link(th, host); err != nil {
				return fmt.Errorf("hard link %s to %s: %w", name, hdr.Linkname, err)
			}
			continue // the link shares the target's metadata
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			log.Debug("skipping device or fifo while unpacking", "path", name)
			delete(created, name)
			continue
		default:
			log.Debug("skipping unsupported tar entry", "path", name, "type", string(hdr.Typeflag))
			delete(created, name)
			continue
		}
		if err := applyMeta(host, hdr, canChown); err != nil {
			return fmt.Errorf("setting metadata of %s: %w", name, err)
		}
	}
	// Directory times last: creating their children changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		t := dirs[i].mtime
		os.Chtimes(dirs[i].host, t, t)
	}
	return nil
}

// cleanName turns a tar entry name into a clean image path without leading
// slash, refusing names that climb out of the root.
func cleanName(n string) (string, error) {
	s := filepath.ToSlash(n)
	for _, e := range strings.Split(s, "/") {
		if e == ".." {
			return "", fmt.Errorf("tar entry %q: path escapes the root", n)
		}
	}
	c := strings.TrimPrefix(path.Clean("/"+s), "/")
	return c, nil
}

// applyMeta sets owner, mode and times of host from hdr.
func applyMeta(host string, hdr *tar.Header, canChown bool) error {
	if err := os.Lchown(host, hdr.Uid, hdr.Gid); err != nil && canChown {
		return err
	}
	if hdr.Typeflag == tar.TypeSymlink {
		ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
		unix.UtimesNanoAt(unix.AT_FDCWD, host, ts, unix.AT_SYMLINK_NOFOLLOW)
		return nil
	}
	if err := os.Chmod(host, ModeFromTar(hdr.Mode)); err != nil {
		return err
	}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			unix.Lsetxattr(host, name, []byte(v), 0) // best effort: the layer keeps them anyway
		}
	}
	if hdr.Typeflag != tar.TypeDir {
		return os.Chtimes(host, hdr.ModTime, hdr.ModTime)
	}
	return nil
}

// ModeFromTar converts tar mode bits (with setuid/setgid/sticky in their
// Unix positions) to an fs.FileMode permission set.
func ModeFromTar(m int64) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&04000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&02000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&01000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// clearDir removes what lower layers put in dir, keeping what this layer
// created.
func clearDir(root, dir string, created map[string]bool, ignore *IgnoreList) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		host := filepath.Join(dir, e.Name())
		rel, err := Rel(root, host)
		if err != nil {
			return err
		}
		if created[rel] || ignore.Ignored(rel) || ignore.holdsIgnored(rel) {
			continue
		}
		if err := os.RemoveAll(host); err != nil {
			return err
		}
	}
	return nil
}
