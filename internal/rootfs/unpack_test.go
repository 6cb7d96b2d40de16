package rootfs

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// TestUnpackProgress pulls a two-layer image from a registry as it is
// extracted and reads the progress records back: bytes of the compressed
// layers, the total and the percent, as for pushes.
func TestUnpackProgress(t *testing.T) {
	big := strings.Repeat("kiln progress ", 200_000) // ~2.8 MB, many reads
	img := imagetest.Image(t, true, nil,
		[]imagetest.File{imagetest.Reg("a/big", big, 0o644, 0, 0)},
		[]imagetest.File{imagetest.Reg("b/small", "small", 0o600, 0, 0)})
	ref, _ := name.ParseReference(imagetest.Registry(t) + "/progress:1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	ls, _ := img.Layers()
	for _, l := range ls {
		s, _ := l.Size()
		total += s
	}
	var buf bytes.Buffer
	now := time.Unix(0, 0)
	root := t.TempDir()
	err = Unpack(context.Background(), root, pulled, UnpackOptions{
		Logger: slog.New(slog.NewJSONHandler(&buf, nil)), Name: ref.String(),
		Now: func() time.Time { now = now.Add(6 * time.Second); return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "a/big")); string(got) != big {
		t.Error("a/big is not the layer's")
	}
	var last struct{ Bytes, Total, Percent int64 }
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec struct {
			Msg, Image            string
			Bytes, Total, Percent int64
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Msg != "pulling and extracting" {
			continue
		}
		n++
		if rec.Image != ref.String() || rec.Total != total || rec.Bytes < last.Bytes || rec.Percent != rec.Bytes*100/total {
			t.Errorf("record %s (total %d)", line, total)
		}
		last.Bytes = rec.Bytes
	}
	if n < 2 || last.Bytes != total {
		t.Errorf("%d progress records, the last at %d of %d bytes:\n%s", n, last.Bytes, total, buf.String())
	}
}
