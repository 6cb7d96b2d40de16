package engine

import (
	"sort"
	"strings"
)

// minRedacted is the shortest piece of a secret hidden in output: shorter
// ones would mask ordinary text.
const minRedacted = 4

// redactor hides secret values in text. Output reaches the log a line at
// a time, so a value of several lines (a PEM key, a JSON credential) is
// hidden line by line as well as whole.
type redactor struct {
	needles []string // longest first
}

// add remembers a secret value.
func (r *redactor) add(v string) {
	pieces := []string{strings.TrimSpace(v)}
	for _, line := range strings.Split(v, "\n") {
		pieces = append(pieces, strings.TrimSpace(strings.TrimSuffix(line, "\r")))
	}
	for _, p := range pieces {
		if len(p) >= minRedacted && !r.has(p) {
			r.needles = append(r.needles, p)
		}
	}
	sort.SliceStable(r.needles, func(i, j int) bool { return len(r.needles[i]) > len(r.needles[j]) })
}

func (r *redactor) has(p string) bool {
	for _, n := range r.needles {
		if n == p {
			return true
		}
	}
	return false
}

// redact returns s with every secret piece replaced by "***".
func (r *redactor) redact(s string) string {
	for _, n := range r.needles {
		if strings.Contains(s, n) {
			s = strings.ReplaceAll(s, n, "***")
		}
	}
	return s
}
