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
	images := flag.String("images", "", "a release's image list (ko build's output: repo@sha256:<digest> lines) to pin the images by digest")
	flag.Parse()
	var pins map[string]string
	var err error
	if *images != "" {
		var data []byte
		if data, err = os.ReadFile(*images); err == nil {
			pins, err = tasks.ParsePins(string(data))
		}
		if err != nil {
			err = fmt.Errorf("-images %s: %w", *images, err)
		}
	}
	var files map[string][]byte
	if err == nil {
		files, err = tasks.Catalog(pins)
	}
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
