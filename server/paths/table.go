package paths

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/wedge-edge/wedge/internal/api"
)

// Defaults of Options.
const (
	DefaultRefresh    = 5 * time.Second
	DefaultMaxAge     = 2 * time.Minute
	DefaultMargin     = 0.10
	DefaultMinGain    = 5 * time.Millisecond
	DefaultDownFor    = 30 * time.Second
	DefaultMaxEntries = 1000
	DefaultMaxRoutes  = 4096
)

// Options tune a Table. DC and Observer are required.
type Options struct {
	// DC and Node name this node; DC's other nodes' summaries count as
	// measurements of the direct path, the other data centers' as
	// candidate exits.
	DC, Node string
	// Observer is this node's own measurements.
	Observer *Observer
	// Refresh is how often summaries are published (DefaultRefresh);
	// Stale how old a summary may be before it is ignored (3 × Refresh):
	// its node stopped publishing without losing its lease.
	Refresh, Stale time.Duration
	// MaxAge: a measurement (of a prefix, or of the RTT to a data center)
	// older than this is ignored (DefaultMaxAge). A prefix this node
	// relays gets no direct samples: when its direct figure passes MaxAge
	// the route falls back to direct, whose flows measure it again, and
	// the relay is chosen again if it still wins (one round of direct
	// flows every MaxAge for a relayed prefix, unless probed).
	MaxAge time.Duration
	// A relay is chosen over the current route only when it is faster by
	// at least Margin (a fraction of the current route's RTT) and by at
	// least MinGain; the route goes back direct only when direct is
	// faster than the relay by the same margins. Defaults: DefaultMargin,
	// DefaultMinGain.
	Margin  float64
	MinGain time.Duration
	// DownFor is how long a data center whose relay was marked down
	// (Observer.DCDown) is not chosen, unless it answers before
	// (DefaultDownFor).
	DownFor time.Duration
	// MaxEntries bounds the prefixes read from one summary and published
	// by this node (DefaultMaxEntries).
	MaxEntries int
	// MaxRoutes bounds the relayed prefixes whose choice the table keeps
	// for hysteresis (DefaultMaxRoutes); past it one is forgotten at
	// random (it is decided afresh at its next flow).
	MaxRoutes int
	// Relay is this node's relay listener address, published for the
	// other data centers.
	Relay string
	// Now is the clock (time.Now); tests inject theirs.
	Now func() time.Time
}

// Table decides, per destination prefix, whether a flow goes direct or
// through another data center. It is safe for concurrent use.
type Table struct {
	o   Options
	obs *Observer

	mu     sync.Mutex
	sums   map[nodeKey]*remote
	state  map[netip.Prefix]choice
	probes probeState
}

type nodeKey struct{ dc, node string }

// remote is another node's summary, indexed.
type remote struct {
	Summary
	idx map[netip.Prefix]int
}

// choice is the exit a relayed prefix took and since when.
type choice struct {
	dc    string
	since time.Time
}

