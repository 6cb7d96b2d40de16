package engine

import (
	"time"
)

// phase is a part of a stage's build whose time the stage summary reports.
type phase int

const (
	phasePull phase = iota
	phaseUnpack
	phaseRun
	phaseSnapshot
	phaseLayer
	numPhases
)

var phaseNames = [numPhases]string{"pull", "unpack", "run", "snapshot", "layer"}

// stageTimes is the time a stage spent in each phase.
type stageTimes [numPhases]time.Duration

// clock starts timing phase p for the stage being built; call what it
// returns when the phase ends. Stages are built one at a time.
func (b *builder) clock(p phase) func() {
	t := b.curTimes
	if t == nil {
		return func() {}
	}
	start := time.Now()
	return func() { t[p] += time.Since(start) }
}

// timesOf returns (and makes current) the times of stage i.
func (b *builder) timesOf(i int) *stageTimes {
	if b.times == nil {
		b.times = map[int]*stageTimes{}
	}
	t, ok := b.times[i]
	if !ok {
		t = &stageTimes{}
		b.times[i] = t
	}
	b.curTimes = t
	return t
}

// summary is a stage's times as log attributes, each rounded to the
// millisecond: the total, then every phase (what is left of the total is
// the instructions' own work, COPY's copying among it).
func (t *stageTimes) summary(total time.Duration) []any {
	attrs := []any{"total", total.Round(time.Millisecond).String()}
	for p, d := range t {
		attrs = append(attrs, phaseNames[p], d.Round(time.Millisecond).String())
	}
	return attrs
}
