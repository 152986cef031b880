package paths

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// world is one node of dc1 with its table, and helpers that put other
// nodes' summaries in it.
type world struct {
	t   *testing.T
	c   *clock
	ob  *Observer
	tab *Table
}

var (
	origin  = ap("203.0.113.7:443")
	originP = PrefixOf(origin.Addr())
)

func newWorld(t *testing.T, o Options) *world {
	c := newClock()
	ob := NewObserver(ObserverOptions{Now: c.Now})
	o.DC, o.Node, o.Observer, o.Now = "dc1", "n1", ob, c.Now
	return &world{t: t, c: c, ob: ob, tab: NewTable(o)}
}

// remote publishes node's measurement of the origin's prefix (rtt) and
// of the RTT to dc1 (hop, 0: none), made now.
func (w *world) remote(dc, node string, rtt, hop time.Duration) {
	now := w.c.Now()
	s := Summary{At: now, Relay: node + ":7443", DCs: map[string]Measure{}}
	if rtt > 0 {
		s.Prefixes = []Entry{{Prefix: originP, Dst: origin, Measure: Measure{RTT: rtt, Samples: 10, Updated: now}}}
	}
	if hop > 0 {
		s.DCs["dc1"] = Measure{RTT: hop, Samples: 10, Updated: now}
	}
	w.tab.SetSummary(dc, node, s)
}

// direct sets this node's direct RTT to the origin to rtt (a sample
// after a long silence replaces the average).
func (w *world) direct(rtt time.Duration) {
	w.c.Advance(time.Nanosecond)
	w.ob.o.MinWeight = 1
	w.ob.Observe(origin, rtt)
	w.ob.o.MinWeight = DefaultMinWeight
}

func (w *world) exit() string {
	r := w.tab.Route(origin.Addr())
	if r.Prefix != originP {
		w.t.Fatalf("route of %v is for %v", origin, r.Prefix)
	}
	if r.Exit == "" {
		return "direct"
	}
	return r.Exit
}

// TestHysteresis walks a sequence of RTT changes through the decision:
// a relay is taken only when it wins by 10% and 5 ms, left only when
// direct wins by as much, and an RTT wobbling around the threshold does
// not flap the route.
func TestHysteresis(t *testing.T) {
	w := newWorld(t, Options{})
	if got := w.exit(); got != "direct" {
		t.Fatalf("nothing measured: %s", got)
	}
	w.ob.ObserveDC("dc2", 10*ms1)
	w.remote("dc2", "n2", 80*ms1, 0)
	if got := w.exit(); got != "direct" {
		t.Fatalf("no direct measurement yet: %s, want direct (the flow measures it)", got)
	}
	w.direct(100 * ms1)
	steps := []struct {
		far  time.Duration // rtt(dc2 → origin); via is 10 ms more
		want string
	}{
		{95 * ms1, "direct"},  // via 105 > 100
		{86 * ms1, "direct"},  // via 96: 4 ms better
		{82 * ms1, "direct"},  // via 92: 8 ms but 8%
		{80 * ms1, "dc2"},     // via 90: 10 ms, 10%
		{88 * ms1, "dc2"},     // via 98: direct better by 2 ms only
		{100 * ms1, "dc2"},    // via 110: direct better by 10 ms but 9.1%
		{102 * ms1, "direct"}, // via 112: direct better by 12 ms, 10.7%
		{85 * ms1, "direct"},  // via 95: not enough to leave direct
		{70 * ms1, "dc2"},
	}
	for i, s := range steps {
		w.c.Advance(time.Second)
		w.remote("dc2", "n2", s.far, 0)
		if got := w.exit(); got != s.want {
			t.Fatalf("step %d (dc2→origin %v): %s, want %s", i, s.far, got, s.want)
		}
	}
	r := w.tab.Route(origin.Addr().Next())
	if r.Exit != "dc2" || r.Node != "n2" || r.Relay != "n2:7443" || r.Via != 80*ms1 || r.Direct != 100*ms1 || r.ViaDC != "dc2" {
		t.Fatalf("route: %+v", r)
	}
	// A third data center better by the margins takes over; one only a
	// little better does not.
	w.ob.ObserveDC("dc3", 5*ms1)
	w.remote("dc3", "n3", 72*ms1, 0) // via 77: 3 ms better than dc2
	if got := w.exit(); got != "dc2" {
		t.Fatalf("dc3 slightly better: %s, want dc2 kept", got)
	}
	w.remote("dc3", "n3", 60*ms1, 0) // via 65: 15 ms, 19%
	if got := w.exit(); got != "dc3" {
		t.Fatalf("dc3 much better: %s, want dc3", got)
	}
	// Direct better than dc3, but not by the margin, and dc2 better
	// than dc3 by it: dc2.
	w.direct(60 * ms1)
	w.remote("dc2", "n2", 45*ms1, 0) // via 55
	if got := w.exit(); got != "dc2" {
		t.Fatalf("dc2 better than dc3 by the margin: %s", got)
	}
	// Direct much better than the exit, and the best relay not better
	// than direct: direct.
	w.direct(40 * ms1)
	if got := w.exit(); got != "direct" {
		t.Fatalf("direct better than the exit: %s", got)
	}
}

