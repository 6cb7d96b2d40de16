package logging

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestProgress(t *testing.T) {
	for _, tc := range []struct {
		name  string
		total int64
		step  time.Duration // the clock's advance per call
		want  int           // records for 10 reads of 10 bytes
	}{
		{"known total, slow transfer", 100, 2 * time.Second, 3}, // every third read passes 5s
		{"fast transfer", 100, time.Millisecond, 0},
		{"unknown total", 0, 6 * time.Second, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			now := time.Unix(0, 0)
			p := &Progress{
				Log: slog.New(slog.NewJSONHandler(&buf, nil)), Msg: "pulling", Attrs: []any{"image", "x"}, Total: tc.total,
				Now: func() time.Time { now = now.Add(tc.step); return now },
			}
			p.Set(0)
			if _, err := io.Copy(io.Discard, p.Reader(iotestReader(10, 10))); err != nil {
				t.Fatal(err)
			}
			var last int64
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if buf.Len() == 0 {
				lines = nil
			}
			if len(lines) != tc.want {
				t.Fatalf("%d records, want %d:\n%s", len(lines), tc.want, buf.String())
			}
			for _, l := range lines {
				var rec struct {
					Msg     string `json:"msg"`
					Image   string `json:"image"`
					Bytes   int64  `json:"bytes"`
					Total   *int64 `json:"total"`
					Percent *int64 `json:"percent"`
				}
				if err := json.Unmarshal([]byte(l), &rec); err != nil {
					t.Fatal(err)
				}
				if rec.Msg != "pulling" || rec.Image != "x" || rec.Bytes <= last || rec.Bytes > 100 {
					t.Errorf("record %s", l)
				}
				last = rec.Bytes
				if (rec.Percent != nil) != (tc.total > 0) || (rec.Percent != nil && *rec.Percent != rec.Bytes*100/tc.total) {
					t.Errorf("record %s: percent for total %d", l, tc.total)
				}
			}
		})
	}
}

// iotestReader yields n reads of size bytes each.
func iotestReader(n, size int) io.Reader {
	return &chunks{n: n, size: size}
}

type chunks struct{ n, size int }

func (c *chunks) Read(b []byte) (int, error) {
	if c.n == 0 {
		return 0, io.EOF
	}
	c.n--
	return copy(b, make([]byte, c.size)), nil
}
