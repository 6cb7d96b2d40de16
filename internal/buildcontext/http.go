package buildcontext

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// progressEvery is how often a long download reports progress.
const progressEvery = 5 * time.Second

// fetchHTTP downloads an https tarball (optionally pinned with
// "#sha256=<hex>") and extracts it.
func fetchHTTP(ctx context.Context, o FetchOptions, dir string, rec *Record) error {
	u, pin, _ := strings.Cut(o.Source, "#")
	want := ""
	if pin != "" {
		v, ok := strings.CutPrefix(pin, "sha256=")
		if !ok || len(v) != 64 {
			return fmt.Errorf("--context %s: the pin must be #sha256=<64 hex digits>", Redact(o.Source))
		}
		want = strings.ToLower(v)
	}
	f, err := os.CreateTemp("", "kiln-context-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	err = retry(ctx, o, "download", func() error {
		if err := f.Truncate(0); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return permanentError{err}
		}
		resp, err := o.HTTPClient.Do(req)
		if err != nil {
			return fmt.Errorf("GET %s: %w", Redact(u), unwrapURL(err))
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			err := fmt.Errorf("GET %s: %s", Redact(u), resp.Status)
			if resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
				return permanentError{err}
			}
			return err
		}
		rec.Version = resp.Header.Get("ETag")
		pr := &progressReader{r: resp.Body, total: resp.ContentLength, log: o, url: Redact(u), last: time.Now()}
		_, err = io.Copy(f, pr)
		return err
	})
	if err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	got := hex.EncodeToString(h.Sum(nil))
	if want != "" && got != want {
		return fmt.Errorf("--context %s: sha256 mismatch: want %s, got %s", Redact(o.Source), want, got)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return extractArchive(f, dir, o.Limits)
}

func unwrapURL(err error) error {
	type unwrapper interface{ Unwrap() error }
	if u, ok := err.(unwrapper); ok && u.Unwrap() != nil {
		return u.Unwrap()
	}
	return err
}

// progressReader logs download progress every few seconds.
type progressReader struct {
	r     io.Reader
	total int64
	n     int64
	log   FetchOptions
	url   string
	last  time.Time
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if time.Since(p.last) >= progressEvery {
		p.last = time.Now()
		p.log.Logger.Info("downloading context", "url", p.url, "bytes", p.n, "total", p.total)
	}
	return n, err
}
