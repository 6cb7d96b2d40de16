package e2e

import (
	"archive/tar"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/kilnbuild/kiln/internal/imagetest"
)

// corpusCase is one directory of test/hostile.
type corpusCase struct {
	name, dir  string
	dockerfile string
	layer      []string
	context    []string
	expect     map[string]string // mode ("chroot", "inplace") -> "ok" or "refused: TEXT"
}

func readCorpus(t *testing.T) []corpusCase {
	t.Helper()
	dirs, err := filepath.Glob("../hostile/*/Dockerfile")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no hostile corpus in test/hostile: %v", err)
	}
	var out []corpusCase
	for _, df := range dirs {
		dir := filepath.Dir(df)
		c := corpusCase{name: filepath.Base(dir), dir: dir, expect: map[string]string{}}
		data, _ := os.ReadFile(df)
		c.dockerfile = string(data)
		lines := func(name string) []string {
			data, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return nil
			}
			var ls []string
			for _, l := range strings.Split(string(data), "\n") {
				if strings.TrimSpace(l) != "" {
					ls = append(ls, l)
				}
			}
			return ls
		}
		c.layer, c.context = lines("layer"), lines("context")
		for _, l := range lines("expect") {
			switch {
			case strings.HasPrefix(l, "inplace "):
				c.expect["inplace"] = strings.TrimPrefix(l, "inplace ")
			case strings.HasPrefix(l, "chroot "):
				c.expect["chroot"] = strings.TrimPrefix(l, "chroot ")
			default:
				if _, ok := c.expect["chroot"]; !ok {
					c.expect["chroot"] = l
				}
				if _, ok := c.expect["inplace"]; !ok {
					c.expect["inplace"] = l
				}
			}
		}
		out = append(out, c)
	}
	return out
}

// subst fills in a corpus file's placeholders.
func subst(s, host string) string {
	s = strings.ReplaceAll(s, "{{HOST}}", host)
	for strings.Contains(s, "{{CACHEDIR ") {
		i := strings.Index(s, "{{CACHEDIR ")
		j := strings.Index(s[i:], "}}")
		id := s[i+len("{{CACHEDIR ") : i+j]
		s = s[:i] + cacheDirName(id) + s[i+j+2:]
	}
	return s
}

// layerFiles turns a corpus layer description into tar entries.
func layerFiles(t *testing.T, lines []string, host string) []imagetest.File {
	t.Helper()
	var files []imagetest.File
	for _, l := range lines {
		f := strings.SplitN(subst(l, host), " ", 3)
		arg := func(i int) string {
			if i < len(f) {
				return f[i]
			}
			return ""
		}
		n := func(i int) int { v, _ := strconv.Atoi(arg(i)); return v }
		switch f[0] {
		case "file":
			files = append(files, imagetest.Reg(arg(1), arg(2), 0o644, 0, 0))
		case "dir":
			files = append(files, imagetest.Dir(arg(1), 0o755, 0, 0))
		case "link":
			files = append(files, imagetest.Symlink(arg(1), arg(2)))
		case "hard":
			files = append(files, imagetest.File{Path: arg(1), Type: tar.TypeLink, Link: arg(2)})
		case "fifo":
			files = append(files, imagetest.File{Path: arg(1), Type: tar.TypeFifo, Mode: 0o644})
		case "dev":
			files = append(files, imagetest.File{Path: arg(1), Type: tar.TypeChar, Mode: 0o644})
		case "deep":
			p := "deep"
			for i := 0; i < n(1); i++ {
				p += "/d"
				files = append(files, imagetest.Dir(p, 0o755, 0, 0))
			}
			files = append(files, imagetest.Reg(p+"/bottom", "bottom", 0o644, 0, 0))
		case "wide":
			files = append(files, imagetest.Dir("wide", 0o755, 0, 0))
			for i := 0; i < n(1); i++ {
				files = append(files, imagetest.Reg(fmt.Sprintf("wide/f%05d", i), "", 0o644, 0, 0))
			}
		case "longpath":
			p := "long"
			for i := 0; i < n(1); i++ {
				p += "/" + strings.Repeat(string(rune('a'+i%26)), n(2))
				files = append(files, imagetest.Dir(p, 0o755, 0, 0))
			}
			files = append(files, imagetest.Reg(p+"/end", "end", 0o644, 0, 0))
		default:
			t.Fatalf("unknown layer entry %q", l)
		}
	}
	return files
}

