// Package snapshot detects what changed under a root directory between two
// points in time and turns the changes into layer entries: new and
// modified files, metadata-only changes, deletions as whiteouts, replaced
// directories as opaque directories, hard links kept as links.
package snapshot

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kilnbuild/kiln/internal/layer"
	"github.com/kilnbuild/kiln/internal/option"
)

// Mode is a --snapshot-mode.
type Mode string

// The snapshot modes, with kaniko's names.
const (
	// Full detects every change: content, metadata and replacement. kiln
	// compares the inode change time, which the kernel updates on every
	// content or metadata change and no program can set, so it needs no
	// content hashing.
	Full Mode = "full"
	// Redo compares mtime, size, mode and owner, like kaniko's redo.
	Redo Mode = "redo"
	// Time compares mtime only, like kaniko's time.
	Time Mode = "time"
)

// ParseMode checks a snapshot mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "", Full:
		return Full, nil
	case Redo, Time:
		return m, nil
	}
	return "", option.Errorf("SnapshotMode", strconv.Quote(s), "want full, redo or time")
}

type state struct {
	mode                fs.FileMode
	uid, gid            uint32
	size                int64
	mtime, ctime, btime int64 // btime is 0 where the file system has none
	ino                 uint64
	dev                 uint64
	nlink               uint32
	rdev                uint64
	rawMode             uint32
}

// Snapshot is the state of every path under a root at one time.
type Snapshot struct {
	root  string
	mode  Mode
	files map[string]state // image path (no leading slash) -> state
}

// Options configure Take.
type Options struct {
	// Mode is the change detection.
	Mode Mode
	// Ignore reports image paths (no leading slash) to leave out, with
	// everything below them.
	Ignore func(p string) bool
}

// Take records the state of everything under root.
func Take(ctx context.Context, root string, o Options) (*Snapshot, error) {
	return take(ctx, root, o, 1024)
}

// take is Take of a root expected to hold about size paths.
func take(ctx context.Context, root string, o Options, size int) (*Snapshot, error) {
	s := &Snapshot{root: root, mode: o.Mode, files: make(map[string]state, size)}
	if s.mode == "" {
		s.mode = Full
	}
	rootFD, err := openRoot(root)
	if err != nil {
		return nil, fmt.Errorf("snapshotting %s: %w", root, err)
	}
	defer unix.Close(rootFD)
	results, err := parallelWalk(ctx, rootFD, o.Ignore, size)
	if err != nil {
		return nil, fmt.Errorf("snapshotting %s: %w", root, err)
	}
	for _, r := range results {
		for _, e := range r {
			s.files[e.path] = e.state
		}
	}
	return s, nil
}

type walked struct {
	path  string
	state state
}

// parallelWalk stats everything under root with several workers (the
// walk is bound by system calls, which block), each directory listed by
// one worker. It returns the workers' results.
func parallelWalk(ctx context.Context, root int, ignore func(string) bool, size int) ([][]walked, error) {
	workers := 2 * runtime.GOMAXPROCS(0)
	if workers < 4 {
		workers = 4
	}
	var (
		mu       sync.Mutex
		cond     = sync.NewCond(&mu)
		queue    = []string{""}
		pending  = 1 // directories queued or being listed
		firstErr error
	)
	results := make([][]walked, workers)
	for w := range results {
		results[w] = make([]walked, 0, size/workers+size/(4*workers)+16)
	}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				mu.Lock()
				for len(queue) == 0 && pending > 0 && firstErr == nil {
					cond.Wait()
				}
				if pending == 0 || firstErr != nil {
					mu.Unlock()
					cond.Broadcast()
					return
				}
				rel := queue[len(queue)-1]
				queue = queue[:len(queue)-1]
				mu.Unlock()
				subdirs, err := listDir(ctx, root, rel, ignore, &results[w])
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				queue = append(queue, subdirs...)
				pending += len(subdirs) - 1
				mu.Unlock()
				cond.Broadcast()
			}
		}(w)
	}
	wg.Wait()
	return results, firstErr
}

