package option

import (
	"errors"
	"fmt"
	"testing"
)

func TestName(t *testing.T) {
	sources := map[string]string{"Isolation": "--isolation", "TarPath": "--tar-path", "Force": "--force"}
	bad := errors.New("want auto, chroot or in-place")
	for _, tc := range []struct {
		name      string
		err       error
		unnamed   string
		named     string
		isWrapped bool
	}{
		{"alone", New("Isolation", `"x"`, bad),
			`option Isolation "x": want auto, chroot or in-place`, `--isolation "x": want auto, chroot or in-place`, true},
		{"no value", Errorf("Isolation", "", "in place needs a container"),
			"option Isolation: in place needs a container", "--isolation: in place needs a container", false},
		{"wrapped", fmt.Errorf("stage 1: %w", New("TarPath", "/out/img.tar", bad)),
			"stage 1: option TarPath /out/img.tar: " + bad.Error(), "stage 1: --tar-path /out/img.tar: " + bad.Error(), true},
		{"joined", errors.Join(errors.New("first"), fmt.Errorf("second: %w", Errorf("TarPath", "t", "is a directory"))),
			"first\nsecond: option TarPath t: is a directory", "first\nsecond: --tar-path t: is a directory", false},
		{"nested", New("Isolation", "in-place", fmt.Errorf("RUN: %w", New("TarPath", "t", bad))),
			"option Isolation in-place: RUN: option TarPath t: " + bad.Error(), "--isolation in-place: RUN: --tar-path t: " + bad.Error(), true},
		{"hint", Errorf("Isolation", "in-place", "refusing (force it with option Force)"),
			"option Isolation in-place: refusing (force it with option Force)", "--isolation in-place: refusing (force it with --force)", false},
		{"longer name", Errorf("TarPathX", "v", "x"), "option TarPathX v: x", "option TarPathX v: x", false},
		{"unknown option", New("Other", "v", bad), "option Other v: " + bad.Error(), "option Other v: " + bad.Error(), true},
		{"no option error", bad, bad.Error(), bad.Error(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.unnamed {
				t.Errorf("before Name: %q, want %q", got, tc.unnamed)
			}
			named := Name(tc.err, sources)
			if got := named.Error(); got != tc.named {
				t.Errorf("after Name: %q, want %q", got, tc.named)
			}
			if errors.Is(named, bad) != tc.isWrapped {
				t.Errorf("errors.Is(err, cause) = %v", !tc.isWrapped)
			}
		})
	}
	if Name(nil, sources) != nil {
		t.Error("Name(nil) is not nil")
	}
}