// makeContext writes a corpus case's context entries into dir.
func makeContext(t *testing.T, dir string, lines []string, host string) {
	t.Helper()
	for _, l := range lines {
		f := strings.SplitN(subst(l, host), " ", 3)
		p := filepath.Join(dir, f[1])
		os.MkdirAll(filepath.Dir(p), 0o755)
		var err error
		switch f[0] {
		case "file":
			err = os.WriteFile(p, []byte(f[2]), 0o644)
		case "dir":
			err = os.MkdirAll(p, 0o755)
		case "link":
			err = os.Symlink(f[2], p)
		case "fifo":
			err = syscall.Mkfifo(p, 0o644)
		default:
			t.Fatalf("unknown context entry %q", l)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestHostileCorpus builds every case of test/hostile in chroot isolation
// and in place (in runc), and asserts refusal or confinement: the
// canaries around the build never change.
func TestHostileCorpus(t *testing.T) {
	reg := imagetest.Registry(t)
	busybox := imagetest.BusyboxFiles(t)
	for _, c := range readCorpus(t) {
		for _, mode := range []string{"chroot", "inplace"} {
			t.Run(c.name+"/"+mode, func(t *testing.T) {
				host := newCanary(t)
				tag := strings.ReplaceAll(c.name, "_", "-") + "-" + mode
				base := reg + "/corpus/base:" + tag
				pushTo(t, base, imagetest.Image(t, true, nil, busybox, layerFiles(t, c.layer, host.dir)))
				ctx := t.TempDir()
				os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte(strings.ReplaceAll(subst(c.dockerfile, host.dir), "{{BASE}}", base)), 0o644)
				makeContext(t, ctx, c.context, host.dir)
				workspace := describe(t, ctx)
				dest := reg + "/corpus/out:" + tag
				var r result
				var kaniko, kanikoBefore string
				if mode == "chroot" {
					kd := t.TempDir()
					os.MkdirAll(filepath.Join(kd, ".docker"), 0o755)
					os.WriteFile(filepath.Join(kd, ".docker", "config.json"), []byte(`{"auths":{}}`), 0o600)
					kaniko = filepath.Join(kd, ".docker")
					kanikoBefore = describe(t, kaniko)
					r = kiln(t, nil, "--context", ctx, "-d", dest, "--insecure", "--insecure-pull", "--isolation", "chroot",
						"--kaniko-dir", kd, "--build-arg", "WORK="+filepath.Join(kd, "work"))
				} else {
					rootfs := t.TempDir()
					os.MkdirAll(filepath.Join(rootfs, "kaniko", ".docker"), 0o755)
					bin, _ := os.ReadFile(filepath.Join(binDir, "build"))
					os.WriteFile(filepath.Join(rootfs, "kaniko", "build"), bin, 0o755)
					os.WriteFile(filepath.Join(rootfs, "kaniko", ".docker", "config.json"), []byte(`{"auths":{}}`), 0o600)
					kaniko = filepath.Join(rootfs, "kaniko", ".docker")
					kanikoBefore = describe(t, kaniko)
					vol := newCanary(t)
					defer vol.check(t)
					r = runContainer(t, container{
						rootfs: rootfs,
						args: []string{"/kaniko/build", "--context", "/workspace", "-d", dest, "--insecure", "--insecure-pull",
							"--isolation", "in-place", "--log-format", "text", "--build-arg", "WORK=/kaniko/work"},
						binds: []bind{{ctx, "/workspace"}, {vol.dir, "/vol"}},
						env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "container=oci", "HOME=/root"},
					})
				}
				host.check(t)
				if after := describe(t, kaniko); after != kanikoBefore {
					t.Errorf("kiln's directory changed:\nbefore:\n%s\nafter:\n%s", kanikoBefore, after)
				}
				if after := describe(t, ctx); after != workspace {
					t.Errorf("the workspace changed:\nbefore:\n%s\nafter:\n%s", workspace, after)
				}
				want := c.expect[mode]
				if text, refused := strings.CutPrefix(want, "refused: "); refused {
					if r.code == 0 || !strings.Contains(r.stderr, text) {
						t.Fatalf("exit %d, want a refusal saying %q:\n%s", r.code, text, r.stderr)
					}
					if _, err := pullErr(dest); err == nil {
						t.Error("a refused build pushed its image")
					}
					return
				}
				if want != "ok" {
					t.Fatalf("expect %q: want ok or refused: TEXT", want)
				}
				if r.code != 0 {
					t.Fatalf("build failed (%d):\n%s\n%s", r.code, r.stdout, r.stderr)
				}
				pull(t, dest)
			})
		}
	}
}
