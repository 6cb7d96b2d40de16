package rootfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"

	"github.com/kilnbuild/kiln/internal/fsroot"
)

// IDs is a numeric owner.
type IDs struct {
	UID, GID int
}

// maxDB bounds how much of /etc/passwd or /etc/group is read.
const maxDB = 16 << 20

type dbEntry struct {
	name string
	id   int
	gid  int    // primary group, passwd only
	home string // home directory, passwd only
}

// readDB reads /etc/passwd (users true) or /etc/group inside root.
func readDB(root *fsroot.Root, users bool) ([]dbEntry, error) {
	file := "/etc/group"
	if users {
		file = "/etc/passwd"
	}
	f, err := root.OpenFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	defer f.Close()
	var out []dbEntry
	s := bufio.NewScanner(io.LimitReader(f, maxDB))
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, ":")
		if len(parts) < 3 {
			continue
		}
		id, err := strconv.Atoi(parts[2])
		if err != nil {
			continue
		}
		e := dbEntry{name: parts[0], id: id}
		if users && len(parts) > 3 {
			e.gid, _ = strconv.Atoi(parts[3])
		}
		if users && len(parts) > 5 {
			e.home = parts[5]
		}
		out = append(out, e)
	}
	return out, s.Err()
}

func lookup(root *fsroot.Root, users bool, spec string) (dbEntry, bool, error) {
	db, err := readDB(root, users)
	if err != nil {
		return dbEntry{}, false, err
	}
	n, numErr := strconv.Atoi(spec)
	for _, e := range db {
		if (numErr == nil && e.id == n) || (numErr != nil && e.name == spec) {
			return e, true, nil
		}
	}
	return dbEntry{}, false, nil
}

// LookupUser resolves a USER value ("name", "uid", "name:group", ...) in
// root's /etc/passwd and /etc/group the way a container runtime does: a
// user alone gets its primary group, or group 0 when it has no entry.
func LookupUser(root *fsroot.Root, spec string) (IDs, error) {
	return resolveOwner(root, spec, false)
}

// LookupChown resolves a COPY --chown value as BuildKit does: a user alone
// by name gets its primary group, a numeric user alone gets the same
// number as group.
func LookupChown(root *fsroot.Root, spec string) (IDs, error) {
	return resolveOwner(root, spec, true)
}

func resolveOwner(root *fsroot.Root, spec string, chown bool) (IDs, error) {
	u, g, hasGroup := strings.Cut(spec, ":")
	if u == "" {
		return IDs{}, fmt.Errorf("user %q: empty user name", spec)
	}
	var ids IDs
	uid, numErr := strconv.Atoi(u)
	e, found, err := lookup(root, true, u)
	if err != nil {
		return IDs{}, err
	}
	switch {
	case numErr == nil:
		if uid < 0 {
			return IDs{}, fmt.Errorf("user %q: negative id", spec)
		}
		ids.UID = uid
		if chown {
			ids.GID = uid
		} else if found {
			ids.GID = e.gid
		}
	case found:
		ids.UID, ids.GID = e.id, e.gid
	case u == "root":
		// As BuildKit: root is 0:0 without a passwd entry (or file).
	default:
		return IDs{}, fmt.Errorf("unable to find user %s: no matching entries in passwd file", u)
	}
	if hasGroup {
		gid, numErr := strconv.Atoi(g)
		if numErr == nil {
			if gid < 0 {
				return IDs{}, fmt.Errorf("group %q: negative id", g)
			}
			ids.GID = gid
		} else {
			ge, found, err := lookup(root, false, g)
			if err != nil {
				return IDs{}, err
			}
			if !found && g == "root" {
				ge = dbEntry{id: 0}
				found = true
			}
			if !found {
				return IDs{}, fmt.Errorf("unable to find group %s: no matching entries in group file", g)
			}
			ids.GID = ge.id
		}
	}
	return ids, nil
}

// SupplementaryGroups returns the ids of the groups in root's /etc/group
// that list user as a member.
func SupplementaryGroups(root *fsroot.Root, user string) ([]int, error) {
	f, err := root.OpenFile("/etc/group")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxDB))
	f.Close()
	if err != nil {
		return nil, err
	}
	var out []int
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.Split(strings.TrimSpace(line), ":")
		if len(parts) < 4 {
			continue
		}
		for _, m := range strings.Split(parts[3], ",") {
			if m == user {
				if id, err := strconv.Atoi(parts[2]); err == nil {
					out = append(out, id)
				}
			}
		}
	}
	return out, nil
}

// HomeDir is the home directory a container runtime gives the USER value
// spec ("" means root): its passwd entry's, or "/" when it has none.
func HomeDir(root *fsroot.Root, spec string) string {
	u, _, _ := strings.Cut(spec, ":")
	if u == "" {
		u = "root"
	}
	e, found, err := lookup(root, true, u)
	if err != nil || !found || e.home == "" {
		return "/"
	}
	return e.home
}

// UserName returns the passwd name of a USER value's user part, or "".
func UserName(root *fsroot.Root, spec string) string {
	u, _, _ := strings.Cut(spec, ":")
	e, found, err := lookup(root, true, u)
	if err != nil || !found {
		return ""
	}
	return e.name
}
