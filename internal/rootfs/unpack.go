// Package rootfs manages a root directory that stands for an image's
// filesystem: unpacking image layers over it (whiteouts, opaque
// directories, hard links) through handles that never leave it, emptying
// it in place, the ignore list of an in-place build, and the image's users.
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

	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/logging"
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
	// Name is the image, for progress records: Unpack reports the bytes
	// of its layers pulled and extracted, every few seconds, to Logger.
	Name string
	// Now is the clock of progress records; nil is time.Now.
	Now func() time.Time
	// Entry, when set, is given the name of every entry read (layer is
	// its index in the image, 0 for ApplyTar), before it is applied: when
	// Unpack or ApplyTar returns no error, every entry it was given passed
	// the checks unpacking makes.
	Entry func(layer int, name string)
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
	fr, err := openRoot(root, o.Ignore)
	if err != nil {
		return err
	}
	defer fr.Close()
	var total int64
	for _, l := range layers {
		if size, err := l.Size(); err == nil {
			total += size
		}
	}
	progress := &logging.Progress{Log: log, Msg: "pulling and extracting", Attrs: []any{"image", o.Name}, Total: total, Now: o.Now}
	progress.Set(0)
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		if size, err := l.Size(); err == nil {
			log.Debug("extracting layer", "image", o.Name, "layer", fmt.Sprintf("%d/%d", i+1, len(layers)), "bytes", size)
		}
		// The compressed bytes are counted as they arrive (a registry's
		// layer is pulled as it is read), then decompressed here.
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("opening layer %d: %w", i, err)
		}
		err = func() error {
			defer rc.Close()
			cr := progress.Reader(rc)
			r, done, err := layer.Decompress(cr)
			if err != nil {
				return err
			}
			defer done()
			if err := applyTar(fr, r, o, i); err != nil {
				return err
			}
			// Read to the end: a verifying reader checks the digest there.
			if _, err := io.Copy(io.Discard, r); err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, cr)
			return err
		}()
		if err != nil {
			d, _ := l.Digest()
			return fmt.Errorf("unpacking layer %d (%s): %w", i, d, err)
		}
	}
	return nil
}

// ApplyTar applies one layer tar stream over root. Every entry is written
// through handles resolved inside the root (symlinks in the image never
// lead out of it); entries whose names climb out of the root, and
// whiteouts that name no file, are refused; entries that resolve to a
// path o.Ignore protects are skipped.
func ApplyTar(root string, r io.Reader, o UnpackOptions) error {
	fr, err := openRoot(root, o.Ignore)
	if err != nil {
		return err
	}
	defer fr.Close()
	return applyTar(fr, r, o, 0)
}

// openRoot opens root, protecting the ignore list's paths.
func openRoot(root string, ignore *IgnoreList) (*fsroot.Root, error) {
	if ignore != nil {
		return fsroot.Open(root, fsroot.WithProtector(ignore))
	}
	return fsroot.Open(root)
}

// parents caches the directory handles of one layer's entries; it is
// emptied whenever an entry removes or replaces something, which could
// change where a cached path leads.
type parents struct {
	root *fsroot.Root
	dirs map[string]*fsroot.Dir
	// stale says an entry removed or replaced something: the cache is
	// emptied before the next look-up (the current entry's handle stays
	// valid until then).
	stale bool
	// fresh, when set, records the directories MkdirAll made.
	fresh map[string]bool
}

const maxCachedParents = 1024

func (p *parents) get(dir string) (*fsroot.Dir, error) {
	if p.stale {
		p.reset()
		p.stale = false
	}
	if d, ok := p.dirs[dir]; ok {
		return d, nil
	}
	d, err := p.root.MkdirAll(dir, fsroot.MkdirOptions{Created: func(parent *fsroot.Dir, name string) error {
		if p.fresh != nil {
			p.fresh[path.Join(parent.Path(), name)] = true
		}
		return nil
	}})
	if err != nil {
		return nil, err
	}
	if len(p.dirs) >= maxCachedParents {
		p.reset()
	}
	p.dirs[dir] = d
	return d, nil
}