// TestNoFlap: jittery measurements around the threshold change the route
// at most once.
func TestNoFlap(t *testing.T) {
	w := newWorld(t, Options{})
	rnd := rand.New(rand.NewPCG(1, 2))
	w.ob.ObserveDC("dc2", 10*ms1)
	changes, last := 0, ""
	for range 1000 {
		w.c.Advance(time.Second)
		// Direct 100 ± 8, via 92 ± 8: around the 10% threshold, and
		// often the other way round.
		w.direct(time.Duration(92+rnd.IntN(17)) * ms1)
		w.remote("dc2", "n2", time.Duration(74+rnd.IntN(17))*ms1, 0)
		if got := w.exit(); got != last {
			changes++
			last = got
		}
	}
	if changes > 3 { // the first "" → direct counts as one
		t.Fatalf("route changed %d times in 1000 jittery rounds", changes)
	}
}

// TestStale: a summary older than Stale, a measurement older than MaxAge,
// a node whose summary was deleted and a data center whose relay failed
// are not chosen.
func TestStale(t *testing.T) {
	w := newWorld(t, Options{Refresh: 5 * time.Second, MaxAge: time.Minute})
	w.ob.ObserveDC("dc2", 10*ms1)
	w.direct(100 * ms1)
	w.remote("dc2", "n2", 40*ms1, 0)
	if got := w.exit(); got != "dc2" {
		t.Fatalf("fresh: %s", got)
	}
	w.c.Advance(14 * time.Second)
	if got := w.exit(); got != "dc2" {
		t.Fatalf("summary 14 s old (Stale 15 s): %s", got)
	}
	w.c.Advance(2 * time.Second)
	if got := w.exit(); got != "direct" {
		t.Fatalf("summary 16 s old: %s, want direct", got)
	}
	// A fresh summary whose measurement is old.
	s := Summary{At: w.c.Now(), Prefixes: []Entry{{Prefix: originP,
		Measure: Measure{RTT: 40 * ms1, Samples: 1, Updated: w.c.Now().Add(-61 * time.Second)}}}}
	w.tab.SetSummary("dc2", "n2", s)
	w.ob.ObserveDC("dc2", 10*ms1)
	w.direct(100 * ms1)
	if got := w.exit(); got != "direct" {
		t.Fatalf("measurement 61 s old: %s", got)
	}
	// Fresh again, then the node leaves.
	w.remote("dc2", "n2", 40*ms1, 0)
	if got := w.exit(); got != "dc2" {
		t.Fatalf("fresh again: %s", got)
	}
	w.tab.DeleteSummary("dc2", "n2")
	if got := w.exit(); got != "direct" {
		t.Fatalf("node gone: %s", got)
	}
	// The relay fails: not chosen until it answers (or DownFor passes).
	w.remote("dc2", "n2", 40*ms1, 0)
	w.ob.DCDown("dc2")
	if got := w.exit(); got != "direct" {
		t.Fatalf("relay down: %s", got)
	}
	w.ob.ObserveDC("dc2", 10*ms1)
	if got := w.exit(); got != "dc2" {
		t.Fatalf("relay answered: %s", got)
	}
	// This node's own direct figure ages out while it relays: back to
	// direct, whose flows measure it again.
	w.c.Advance(50 * time.Second)
	w.ob.ObserveDC("dc2", 10*ms1)
	w.remote("dc2", "n2", 40*ms1, 0)
	if got := w.exit(); got != "dc2" {
		t.Fatalf("direct 50 s old: %s", got)
	}
	w.c.Advance(11 * time.Second)
	w.ob.ObserveDC("dc2", 10*ms1)
	w.remote("dc2", "n2", 40*ms1, 0)
	if got := w.exit(); got != "direct" {
		t.Fatalf("direct 61 s old: %s, want direct", got)
	}
}

