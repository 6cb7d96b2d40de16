package engine

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// want describes an expected file; zero fields are not checked, except
// that Type is always checked (0 means a regular file).
type want struct {
	typ      byte
	mode     int64
	uid, gid int
	owner    bool // check uid and gid
	content  *string
	link     string
}

func str(s string) *string { return &s }

func checkFiles(t *testing.T, fs map[string]imagetest.Entry, wants map[string]want, absent []string) {
	t.Helper()
	for p, w := range wants {
		e, ok := fs[p]
		if !ok {
			t.Errorf("%s: missing from image", p)
			continue
		}
		typ := w.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := e.Header
		if h.Typeflag != typ {
			t.Errorf("%s: type %q, want %q", p, h.Typeflag, typ)
		}
		if w.mode != 0 && h.Mode&0o7777 != w.mode {
			t.Errorf("%s: mode %o, want %o", p, h.Mode&0o7777, w.mode)
		}
		if w.owner && (h.Uid != w.uid || h.Gid != w.gid) {
			t.Errorf("%s: owner %d:%d, want %d:%d", p, h.Uid, h.Gid, w.uid, w.gid)
		}
		if w.content != nil && e.Content != *w.content {
			t.Errorf("%s: content %q, want %q", p, e.Content, *w.content)
		}
		if w.link != "" && h.Linkname != w.link {
			t.Errorf("%s: link %q, want %q", p, h.Linkname, w.link)
		}
	}
	for _, p := range absent {
		if _, ok := fs[p]; ok {
			t.Errorf("%s: present, want absent", p)
		}
	}
}

