package buildcontext

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"

	"github.com/kilnbuild/kiln/internal/logging"
	"github.com/kilnbuild/kiln/internal/option"
)

// isAzureBlob reports an Azure Blob Storage URL: https on
// *.blob.core.windows.net, or a host listed in AZURE_STORAGE_BLOB_HOSTS
// (comma-separated host:port; for Azurite, Azure Stack and sovereign
// clouds), where the account is the first path element.
func isAzureBlob(src string, getenv func(string) string) bool {
	u, err := url.Parse(src)
	if err != nil {
		return false
	}
	if u.Scheme == "https" && strings.HasSuffix(u.Hostname(), ".blob.core.windows.net") {
		return true
	}
	for _, h := range strings.Split(getenv("AZURE_STORAGE_BLOB_HOSTS"), ",") {
		if h != "" && (u.Scheme == "http" || u.Scheme == "https") && u.Host == strings.TrimSpace(h) {
			return true
		}
	}
	return false
}

// azureAccount is the storage account of a blob URL.
func azureAccount(u *url.URL) string {
	if strings.HasSuffix(u.Hostname(), ".blob.core.windows.net") {
		account, _, _ := strings.Cut(u.Hostname(), ".")
		return account
	}
	account, _, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	return account
}

// objectReader opens one object of a cloud store with its version.
type objectReader func(ctx context.Context) (io.ReadCloser, string, error)

// fetchObject downloads an object (with retries and progress) to a
// temporary file, checks it against wantSHA256 when that is set, and
// extracts it.
func fetchObject(ctx context.Context, o FetchOptions, dir string, rec *Record, open objectReader, wantSHA256 string) error {
	f, err := os.CreateTemp("", "kiln-context-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	err = retry(ctx, o, "download", func() error {
		if err := f.Truncate(0); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		rc, version, err := open(ctx)
		if err != nil {
			return err
		}
		defer rc.Close()
		rec.Version = version
		pr := &logging.Progress{Log: o.Logger, Msg: "downloading context", Attrs: []any{"url", Redact(o.Source)}}
		pr.Set(0)
		_, err = io.Copy(f, pr.Reader(rc))
		return err
	})
	if err != nil {
		return option.New("Context", Redact(o.Source), err)
	}
	if wantSHA256 != "" {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != wantSHA256 {
			return option.Errorf("Context", Redact(o.Source), "sha256 mismatch: want %s, got %s", wantSHA256, got)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return extractArchive(f, dir, o.Limits)
}

// s3Object opens s3://bucket/key with the AWS SDK's usual configuration
// (AWS_REGION, credentials chain), and kaniko's S3_ENDPOINT and
// S3_FORCE_PATH_STYLE for S3-compatible stores.
func s3Object(o FetchOptions, bucket, key string) objectReader {
	return func(ctx context.Context) (io.ReadCloser, string, error) {
		cfg, err := awsconfig.LoadDefaultConfig(ctx)
		if err != nil {
			return nil, "", permanentError{err}
		}
		if cfg.Region == "" {
			cfg.Region = "us-east-1"
		}
		client := s3.NewFromConfig(cfg, func(so *s3.Options) {
			if ep := o.Getenv("S3_ENDPOINT"); ep != "" {
				so.BaseEndpoint = aws.String(ep)
			}
			if o.Getenv("S3_FORCE_PATH_STYLE") == "true" {
				so.UsePathStyle = true
			}
		})
		out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		if err != nil {
			return nil, "", err
		}
		version := aws.ToString(out.VersionId)
		if version == "" {
			version = aws.ToString(out.ETag)
		}
		return out.Body, version, nil
	}
}

// gcsReadScope is the OAuth scope that reads Cloud Storage objects.
const gcsReadScope = "https://www.googleapis.com/auth/devstorage.read_only"

// gcsObject opens gs://bucket/object with one GET of the Cloud Storage
// JSON API, as Google's client does (which would add 50 MB and 300
// packages to every step binary): with application default credentials
// (GOOGLE_APPLICATION_CREDENTIALS, gcloud's, or the metadata server), or
// with none against the emulator STORAGE_EMULATOR_HOST names. Both come
// from the process environment, as Google's libraries read them.
func gcsObject(o FetchOptions, bucket, object string) objectReader {
	return func(ctx context.Context) (io.ReadCloser, string, error) {
		base, hc := "https://storage.googleapis.com", o.HTTPClient
		if host := os.Getenv("STORAGE_EMULATOR_HOST"); host != "" {
			base = host
			if !strings.Contains(host, "://") {
				base = "http://" + host
			}
		} else {
			ctx := context.WithValue(ctx, oauth2.HTTPClient, o.HTTPClient)
			creds, err := google.FindDefaultCredentials(ctx, gcsReadScope)
			if err != nil {
				return nil, "", permanentError{fmt.Errorf("Google credentials: %w", err)}
			}
			hc = oauth2.NewClient(ctx, creds.TokenSource)
		}
		u := strings.TrimSuffix(base, "/") + "/storage/v1/b/" + url.PathEscape(bucket) + "/o/" + url.PathEscape(object) + "?alt=media"
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, "", permanentError{err}
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, "", err
		}
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			err := fmt.Errorf("gs://%s/%s: %s: %s", bucket, object, resp.Status, strings.TrimSpace(string(msg)))
			if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusRequestTimeout && resp.StatusCode != http.StatusTooManyRequests {
				return nil, "", permanentError{err}
			}
			return nil, "", err
		}
		return resp.Body, resp.Header.Get("X-Goog-Generation"), nil
	}
}

// azureBlob opens an Azure Blob URL with the account key from
// AZURE_STORAGE_ACCESS_KEY, or anonymously without one.
func azureBlob(o FetchOptions, src string) objectReader {
	return func(ctx context.Context) (io.ReadCloser, string, error) {
		u, err := url.Parse(src)
		if err != nil {
			return nil, "", permanentError{err}
		}
		var client *blob.Client
		if key := o.Getenv("AZURE_STORAGE_ACCESS_KEY"); key != "" {
			cred, err := azblob.NewSharedKeyCredential(azureAccount(u), key)
			if err != nil {
				return nil, "", permanentError{fmt.Errorf("AZURE_STORAGE_ACCESS_KEY: %w", err)}
			}
			client, err = blob.NewClientWithSharedKeyCredential(src, cred, nil)
			if err != nil {
				return nil, "", permanentError{err}
			}
		} else if client, err = blob.NewClientWithNoCredential(src, nil); err != nil {
			return nil, "", permanentError{err}
		}
		resp, err := client.DownloadStream(ctx, nil)
		if err != nil {
			return nil, "", err
		}
		version := ""
		if resp.ETag != nil {
			version = string(*resp.ETag)
		}
		return resp.Body, version, nil
	}
}

// splitBucket splits "bucket/key/path" into bucket and key.
func splitBucket(src, rest string) (string, string, error) {
	bucket, key, ok := strings.Cut(rest, "/")
	if !ok || bucket == "" || key == "" {
		return "", "", option.Errorf("Context", Redact(src), "want scheme://bucket/path/to/context.tar.gz")
	}
	return bucket, key, nil
}
