package layer

import "iter"

// listChunk is how many entries a List keeps per chunk past its first.
const listChunk = 512

// List is a layer's entries in order. Past its first chunk it grows by
// whole chunks and never copies what it holds, so a layer of many files
// holds one copy of their headers, not two while it grows (a COPY of 20k
// files would otherwise peak at 2.25 copies of 5 MB of headers).
type List struct {
	chunks [][]Entry
	n      int
}

// ListOf is a List of es.
func ListOf(es ...Entry) *List {
	l := &List{}
	for _, e := range es {
		l.Append(e)
	}
	return l
}

// Len is the number of entries; a nil List has none.
func (l *List) Len() int {
	if l == nil {
		return 0
	}
	return l.n
}

// Append adds e at the end and returns its index.
func (l *List) Append(e Entry) int {
	switch {
	case len(l.chunks) == 0:
		l.chunks = [][]Entry{nil} // the first chunk grows as a slice does: a list of a few entries stays small
	case len(l.chunks[len(l.chunks)-1]) == listChunk:
		l.chunks = append(l.chunks, make([]Entry, 0, listChunk))
	}
	last := &l.chunks[len(l.chunks)-1]
	*last = append(*last, e)
	l.n++
	return l.n - 1
}

// At is the entry at index i, to read or change in place.
func (l *List) At(i int) *Entry {
	return &l.chunks[i/listChunk][i%listChunk]
}

// All yields the entries in order.
func (l *List) All() iter.Seq[*Entry] {
	return func(yield func(*Entry) bool) {
		if l == nil {
			return
		}
		for c := range l.chunks {
			for i := range l.chunks[c] {
				if !yield(&l.chunks[c][i]) {
					return
				}
			}
		}
	}
}