func TestCopy(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name       string
		dockerfile string
		files      map[string]string
		want       map[string]want
		absent     []string
	}{{
		name:       "file into directory and to a new name",
		dockerfile: "FROM REG/base:oci\nCOPY a.txt /dst/\nCOPY a.txt /renamed\nCOPY --link a.txt /linked/\n",
		files:      map[string]string{"a.txt": "A"},
		want: map[string]want{
			"dst/a.txt":    {content: str("A"), mode: 0o644, owner: true},
			"renamed":      {content: str("A")},
			"linked/a.txt": {content: str("A")},
		},
	}, {
		name:       "directory contents, not the directory",
		dockerfile: "FROM REG/base:oci\nCOPY src /app\n",
		files:      map[string]string{"src/x/y.txt": "Y", "src/z.txt": "Z"},
		want: map[string]want{
			"app/x/y.txt": {content: str("Y")},
			"app/z.txt":   {content: str("Z")},
			"app":         {typ: tar.TypeDir},
		},
		absent: []string{"app/src"},
	}, {
		name:       "wildcards",
		dockerfile: "FROM REG/base:oci\nCOPY *.go cmd/*/main.go /w/\n",
		files:      map[string]string{"a.go": "a", "b.go": "b", "c.txt": "c", "cmd/x/main.go": "x"},
		want:       map[string]want{"w/a.go": {}, "w/b.go": {}, "w/main.go": {content: str("x")}},
		absent:     []string{"w/c.txt"},
	}, {
		name:       "destination relative to WORKDIR",
		dockerfile: "FROM REG/base:oci\nWORKDIR /srv/app\nCOPY a.txt .\nCOPY a.txt sub/\n",
		files:      map[string]string{"a.txt": "A"},
		want:       map[string]want{"srv/app/a.txt": {}, "srv/app/sub/a.txt": {}},
	}, {
		name:       "chown by name, user and group, numeric",
		dockerfile: "FROM REG/base:oci\nCOPY --chown=app a.txt /u/\nCOPY --chown=app:staff a.txt /ug/\nCOPY --chown=42 a.txt /n/\nCOPY --chown=7:8 d /d/\n",
		files:      map[string]string{"a.txt": "A", "d/f": "F"},
		want: map[string]want{
			"u/a.txt":  {uid: 1000, gid: 1001, owner: true},
			"u":        {typ: tar.TypeDir, uid: 1000, gid: 1001, owner: true},
			"ug/a.txt": {uid: 1000, gid: 50, owner: true},
			"n/a.txt":  {uid: 42, gid: 42, owner: true},
			"d/f":      {uid: 7, gid: 8, owner: true},
		},
	}, {
		name:       "chmod with special bits",
		dockerfile: "FROM REG/base:oci\nCOPY --chmod=4755 a.txt /x/suid\nCOPY --chmod=0600 d /d/\n",
		files:      map[string]string{"a.txt": "A", "d/f": "F"},
		want: map[string]want{
			"x/suid": {mode: 0o4755},
			"d/f":    {mode: 0o600},
		},
	}, {
		name:       "existing parents keep mode and owner",
		dockerfile: "FROM REG/base:oci\nCOPY a.txt /opt/data/new/a.txt\n",
		files:      map[string]string{"a.txt": "A"},
		want: map[string]want{
			"opt":                {typ: tar.TypeDir, mode: 0o750, uid: 0, gid: 50, owner: true},
			"opt/data":           {typ: tar.TypeDir, mode: 0o2775, uid: 1000, gid: 1001, owner: true},
			"opt/data/new":       {typ: tar.TypeDir, mode: 0o755, owner: true},
			"opt/data/new/a.txt": {owner: true},
			"usr/bin/tool":       {mode: 0o4755},
			"tmp":                {typ: tar.TypeDir, mode: 0o1777},
		},
	}, {
		name:       "destination through a symlink in the image",
		dockerfile: "FROM REG/base:oci\nCOPY a.txt /var/run/a.txt\nCOPY a.txt /bin/\n",
		files:      map[string]string{"a.txt": "A"},
		want: map[string]want{
			"run/a.txt":     {content: str("A")},
			"var/run":       {typ: tar.TypeSymlink, link: "/run"},
			"usr/bin/a.txt": {},
			"bin":           {typ: tar.TypeSymlink, link: "usr/bin"},
		},
	}, {
		name:       "dockerignore with exception",
		dockerfile: "FROM REG/base:oci\nCOPY . /ctx/\n",
		files:      map[string]string{".dockerignore": "*.log\nsecret/\n!keep.log\n", "a.log": "", "keep.log": "k", "secret/key": "s", "main.go": "m"},
		want:       map[string]want{"ctx/keep.log": {}, "ctx/main.go": {}},
		absent:     []string{"ctx/a.log", "ctx/secret", "ctx/secret/key"},
	}, {
		name:       "heredoc files",
		dockerfile: "FROM REG/base:oci\nARG NAME=world\nCOPY <<EOF /greet\nhello $NAME\nEOF\nCOPY --chmod=0755 <<'EOT' /lit\n$NAME\nEOT\n",
		want: map[string]want{
			"greet": {content: str("hello world\n"), mode: 0o644},
			"lit":   {content: str("$NAME\n"), mode: 0o755},
		},
	}, {
		name:       "exclude and parents",
		dockerfile: "FROM REG/base:oci\nCOPY --exclude=*.tmp src/ /ex/\nCOPY --parents a/b/c.txt /p/\nCOPY --parents ./a/./b/c.txt /q/\n",
		files:      map[string]string{"src/keep": "k", "src/drop.tmp": "d", "a/b/c.txt": "c"},
		want:       map[string]want{"ex/keep": {}, "p/a/b/c.txt": {}, "q/b/c.txt": {}},
		absent:     []string{"ex/drop.tmp"},
	}, {
		name:       "copy from the build never extracts archives",
		dockerfile: "FROM REG/base:oci\nCOPY arch.tar.gz /c/\n",
		files:      map[string]string{"arch.tar.gz": string(gzipTar(imagetest.Reg("inner", "i", 0o644, 0, 0)))},
		want:       map[string]want{"c/arch.tar.gz": {}},
		absent:     []string{"c/inner"},
	}, {
		name:       "ADD extracts local archives",
		dockerfile: "FROM REG/base:oci\nADD arch.tar.gz /x/\nADD --chown=app plain.tar /y\n",
		files: map[string]string{
			"arch.tar.gz": string(gzipTar(imagetest.Dir("d", 0o700, 5, 6), imagetest.Reg("d/f", "F", 0o640, 5, 6), imagetest.Symlink("d/l", "f"))),
			"plain.tar":   string(imagetest.Tar(imagetest.Reg("p", "P", 0o644, 0, 0))),
		},
		want: map[string]want{
			"x/d":   {typ: tar.TypeDir, mode: 0o700, uid: 5, gid: 6, owner: true},
			"x/d/f": {content: str("F"), mode: 0o640, uid: 5, gid: 6, owner: true},
			"x/d/l": {typ: tar.TypeSymlink, link: "f"},
			"y/p":   {content: str("P"), uid: 1000, gid: 1001, owner: true},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, _, _ := f.mustRun(buildSpec{dockerfile: tt.dockerfile, files: tt.files})
			checkFiles(t, fs, tt.want, tt.absent)
		})
	}
}

func gzipTar(files ...imagetest.File) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(imagetest.Tar(files...))
	zw.Close()
	return buf.Bytes()
}

