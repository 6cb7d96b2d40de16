// Command keygen writes a cosign key pair for tests that cannot import
// cosign themselves (the Tekton module): cosign.key, cosign.pub and
// cosign.password in -out.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sigstore/cosign/v2/pkg/cosign"
)

func main() {
	out := flag.String("out", ".", "directory to write the key pair to")
	pass := flag.String("password", "", "the private key's password")
	flag.Parse()
	kb, err := cosign.GenerateKeyPair(func(bool) ([]byte, error) { return []byte(*pass), nil })
	if err == nil {
		err = os.WriteFile(filepath.Join(*out, "cosign.key"), kb.PrivateBytes, 0o600)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(*out, "cosign.pub"), kb.PublicBytes, 0o644)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(*out, "cosign.password"), []byte(*pass), 0o600)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keygen:", err)
		os.Exit(1)
	}
}
