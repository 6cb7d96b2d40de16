package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	sigs "github.com/sigstore/cosign/v2/pkg/signature"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// TestBuildThenSign builds and pushes with the build binary, signs and
// attests with the sign binary, and verifies both with cosign's API.
func TestBuildThenSign(t *testing.T) {
	reg := imagetest.Registry(t)
	base := reg + "/busybox:sign"
	pushTo(t, base, imagetest.Image(t, true, nil, imagetest.BusyboxFiles(t)))
	ctx := t.TempDir()
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("ARG BASE\nFROM ${BASE}\nRUN echo signed > /s\n"), 0o644)
	out := t.TempDir()
	dest := reg + "/kiln/signed:1"
	r := kiln(t, nil, "--context", ctx, "-d", dest, "--insecure", "--insecure-pull", "--build-arg", "BASE="+base,
		"--digest-file", filepath.Join(out, "digest"), "--isolation", "chroot")
	if r.code != 0 {
		t.Fatalf("build failed:\n%s", r.stderr)
	}
	const pass = "e2e-key-password"
	kb, err := cosign.GenerateKeyPair(func(bool) ([]byte, error) { return []byte(pass), nil })
	if err != nil {
		t.Fatal(err)
	}
	keys := t.TempDir()
	os.WriteFile(filepath.Join(keys, "cosign.key"), kb.PrivateBytes, 0o600)
	os.WriteFile(filepath.Join(keys, "cosign.pub"), kb.PublicBytes, 0o644)
	os.WriteFile(filepath.Join(keys, "cosign.password"), []byte(pass+"\n"), 0o600)

	r = step(t, "sign", nil, "--build-record", filepath.Join(out, "build.json"), "--key", filepath.Join(keys, "cosign.key"),
		"--password-file", filepath.Join(keys, "cosign.password"), "--tlog-upload=false", "--insecure", "--verbosity", "debug")
	if r.code != 0 {
		t.Fatalf("sign failed:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr, pass) {
		t.Error("the key password is in the log")
	}
	d, _ := os.ReadFile(filepath.Join(out, "digest"))
	ref, _ := name.ParseReference(dest)
	digest := ref.Context().Digest(string(d))
	v, err := sigs.LoadPublicKey(context.Background(), filepath.Join(keys, "cosign.pub"))
	if err != nil {
		t.Fatal(err)
	}
	co := &cosign.CheckOpts{SigVerifier: v, IgnoreTlog: true, IgnoreSCT: true, ClaimVerifier: cosign.SimpleClaimVerifier,
		RegistryClientOpts: []ociremote.Option{ociremote.WithRemoteOptions()}}
	if _, _, err := cosign.VerifyImageSignatures(context.Background(), digest, co); err != nil {
		t.Errorf("signature: %v", err)
	}
	co.ClaimVerifier = cosign.IntotoSubjectClaimVerifier
	if _, _, err := cosign.VerifyImageAttestations(context.Background(), digest, co); err != nil {
		t.Errorf("attestation: %v", err)
	}

	// A wrong password fails clearly and writes nothing more.
	os.WriteFile(filepath.Join(keys, "wrong"), []byte("nope"), 0o600)
	r = step(t, "sign", nil, "--build-record", filepath.Join(out, "build.json"), "--key", filepath.Join(keys, "cosign.key"),
		"--password-file", filepath.Join(keys, "wrong"), "--tlog-upload=false", "--insecure")
	if r.code != 1 || !strings.Contains(r.stderr, "wrong COSIGN_PASSWORD") {
		t.Errorf("wrong password: exit %d\n%s", r.code, r.stderr)
	}
	// Keyless with Fulcio unreachable, and a key with Rekor unreachable
	// (--tlog-upload is on by default, as in cosign): clear errors naming
	// the service, the token never printed, no signature tag for a new image.
	tok := filepath.Join(keys, "oidc-token")
	const token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiZW1haWwiOiJrQGV4YW1wbGUuY29tIn0.c2ln"
	os.WriteFile(tok, []byte(token), 0o600)
	r = step(t, "sign", nil, "--build-record", filepath.Join(out, "build.json"), "--identity-token-file", tok,
		"--fulcio-url", "http://127.0.0.1:9", "--tlog-upload=false", "--insecure")
	if r.code != 1 || !strings.Contains(r.stderr, "Fulcio at http://127.0.0.1:9") || strings.Contains(r.stderr, token) {
		t.Errorf("keyless, Fulcio unreachable: exit %d\n%s", r.code, r.stderr)
	}
	r = step(t, "sign", nil, "--build-record", filepath.Join(out, "build.json"), "--key", filepath.Join(keys, "cosign.key"),
		"--password-file", filepath.Join(keys, "cosign.password"), "--rekor-url", "http://127.0.0.1:9", "--insecure")
	if r.code != 1 || !strings.Contains(r.stderr, "transparency log at http://127.0.0.1:9") {
		t.Errorf("Rekor unreachable: exit %d\n%s", r.code, r.stderr)
	}

	// Without a key and with --if-set, the step does nothing.
	if r := step(t, "sign", nil, "--build-record", filepath.Join(out, "build.json"), "--if-set"); r.code != 0 {
		t.Errorf("--if-set without a key: exit %d\n%s", r.code, r.stderr)
	}
}
