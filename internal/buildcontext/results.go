package buildcontext

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// WriteChainsResults writes CHAINS-GIT_URL and CHAINS-GIT_COMMIT into a
// Tekton results directory for git contexts.
func WriteChainsResults(dir string, r *Record) error {
	if dir == "" || r.ChainsGitCommit == "" {
		return nil
	}
	for name, v := range map[string]string{"CHAINS-GIT_URL": r.ChainsGitURL, "CHAINS-GIT_COMMIT": r.ChainsGitCommit} {
		if err := writeAtomic(filepath.Join(dir, name), []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".kiln-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	os.Chmod(f.Name(), 0o644)
	return os.Rename(f.Name(), path)
}

// FetchAndRecord is the fetch-context step: it fetches the context, then
// writes its record and, for git, the Chains results.
func FetchAndRecord(ctx context.Context, o FetchOptions, record, resultsDir string) error {
	rec, err := Fetch(ctx, o)
	if err != nil {
		return err
	}
	if err := WriteRecord(record, rec); err != nil {
		return fmt.Errorf("writing %s: %w", record, err)
	}
	if err := WriteChainsResults(resultsDir, rec); err != nil {
		return fmt.Errorf("writing results: %w", err)
	}
	if o.Logger != nil {
		o.Logger.Info("context fetched", "dest", o.Dest, "sha256", rec.SHA256, "commit", rec.Commit)
	}
	return nil
}
