// Command gen writes the catalog copy of kiln's Tekton resources.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kilnbuild/kiln/tasks"
)

func main() {
	out := flag.String("out", "catalog", "catalog directory")
	flag.Parse()
	files, err := tasks.Catalog()
	if err == nil {
		for p, data := range files {
			full := filepath.Join(*out, p)
			if err = os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				break
			}
			if err = os.WriteFile(full, data, 0o644); err != nil {
				break
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