func (p *parents) reset() {
	for k, d := range p.dirs {
		d.Close()
		delete(p.dirs, k)
	}
}

func applyTar(root *fsroot.Root, r io.Reader, o UnpackOptions, layerIx int) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tr := tar.NewReader(r)
	created := map[string]bool{} // real image paths written by this layer
	// fresh are the directories this layer made: nothing is in them but
	// what it wrote (in created), so a new name there needs no lstat.
	fresh := map[string]bool{}
	var dirs []dirTime
	canChown := os.Geteuid() == 0
	cache := &parents{root: root, dirs: map[string]*fsroot.Dir{}, fresh: fresh}
	defer cache.reset()
	skip := func(name string, err error) bool {
		if fsroot.IsProtected(err) {
			log.Debug("skipping an entry that resolves to an ignored path", "path", name, "reason", err.Error())
			return true
		}
		return false
	}
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
		if o.Entry != nil {
			o.Entry(layerIx, name)
		}
		if name == "" {
			if hdr.Typeflag == tar.TypeDir && o.Ignore == nil {
				if err := applyRootMeta(root, hdr, canChown); err != nil {
					return fmt.Errorf("setting metadata of the root: %w", err)
				}
			}
			continue
		}
		if o.Ignore.Ignored(name) {
			log.Debug("skipping ignored path while unpacking", "path", name)
			continue
		}
		dir, base := path.Split(name)
		if strings.HasPrefix(base, whiteoutPrefix) && base != opaqueMarker {
			victim := strings.TrimPrefix(base, whiteoutPrefix)
			if victim == "" || victim == "." || victim == ".." {
				return fmt.Errorf("tar entry %q: a whiteout that names no file", hdr.Name)
			}
		}
		parent, err := cache.get(dir)
		if err != nil {
			if skip(name, err) {
				continue
			}
			return fmt.Errorf("parent of %s: %w", name, err)
		}
		if base == opaqueMarker {
			cache.stale = true
			if err := clearDir(root, dir, created); err != nil {
				return fmt.Errorf("opaque directory %s: %w", dir, err)
			}
			continue
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			cache.stale = true
			if err := parent.RemoveAll(strings.TrimPrefix(base, whiteoutPrefix)); err != nil && !skip(name, err) {
				return fmt.Errorf("whiteout %s: %w", name, err)
			}
			continue
		}
		real := path.Join(parent.Path(), base)
		if root.Protected(real) {
			log.Debug("skipping an entry that resolves to an ignored path", "path", name, "resolved", "/"+real)
			continue
		}
		var fi fs.FileInfo
		lerr := fs.ErrNotExist
		if !fresh[parent.Path()] || created[real] {
			fi, lerr = parent.Lstat(base)
		}
		exists := lerr == nil
		if exists && !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			if fi.IsDir() || fi.Mode()&fs.ModeSymlink != 0 {
				cache.stale = true
			}
			if err := parent.RemoveAll(base); err != nil {
				if skip(name, err) {
					continue
				}
				return fmt.Errorf("replacing %s: %w", name, err)
			}
			exists = false
		}
		created[real] = true
		switch hdr.Typeflag {
		case tar.TypeDir:
			if !exists {
				if err := parent.Mkdir(base, 0o755); err != nil {
					return fmt.Errorf("creating directory %s: %w", name, err)
				}
				fresh[real] = true
			}
			dirs = append(dirs, dirTime{real, hdr.ModTime})
		case tar.TypeReg, tar.TypeRegA:
			if err := parent.WriteFile(base, tr, 0o600); err != nil {
				return fmt.Errorf("writing %s: %w", name, err)
			}
		case tar.TypeSymlink:
			if err := parent.Symlink(hdr.Linkname, base); err != nil {
				return fmt.Errorf("creating symlink %s: %w", name, err)
			}
		case tar.TypeLink:
			target, err := cleanName(hdr.Linkname)
			if err != nil {
				return fmt.Errorf("hard link %s: %w", name, err)
			}
			td, tname, err := root.Parent(target)
			if err != nil {
				return fmt.Errorf("hard link %s to %s: %w", name, hdr.Linkname, err)
			}
			err = parent.Link(td, tname, base)
			td.Close()
			if err != nil {
				if skip(name, err) {
					delete(created, real)
					continue
				}
				return fmt.Errorf("hard link %s to %s: %w", name, hdr.Linkname, err)
			}
			continue // the link shares the target's metadata
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			log.Debug("skipping device or fifo while unpacking", "path", name)
			delete(created, real)
			continue
		default:
			log.Debug("skipping unsupported tar entry", "path", name, "type", string(hdr.Typeflag))
			delete(created, real)
			continue
		}
		if err := applyMeta(parent, base, hdr, canChown); err != nil {
			return fmt.Errorf("setting metadata of %s: %w", name, err)
		}
	}
	// Directory times last: creating their children changed them. Each is
	// resolved again, inside the root.
	for i := len(dirs) - 1; i >= 0; i-- {
		if d, err := root.OpenDir(dirs[i].img); err == nil {
			d.SetTimes(dirs[i].mtime, dirs[i].mtime)
			d.Close()
		}
	}
	return nil
}

