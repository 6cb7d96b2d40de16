package sign

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	gmutate "github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	cosignlayout "github.com/sigstore/cosign/v2/pkg/oci/layout"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	sigs "github.com/sigstore/cosign/v2/pkg/signature"

	"github.com/kilnbuild/kiln/internal/imagetest"
	"github.com/kilnbuild/kiln/internal/record"
)

const password = "correct horse battery staple"

// keyPair writes an encrypted cosign key pair and returns the key paths.
func keyPair(t *testing.T, pass string) (priv, pub string) {
	t.Helper()
	kb, err := cosign.GenerateKeyPair(func(bool) ([]byte, error) { return []byte(pass), nil })
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	priv, pub = filepath.Join(dir, "cosign.key"), filepath.Join(dir, "cosign.pub")
	os.WriteFile(priv, kb.PrivateBytes, 0o600)
	os.WriteFile(pub, kb.PublicBytes, 0o644)
	return priv, pub
}

// pushed pushes a random image and returns its record.
func pushed(t *testing.T, reg, repo string) *record.Build {
	t.Helper()
	img, _ := random.Image(256, 2)
	ref, _ := name.ParseReference(reg + "/" + repo + ":1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return &record.Build{
		Digest: d.String(), Pushed: true, Images: []record.Image{{Ref: ref.String(), Digest: d.String()}},
		Dockerfile: record.File{Path: "Dockerfile", SHA256: "sha256:" + strings.Repeat("d", 64)},
		Context:    json.RawMessage(`{"source":"git://example/app.git#main","sha256":"sha256:` + strings.Repeat("c", 64) + `","commit":"abc"}`),
		Materials:  []record.Material{{Ref: "example.com/base:1", Digest: "sha256:" + strings.Repeat("b", 64), Use: "base"}},
		Platform:   "linux/amd64", Builder: "kiln@test",
		StartedOn: time.Unix(1700000000, 0), FinishedOn: time.Unix(1700000100, 0),
	}
}

func verifyOpts(t *testing.T, pub string) *cosign.CheckOpts {
	t.Helper()
	v, err := sigs.LoadPublicKey(context.Background(), pub)
	if err != nil {
		t.Fatal(err)
	}
	return &cosign.CheckOpts{
		SigVerifier: v, IgnoreTlog: true, IgnoreSCT: true, ClaimVerifier: cosign.SimpleClaimVerifier,
		RegistryClientOpts: []ociremote.Option{ociremote.WithRemoteOptions()},
	}
}

