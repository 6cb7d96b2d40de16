package sign

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// fulcioCA is a certificate authority serving Fulcio's v1 signing API, the
// one cosign's client calls, in place of Fulcio (an internet service): it
// checks the proof of possession and certifies the key for the token's
// email and issuer, as Fulcio does once it has verified the token.
func fulcioCA(t *testing.T) (url string, roots *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kiln test Fulcio"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	roots = x509.NewCertPool()
	roots.AddCert(ca)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/signingCert" {
			http.NotFound(w, r)
			return
		}
		var req struct {
			PublicKey struct {
				Content []byte `json:"content"`
			} `json:"publicKey"`
			SignedEmailAddress []byte `json:"signedEmailAddress"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		parts := strings.Split(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), ".")
		var claims struct{ Iss, Email string }
		if len(parts) == 3 {
			raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
			json.Unmarshal(raw, &claims)
		}
		blk, _ := pem.Decode(req.PublicKey.Content)
		if blk == nil || claims.Email == "" {
			http.Error(w, "no public key or identity", http.StatusBadRequest)
			return
		}
		pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
		ec, ok := pub.(*ecdsa.PublicKey)
		sum := sha256.Sum256([]byte(claims.Email))
		if err != nil || !ok || !ecdsa.VerifyASN1(ec, sum[:], req.SignedEmailAddress) {
			http.Error(w, "the proof of possession does not verify", http.StatusBadRequest)
			return
		}
		issuerV2, _ := asn1.MarshalWithParams(claims.Iss, "utf8")
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(10 * time.Minute),
			EmailAddresses: []string{claims.Email}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
			ExtraExtensions: []pkix.Extension{
				{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}, Value: []byte(claims.Iss)},
				{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}, Value: issuerV2},
			},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("SCT", "")
		w.WriteHeader(http.StatusCreated)
		w.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		w.Write(caPEM)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, roots
}

// TestKeyless signs and attests with an ephemeral key certified for the
// OIDC token's identity, and cosign verifies both against the CA and the
// identity (issuer and subject); another identity does not verify.
func TestKeyless(t *testing.T) {
	ctx := context.Background()
	reg := imagetest.Registry(t)
	fulcio, roots := fulcioCA(t)
	rec := pushed(t, reg, "keyless")
	err := Sign(ctx, Options{
		Record: rec, IdentityTokenFile: writeToken(t), FulcioURL: fulcio, InsecureSkipSCTVerify: true,
		Attest: true, BuilderID: "https://ci.example.com/kiln",
	})
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(rec.Images[0].Ref)
	digest := ref.Context().Digest(rec.Digest)
	co := func(subject string) *cosign.CheckOpts {
		return &cosign.CheckOpts{
			RootCerts: roots, IgnoreSCT: true, IgnoreTlog: true, ClaimVerifier: cosign.SimpleClaimVerifier,
			Identities:         []cosign.Identity{{Issuer: "https://issuer.example.com", Subject: subject}},
			RegistryClientOpts: []ociremote.Option{ociremote.WithRemoteOptions()},
		}
	}
	found, _, err := cosign.VerifyImageSignatures(ctx, digest, co("kiln@example.com"))
	if err != nil || len(found) != 1 {
		t.Fatalf("keyless signature: %d verified, %v", len(found), err)
	}
	if cert, _ := found[0].Cert(); cert == nil || cert.EmailAddresses[0] != "kiln@example.com" {
		t.Errorf("signature certificate %v", cert)
	}
	att := co("kiln@example.com")
	att.ClaimVerifier = cosign.IntotoSubjectClaimVerifier
	if atts, _, err := cosign.VerifyImageAttestations(ctx, digest, att); err != nil || len(atts) != 1 {
		t.Errorf("keyless attestation: %d verified, %v", len(atts), err)
	}
	if _, _, err := cosign.VerifyImageSignatures(ctx, digest, co("mallory@example.com")); err == nil {
		t.Error("the signature verified for another identity")
	}
}
