package buildcontext

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/kilnbuild/kiln/internal/output"
)

// FetchAndRecord is the fetch-context step: it fetches the context, then
// writes its record and, for git contexts, Tekton Chains' CHAINS-GIT_URL
// and CHAINS-GIT_COMMIT results into resultsDir. The record and results are
// written together, all or nothing.
func FetchAndRecord(ctx context.Context, o FetchOptions, record, resultsDir string) error {
	rec, err := Fetch(ctx, o)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	var b output.Batch
	if err := b.Add(record, "Record", string(data)+"\n"); err != nil {
		return err
	}
	if resultsDir != "" && rec.ChainsGitCommit != "" {
		for name, v := range map[string]string{"CHAINS-GIT_URL": rec.ChainsGitURL, "CHAINS-GIT_COMMIT": rec.ChainsGitCommit} {
			if err := b.Add(filepath.Join(resultsDir, name), "ResultsDir", v); err != nil {
				b.Abort()
				return err
			}
		}
	}
	if err := b.Commit(); err != nil {
		return fmt.Errorf("writing the context record: %w", err)
	}
	if o.Logger != nil {
		o.Logger.Info("context fetched", "dest", o.Dest, "sha256", rec.SHA256, "commit", rec.Commit)
	}
	return nil
}
