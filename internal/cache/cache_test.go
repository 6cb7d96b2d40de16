package cache

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

func TestKey(t *testing.T) {
	a := NewKey("p").Add("x", "ab").Add("y", "c").String()
	b := NewKey("p").Add("x", "a").Add("y", "bc").String()
	if a == b {
		t.Error("parts are not delimited")
	}
	if NewKey("p").AddEnv("e", []string{"B=2", "A=1"}).String() != NewKey("p").AddEnv("e", []string{"A=1", "B=2"}).String() {
		t.Error("env order changes the key")
	}
	if NewKey("p1").String() == NewKey("p2").String() {
		t.Error("the parent does not count")
	}
	if len(a) != 64 {
		t.Errorf("key %q is not a 64-character tag", a)
	}
}

type pusher struct{}

func (pusher) Write(_ context.Context, ref name.Reference, img v1.Image) error {
	return remote.Write(ref, img)
}

type puller struct{}

func (puller) Pull(_ context.Context, ref string) (v1.Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	return remote.Image(r)
}

func TestStores(t *testing.T) {
	reg := imagetest.Registry(t)
	layer, _ := random.Layer(100, "application/vnd.oci.image.layer.v1.tar+gzip")
	later := func() time.Time { return time.Now().Add(48 * time.Hour) }
	layoutDir := filepath.Join(t.TempDir(), "cache")
	stores := map[string]func(ttl time.Duration, now func() time.Time) Store{
		"layout": func(ttl time.Duration, now func() time.Time) Store {
			return &Layout{Path: layoutDir, TTL: ttl, Now: now}
		},
		"registry": func(ttl time.Duration, now func() time.Time) Store {
			return &Registry{Repo: reg + "/c", TTL: ttl, Now: now, Pull: puller{}, Push: pusher{},
				Parse: func(s string) (name.Reference, error) { return name.ParseReference(s) }}
		},
	}
	for kind, mk := range stores {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			s := mk(0, nil)
			key, empty := NewKey("a").String(), NewKey("b").String()
			if _, err := s.Get(ctx, key); !errors.Is(err, ErrMiss) {
				t.Fatalf("empty store: %v", err)
			}
			if err := s.Put(ctx, key, Entry{Layer: layer, Created: time.Now()}); err != nil {
				t.Fatal(err)
			}
			if err := s.Put(ctx, empty, Entry{Created: time.Now()}); err != nil {
				t.Fatal(err)
			}
			e, err := s.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := layer.Digest()
			if got, _ := e.Layer.Digest(); got != want {
				t.Errorf("layer %s, want %s", got, want)
			}
			if e, err := s.Get(ctx, empty); err != nil || e.Layer != nil {
				t.Errorf("empty entry: %+v %v", e, err)
			}
			if _, err := mk(24*time.Hour, later).Get(ctx, key); !errors.Is(err, ErrMiss) {
				t.Errorf("expired entry used: %v", err)
			}
			if err := (ReadOnly{s}).Put(ctx, NewKey("c").String(), Entry{Layer: layer}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Get(ctx, NewKey("c").String()); !errors.Is(err, ErrMiss) {
				t.Error("a read-only store stored an entry")
			}
		})
	}
}

// TestTopLevel: an entry's names at the top of its layer come back as
// stored; a list too long for its label, or none, comes back unknown
// (nil), not as an empty list (which says the layer touches nothing).
func TestTopLevel(t *testing.T) {
	reg := imagetest.Registry(t)
	l, _ := random.Layer(100, "application/vnd.oci.image.layer.v1.tar+gzip")
	long := make([]string, 2000)
	for i := range long {
		long[i] = strings.Repeat("n", 10) + strconv.Itoa(i)
	}
	stores := map[string]Store{
		"layout": &Layout{Path: filepath.Join(t.TempDir(), "cache")},
		"registry": &Registry{Repo: reg + "/c", Pull: puller{}, Push: pusher{},
			Parse: func(s string) (name.Reference, error) { return name.ParseReference(s) }},
	}
	for kind, s := range stores {
		for _, tc := range []struct {
			name      string
			top, want []string
		}{
			{"names", []string{".wh.gone", "etc", "many"}, []string{".wh.gone", "etc", "many"}},
			{"none at the top", []string{}, []string{}},
			{"not known", nil, nil},
			{"too many", long, nil},
			{"a name JSON cannot keep", []string{"etc", "\xff"}, nil},
		} {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				ctx := context.Background()
				key := NewKey(kind + tc.name).String()
				if err := s.Put(ctx, key, Entry{Layer: l, Created: time.Now(), TopLevel: tc.top}); err != nil {
					t.Fatal(err)
				}
				e, err := s.Get(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				if (e.TopLevel == nil) != (tc.want == nil) || !slices.Equal(e.TopLevel, tc.want) {
					t.Errorf("TopLevel %q (nil %v), want %q (nil %v)", e.TopLevel, e.TopLevel == nil, tc.want, tc.want == nil)
				}
			})
		}
	}
}
