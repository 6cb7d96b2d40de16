package engine

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/kilnbuild/kiln/internal/fsroot"
	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/rootfs"
)

// isArchive reports whether the regular file p of root is a (possibly
// compressed) tar, which ADD extracts. Anything else (a fifo, a device) is
// never opened for reading.
func isArchive(root *fsroot.Root, p string) bool {
	f, err := root.OpenFile(p)
	if err != nil {
		return false
	}
	defer f.Close()
	return isArchiveFile(f)
}

// isArchiveFile reports whether f holds a (possibly compressed) tar.
func isArchiveFile(f io.Reader) bool {
	r, done, err := layer.DecompressHead(f)
	if err != nil {
		return false
	}
	defer done()
	_, err = tar.NewReader(r).Next()
	return err == nil
}

// extract unpacks the archive f into the image directory dest, refusing
// entries that climb out of it.
func (b *builder) extract(w *writer, f io.Reader, dest string) error {
	r, done, err := layer.Decompress(f)
	if err != nil {
		return err
	}
	defer done()
	if _, err := w.mkdirAll(dest); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading archive: %w", err)
		}
		name, err := archiveName(h.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue
		}
		target := path.Join(dest, name)
		m := meta{owner: idsOf(h), mode: h.Mode & 0o7777, mtime: h.ModTime}
		if w.o.chown != nil {
			m.owner = *w.o.chown
		}
		if w.o.chmod != nil && h.Typeflag != tar.TypeSymlink {
			own := rootfs.ModeFromTar(h.Mode)
			if h.Typeflag == tar.TypeDir {
				own |= fs.ModeDir
			}
			m.mode = tarMode(w.o.chmod.apply(own))
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = w.dir(target, m)
		case tar.TypeReg, tar.TypeRegA:
			err = w.file(target, tr, m)
		case tar.TypeSymlink:
			err = w.symlink(target, h.Linkname, m)
		case tar.TypeLink:
			ln, lerr := archiveName(h.Linkname)
			if lerr != nil {
				return lerr
			}
			tparent, tname, img, terr := w.target(path.Join(dest, ln))
			if terr != nil {
				return terr
			}
			if !tparent.Exists(tname) {
				return fmt.Errorf("archive entry %q: hard link target %q not in the archive", h.Name, h.Linkname)
			}
			err = w.hardlink(target, img, m)
		default:
			b.log.Debug("ADD: skipping special archive entry", "entry", h.Name)
		}
		if err != nil {
			return fmt.Errorf("archive entry %q: %w", h.Name, err)
		}
	}
}

func archiveName(n string) (string, error) {
	for _, e := range strings.Split(n, "/") {
		if e == ".." {
			return "", fmt.Errorf("archive entry %q: path escapes the destination", n)
		}
	}
	return strings.TrimPrefix(path.Clean("/"+n), "/"), nil
}

func idsOf(h *tar.Header) rootfs.IDs { return rootfs.IDs{UID: h.Uid, GID: h.Gid} }

// redactURL drops user information and query from a URL for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<unparseable URL>"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "<redacted>"
	}
	return u.String()
}

// addURL downloads an ADD URL source to dest, verifying --checksum.
func (b *builder) addURL(ctx context.Context, w *writer, src string, r copyRequest, destIsDir bool, dest string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return fmt.Errorf("ADD %s: %w", redactURL(src), err)
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return fmt.Errorf("ADD %s: %w", redactURL(src), errors.Unwrap(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ADD %s: %s", redactURL(src), resp.Status)
	}
	tmp, err := os.CreateTemp(b.work, "add-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	sum := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, sum), resp.Body); err != nil {
		return fmt.Errorf("ADD %s: downloading: %w", redactURL(src), err)
	}
	got := "sha256:" + hex.EncodeToString(sum.Sum(nil))
	if r.checksum != "" {
		want := r.checksum
		if !strings.Contains(want, ":") {
			want = "sha256:" + want
		}
		if !strings.HasPrefix(want, "sha256:") {
			return fmt.Errorf("ADD --checksum=%s: only sha256 checksums are supported", r.checksum)
		}
		if want != got {
			return fmt.Errorf("ADD %s: checksum mismatch: want %s, got %s", redactURL(src), want, got)
		}
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if r.unpackSet && r.unpack && isArchiveFile(tmp) {
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return err
		}
		return b.extract(w, tmp, dest)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	target := dest
	if destIsDir {
		target = path.Join(dest, downloadName(resp, src))
	}
	m := meta{mode: 0o600, mtime: b.now}
	if lm, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil && b.epoch == nil {
		m.mtime = lm.UTC().Truncate(time.Second)
	}
	if w.o.chown != nil {
		m.owner = *w.o.chown
	}
	if w.o.chmod != nil {
		m.mode = tarMode(w.o.chmod.apply(0o600))
	}
	if err := w.file(target, tmp, m); err != nil {
		return fmt.Errorf("ADD %s: %w", redactURL(src), err)
	}
	return nil
}

// downloadName is the file name an ADD URL gets in a destination directory.
func downloadName(resp *http.Response, src string) string {
	if _, params, err := mime.ParseMediaType(resp.Header.Get("Content-Disposition")); err == nil {
		if fn := path.Base(params["filename"]); fn != "" && fn != "." && fn != "/" && fn != ".." {
			return fn
		}
	}
	if u, err := url.Parse(src); err == nil {
		if base := path.Base(u.Path); base != "" && base != "/" && base != "." {
			return base
		}
	}
	return "__unnamed__"
}