// NewTable returns a Table over obs's measurements and no summaries yet.
func NewTable(o Options) *Table {
	if o.Observer == nil {
		panic("paths: NewTable without an Observer")
	}
	if o.Refresh <= 0 {
		o.Refresh = DefaultRefresh
	}
	if o.Stale <= 0 {
		o.Stale = 3 * o.Refresh
	}
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.Margin <= 0 {
		o.Margin = DefaultMargin
	}
	if o.MinGain <= 0 {
		o.MinGain = DefaultMinGain
	}
	if o.DownFor <= 0 {
		o.DownFor = DefaultDownFor
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxRoutes <= 0 {
		o.MaxRoutes = DefaultMaxRoutes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Table{o: o, obs: o.Observer, sums: map[nodeKey]*remote{}, state: map[netip.Prefix]choice{}}
}

// Observer returns the table's own measurements.
func (t *Table) Observer() *Observer { return t.obs }

// SetSummary puts node's summary (of data center dc) in the table,
// replacing its previous one. This node's own is ignored.
func (t *Table) SetSummary(dc, node string, s Summary) {
	if dc == t.o.DC && node == t.o.Node {
		return
	}
	r := &remote{Summary: s, idx: make(map[netip.Prefix]int, len(s.Prefixes))}
	if len(r.Prefixes) > t.o.MaxEntries {
		r.Prefixes = r.Prefixes[:t.o.MaxEntries]
	}
	for i, e := range r.Prefixes {
		r.idx[e.Prefix] = i
	}
	t.mu.Lock()
	t.sums[nodeKey{dc, node}] = r
	t.mu.Unlock()
}

// DeleteSummary forgets node's summary (it left: its lease ended).
func (t *Table) DeleteSummary(dc, node string) {
	t.mu.Lock()
	delete(t.sums, nodeKey{dc, node})
	t.mu.Unlock()
}

// resetSummaries replaces every summary (a watch's fresh snapshot).
func (t *Table) resetSummaries(all map[nodeKey]Summary) {
	t.mu.Lock()
	t.sums = map[nodeKey]*remote{}
	t.mu.Unlock()
	for k, s := range all {
		t.SetSummary(k.dc, k.node, s)
	}
}

// Route is the table's decision for one destination prefix.
type Route struct {
	Prefix netip.Prefix
	// Exit is the data center to relay through; "" is direct.
	Exit string
	// Node is the exit node whose measurement chose it, Relay its relay
	// listener's address as it published it ("" if it did not).
	Node, Relay string
	// Via is rtt(here → X) + rtt(X → prefix) of the exit X, or, for a
	// direct route, of the best relay (ViaDC), 0 when none is known.
	Via   time.Duration
	ViaDC string
	// Direct is rtt(here → prefix), 0 when not measured (or too old).
	Direct time.Duration
	// Age is the age of the oldest of the figures in Via and Direct.
	Age time.Duration
	// Since is when the prefix took this exit (zero for direct).
	Since time.Time
}

// Relayed reports whether r goes through another data center.
func (r Route) Relayed() bool { return r.Exit != "" }

// Route returns where a flow to dst goes now.
func (t *Table) Route(dst netip.Addr) Route {
	p := PrefixOf(dst)
	now := t.o.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.decideLocked(p, now)
}

// candidate is one data center's offer for a prefix.
type candidate struct {
	dc, node, relay string
	via             time.Duration
	oldest          time.Time
}

// wins reports whether a beats b by the margins.
func (t *Table) wins(a, b time.Duration) bool {
	gain := b - a
	return gain >= t.o.MinGain && float64(gain) >= t.o.Margin*float64(b)
}

func (t *Table) decideLocked(p netip.Prefix, now time.Time) Route {
	r := Route{Prefix: p}
	direct, haveDirect := t.directLocked(p, now)
	cands := t.candidatesLocked(p, now)
	var best *candidate
	for i := range cands {
		c := &cands[i]
		if best == nil || c.via < best.via || c.via == best.via && c.dc < best.dc {
			best = c
		}
	}
	if best != nil {
		r.Via, r.ViaDC, r.Age = best.via, best.dc, now.Sub(best.oldest)
	}
	if haveDirect {
		r.Direct, r.Age = direct.RTT, max(r.Age, now.Sub(direct.Updated))
	}
	cur, relayed := t.state[p]
	var curC *candidate
	if relayed {
		for i := range cands {
			if cands[i].dc == cur.dc {
				curC = &cands[i]
			}
		}
	}
	next := "" // the exit chosen now
	switch {
	case !haveDirect:
		// Nothing to compare with: the flow goes direct and measures.
	case curC != nil && t.wins(direct.RTT, curC.via):
		// Direct is better by the margins: back to direct, or to
		// another relay that beats direct by them.
		if best != nil && t.wins(best.via, direct.RTT) {
			next = best.dc
		}
	case curC != nil:
		next = cur.dc
		if best != nil && best.dc != cur.dc && t.wins(best.via, curC.via) {
			next = best.dc
		}
	case best != nil && t.wins(best.via, direct.RTT):
		next = best.dc
	}
	if next == "" {
		delete(t.state, p)
		return r
	}
	if !relayed || cur.dc != next {
		if !relayed && len(t.state) >= t.o.MaxRoutes {
			for k := range t.state {
				delete(t.state, k)
				break
			}
		}
		cur = choice{dc: next, since: now}
		t.state[p] = cur
	}
	for i := range cands {
		if c := cands[i]; c.dc == next {
			r.Exit, r.Node, r.Relay, r.Via, r.ViaDC, r.Since = c.dc, c.node, c.relay, c.via, c.dc, cur.since
			r.Age = now.Sub(c.oldest)
			if haveDirect {
				r.Age = max(r.Age, now.Sub(direct.Updated))
			}
		}
	}
	return r
}

// directLocked returns the freshest measurement of p from this data
// center: this node's, or another node of it's, within MaxAge.
func (t *Table) directLocked(p netip.Prefix, now time.Time) (Measure, bool) {
	m, ok := t.obs.Prefix(p)
	ok = ok && now.Sub(m.Updated) <= t.o.MaxAge
	for k, s := range t.sums {
		if k.dc != t.o.DC || now.Sub(s.At) > t.o.Stale {
			continue
		}
		if i, found := s.idx[p]; found {
			e := s.Prefixes[i]
			if now.Sub(e.Updated) <= t.o.MaxAge && (!ok || e.Updated.After(m.Updated)) {
				m, ok = e.Measure, true
			}
		}
	}
	return m, ok
}

// dcRTTLocked returns the RTT from this data center to dc: this node's
// measurement, else the freshest of the other nodes of this data center,
// else the freshest of dc's nodes towards this one (the same path the
// other way). down reports that this node saw dc's relay fail since it
// last answered, within DownFor.
func (t *Table) dcRTTLocked(dc string, now time.Time) (m Measure, ok, down bool) {
	m, downAt, ok := t.obs.DC(dc)
	if !downAt.IsZero() && now.Sub(downAt) < t.o.DownFor {
		return Measure{}, false, true
	}
	return t.pathRTTLocked(dc, now)
}

// pathRTTLocked is dcRTTLocked whether or not dc's relay is down: the RTT
// of the path between the data centers.
func (t *Table) pathRTTLocked(dc string, now time.Time) (m Measure, ok, down bool) {
	m, _, ok = t.obs.DC(dc)
	if ok && now.Sub(m.Updated) <= t.o.MaxAge {
		return m, true, false
	}
	ok = false
	var rev Measure
	var haveRev bool
	for k, s := range t.sums {
		if now.Sub(s.At) > t.o.Stale {
			continue
		}
		var e Measure
		var found bool
		switch k.dc {
		case t.o.DC:
			e, found = s.DCs[dc]
			if found && now.Sub(e.Updated) <= t.o.MaxAge && (!ok || e.Updated.After(m.Updated)) {
				m, ok = e, true
			}
		case dc:
			e, found = s.DCs[t.o.DC]
			if found && now.Sub(e.Updated) <= t.o.MaxAge && (!haveRev || e.Updated.After(rev.Updated)) {
				rev, haveRev = e, true
			}
		}
	}
	if !ok && haveRev {
		m, ok = rev, true
	}
	return m, ok, false
}

// candidatesLocked returns, per other data center with a fresh
// measurement of p and a known RTT from here, its best offer.
func (t *Table) candidatesLocked(p netip.Prefix, now time.Time) []candidate {
	byDC := map[string]candidate{}
	for k, s := range t.sums {
		if k.dc == t.o.DC || now.Sub(s.At) > t.o.Stale {
			continue
		}
		i, found := s.idx[p]
		if !found {
			continue
		}
		e := s.Prefixes[i]
		if now.Sub(e.Updated) > t.o.MaxAge {
			continue
		}
		c, seen := byDC[k.dc]
		// The freshest measurement of the data center counts.
		if seen && !e.Updated.After(c.oldest) {
			continue
		}
		byDC[k.dc] = candidate{dc: k.dc, node: k.node, relay: s.Relay, via: e.RTT, oldest: e.Updated}
	}
	out := make([]candidate, 0, len(byDC))
	for dc, c := range byDC {
		hop, ok, _ := t.dcRTTLocked(dc, now)
		if !ok {
			continue
		}
		c.via += hop.RTT
		if hop.Updated.Before(c.oldest) {
			c.oldest = hop.Updated
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b candidate) int { return cmp.Compare(a.dc, b.dc) })
	return out
}

// Snapshot returns the table for display: every prefix it knows decided
// now, the relayed ones first (largest gain first), then the others by
// prefix, at most limit routes (all if limit <= 0).
func (t *Table) Snapshot(limit int) api.PathsStatus {
	now := t.o.Now()
	kept, evicted := t.obs.Len()
	st := api.PathsStatus{DC: t.o.DC, Measured: kept, Evicted: evicted, DCs: []api.PathDC{}, Routes: []api.PathRoute{}}
	seen := map[netip.Prefix]bool{}
	for _, p := range t.obs.prefixList() {
		seen[p] = true
	}
	t.mu.Lock()
	nodes := map[string]int{}
	for k, s := range t.sums {
		if now.Sub(s.At) > t.o.Stale {
			continue
		}
		if k.dc != t.o.DC {
			nodes[k.dc]++
		}
		for _, e := range s.Prefixes {
			seen[e.Prefix] = true
		}
	}
	routes := make([]Route, 0, len(seen))
	for p := range seen {
		routes = append(routes, t.decideLocked(p, now))
	}
	for dc, n := range nodes {
		d := api.PathDC{DC: dc, Nodes: n}
		if m, ok, down := t.dcRTTLocked(dc, now); ok {
			d.RTTMs, d.AgeS = ms(m.RTT), now.Sub(m.Updated).Seconds()
		} else {
			d.Down = down
		}
		st.DCs = append(st.DCs, d)
	}
	t.mu.Unlock()
	slices.SortFunc(st.DCs, func(a, b api.PathDC) int { return cmp.Compare(a.DC, b.DC) })
	slices.SortFunc(routes, func(a, b Route) int {
		if a.Relayed() != b.Relayed() {
			if a.Relayed() {
				return -1
			}
			return 1
		}
		if a.Relayed() {
			if c := cmp.Compare(b.Direct-b.Via, a.Direct-a.Via); c != 0 {
				return c
			}
		}
		return a.Prefix.Addr().Compare(b.Prefix.Addr())
	})
	st.Known = len(routes)
	for _, r := range routes {
		if r.Relayed() {
			st.Relayed++
		}
	}
	if limit > 0 && len(routes) > limit {
		routes = routes[:limit]
	}
	for _, r := range routes {
		pr := api.PathRoute{Prefix: r.Prefix, Exit: "direct", Node: r.Node, ViaDC: r.ViaDC,
			ViaMs: ms(r.Via), DirectMs: ms(r.Direct), AgeS: r.Age.Seconds()}
		if r.Relayed() {
			pr.Exit = r.Exit
		}
		st.Routes = append(st.Routes, pr)
	}
	return st
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Summary returns what this node publishes now.
func (t *Table) Summary() Summary {
	s := t.obs.Summary(t.o.MaxEntries, t.o.MaxAge)
	s.Relay = t.o.Relay
	return s
}