func TestCopyLinks(t *testing.T) {
	f := newFixture(t)
	s := buildSpec{dockerfile: "FROM REG/base:oci\nCOPY tree /t/\n", files: map[string]string{"tree/a": "hard"}}
	// Build the context by hand for links.
	s.opts = func(o *Options) {
		dir := o.Context
		if err := os.Link(filepath.Join(dir, "tree/a"), filepath.Join(dir, "tree/b")); err != nil {
			t.Fatal(err)
		}
		os.Symlink("a", filepath.Join(dir, "tree/rel"))
		os.Symlink("/etc/passwd", filepath.Join(dir, "tree/abs"))
	}
	fs, _, img := f.mustRun(s)
	checkFiles(t, fs, map[string]want{
		"t/a":   {content: str("hard")},
		"t/b":   {typ: tar.TypeLink, link: "t/a"},
		"t/rel": {typ: tar.TypeSymlink, link: "a"},
		"t/abs": {typ: tar.TypeSymlink, link: "/etc/passwd"},
	}, nil)
	// The hard link is a link in the same layer, not a second copy.
	ls, _ := img.Layers()
	names := imagetest.LayerNames(t, ls[len(ls)-1])
	if fmt.Sprint(names) != "[t t/a t/abs t/b t/rel]" {
		t.Errorf("last layer = %v", names)
	}
}

func TestCopySourceSymlinkStaysInContext(t *testing.T) {
	f := newFixture(t)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("host secret"), 0o644)
	s := buildSpec{dockerfile: "FROM REG/base:oci\nCOPY link/secret /got\n"}
	s.opts = func(o *Options) { os.Symlink(outside, filepath.Join(o.Context, "link")) }
	_, err := f.run(s)
	if err == nil || !strings.Contains(err.Error(), "not found in the build context") {
		t.Fatalf("err = %v, want the source refused as outside the context", err)
	}
}

func TestAddURL(t *testing.T) {
	f := newFixture(t)
	body := "remote content"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	sum := sha256.Sum256([]byte(body))
	good := "sha256:" + hex.EncodeToString(sum[:])
	fs, _, _ := f.mustRun(buildSpec{dockerfile: fmt.Sprintf("FROM REG/base:oci\nADD --checksum=%s %s/files/tool.bin /dl/\nADD %s/x /named\n", good, srv.URL, srv.URL)})
	checkFiles(t, fs, map[string]want{
		"dl/tool.bin": {content: str(body), mode: 0o600},
		"named":       {content: str(body)},
	}, nil)
	if mt := fs["dl/tool.bin"].Header.ModTime.UTC().Format("2006-01-02"); mt != "2015-10-21" {
		t.Errorf("mtime %s, want Last-Modified", mt)
	}
	_, err := f.run(buildSpec{dockerfile: fmt.Sprintf("FROM REG/base:oci\nADD --checksum=sha256:%064d %s/f /f\n", 0, srv.URL)})
	if err == nil || !strings.Contains(err.Error(), "checksum mismatch") || !strings.Contains(err.Error(), "Dockerfile:2") {
		t.Errorf("bad checksum: err = %v", err)
	}
}

func TestCopyErrors(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name, dockerfile string
		files            map[string]string
		want             []string
	}{
		{"missing source", "FROM REG/base:oci\nCOPY nope /x\n", nil, []string{"Dockerfile:2", `"nope" not found in the build context`}},
		{"excluded source", "FROM REG/base:oci\nCOPY secret.txt /x\n", map[string]string{".dockerignore": "secret.txt", "secret.txt": "s"}, []string{"Dockerfile:2", "excluded by .dockerignore"}},
		{"several files on one file", "FROM REG/base:oci\nCOPY a b /x\n", map[string]string{"a": "", "b": ""}, []string{"Dockerfile:2", "both a and b land on the file /x"}},
		{"several heredocs on one file", "FROM REG/base:oci\nCOPY <<A <<B /x\na\nA\nb\nB\n", nil, []string{"Dockerfile:2", "land on the file /x"}},
		{"unknown chown user", "FROM REG/base:oci\nCOPY --chown=ghost a /x\n", map[string]string{"a": ""}, []string{"Dockerfile:2", "unable to find user ghost"}},
		{"bad chmod", "FROM REG/base:oci\nCOPY --chmod=9z a /x\n", map[string]string{"a": ""}, []string{"Dockerfile:2", "--chmod=9z"}},
		{"hostile archive", "FROM REG/base:oci\nADD evil.tar /x/\n", map[string]string{"evil.tar": string(imagetest.Tar(imagetest.Reg("../../escape", "x", 0o644, 0, 0)))}, []string{"Dockerfile:2", "escapes"}},
		{"checksum on local file", "FROM REG/base:oci\nADD --checksum=sha256:00 a /x\n", map[string]string{"a": ""}, []string{"only be used with http"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.run(buildSpec{dockerfile: tt.dockerfile, files: tt.files})
			if err == nil {
				t.Fatal("build succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
