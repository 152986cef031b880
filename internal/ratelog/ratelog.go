// Package ratelog bounds log lines about events that may come by the
// thousand (refused flows): the first event of each kind is logged at
// once, then at most one per interval, with the number of events of that
// kind since the line before.
//
// It must not import any room of the tree (server/, client/, netstack/,
// egress/, lb/, e2e/).
package ratelog

import (
	"sync"
	"time"
)

// Limiter decides which events get a line. The zero Limiter logs one
// event per kind a minute; it is safe for concurrent use.
type Limiter struct {
	// Every is the least time between two lines of one kind (default: a
	// minute).
	Every time.Duration
	// Now is time.Now (tests replace it).
	Now func() time.Time

	mu    sync.Mutex
	kinds map[string]*state
}

type state struct {
	logged time.Time // when the last line of this kind was written
	since  uint64    // events since then, not logged
}

// Interval is l's Every, defaulted.
func (l *Limiter) Interval() time.Duration {
	if l.Every <= 0 {
		return time.Minute
	}
	return l.Every
}

// Allow records an event of kind and reports whether it is due a line;
// when it is, n counts the events of kind since the last line, this one
// included.
func (l *Limiter) Allow(kind string) (n uint64, ok bool) {
	now := time.Now
	if l.Now != nil {
		now = l.Now
	}
	t := now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.kinds[kind]
	if st == nil {
		if l.kinds == nil {
			l.kinds = make(map[string]*state)
		}
		st = &state{}
		l.kinds[kind] = st
	}
	st.since++
	if !st.logged.IsZero() && t.Sub(st.logged) < l.Interval() {
		return 0, false
	}
	n = st.since
	st.logged, st.since = t, 0
	return n, true
}