// listDir stats the entries of one directory, appending them to out, and
// returns its subdirectories. The directory is opened beneath the root
// without following any symlink, and its entries are looked at relative
// to it: nothing the RUN left can lead the walk out of the root.
func listDir(ctx context.Context, root int, rel string, ignore func(string) bool, out *[]walked) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fd, err := openBeneath(root, rel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return nil, nil
		}
		return nil, err
	}
	f := os.NewFile(uintptr(fd), rel)
	names, err := f.Readdirnames(-1)
	defer f.Close()
	if err != nil {
		return nil, err
	}
	var subdirs []string
	for _, n := range names {
		p := n
		if rel != "" {
			p = rel + "/" + n
		}
		if ignore != nil && ignore(p) {
			continue
		}
		var st unix.Statx_t
		if err := unix.Statx(fd, n, unix.AT_SYMLINK_NOFOLLOW,
			unix.STATX_BASIC_STATS|unix.STATX_BTIME, &st); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, err
		}
		*out = append(*out, walked{p, stateOf(&st)})
		if uint32(st.Mode)&syscall.S_IFMT == syscall.S_IFDIR {
			subdirs = append(subdirs, p)
		}
	}
	return subdirs, nil
}

func nanos(t unix.StatxTimestamp) int64 { return t.Sec*1e9 + int64(t.Nsec) }

func stateOf(st *unix.Statx_t) state {
	s := state{
		mode: fileMode(uint32(st.Mode)), uid: st.Uid, gid: st.Gid, size: int64(st.Size),
		mtime: nanos(st.Mtime), ctime: nanos(st.Ctime), ino: st.Ino,
		dev:   uint64(unix.Mkdev(st.Dev_major, st.Dev_minor)),
		nlink: st.Nlink, rdev: uint64(unix.Mkdev(st.Rdev_major, st.Rdev_minor)), rawMode: uint32(st.Mode),
	}
	if st.Mask&unix.STATX_BTIME != 0 {
		s.btime = nanos(st.Btime)
	}
	return s
}

func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & syscall.S_IFMT {
	case syscall.S_IFDIR:
		mode |= fs.ModeDir
	case syscall.S_IFLNK:
		mode |= fs.ModeSymlink
	case syscall.S_IFSOCK:
		mode |= fs.ModeSocket
	case syscall.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case syscall.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case syscall.S_IFBLK:
		mode |= fs.ModeDevice
	}
	if m&syscall.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// Changes are the differences between two snapshots.
