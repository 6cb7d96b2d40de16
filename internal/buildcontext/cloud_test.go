package buildcontext

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// TestFetchS3 talks to gofakes3, an S3-compatible server, over HTTP with
// the AWS SDK, configured the usual way through the environment.
func TestFetchS3(t *testing.T) {
	srv := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	defer srv.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "kiln-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "kiln-test-secret")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ctx := context.Background()
	cfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) { o.BaseEndpoint = aws.String(srv.URL); o.UsePathStyle = true })
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("contexts")}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("contexts"), Key: aws.String("app/ctx.tar.gz"), Body: bytes.NewReader(gz(goodTar))}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"S3_ENDPOINT": srv.URL, "S3_FORCE_PATH_STYLE": "true"}
	getenv := func(k string) string { return env[k] }
	dest := filepath.Join(t.TempDir(), "ctx")
	rec, err := Fetch(ctx, FetchOptions{Source: "s3://contexts/app/ctx.tar.gz", Dest: dest, Getenv: getenv})
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dest, "src/main.go")); got != "package main\n" {
		t.Errorf("main.go = %q", got)
	}
	if rec.Version == "" || !strings.HasPrefix(rec.SHA256, "sha256:") {
		t.Errorf("record %+v", rec)
	}
	missing := filepath.Join(t.TempDir(), "ctx")
	if _, err := Fetch(ctx, FetchOptions{Source: "s3://contexts/nope.tgz", Dest: missing, Getenv: getenv}); err == nil {
		t.Error("missing object fetched")
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("failed fetch left its destination")
	}
}

// TestFetchGCS uses fake-gcs-server as the Storage emulator, which
// Google's client reaches through STORAGE_EMULATOR_HOST.
func TestFetchGCS(t *testing.T) {
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		Scheme: "http", Host: "127.0.0.1",
		InitialObjects: []fakestorage.Object{{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: "contexts", Name: "app/ctx.tar.gz"}, Content: gz(goodTar)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	t.Setenv("STORAGE_EMULATOR_HOST", strings.TrimPrefix(srv.URL(), "http://"))
	dest := filepath.Join(t.TempDir(), "ctx")
	rec, err := Fetch(context.Background(), FetchOptions{Source: "gs://contexts/app/ctx.tar.gz", Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dest, "Dockerfile")); got != "FROM scratch\n" {
		t.Errorf("Dockerfile = %q", got)
	}
	if rec.Version == "" || rec.Version == "0" {
		t.Errorf("generation not recorded: %+v", rec)
	}
}

// TestFetchGCSFailures: a missing object is a clear error naming it,
// asked for once (a retry cannot fix it), and leaves no destination;
// without credentials the fetch stops before any request, saying so.
func TestFetchGCSFailures(t *testing.T) {
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{Scheme: "http", Host: "127.0.0.1",
		InitialObjects: []fakestorage.Object{{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: "contexts", Name: "other"}, Content: gz(goodTar)}}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	target, _ := url.Parse(srv.URL())
	var requests atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
	}))
	defer proxy.Close()
	for _, tc := range []struct {
		name, emulator, want string
		requests             int64
	}{
		{"missing object", strings.TrimPrefix(proxy.URL, "http://"), "gs://contexts/app/nope.tar.gz: 404", 1},
		{"no credentials", "", "Google credentials", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requests.Store(0)
			t.Setenv("STORAGE_EMULATOR_HOST", tc.emulator)
			t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", filepath.Join(t.TempDir(), "none.json"))
			dest := filepath.Join(t.TempDir(), "ctx")
			_, err := Fetch(context.Background(), FetchOptions{Source: "gs://contexts/app/nope.tar.gz", Dest: dest, Retries: 3})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if got := requests.Load(); got != tc.requests {
				t.Errorf("%d requests, want %d", got, tc.requests)
			}
			if _, err := os.Stat(dest); err == nil {
				t.Error("a failed fetch left its destination")
			}
		})
	}
}

func TestAzureURLs(t *testing.T) {
	env := func(k string) string { return map[string]string{"AZURE_STORAGE_BLOB_HOSTS": "127.0.0.1:10000"}[k] }
	for src, want := range map[string]bool{
		"https://acct.blob.core.windows.net/ctx/app.tar.gz": true,
		"https://example.com/ctx.tar.gz":                    false,
		"http://acct.blob.core.windows.net/ctx/app.tar.gz":  false,
		"http://127.0.0.1:10000/devstoreaccount1/c/b.tgz":   true,
	} {
		if got := isAzureBlob(src, env); got != want {
			t.Errorf("isAzureBlob(%q) = %v", src, got)
		}
	}
}

// azuriteKey is Azurite's well-known development account key.
const azuriteKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

// TestFetchAzure uses Azurite (npm's azurite; test/run installs it) as the
// Blob Storage emulator.
func TestFetchAzure(t *testing.T) {
	bin, err := exec.LookPath("azurite-blob")
	if err != nil {
		t.Fatalf("Azurite is required (npm install -g azurite; test/run installs it): %v", err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "--blobHost", "127.0.0.1", "--blobPort", fmt.Sprint(port), "--location", t.TempDir(), "--silent", "--skipApiVersionCheck")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	host := fmt.Sprintf("127.0.0.1:%d", port)
	base := "http://" + host + "/devstoreaccount1"
	cred, err := azblob.NewSharedKeyCredential("devstoreaccount1", azuriteKey)
	if err != nil {
		t.Fatal(err)
	}
	client, err := azblob.NewClientWithSharedKeyCredential(base, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err = client.CreateContainer(ctx, "contexts", nil); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Azurite did not come up: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := client.UploadBuffer(ctx, "contexts", "app.tar.gz", gz(goodTar), nil); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"AZURE_STORAGE_BLOB_HOSTS": host, "AZURE_STORAGE_ACCESS_KEY": azuriteKey}
	var logs bytes.Buffer
	dest := filepath.Join(t.TempDir(), "ctx")
	rec, err := Fetch(ctx, FetchOptions{Source: base + "/contexts/app.tar.gz", Dest: dest, Getenv: func(k string) string { return env[k] }, Logger: testLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dest, "src/main.go")); got != "package main\n" {
		t.Errorf("main.go = %q", got)
	}
	if rec.Version == "" {
		t.Errorf("ETag not recorded: %+v", rec)
	}
	if strings.Contains(logs.String(), azuriteKey) {
		t.Error("the account key leaked into the log")
	}
	// A wrong key is refused.
	env["AZURE_STORAGE_ACCESS_KEY"] = "d3Jvbmc="
	if _, err := Fetch(ctx, FetchOptions{Source: base + "/contexts/app.tar.gz", Dest: filepath.Join(t.TempDir(), "x"), Getenv: func(k string) string { return env[k] }}); err == nil {
		t.Error("wrong key accepted")
	}
}
