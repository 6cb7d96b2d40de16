package buildcontext

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
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

func TestAzureURLs(t *testing.T) {
	for src, want := range map[string]bool{
		"https://acct.blob.core.windows.net/ctx/app.tar.gz": true,
		"https://example.com/ctx.tar.gz":                    false,
		"http://acct.blob.core.windows.net/ctx/app.tar.gz":  false,
	} {
		if got := isAzureBlob(src); got != want {
			t.Errorf("isAzureBlob(%q) = %v", src, got)
		}
	}
}
