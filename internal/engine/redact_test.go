package engine

import (
	"strings"
	"testing"
)

const testKey = `-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDp0Zq8QpFvT2yq3wQ0bqYwq0T1v7d1Dq2zF2y6u8uQwAAAJgQ4VxXEOFc
-----END OPENSSH PRIVATE KEY-----
`

func TestRedactMultiLineSecrets(t *testing.T) {
	var r redactor
	r.add(testKey)
	r.add("tok-123\r\n")
	r.add("ab") // too short to hide: it would mask ordinary text
	for _, line := range strings.Split(testKey, "\n") {
		if got := r.redact("out: " + line); line != "" && strings.Contains(got, strings.TrimSpace(line)) {
			t.Errorf("line of the key shown: %q", got)
		}
	}
	for in, want := range map[string]string{
		"token=tok-123 ok":                     "token=*** ok",
		"about a cab":                          "about a cab",
		strings.ReplaceAll(testKey, "\n", " "): "*** *** *** *** ",
	} {
		if got := r.redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}
