package dockerfile

import (
	"sort"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// Env is an ordered set of variables: the later Set of a key replaces the
// earlier value but keeps the key's first position, as Docker's image config
// does. It implements buildkit's shell.EnvGetter.
type Env struct {
	keys []string
	vals map[string]string
}

var _ shell.EnvGetter = (*Env)(nil)

// NewEnv returns an Env holding the KEY=VALUE pairs of list, in order.
func NewEnv(list []string) *Env {
	e := &Env{vals: map[string]string{}}
	for _, kv := range list {
		k, v, _ := strings.Cut(kv, "=")
		e.Set(k, v)
	}
	return e
}

// Set sets key to value.
func (e *Env) Set(key, value string) {
	if e.vals == nil {
		e.vals = map[string]string{}
	}
	if _, ok := e.vals[key]; !ok {
		e.keys = append(e.keys, key)
	}
	e.vals[key] = value
}

// Get returns the value of key and whether it is set.
func (e *Env) Get(key string) (string, bool) {
	if e == nil {
		return "", false
	}
	v, ok := e.vals[key]
	return v, ok
}

// Keys returns the keys in order.
func (e *Env) Keys() []string {
	if e == nil {
		return nil
	}
	return append([]string(nil), e.keys...)
}

// List returns KEY=VALUE pairs in order.
func (e *Env) List() []string {
	if e == nil {
		return nil
	}
	out := make([]string, 0, len(e.keys))
	for _, k := range e.keys {
		out = append(out, k+"="+e.vals[k])
	}
	return out
}

// Clone returns an independent copy.
func (e *Env) Clone() *Env {
	c := &Env{vals: make(map[string]string, len(e.keys))}
	for _, k := range e.Keys() {
		c.Set(k, e.vals[k])
	}
	return c
}

// Merge returns a new Env with e's variables overlaid by o's.
func (e *Env) Merge(o *Env) *Env {
	c := e.Clone()
	for _, k := range o.Keys() {
		v, _ := o.Get(k)
		c.Set(k, v)
	}
	return c
}

// Expander returns a buildkit word expander that substitutes e's variables
// with the Dockerfile's escape token.
func (e *Env) Expander(escape rune) instructions.SingleWordExpander {
	lex := shell.NewLex(escape)
	return func(word string) (string, error) {
		s, _, err := lex.ProcessWord(word, e)
		return s, err
	}
}

// BuildArgs are the values given with --build-arg. It remembers which were
// consumed so unused ones can be reported, as Docker does.
type BuildArgs struct {
	values map[string]string
	used   map[string]bool
}

// NewBuildArgs parses --build-arg values: KEY=VALUE, or KEY alone to take the
// value from lookup (the process environment); a KEY absent there is unset.
func NewBuildArgs(flags []string, lookup func(string) (string, bool)) *BuildArgs {
	b := &BuildArgs{values: map[string]string{}, used: map[string]bool{}}
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			if lookup == nil {
				continue
			}
			if v, ok = lookup(k); !ok {
				continue
			}
		}
		b.values[k] = v
	}
	return b
}

// Lookup returns the value given for key and marks it used.
func (b *BuildArgs) Lookup(key string) (string, bool) {
	if b == nil {
		return "", false
	}
	v, ok := b.values[key]
	if ok {
		b.used[key] = true
	}
	return v, ok
}

// Unused returns the keys given but never consumed, sorted; the predefined
// proxy arguments are never reported.
func (b *BuildArgs) Unused() []string {
	if b == nil {
		return nil
	}
	var out []string
	for k := range b.values {
		if !b.used[k] && !IsProxyArg(k) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// proxyArgs are Docker's predefined ARGs: usable by RUN without an ARG line
// and left out of the image history.
var proxyArgs = []string{
	"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
	"FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
}

// IsProxyArg reports whether key is one of Docker's predefined proxy ARGs.
func IsProxyArg(key string) bool {
	for _, p := range proxyArgs {
		if p == key {
			return true
		}
	}
	return false
}

// ProxyArgs returns the predefined proxy ARGs given as build args.
func (b *BuildArgs) ProxyArgs() *Env {
	e := &Env{}
	for _, k := range proxyArgs {
		if v, ok := b.Lookup(k); ok {
			e.Set(k, v)
		}
	}
	return e
}
