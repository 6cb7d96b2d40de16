package engine

import (
	"context"
	"fmt"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kilnbuild/kiln/internal/cache"
	"github.com/kilnbuild/kiln/internal/instruction"
)

// handler is one Dockerfile instruction's semantics in a stage, as
// BuildKit's frontend has one dispatch function per instruction. Caching
// and bringing the root up to date wrap it (cached, rooted).
type handler interface {
	// key adds to k what the instruction reads, after expansion, and
	// reports whether its result may come from the layer cache.
	key(ctx context.Context, st *stage, k *cache.Key) (cacheable bool, err error)
	// root says what of st's root the instruction needs before it applies.
	root(st *stage) (rootNeed, error)
	// apply runs the instruction on st, committing its history entry and
	// its layer.
	apply(ctx context.Context, st *stage) error
}

// rootNeed is what an instruction needs of its stage's root.
type rootNeed int

const (
	// noRoot: the instruction changes the config only.
	noRoot rootNeed = iota
	// wholeRoot: every layer of the stage is unpacked in the root first.
	wholeRoot
	// aheadOfRoot: the instruction writes where no layer not yet unpacked
	// touches, so it runs before they are (see lazyroot.go).
	aheadOfRoot
	// ownAheadOfRoot: as aheadOfRoot once the layers this build made and
	// did not write into the root (streamed COPYs) are applied.
	ownAheadOfRoot
)

// historian is a handler whose history entry is not its Dockerfile text.
type historian interface {
	createdBy(st *stage) string
}

// handlerFor is the handler of cmd, wrapped in the root and cache
// decorators the build uses. It is the one place an instruction is added.
func (b *builder) handlerFor(cmd instructions.Command) (handler, error) {
	sc := instruction.Scope{BuildArgs: b.args, Meta: b.plan.Meta, Escape: b.df.Escape}
	var h handler
	switch c := cmd.(type) {
	case *instructions.EnvCommand:
		h = configOnly(b, c, instruction.Env)
	case *instructions.LabelCommand:
		h = configOnly(b, c, instruction.Label)
	case *instructions.MaintainerCommand:
		h = configOnly(b, c, instruction.Maintainer)
	case *instructions.UserCommand:
		h = configOnly(b, c, instruction.User)
	case *instructions.ArgCommand:
		h = configOnly(b, c, func(s *instruction.State, c *instructions.ArgCommand) error { return instruction.Arg(s, sc, c) })
	case *instructions.ExposeCommand:
		h = configOnly(b, c, func(s *instruction.State, c *instructions.ExposeCommand) error { return instruction.Expose(s, sc, c) })
	case *instructions.VolumeCommand:
		h = configOnly(b, c, instruction.Volume)
	case *instructions.CmdCommand:
		h = configOnly(b, c, instruction.Cmd)
	case *instructions.EntrypointCommand:
		h = configOnly(b, c, instruction.Entrypoint)
	case *instructions.ShellCommand:
		h = configOnly(b, c, instruction.Shell)
	case *instructions.StopSignalCommand:
		h = configOnly(b, c, instruction.StopSignal)
	case *instructions.HealthCheckCommand:
		h = configOnly(b, c, instruction.Healthcheck)
	case *instructions.OnbuildCommand:
		h = configOnly(b, c, instruction.Onbuild)
	case *instructions.WorkdirCommand:
		h = workdirHandler{b, c}
	case *instructions.CopyCommand:
		h = copyHandler{b, c}
	case *instructions.AddCommand:
		h = addHandler{b, c}
	case *instructions.RunCommand:
		h = runHandler{b, c}
	default:
		return nil, fmt.Errorf("%s is not supported", strings.ToUpper(cmd.Name()))
	}
	h = rooted{h, b}
	if b.cache {
		h = cached{h, b, cmd}
	}
	return h, nil
}

// configHandler is an instruction that changes only the config: a pure
// function of the stage's State (package instruction).
type configHandler struct {
	b   *builder
	cmd instructions.Command
	fn  func(*instruction.State) error
}

func configOnly[C instructions.Command](b *builder, c C, fn func(*instruction.State, C) error) handler {
	return configHandler{b: b, cmd: c, fn: func(s *instruction.State) error { return fn(s, c) }}
}

// key: what later instructions see of a config change (ENV) is in their
// own keys.
func (h configHandler) key(_ context.Context, _ *stage, k *cache.Key) (bool, error) {
	k.Add("instruction", sourceText(h.cmd))
	return false, nil
}

func (h configHandler) root(*stage) (rootNeed, error) { return noRoot, nil }

func (h configHandler) apply(ctx context.Context, st *stage) error {
	if err := h.fn(&st.State); err != nil {
		return err
	}
	return h.b.commit(ctx, st, sourceText(h.cmd), nil, false)
}

// rooted brings the stage's root up to date before an instruction that
// needs it.
type rooted struct {
	handler
	b *builder
}

func (h rooted) apply(ctx context.Context, st *stage) error {
	need, err := h.root(st)
	if err != nil {
		return err
	}
	switch need {
	case wholeRoot:
		if err := h.b.materialize(ctx, st); err != nil {
			return err
		}
	case ownAheadOfRoot:
		if err := h.b.applyOwn(st); err != nil {
			return err
		}
		fallthrough
	case aheadOfRoot:
		st.ahead = true
		h.b.log.Debug("the root is not brought up to date for this instruction: no layer left out touches its destination", "stage", stageLabel(st.ps))
	}
	return h.handler.apply(ctx, st)
}

// cached takes an instruction's result from the layer cache when it is
// there, and stores it when the instruction ran.
type cached struct {
	handler
	b   *builder
	cmd instructions.Command
}

func (h cached) apply(ctx context.Context, st *stage) error {
	k := cache.NewKey(st.key)
	cacheable, err := h.key(ctx, st, k)
	if err != nil {
		return err
	}
	key, text := k.String(), sourceText(h.cmd)
	if cacheable {
		createdBy := text
		if c := createdByOf(h.handler, st); c != "" {
			createdBy = c
		}
		if h.b.cacheHit(ctx, st, key, text, createdBy) {
			return nil
		}
	}
	before := len(st.addenda)
	err = h.handler.apply(ctx, st)
	st.key = key
	if cacheable && err == nil {
		h.b.cachePut(ctx, key, st, before)
	}
	return err
}

// historian passes through the decorators.
func (h rooted) createdBy(st *stage) string { return createdByOf(h.handler, st) }

func createdByOf(h handler, st *stage) string {
	if hs, ok := h.(historian); ok {
		return hs.createdBy(st)
	}
	return ""
}
