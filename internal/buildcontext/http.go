package buildcontext

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/kilnbuild/kiln/internal/option"
)

// fetchHTTP downloads an https tarball (optionally pinned with
// "#sha256=<hex>") and extracts it.
func fetchHTTP(ctx context.Context, o FetchOptions, dir string, rec *Record) error {
	u, pin, _ := strings.Cut(o.Source, "#")
	want := ""
	if pin != "" {
		v, ok := strings.CutPrefix(pin, "sha256=")
		if !ok || len(v) != 64 {
			return option.Errorf("Context", Redact(o.Source), "the pin must be #sha256=<64 hex digits>")
		}
		want = strings.ToLower(v)
	}
	return fetchObject(ctx, o, dir, rec, httpObject(o, u), want)
}

// httpObject opens an http(s) URL; client errors are not retried.
func httpObject(o FetchOptions, u string) objectReader {
	return func(ctx context.Context) (io.ReadCloser, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, "", permanentError{err}
		}
		resp, err := o.HTTPClient.Do(req)
		if err != nil {
			return nil, "", fmt.Errorf("GET %s: %w", Redact(u), unwrapURL(err))
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			err := fmt.Errorf("GET %s: %s", Redact(u), resp.Status)
			if resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
				return nil, "", permanentError{err}
			}
			return nil, "", err
		}
		return resp.Body, resp.Header.Get("ETag"), nil
	}
}

func unwrapURL(err error) error {
	type unwrapper interface{ Unwrap() error }
	if u, ok := err.(unwrapper); ok && u.Unwrap() != nil {
		return u.Unwrap()
	}
	return err
}
