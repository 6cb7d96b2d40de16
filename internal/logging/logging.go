// Package logging builds the slog loggers used by kiln's step binaries from
// kaniko-compatible --verbosity, --log-format and --log-timestamp settings.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/kilnbuild/kiln/internal/option"
)

// LevelTrace is below slog.LevelDebug, for kaniko's "trace" verbosity.
const LevelTrace = slog.Level(-8)

// Options configures New.
type Options struct {
	// Verbosity is one of panic, fatal, error, warn, info, debug, trace.
	Verbosity string
	// Format is one of text, color, json.
	Format string
	// Timestamp adds a time to every text and color record (JSON records
	// always have one, as kaniko's do).
	Timestamp bool
	// Color colours the color format; without it (no terminal, NO_COLOR)
	// the color format is the same layout without escape codes.
	Color bool
}

// levelName is a level as kaniko's logrus names it.
func levelName(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "error"
	case l >= slog.LevelWarn:
		return "warning"
	case l >= slog.LevelInfo:
		return "info"
	case l >= slog.LevelDebug:
		return "debug"
	}
	return "trace"
}

// ParseLevel maps a kaniko (logrus) verbosity name to a slog level.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "panic", "fatal", "error":
		return slog.LevelError, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "trace":
		return LevelTrace, nil
	}
	return 0, option.Errorf("Verbosity", strconv.Quote(s), "want one of panic, fatal, error, warn, info, debug, trace")
}

// New returns a logger writing to w as the options say.
func New(w io.Writer, o Options) (*slog.Logger, error) {
	level, err := ParseLevel(o.Verbosity)
	if err != nil {
		return nil, err
	}
	replace := func(keepTime bool) func([]string, slog.Attr) slog.Attr {
		return func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				if !keepTime {
					return slog.Attr{}
				}
			case slog.LevelKey:
				if l, ok := a.Value.Any().(slog.Level); ok {
					return slog.String(slog.LevelKey, levelName(l))
				}
			}
			return a
		}
	}
	switch strings.ToLower(o.Format) {
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: replace(true)})), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: replace(o.Timestamp)})), nil
	case "", "color":
		return slog.New(&colorHandler{w: w, level: level, timestamp: o.Timestamp, color: o.Color, mu: &sync.Mutex{}}), nil
	}
	return nil, option.Errorf("LogFormat", strconv.Quote(o.Format), "want one of text, color, json")
}

// colorHandler prints "LEVEL message key=value ..." with the level coloured,
// the way kaniko's default logrus formatter looks on a terminal.
type colorHandler struct {
	w         io.Writer
	level     slog.Level
	timestamp bool
	color     bool
	attrs     []slog.Attr
	group     string
	mu        *sync.Mutex
}

func (h *colorHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *colorHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	if h.timestamp {
		b.WriteString(r.Time.Format("2006-01-02T15:04:05.000Z07:00"))
		b.WriteByte(' ')
	}
	color, name := "\x1b[36m", "INFO"
	switch {
	case r.Level >= slog.LevelError:
		color, name = "\x1b[31m", "ERRO"
	case r.Level >= slog.LevelWarn:
		color, name = "\x1b[33m", "WARN"
	case r.Level >= slog.LevelInfo:
	case r.Level >= slog.LevelDebug:
		color, name = "\x1b[37m", "DEBU"
	default:
		color, name = "\x1b[37m", "TRAC"
	}
	reset := "\x1b[0m"
	if !h.color {
		color, reset = "", ""
	}
	fmt.Fprintf(&b, "%s%s%s %s", color, name, reset, r.Message)
	write := func(a slog.Attr) {
		if a.Equal(slog.Attr{}) {
			return
		}
		key := a.Key
		if h.group != "" {
			key = h.group + "." + key
		}
		fmt.Fprintf(&b, " %s=%s%v%s", key, color, a.Value.Resolve(), reset)
	}
	for _, a := range h.attrs {
		write(a)
	}
	r.Attrs(func(a slog.Attr) bool { write(a); return true })
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *colorHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return &c
}

func (h *colorHandler) WithGroup(name string) slog.Handler {
	c := *h
	if c.group != "" {
		name = c.group + "." + name
	}
	c.group = name
	return &c
}
