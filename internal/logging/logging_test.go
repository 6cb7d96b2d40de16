package logging

import (
	"bytes"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name      string
		opts      Options
		wantDebug bool
		want      string
		wantErr   string
	}{
		{name: "json", opts: Options{Format: "json", Verbosity: "info"}, want: `"level":"info","msg":"hello","k":"v"`},
		{name: "text", opts: Options{Format: "text", Verbosity: "debug"}, wantDebug: true, want: "level=info msg=hello"},
		{name: "color", opts: Options{Format: "color", Color: true}, want: "INFO\x1b[0m hello k=\x1b[36mv"},
		{name: "color without a terminal", opts: Options{Format: "color"}, want: "INFO hello k=v\n"},
		{name: "trace", opts: Options{Format: "text", Verbosity: "trace"}, wantDebug: true, want: "msg=hello"},
		{name: "bad format", opts: Options{Format: "xml"}, wantErr: `option LogFormat "xml"`},
		{name: "bad level", opts: Options{Verbosity: "loud"}, wantErr: `option Verbosity "loud"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			l, err := New(&buf, tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l.Debug("dbg")
			l.Info("hello", "k", "v")
			out := buf.String()
			if !strings.Contains(out, tt.want) {
				t.Errorf("output %q lacks %q", out, tt.want)
			}
			if got := strings.Contains(out, "dbg"); got != tt.wantDebug {
				t.Errorf("debug shown = %v, want %v", got, tt.wantDebug)
			}
			if tt.opts.Format == "json" {
				// kaniko's JSON records always have a time; one object a line.
				for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
					if !strings.HasPrefix(line, `{"time":"`) || !strings.HasSuffix(line, "}") {
						t.Errorf("JSON line %q", line)
					}
				}
			} else if strings.Contains(out, "time=") {
				t.Errorf("timestamp present without --log-timestamp: %q", out)
			}
			if tt.opts.Format != "color" || !tt.opts.Color {
				if strings.Contains(out, "\x1b[") {
					t.Errorf("escape codes without colour: %q", out)
				}
			}
		})
	}
}
