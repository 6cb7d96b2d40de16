package engine

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/output"
	"github.com/kilnbuild/kiln/internal/registry"
)

// blobLog is a registry that records, per blob digest, the existence
// checks (HEAD) with whether they found the blob, and the commits of its
// uploads, in order.
type blobLog struct {
	mu     sync.Mutex
	events map[string][]string // digest -> "found", "missing", "commit"
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (b *blobLog) serve(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		var digest, event string
		switch {
		case r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/blobs/sha256:"):
			digest = r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			event = "missing"
			if sw.status == http.StatusOK {
				event = "found"
			}
		case r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads/") && sw.status == http.StatusCreated:
			digest, event = r.URL.Query().Get("digest"), "commit"
		default:
			return
		}
		b.mu.Lock()
		b.events[digest] = append(b.events[digest], event)
		b.mu.Unlock()
	})
}

// TestExecuteUploadsLayersWhileBuilding: the layers a build writes for
// the image reach the first destination streamed, as they are written,
// and its push uploads none of them again; a stage outside the image
// uploads nothing; a reproducible build (whose layers the registry may
// hold already) uploads only at the push; a build that fails pushes no
// image.
func TestExecuteUploadsLayersWhileBuilding(t *testing.T) {
	f := newFixture(t)
	const df = `FROM REG/busybox:1 AS base
RUN echo one > /one
FROM REG/busybox:1 AS other
RUN echo other > /other && echo x > /only-other
FROM base
COPY --from=other /other /other
COPY big /big
`
	big := strings.Repeat("incompressible? no, but large enough to stream in pieces\n", 1<<15)
	for _, c := range []struct {
		name, df     string
		reproducible bool
		early        bool // the image's new layers were uploaded before the push
		fails        bool
	}{
		{name: "while building", df: df, early: true},
		{name: "reproducible", df: df, reproducible: true},
		{name: "failing", df: df + "RUN false\n", fails: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			blobs := &blobLog{events: map[string][]string{}}
			s := httptest.NewServer(blobs.serve(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))))
			defer s.Close()
			dest := strings.TrimPrefix(s.URL, "http://")
			client, err := registry.New(registry.Options{InsecureRegistries: []string{f.reg, dest}, Platform: v1.Platform{OS: "linux", Architecture: "amd64"}})
			if err != nil {
				t.Fatal(err)
			}
			ref, err := name.ParseReference(dest+"/app:latest", name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			o, ctx := f.options(buildSpec{dockerfile: c.df, files: map[string]string{"big": big}})
			o.Registry, o.Reproducible, o.AlsoBuild = client, c.reproducible, []string{"other"}
			res, err := Execute(ctx, Job{Build: o, Output: output.Options{Destinations: []name.Reference{ref}}})
			if c.fails {
				if err == nil {
					t.Fatal("a failing build succeeded")
				}
				if _, err := remote.Head(ref); err == nil {
					t.Error("a failing build pushed its image")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			img, err := remote.Image(ref)
			if err != nil {
				t.Fatal(err)
			}
			files := imagetest.Flatten(t, img)
			for p, want := range map[string]string{"one": "one\n", "other": "other\n", "big": big} {
				if files[p].Content != want {
					t.Errorf("/%s in the pushed image: %.40q", p, files[p].Content)
				}
			}
			layers, _ := img.Layers()
			base, _ := imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)).Layers()
			blobs.mu.Lock()
			defer blobs.mu.Unlock()
			inImage := map[string]bool{}
			for i, l := range layers {
				d, _ := l.Digest()
				inImage[d.String()] = true
				events := strings.Join(blobs.events[d.String()], ",")
				// Uploaded before the push: the push's check found it.
				early := strings.HasSuffix(events, "commit,found")
				if strings.Count(events, "commit") != 1 {
					t.Errorf("layer %d (%s): %s, want one commit", i, d, events)
				} else if want := i >= len(base) && c.early; early != want {
					t.Errorf("layer %d (ours %v): %s, uploaded before the push %v, want %v", i, i >= len(base), events, early, want)
				}
			}
			cfg, _ := img.ConfigName()
			for d, events := range blobs.events {
				if !inImage[d] && d != cfg.String() && strings.Contains(strings.Join(events, ","), "commit") {
					t.Errorf("blob %s, not in the image, reached the destination", d)
				}
			}
			if d, _ := img.Digest(); d != res.Digest {
				t.Errorf("pushed %s, the build says %s", d, res.Digest)
			}
		})
	}
}