type Changes struct {
	// Changed are new or modified paths, sorted.
	Changed []string
	// Deleted are removed paths whose parent still exists, sorted; nothing
	// below a deleted directory is listed.
	Deleted []string
	// Opaque are directories that were removed and created again: their
	// lower contents are gone.
	Opaque []string

	// after is the state the changes were read from, so Entries need not
	// stat every file again.
	after *Snapshot
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool {
	return len(c.Changed) == 0 && len(c.Deleted) == 0 && len(c.Opaque) == 0
}

// replaced reports a path removed and created again between the states.
func replaced(before, after state) bool {
	return before.mode.Type() != after.mode.Type() || before.ino != after.ino || before.dev != after.dev ||
		before.btime != after.btime
}

func (s *Snapshot) changed(before, after state) bool {
	if replaced(before, after) {
		return true
	}
	if after.mode.IsDir() {
		// A directory's ctime moves whenever an entry is added or removed;
		// those entries are changes of their own. Its own metadata is what
		// counts here.
		return before.mtime != after.mtime || before.mode != after.mode || before.uid != after.uid || before.gid != after.gid
	}
	switch s.mode {
	case Time:
		return before.mtime != after.mtime
	case Redo:
		return before.mtime != after.mtime || before.size != after.size || before.mode != after.mode ||
			before.uid != after.uid || before.gid != after.gid
	default:
		return before.ctime != after.ctime || before.mtime != after.mtime || before.size != after.size ||
			before.mode != after.mode || before.uid != after.uid || before.gid != after.gid
	}
}

// Diff compares s (before) with the root as it is now.
func (s *Snapshot) Diff(ctx context.Context, o Options) (Changes, *Snapshot, error) {
	after, err := take(ctx, s.root, Options{Mode: s.mode, Ignore: o.Ignore}, len(s.files)+len(s.files)/8)
	if err != nil {
		return Changes{}, nil, err
	}
	var c Changes
	opaque := map[string]bool{}
	for p, st := range after.files {
		b, ok := s.files[p]
		if !ok || s.changed(b, st) {
			c.Changed = append(c.Changed, p)
			if ok && st.mode.IsDir() && b.mode.IsDir() && replaced(b, st) {
				opaque[p] = true
			}
		}
	}
	for p := range s.files {
		if _, ok := after.files[p]; ok {
			continue
		}
		parent := path.Dir(p)
		if parent == "." {
			parent = ""
		}
		if parent != "" {
			if _, ok := after.files[parent]; !ok {
				continue // a parent went too; its whiteout covers this
			}
			if opaque[parent] {
				continue // the parent is opaque now
			}
		}
		c.Deleted = append(c.Deleted, p)
	}
	for p := range opaque {
		c.Opaque = append(c.Opaque, p)
	}
	sort.Strings(c.Changed)
	sort.Strings(c.Deleted)
	sort.Strings(c.Opaque)
	c.after = after
	return c, after, nil
}

// Entries turns changes into layer entries read from root: parent
// directories of every change (with their current metadata), whiteouts,
// opaque markers, and each changed path; files that share an inode are
// written once and then as hard links. Sockets are skipped.
func Entries(root string, c Changes) (*layer.List, error) {
	rootFD, err := openRoot(root)
	if err != nil {
		return nil, err
	}
	defer unix.Close(rootFD)
	dirs := &dirCache{root: rootFD}
	defer dirs.close()
	opener := &rootOpener{root: root}
	out := &layer.List{}
	seen := make(map[string]bool, len(c.Changed))
	links := map[[2]uint64]string{}
	addParents := func(p string) error {
		var chain []string
		for d := path.Dir(p); d != "." && d != "/" && !seen[d]; d = path.Dir(d) {
			chain = append(chain, d)
		}
		for i := len(chain) - 1; i >= 0; i-- {
			e, _, err := entry(dirs, opener, chain[i], links, c.after)
			if err != nil {
				return err
			}
			seen[chain[i]] = true
			out.Append(e)
		}
		return nil
	}
	type item struct {
		p    string
		kind int // 0 change, 1 whiteout, 2 opaque marker
	}
	items := make([]item, 0, len(c.Changed)+len(c.Deleted)+len(c.Opaque))
	for _, p := range c.Changed {
		items = append(items, item{p, 0})
	}
	for _, p := range c.Deleted {
		items = append(items, item{p, 1})
	}
	for _, p := range c.Opaque {
		items = append(items, item{p, 2})
	}
	// Whiteouts and opaque markers sort with their directory's entries.
	key := func(it item) string {
		switch it.kind {
		case 1:
			return path.Join(path.Dir(it.p), ".wh."+path.Base(it.p))
		case 2:
			return it.p + "/.wh..wh..opq"
		}
		return it.p
	}
	sort.SliceStable(items, func(i, j int) bool { return key(items[i]) < key(items[j]) })
	for _, it := range items {
		name := key(it)
		if err := addParents(name); err != nil {
			return nil, err
		}
		if it.kind != 0 {
			out.Append(layer.Entry{Header: layer.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(0, 0)}})
			continue
		}
		if seen[it.p] {
			continue
		}
		e, ok, err := entry(dirs, opener, it.p, links, c.after)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // gone since the walk
			}
			return nil, err
		}
		seen[it.p] = true
		if ok {
			out.Append(e)
		}
	}
	for e := range out.All() {
		if e.Open != nil {
			opener.left++
		}
	}
	return out, nil
}

// rootOpener opens the files of entries below one handle on the root,
// opened at the first call and closed after the last of left calls.
type rootOpener struct {
	root string
	mu   sync.Mutex
	f    *os.File
	left int
}

