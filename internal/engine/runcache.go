package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/sys/unix"
)

// lockPoll is how often a cache mount's lock is tried while waiting.
const lockPoll = 50 * time.Millisecond

// cacheMountDir picks the directory of a RUN --mount=type=cache whose
// instances live at base (base, base-1, base-2 ... for private sharing)
// and locks it for the run as BuildKit's sharing modes do, across builds
// on this machine: shared (the default) lets others use it at once,
// locked waits until nobody else does, private takes an instance nobody
// else holds. release unlocks it.
func cacheMountDir(ctx context.Context, base string, sharing instructions.ShareMode) (dir string, release func(), err error) {
	switch sharing {
	case "", instructions.MountSharingShared:
		f, err := waitLock(ctx, base, unix.LOCK_SH)
		return base, closer(f), err
	case instructions.MountSharingLocked:
		f, err := waitLock(ctx, base, unix.LOCK_EX)
		return base, closer(f), err
	case instructions.MountSharingPrivate:
		for i := 0; ; i++ {
			dir := base
			if i > 0 {
				dir = base + "-" + strconv.Itoa(i)
			}
			f, err := openLock(dir)
			if err != nil {
				return "", nil, err
			}
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
				return dir, closer(f), nil
			}
			f.Close()
		}
	default:
		return "", nil, fmt.Errorf("--mount=type=cache,sharing=%s: want shared, private or locked", sharing)
	}
}

func openLock(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking cache mount: %w", err)
	}
	return f, nil
}

// waitLock takes the lock of dir in mode, waiting (until ctx ends) while
// another build holds it.
func waitLock(ctx context.Context, dir string, mode int) (*os.File, error) {
	f, err := openLock(dir)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), mode|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking cache mount: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for a cache mount another build holds: %w", ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

func closer(f *os.File) func() {
	return func() {
		if f != nil {
			f.Close()
		}
	}
}