func TestSignAndAttest(t *testing.T) {
	ctx := context.Background()
	reg := imagetest.Registry(t)
	priv, pub := keyPair(t, password)
	rec := pushed(t, reg, "app")
	err := Sign(ctx, Options{Record: rec, Key: priv, Password: []byte(password), Attest: true, BuilderID: "https://ci.example.com/kiln"})
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(rec.Images[0].Ref)
	digest := ref.Context().Digest(rec.Digest)
	co := verifyOpts(t, pub)
	sigsFound, _, err := cosign.VerifyImageSignatures(ctx, digest, co)
	if err != nil || len(sigsFound) != 1 {
		t.Fatalf("signature verification: %d signatures, %v", len(sigsFound), err)
	}
	co.ClaimVerifier = cosign.IntotoSubjectClaimVerifier
	atts, _, err := cosign.VerifyImageAttestations(ctx, digest, co)
	if err != nil || len(atts) != 1 {
		t.Fatalf("attestation verification: %d attestations, %v", len(atts), err)
	}
	// A policy on the predicate: builder id and the resolved base digest.
	pl, err := atts[0].Payload()
	if err != nil {
		t.Fatal(err)
	}
	var env struct{ Payload string }
	json.Unmarshal(pl, &env)
	stmt, _ := base64.StdEncoding.DecodeString(env.Payload)
	var st struct {
		PredicateType string `json:"predicateType"`
		Subject       []struct {
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
		Predicate Predicate `json:"predicate"`
	}
	if err := json.Unmarshal(stmt, &st); err != nil {
		t.Fatal(err)
	}
	if st.PredicateType != PredicateType || st.Predicate.RunDetails.Builder.ID != "https://ci.example.com/kiln" {
		t.Errorf("statement %s", stmt)
	}
	if len(st.Subject) != 1 || "sha256:"+st.Subject[0].Digest["sha256"] != rec.Digest {
		t.Errorf("subject %+v, want %s", st.Subject, rec.Digest)
	}
	foundBase := false
	for _, d := range st.Predicate.BuildDefinition.ResolvedDependencies {
		if d.URI == "oci://example.com/base:1" && d.Digest["sha256"] == strings.Repeat("b", 64) {
			foundBase = true
		}
	}
	if !foundBase {
		t.Errorf("resolved dependencies %+v lack the base image", st.Predicate.BuildDefinition.ResolvedDependencies)
	}

	// Another image (a new digest) carries no signature; another key does
	// not verify this one.
	other := pushed(t, reg, "other")
	oref, _ := name.ParseReference(other.Images[0].Ref)
	if _, _, err := cosign.VerifyImageSignatures(ctx, oref.Context().Digest(other.Digest), verifyOpts(t, pub)); err == nil {
		t.Error("an unsigned digest verified")
	}
	_, wrongPub := keyPair(t, "other")
	if _, _, err := cosign.VerifyImageSignatures(ctx, digest, verifyOpts(t, wrongPub)); err == nil {
		t.Error("the signature verified with another key")
	}
}

func TestSignErrors(t *testing.T) {
	ctx := context.Background()
	reg := imagetest.Registry(t)
	priv, _ := keyPair(t, password)
	rec := pushed(t, reg, "app")
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"wrong password", Options{Record: rec, Key: priv, Password: []byte("wrong-pass-123")}, "wrong COSIGN_PASSWORD"},
		{"missing key", Options{Record: rec, Key: filepath.Join(t.TempDir(), "cosign.key")}, "no such file"},
		{"no identity", Options{Record: rec}, "no signing identity"},
		{"Rekor unreachable", Options{Record: rec, Key: priv, Password: []byte(password), TlogUpload: true, RekorURL: "http://127.0.0.1:9"}, "transparency log at http://127.0.0.1:9"},
		{"bad GCP KMS reference", Options{Record: rec, Key: "gcpkms://projects/p/keyRings/r"}, "gcpkms://projects/[PROJECT_ID]"},
		{"bad Azure KMS reference", Options{Record: rec, Key: "azurekms://vault"}, "azurekms://[VAULT_NAME]"},
		{"keyless without a token", Options{Record: rec, IdentityTokenFile: filepath.Join(t.TempDir(), "token")}, "no OIDC token"},
		{"keyless, not a JWT", Options{Record: rec, IdentityTokenFile: writeFile(t, "not-a-token")}, "not an OIDC token"},
		{"keyless, Fulcio unreachable", Options{Record: rec, IdentityTokenFile: writeToken(t), FulcioURL: "http://127.0.0.1:9"}, "Fulcio at http://127.0.0.1:9"},
		{"key and keyless", Options{Record: rec, Key: priv, IdentityTokenFile: writeToken(t)}, "not both"},
		{"no pushed image", Options{Record: &record.Build{}, Key: priv}, "no pushed image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Sign(ctx, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "wrong-pass-123") || strings.Contains(err.Error(), password) {
				t.Error("the password is in the error")
			}
			if strings.Contains(err.Error(), testToken) {
				t.Error("the identity token is in the error")
			}
		})
	}
	// Nothing was written: no signature tag dangles.
	ref, _ := name.ParseReference(rec.Images[0].Ref)
	tag, _ := ociremote.SignatureTag(ref.Context().Digest(rec.Digest))
	if _, err := remote.Head(tag); err == nil {
		t.Errorf("a failed signing left %s behind", tag)
	}
}

// testToken is an unsigned JWT for kiln@example.com from
// https://issuer.example.com (Fulcio checks tokens; the test CA does not).
var testToken = unsignedJWT(map[string]any{
	"iss": "https://issuer.example.com", "sub": "kiln@example.com", "email": "kiln@example.com",
	"email_verified": true, "aud": "sigstore", "exp": time.Now().Add(time.Hour).Unix(),
})

func unsignedJWT(claims map[string]any) string {
	enc := base64.RawURLEncoding
	c, _ := json.Marshal(claims)
	return enc.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc.EncodeToString(c) + "." + enc.EncodeToString([]byte("sig"))
}

func writeToken(t *testing.T) string { return writeFile(t, testToken+"\n") }

func writeFile(t *testing.T, content string) string {
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte(content), 0o600)
	return p
}