// TestDCRTTSources: the RTT to another data center comes from this node,
// else from another node of its data center, else from the other data
// center's measurement of the way back; none: no relay.
func TestDCRTTSources(t *testing.T) {
	w := newWorld(t, Options{})
	w.direct(100 * ms1)
	w.remote("dc2", "n2", 40*ms1, 0)
	if r := w.tab.Route(origin.Addr()); r.Relayed() || r.Via != 0 {
		t.Fatalf("no RTT to dc2: %+v", r)
	}
	w.remote("dc2", "n2", 40*ms1, 30*ms1) // dc2 → dc1
	if r := w.tab.Route(origin.Addr()); r.Exit != "dc2" || r.Via != 70*ms1 {
		t.Fatalf("reverse RTT: %+v", r)
	}
	w.tab.SetSummary("dc1", "n1b", Summary{At: w.c.Now(), DCs: map[string]Measure{"dc2": {RTT: 20 * ms1, Samples: 1, Updated: w.c.Now()}}})
	if r := w.tab.Route(origin.Addr()); r.Via != 60*ms1 {
		t.Fatalf("same-DC node's RTT: %+v", r)
	}
	w.ob.ObserveDC("dc2", 12*ms1)
	if r := w.tab.Route(origin.Addr()); r.Via != 52*ms1 {
		t.Fatalf("own RTT: %+v", r)
	}
	// Another node of dc1 measured the origin more recently: it counts
	// as the direct figure.
	w.c.Advance(time.Second)
	w.tab.SetSummary("dc1", "n1b", Summary{At: w.c.Now(), Prefixes: []Entry{{Prefix: originP,
		Measure: Measure{RTT: 50 * ms1, Samples: 1, Updated: w.c.Now()}}}})
	if r := w.tab.Route(origin.Addr()); r.Direct != 50*ms1 || r.Exit != "dc2" {
		t.Fatalf("same-DC node's direct figure (2 ms better than the relay: kept): %+v", r)
	}
	w.tab.SetSummary("dc1", "n1b", Summary{At: w.c.Now(), Prefixes: []Entry{{Prefix: originP,
		Measure: Measure{RTT: 40 * ms1, Samples: 1, Updated: w.c.Now()}}}})
	if r := w.tab.Route(origin.Addr()); r.Direct != 40*ms1 || r.Relayed() {
		t.Fatalf("same-DC node's direct figure, 12 ms better: %+v", r)
	}
	// Its own summary is not read as another node's.
	w.tab.SetSummary("dc1", "n1", Summary{At: w.c.Now(), Prefixes: []Entry{{Prefix: originP,
		Measure: Measure{RTT: 1 * ms1, Samples: 1, Updated: w.c.Now()}}}})
	if r := w.tab.Route(origin.Addr()); r.Direct != 40*ms1 {
		t.Fatalf("own summary read back: %+v", r)
	}
}