func (o *rootOpener) open(p string) (*os.File, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil {
		fd, err := openRoot(o.root)
		if err != nil {
			return nil, err
		}
		o.f = os.NewFile(uintptr(fd), o.root)
	}
	fd, err := openBeneath(int(o.f.Fd()), p, unix.O_RDONLY|unix.O_NONBLOCK)
	if o.left--; o.left <= 0 {
		o.f.Close()
		o.f = nil
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: "/" + p, Err: err}
	}
	return os.NewFile(uintptr(fd), "/"+p), nil
}

// entry builds the layer entry of image path p from the file at p in
// the root (rootFD): its directory opened beneath the root without
// following symlinks, p itself never followed. ok is false for files a
// layer cannot hold (sockets).
func entry(dirs *dirCache, opener *rootOpener, p string, links map[[2]uint64]string, after *Snapshot) (layer.Entry, bool, error) {
	dir, base := path.Split(p)
	dfd, err := dirs.get(dir)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			err = fs.ErrNotExist // a symlink stands where the directory was
		}
		return layer.Entry{}, false, &fs.PathError{Op: "open", Path: "/" + dir, Err: err}
	}
	st, ok := state{}, false
	if after != nil {
		st, ok = after.files[p]
	}
	if !ok {
		var sx unix.Statx_t
		if err := unix.Statx(dfd, base, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &sx); err != nil {
			return layer.Entry{}, false, &fs.PathError{Op: "statx", Path: "/" + p, Err: err}
		}
		st = stateOf(&sx)
	}
	h := layer.Header{
		Name: p, Uid: int(st.uid), Gid: int(st.gid), Mode: int64(st.rawMode & 0o7777),
		ModTime: time.Unix(0, st.mtime), Size: st.size,
	}
	e := layer.Entry{}
	switch st.rawMode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		h.Typeflag = tar.TypeDir
	case syscall.S_IFLNK:
		target, err := readlinkat(dfd, base)
		if err != nil {
			return e, false, err
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, target
	case syscall.S_IFREG:
		key := [2]uint64{st.dev, st.ino}
		if st.nlink > 1 {
			if first, ok := links[key]; ok {
				h.Typeflag, h.Linkname = tar.TypeLink, first
				return layer.Entry{Header: h}, true, nil
			}
			links[key] = p
		}
		h.Typeflag = tar.TypeReg
		e.Open = func() (*os.File, error) { return opener.open(p) }
		e.Sized = true
	case syscall.S_IFIFO:
		h.Typeflag = tar.TypeFifo
	case syscall.S_IFCHR, syscall.S_IFBLK:
		h.Typeflag = tar.TypeChar
		if st.rawMode&syscall.S_IFMT == syscall.S_IFBLK {
			h.Typeflag = tar.TypeBlock
		}
		h.Devmajor, h.Devminor = int64(unix.Major(st.rdev)), int64(unix.Minor(st.rdev))
	default:
		return e, false, nil
	}
	if x := xattrsAt(dfd, base); len(x) > 0 {
		h.PAXRecords = x
	}
	e.Header = h
	return e, true, nil
}

// dirCache holds the descriptor of the directory the last entry was in:
// entries come sorted, so those of one directory come together.
type dirCache struct {
	root int
	dir  string
	fd   int
	open bool
}

func (c *dirCache) get(dir string) (int, error) {
	if c.open && c.dir == dir {
		return c.fd, nil
	}
	c.close()
	fd, err := openBeneath(c.root, dir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return -1, err
	}
	c.dir, c.fd, c.open = dir, fd, true
	return fd, nil
}

func (c *dirCache) close() {
	if c.open {
		unix.Close(c.fd)
		c.open = false
	}
}