type dirTime struct {
	img   string
	mtime time.Time
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
	return fsroot.Clean(s), nil
}

// applyMeta sets owner, mode, xattrs and (except for directories) times
// of name in parent from hdr.
func applyMeta(parent *fsroot.Dir, name string, hdr *tar.Header, canChown bool) error {
	if err := parent.Lchown(name, hdr.Uid, hdr.Gid); err != nil && canChown {
		return err
	}
	if hdr.Typeflag == tar.TypeSymlink {
		parent.Chtimes(name, hdr.ModTime, hdr.ModTime)
		return nil
	}
	if err := parent.Chmod(name, ModeFromTar(hdr.Mode)); err != nil {
		return err
	}
	for k, v := range hdr.PAXRecords {
		if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			parent.Lsetxattr(name, attr, []byte(v)) // best effort: the layer keeps them anyway
		}
	}
	if hdr.Typeflag != tar.TypeDir {
		return parent.Chtimes(name, hdr.ModTime, hdr.ModTime)
	}
	return nil
}

// applyRootMeta sets the root directory's owner and mode from a "./" entry.
func applyRootMeta(root *fsroot.Root, hdr *tar.Header, canChown bool) error {
	self := fmt.Sprintf("/proc/self/fd/%d", root.Dir().Fd())
	if err := os.Chown(self, hdr.Uid, hdr.Gid); err != nil && canChown {
		return err
	}
	return os.Chmod(self, ModeFromTar(hdr.Mode))
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

// clearDir removes what lower layers put in the image directory dir,
// keeping what this layer created and what the root protects.
func clearDir(root *fsroot.Root, dir string, created map[string]bool) error {
	d, err := root.OpenDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		if fsroot.IsProtected(err) {
			return nil
		}
		return err
	}
	defer d.Close()
	names, err := d.ReadDir()
	if err != nil {
		return err
	}
	for _, n := range names {
		real := path.Join(d.Path(), n)
		if created[real] || root.Protected(real) {
			continue
		}
		if err := d.RemoveAll(n); err != nil {
			return err
		}
	}
	return nil
}

// CheckHeader refuses a layer entry ApplyTar would refuse by its name
// alone (a name or hard-link target climbing out of the root, a whiteout
// naming no file), without a root: for layers that are passed on without
// being unpacked.
func CheckHeader(hdr *tar.Header) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if _, base := path.Split(name); strings.HasPrefix(base, whiteoutPrefix) && base != opaqueMarker {
		if victim := strings.TrimPrefix(base, whiteoutPrefix); victim == "" || victim == "." || victim == ".." {
			return fmt.Errorf("tar entry %q: a whiteout that names no file", hdr.Name)
		}
	}
	if hdr.Typeflag == tar.TypeLink {
		if _, err := cleanName(hdr.Linkname); err != nil {
			return fmt.Errorf("hard link %s: %w", name, err)
		}
	}
	return nil
}
