package rootfs

import (
	"os"
	"syscall"
)

func ownerIDs(fi os.FileInfo) (int, int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}
