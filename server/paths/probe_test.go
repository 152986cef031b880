package paths

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/internal/testutil"
)

func probeList(ps []probe) string {
	var out []string
	for _, p := range ps {
		if p.dc != "" {
			out = append(out, "dc "+p.dc+" "+p.dst.String())
		} else {
			out = append(out, p.dst.String())
		}
	}
	return fmt.Sprint(out)
}

// TestProbeCandidates: a data center without an RTT from here, a prefix
// hot elsewhere that a relay through here could serve better, and a
// relayed prefix whose direct figure ages are probed, each at most once
// per MaxAge/2 and at most n at a time.
func TestProbeCandidates(t *testing.T) {
	w := newWorld(t, Options{MaxAge: time.Minute})
	pub := func() {
		now := w.c.Now()
		m := func(rtt time.Duration) Measure { return Measure{RTT: rtt, Samples: 5, Updated: now} }
		w.tab.SetSummary("dc2", "n2", Summary{At: now, Relay: "198.18.2.1:7443",
			DCs: map[string]Measure{"dc1": m(10 * ms1)},
			Prefixes: []Entry{
				{Prefix: pfx("198.51.100.0/24"), Dst: ap("198.51.100.9:443"), Measure: m(100 * ms1)}, // gain 90
				{Prefix: pfx("192.0.2.0/24"), Dst: ap("192.0.2.9:443"), Measure: m(12 * ms1)},        // gain 2: no
				{Prefix: pfx("198.18.99.0/24"), Measure: m(100 * ms1)},                               // no Dst
				{Prefix: pfx("100.64.1.0/24"), Dst: ap("100.64.1.1:80"), Measure: m(50 * ms1)},       // gain 40
				{Prefix: originP, Dst: origin, Measure: m(40 * ms1)},
			}})
	}
	pub()
	w.direct(100 * ms1) // the origin: measured here
	got := probeList(w.tab.probeCandidates(10))
	if want := "[dc dc2 198.18.2.1:7443 198.51.100.9:443 100.64.1.1:80]"; got != want {
		t.Fatalf("candidates %s, want %s", got, want)
	}
	if got := w.tab.probeCandidates(10); len(got) != 0 {
		t.Fatalf("again at once: %s", probeList(got))
	}
	w.c.Advance(30 * time.Second)
	pub()
	w.direct(100 * ms1)
	if got := probeList(w.tab.probeCandidates(1)); got != "[dc dc2 198.18.2.1:7443]" {
		t.Fatalf("30 s later, at most 1: %s", got)
	}
	// Measured here now: the data center and one of the prefixes.
	w.ob.ObserveDC("dc2", 10*ms1)
	w.ob.Observe(ap("198.51.100.1:443"), 90*ms1)
	if got := probeList(w.tab.probeCandidates(10)); got != "[100.64.1.1:80]" {
		t.Fatalf("after measuring: %s", got)
	}
	// The origin is relayed (dc2: 10 + 40 ms against 100 ms direct);
	// its direct figure ages without direct flows: probed directly.
	if got := w.exit(); got != "dc2" {
		t.Fatalf("origin: %s", got)
	}
	w.c.Advance(30 * time.Second)
	pub()
	w.ob.ObserveDC("dc2", 10*ms1)
	w.ob.Observe(ap("198.51.100.1:443"), 90*ms1)
	if got := probeList(w.tab.probeCandidates(10)); got != "["+origin.String()+" 100.64.1.1:80]" {
		t.Fatalf("relayed origin aging: %s", got)
	}
}

// TestRunProbes: probes reach a real listener and feed the Observer; a
// relay probe does not mark a relay that failed as up.
func TestRunProbes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	accepted := 0
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted++
			mu.Unlock()
			c.Close()
		}
	}()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	ob := NewObserver(ObserverOptions{})
	tab := NewTable(Options{DC: "dc1", Node: "n1", Observer: ob})
	now := time.Now()
	tab.SetSummary("dc2", "n2", Summary{At: now, Relay: dst.String(),
		DCs:      map[string]Measure{"dc1": {RTT: ms1, Samples: 1, Updated: now}},
		Prefixes: []Entry{{Prefix: PrefixOf(dst.Addr()), Dst: dst, Measure: Measure{RTT: 100 * ms1, Samples: 1, Updated: now}}}})
	ob.DCDown("dc2")
	var dialed []string
	dial := func(kind string) func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		return func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			mu.Lock()
			dialed = append(dialed, kind)
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tab.RunProbes(ctx, ProbeOptions{Dial: dial("dst"), DialNode: dial("node"), Rate: 100, Every: 20 * time.Millisecond})
	}()
	testutil.WaitFor(t, 10*time.Second, "both probes measured", func() bool {
		_, ok1 := ob.Prefix(PrefixOf(dst.Addr()))
		_, _, ok2 := ob.DC("dc2")
		return ok1 && ok2
	})
	cancel()
	<-done
	m, down, _ := ob.DC("dc2")
	if m.RTT <= 0 || m.RTT > 200*ms1 || down.IsZero() {
		t.Errorf("dc2: %+v, down %v (want still down: a TCP handshake is not the relay answering)", m, down)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(dialed) != "[node dst]" || accepted != 2 {
		t.Errorf("dialed %v, accepted %d; want [node dst], 2 (each once per MaxAge/2)", dialed, accepted)
	}
}
