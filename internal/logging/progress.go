package logging

import (
	"io"
	"log/slog"
	"sync"
	"time"
)

// ProgressInterval is how often a long transfer reports progress.
const ProgressInterval = 5 * time.Second

// Progress logs a long transfer's advance (bytes, and percent when the
// total is known) at most once every Interval, at info level.
type Progress struct {
	// Log receives the records; nil logs nothing.
	Log *slog.Logger
	// Msg and Attrs describe the transfer ("pulling", "image", ref).
	Msg   string
	Attrs []any
	// Total is the number of bytes expected; 0 or less is unknown.
	Total int64
	// Interval overrides ProgressInterval; Now the clock (tests).
	Interval time.Duration
	Now      func() time.Time

	mu   sync.Mutex
	done int64
	last time.Time
}

func (p *Progress) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// Set records that n bytes are done in all.
func (p *Progress) Set(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = n
	p.report()
}

// Add records n more bytes done.
func (p *Progress) Add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	p.report()
}

func (p *Progress) report() {
	if p.Log == nil {
		return
	}
	now := p.now()
	if p.last.IsZero() {
		p.last = now // the first report comes one interval in
		return
	}
	every := p.Interval
	if every == 0 {
		every = ProgressInterval
	}
	if now.Sub(p.last) < every {
		return
	}
	p.last = now
	attrs := append(append([]any(nil), p.Attrs...), "bytes", p.done)
	if p.Total > 0 {
		attrs = append(attrs, "total", p.Total, "percent", p.done*100/p.Total)
	}
	p.Log.Info(p.Msg, attrs...)
}

// Reader counts what is read through r.
func (p *Progress) Reader(r io.Reader) io.Reader { return &progressReader{r: r, p: p} }

type progressReader struct {
	r io.Reader
	p *Progress
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	if n > 0 {
		r.p.Add(int64(n))
	}
	return n, err
}