func TestSignLayout(t *testing.T) {
	ctx := context.Background()
	priv, pub := keyPair(t, password)
	src := filepath.Join(t.TempDir(), "image")
	img, _ := random.Image(128, 1)
	p, err := layout.Write(src, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	p.AppendImage(img)
	d, _ := img.Digest()
	rec := &record.Build{Digest: d.String(), Images: []record.Image{{Ref: "registry.example.com/team/app:1", Digest: d.String()}},
		StartedOn: time.Now(), FinishedOn: time.Now()}
	dst := filepath.Join(t.TempDir(), "signed")
	if err := SignLayout(ctx, Options{Record: rec, Key: priv, Password: []byte(password), Attest: true}, src, dst); err != nil {
		t.Fatal(err)
	}
	sii, err := cosignlayout.SignedImageIndex(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sii.SignedImage(d); err != nil {
		t.Fatalf("the image is not in the signed layout: %v", err)
	}
	ss, _ := sii.Signatures()
	list, _ := ss.Get()
	if len(list) != 1 {
		t.Fatalf("%d signatures in the layout", len(list))
	}
	v, _ := sigs.LoadPublicKey(ctx, pub)
	pl, _ := list[0].Payload()
	b64, _ := list[0].Base64Signature()
	raw, _ := base64.StdEncoding.DecodeString(b64)
	if err := v.VerifySignature(bytes.NewReader(raw), bytes.NewReader(pl)); err != nil {
		t.Errorf("layout signature does not verify: %v", err)
	}
	atts, _ := sii.Attestations()
	al, _ := atts.Get()
	if len(al) != 1 {
		t.Errorf("%d attestations in the layout", len(al))
	}
	// A layout without the image is a clear error and writes nothing.
	other := filepath.Join(t.TempDir(), "signed")
	rec.Digest = "sha256:" + strings.Repeat("0", 64)
	if err := SignLayout(ctx, Options{Record: rec, Key: priv, Password: []byte(password)}, src, other); err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Errorf("err = %v", err)
	}
	if _, err := os.Stat(other); err == nil {
		t.Error("a failed signing wrote the layout")
	}
}

// TestKMSUnreachable signs with KMS keys whose services are not there: the
// providers are linked in and fail clearly, without any network but
// loopback.
func TestKMSUnreachable(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("VAULT_ADDR", "http://127.0.0.1:9")
	t.Setenv("VAULT_TOKEN", "test-token")
	reg := imagetest.Registry(t)
	rec := pushed(t, reg, "kms")
	// Azure: a client secret whose authority and vault are on loopback.
	t.Setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000000")
	t.Setenv("AZURE_CLIENT_ID", "kiln")
	t.Setenv("AZURE_CLIENT_SECRET", "test-secret")
	t.Setenv("AZURE_AUTHORITY_HOST", "https://127.0.0.1:9/")
	// (gcpkms:// is left out: Google's client retries for a minute, whatever
	// the context says; TestSignErrors shows the provider is linked.)
	for _, tc := range []struct{ key, want string }{
		{"awskms://127.0.0.1:9/alias/kiln", "127.0.0.1:9"},
		{"hashivault://kiln", "127.0.0.1:9"},
		{"azurekms://127.0.0.1:9/kiln", "127.0.0.1:9"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := Sign(ctx, Options{Record: rec, Key: tc.key})
		cancel()
		if err == nil || !strings.Contains(err.Error(), "option Key "+tc.key+": reading the public key") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want the unreachable service named", tc.key, err)
		}
		if err != nil && strings.Contains(err.Error(), "test-secret") {
			t.Errorf("%s: the client secret is in the error", tc.key)
		}
	}
	ref, _ := name.ParseReference(rec.Images[0].Ref)
	tag, _ := ociremote.SignatureTag(ref.Context().Digest(rec.Digest))
	if _, err := remote.Head(tag); err == nil {
		t.Error("a failed KMS signing left a signature tag")
	}
}

// TestSignIndex signs a two-platform index: `cosign verify` passes for the
// index and for each platform's image, and the provenance attached to each
// names all three as subjects.
func TestSignIndex(t *testing.T) {
	ctx := context.Background()
	reg := imagetest.Registry(t)
	priv, pub := keyPair(t, password)
	var adds []gmutate.IndexAddendum
	var manifests []record.Manifest
	for _, arch := range []string{"amd64", "arm64"} {
		img, _ := random.Image(128, 1)
		d, _ := img.Digest()
		adds = append(adds, gmutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
		manifests = append(manifests, record.Manifest{Platform: "linux/" + arch, Digest: d.String()})
	}
	idx := gmutate.AppendManifests(empty.Index, adds...)
	ref, _ := name.ParseReference(reg + "/multi:1")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	rec := &record.Build{Digest: d.String(), Pushed: true, Images: []record.Image{{Ref: ref.String(), Digest: d.String()}},
		Platform: "linux/amd64,linux/arm64", Manifests: manifests, Builder: "kiln@test"}
	if err := Sign(ctx, Options{Record: rec, Key: priv, Password: []byte(password), Attest: true}); err != nil {
		t.Fatal(err)
	}
	want := []string{d.String(), manifests[0].Digest, manifests[1].Digest}
	for _, dg := range want {
		digest := ref.Context().Digest(dg)
		co := verifyOpts(t, pub)
		if found, _, err := cosign.VerifyImageSignatures(ctx, digest, co); err != nil || len(found) != 1 {
			t.Errorf("%s: %d signatures, %v", dg, len(found), err)
		}
		co.ClaimVerifier = cosign.IntotoSubjectClaimVerifier
		atts, _, err := cosign.VerifyImageAttestations(ctx, digest, co)
		if err != nil || len(atts) != 1 {
			t.Fatalf("%s: %d attestations, %v", dg, len(atts), err)
		}
		pl, _ := atts[0].Payload()
		var env struct{ Payload string }
		json.Unmarshal(pl, &env)
		stmt, _ := base64.StdEncoding.DecodeString(env.Payload)
		var st struct {
			Subject []struct {
				Digest map[string]string `json:"digest"`
			} `json:"subject"`
		}
		json.Unmarshal(stmt, &st)
		var got []string
		for _, s := range st.Subject {
			got = append(got, "sha256:"+s.Digest["sha256"])
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: subjects %v, want the index then each image %v", dg, got, want)
		}
	}
}