// TestFollowWithin30s runs two data centers second by second with an
// injected clock and jittery samples: dc2 publishes every 5 s, this
// node's direct samples come only from the flows it sends direct. Each
// change of latency moves the route within 30 s, and only once.
func TestFollowWithin30s(t *testing.T) {
	c := newClock()
	rnd := rand.New(rand.NewPCG(3, 4))
	jitter := func(d time.Duration) time.Duration { return d + time.Duration(rnd.IntN(11)-5)*d/100 }
	ob1 := NewObserver(ObserverOptions{Now: c.Now})
	tab := NewTable(Options{DC: "dc1", Node: "n1", Observer: ob1, Now: c.Now})
	ob2 := NewObserver(ObserverOptions{Now: c.Now})
	tab2 := NewTable(Options{DC: "dc2", Node: "n2", Observer: ob2, Now: c.Now, Relay: "n2:7443"})

	far := 20 * ms1 // dc2 → origin
	type phase struct {
		at   int // second the phase begins
		far  time.Duration
		want string
	}
	phases := []phase{{0, 20 * ms1, "dc2"}, {100, 150 * ms1, "direct"}, {200, 25 * ms1, "dc2"}, {300, 0, ""}}
	var switches []string
	last := "direct"
	p := 0
	for sec := 0; sec < 300; sec++ {
		if sec == phases[p+1].at {
			p++
			if last != phases[p-1].want {
				t.Fatalf("phase %d ended on %s, want %s", p-1, last, phases[p-1].want)
			}
		}
		far = phases[p].far
		// dc2's own clients reach the origin; the relays measure dc1–dc2.
		for range 3 {
			ob2.Observe(origin, jitter(far))
		}
		ob1.ObserveDC("dc2", jitter(10*ms1))
		if sec%5 == 0 {
			s, err := ParseSummary(tab2.Summary().Encode(), DefaultMaxEntries)
			if err != nil {
				t.Fatal(err)
			}
			tab.SetSummary("dc2", "n2", s)
		}
		// A few flows a second from this node's clients.
		for range 2 {
			r := tab.Route(origin.Addr())
			if !r.Relayed() {
				ob1.Observe(origin, jitter(100*ms1))
			}
			got := "direct"
			if r.Relayed() {
				got = r.Exit
				if r.Relay != "n2:7443" {
					t.Fatalf("relay address %q", r.Relay)
				}
			}
			if got != last {
				switches = append(switches, fmt.Sprintf("%s@%d", got, sec))
				if took := sec - phases[p].at; took > 30 || got != phases[p].want {
					t.Fatalf("second %d: switched to %s %d s into phase %d (want %s within 30 s)", sec, got, took, p, phases[p].want)
				}
				last = got
			}
		}
		c.Advance(time.Second)
	}
	if len(switches) != 3 {
		t.Fatalf("switches %v, want 3 (one per phase)", switches)
	}
	t.Logf("switches: %v", switches)
}

// TestSnapshot: the display form lists the relayed prefixes first, with
// both figures and their age, and the data centers.
func TestSnapshot(t *testing.T) {
	w := newWorld(t, Options{})
	w.ob.ObserveDC("dc2", 10*ms1)
	w.direct(100 * ms1)
	w.ob.Observe(ap("198.51.100.1:80"), 5*ms1)
	w.remote("dc2", "n2", 40*ms1, 0)
	w.c.Advance(2 * time.Second)
	st := w.tab.Snapshot(0)
	if st.DC != "dc1" || st.Measured != 2 || st.Known != 2 || st.Relayed != 1 || len(st.Routes) != 2 {
		t.Fatalf("snapshot %+v", st)
	}
	r := st.Routes[0]
	if r.Prefix != originP || r.Exit != "dc2" || r.Node != "n2" || r.ViaMs != 50 || r.DirectMs != 100 || r.AgeS < 2 || r.AgeS > 2.1 {
		t.Fatalf("first route %+v", r)
	}
	if r := st.Routes[1]; r.Prefix != pfx("198.51.100.0/24") || r.Exit != "direct" || r.DirectMs != 5 || r.ViaMs != 0 {
		t.Fatalf("second route %+v", r)
	}
	if len(st.DCs) != 1 || st.DCs[0].DC != "dc2" || st.DCs[0].RTTMs != 10 || st.DCs[0].Nodes != 1 {
		t.Fatalf("dcs %+v", st.DCs)
	}
	if st := w.tab.Snapshot(1); len(st.Routes) != 1 || st.Known != 2 {
		t.Fatalf("limit 1: %+v", st)
	}
}

// TestTableBounds: the relayed prefixes remembered for hysteresis and the
// prefixes read from one summary are capped.
func TestTableBounds(t *testing.T) {
	w := newWorld(t, Options{MaxRoutes: 3, MaxEntries: 5})
	w.ob.ObserveDC("dc2", 10*ms1)
	now := w.c.Now()
	s := Summary{At: now}
	for i := range 8 {
		dst := ap(fmt.Sprintf("10.0.%d.1:443", i))
		w.ob.Observe(dst, 100*ms1)
		s.Prefixes = append(s.Prefixes, Entry{Prefix: PrefixOf(dst.Addr()), Dst: dst, Measure: Measure{RTT: 20 * ms1, Samples: 1, Updated: now}})
	}
	w.tab.SetSummary("dc2", "n2", s)
	relayed := 0
	for i := range 8 {
		if w.tab.Route(netip.MustParseAddr(fmt.Sprintf("10.0.%d.1", i))).Relayed() {
			relayed++
		}
		if n := len(w.tab.state); n > 3 {
			t.Fatalf("%d relayed prefixes remembered, want at most 3", n)
		}
	}
	if relayed != 5 {
		t.Fatalf("%d prefixes relayed, want the 5 read from the summary", relayed)
	}
}