// openRoot opens a root directory for walking beneath it.
func openRoot(root string) (int, error) {
	return unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// openBeneath opens rel below the root descriptor with flags, following
// no symlink at all (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS; on
// kernels without openat2, one O_NOFOLLOW element at a time).
func openBeneath(root int, rel string, flags int) (int, error) {
	rel = strings.Trim(rel, "/")
	if rel == "" {
		rel = "."
	}
	fd, err := unix.Openat2(root, rel, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if !errors.Is(err, unix.ENOSYS) {
		return fd, err
	}
	cur, err := unix.Openat(root, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	elems := strings.Split(rel, "/")
	for i, e := range elems {
		if e == "." || e == "" {
			continue
		}
		if e == ".." {
			unix.Close(cur)
			return -1, unix.EXDEV
		}
		fl := unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if i == len(elems)-1 {
			fl = flags | unix.O_NOFOLLOW | unix.O_CLOEXEC
		}
		next, err := unix.Openat(cur, e, fl, 0)
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		cur = next
	}
	if rel == "." && flags&unix.O_PATH == 0 {
		next, err := unix.Openat(cur, ".", flags|unix.O_CLOEXEC, 0)
		unix.Close(cur)
		return next, err
	}
	return cur, nil
}

func readlinkat(dfd int, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dfd, name, buf)
		if err != nil {
			return "", &fs.PathError{Op: "readlink", Path: name, Err: err}
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

// The *xattrat system calls (Linux 6.13) read extended attributes
// relative to a directory descriptor.
const (
	sysGetxattrat  = 464
	sysListxattrat = 465
)

// xattrArgs is the kernel's struct xattr_args.
type xattrArgs struct {
	value uint64
	size  uint32
	flags uint32
}

// noXattrat says the kernel lacks the *xattrat calls.
var noXattrat atomic.Bool

// xattrsAt reads the extended attributes of name in the directory dfd
// (not following it) as PAX records: with listxattrat/getxattrat where
// the kernel has them, else through the descriptor's /proc/self/fd link.
func xattrsAt(dfd int, name string) map[string]string {
	if !noXattrat.Load() {
		out, err := xattrsAtSyscall(dfd, name)
		if !errors.Is(err, unix.ENOSYS) {
			return out
		}
		noXattrat.Store(true)
	}
	return xattrs(fmt.Sprintf("/proc/self/fd/%d/%s", dfd, name))
}

func xattrsAtSyscall(dfd int, name string) (map[string]string, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return nil, err
	}
	list := func(buf []byte) (int, error) {
		var ptr unsafe.Pointer
		if len(buf) > 0 {
			ptr = unsafe.Pointer(&buf[0])
		}
		n, _, e := unix.Syscall6(sysListxattrat, uintptr(dfd), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW, uintptr(ptr), uintptr(len(buf)), 0)
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
	size, err := list(nil)
	if err != nil || size == 0 {
		return nil, err
	}
	buf := make([]byte, size)
	if size, err = list(buf); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, attr := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if attr == "" {
			continue
		}
		ap, err := unix.BytePtrFromString(attr)
		if err != nil {
			continue
		}
		get := func(val []byte) (int, error) {
			args := xattrArgs{size: uint32(len(val))}
			if len(val) > 0 {
				args.value = uint64(uintptr(unsafe.Pointer(&val[0])))
			}
			n, _, e := unix.Syscall6(sysGetxattrat, uintptr(dfd), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
				uintptr(unsafe.Pointer(ap)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
			runtime.KeepAlive(val)
			if e != 0 {
				return 0, e
			}
			return int(n), nil
		}
		vsize, err := get(nil)
		if err != nil {
			continue
		}
		val := make([]byte, vsize)
		if vsize, err = get(val); err != nil {
			continue
		}
		out["SCHILY.xattr."+attr] = string(val[:vsize])
	}
	return out, nil
}

// xattrs reads a file's extended attributes as PAX records.
func xattrs(host string) map[string]string {
	size, err := unix.Llistxattr(host, nil)
	if err != nil || size <= 0 {
		return nil
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(host, buf)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vsize, err := unix.Lgetxattr(host, name, nil)
		if err != nil || vsize < 0 {
			continue
		}
		val := make([]byte, vsize)
		if vsize, err = unix.Lgetxattr(host, name, val); err != nil {
			continue
		}
		out["SCHILY.xattr."+name] = string(val[:vsize])
	}
	return out
}
