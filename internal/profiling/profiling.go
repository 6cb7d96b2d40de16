// Package profiling writes Go CPU and heap profiles of a step's run, for
// `go tool pprof`: where a slow build spends its time and memory.
package profiling

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"

	"github.com/kilnbuild/kiln/internal/option"
)

// Start begins a CPU profile into dir/cpu.pprof (dir is created); the
// returned stop ends it and writes dir/heap.pprof. An empty dir profiles
// nothing.
func Start(dir string) (stop func() error, err error) {
	if dir == "" {
		return func() error { return nil }, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, option.New("Profile", dir, err)
	}
	cpu, err := os.Create(filepath.Join(dir, "cpu.pprof"))
	if err != nil {
		return nil, option.New("Profile", dir, err)
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		cpu.Close()
		return nil, option.New("Profile", dir, err)
	}
	return func() error {
		pprof.StopCPUProfile()
		errs := []error{cpu.Close()}
		heap, err := os.Create(filepath.Join(dir, "heap.pprof"))
		if err == nil {
			runtime.GC() // up-to-date allocation figures
			errs = append(errs, pprof.WriteHeapProfile(heap), heap.Close())
		} else {
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil {
			return option.New("Profile", dir, err)
		}
		return nil
	}, nil
}
