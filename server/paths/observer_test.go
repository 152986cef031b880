package paths

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/internal/testutil"
)

// clock is a settable clock for the tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_800_000_000, 0)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func pfx(s string) netip.Prefix  { return netip.MustParsePrefix(s) }

const ms1 = time.Millisecond

func TestPrefixOf(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.77":          "203.0.113.0/24",
		"::ffff:203.0.113.77":   "203.0.113.0/24",
		"2001:db8:1:2:3::4":     "2001:db8:1::/48",
		"2001:db8:1:ffff::ffff": "2001:db8:1::/48",
	} {
		if got := PrefixOf(netip.MustParseAddr(in)); got != pfx(want) {
			t.Errorf("PrefixOf(%s) = %v, want %s", in, got, want)
		}
	}
	if PrefixOf(netip.Addr{}).IsValid() {
		t.Error("PrefixOf(invalid) is valid")
	}
}

// TestObserveAggregates: samples of one /24 (or /48) are one moving
// average; dense samples move it by MinWeight, one after a long silence
// almost replaces it.
func TestObserveAggregates(t *testing.T) {
	c := newClock()
	ob := NewObserver(ObserverOptions{Now: c.Now, Tau: 5 * time.Second, MinWeight: 1.0 / 16})
	ob.Observe(ap("203.0.113.1:443"), 100*ms1)
	ob.Observe(ap("203.0.113.200:80"), 116*ms1)   // same /24, same instant: weight 1/16
	ob.Observe(ap("[::ffff:203.0.113.9]:443"), 0) // ignored
	ob.Observe(ap("198.51.100.1:443"), 30*ms1)
	m, ok := ob.Prefix(pfx("203.0.113.0/24"))
	if !ok || m.Samples != 2 || m.RTT != 101*ms1 {
		t.Fatalf("203.0.113.0/24: %+v %v, want 2 samples, 101ms", m, ok)
	}
	if m, _ := ob.Prefix(pfx("198.51.100.0/24")); m.RTT != 30*ms1 || m.Samples != 1 {
		t.Fatalf("198.51.100.0/24: %+v", m)
	}
	// One Tau later a sample weighs 1-1/e.
	c.Advance(5 * time.Second)
	ob.Observe(ap("203.0.113.1:443"), 201*ms1)
	m, _ = ob.Prefix(pfx("203.0.113.0/24"))
	if want := 101*ms1 + 63212*time.Microsecond; m.RTT < want-ms1/10 || m.RTT > want+ms1/10 {
		t.Fatalf("after one Tau: %v, want about %v", m.RTT, want)
	}
	// After a long silence the new figure is all but the sample.
	c.Advance(time.Minute)
	ob.Observe(ap("203.0.113.1:443"), 20*ms1)
	m, _ = ob.Prefix(pfx("203.0.113.0/24"))
	if m.RTT < 20*ms1 || m.RTT > 20*ms1+ms1/10 || !m.Updated.Equal(c.Now()) {
		t.Fatalf("after a minute: %+v, want about 20ms now", m)
	}
	// IPv6 by /48.
	ob.Observe(ap("[2001:db8:1:2::1]:443"), 50*ms1)
	ob.Observe(ap("[2001:db8:1:3::1]:443"), 50*ms1)
	if m, _ := ob.Prefix(pfx("2001:db8:1::/48")); m.Samples != 2 {
		t.Fatalf("2001:db8:1::/48: %+v, want 2 samples", m)
	}
	// Data centers.
	ob.ObserveDC("dc2", 10*ms1)
	ob.ObserveDC("", 10*ms1)
	if m, down, ok := ob.DC("dc2"); !ok || m.RTT != 10*ms1 || !down.IsZero() {
		t.Fatalf("dc2: %+v %v %v", m, down, ok)
	}
	ob.DCDown("dc2")
	if _, down, _ := ob.DC("dc2"); !down.Equal(c.Now()) {
		t.Fatalf("dc2 not down after DCDown")
	}
	ob.ObserveDC("dc2", 10*ms1)
	if _, down, _ := ob.DC("dc2"); !down.IsZero() {
		t.Fatalf("dc2 still down after it answered")
	}
}

// TestObserverBound: the prefixes kept never exceed MaxPrefixes, and the
// least recently sampled go first.
func TestObserverBound(t *testing.T) {
	c := newClock()
	ob := NewObserver(ObserverOptions{Now: c.Now, MaxPrefixes: 8})
	keep := ap("192.0.2.1:443")
	for i := range 1000 {
		ob.Observe(ap(fmt.Sprintf("10.%d.%d.1:443", i/256, i%256)), 20*ms1)
		ob.Observe(keep, 30*ms1) // sampled all along: never evicted
		if n, _ := ob.Len(); n > 8 {
			t.Fatalf("after %d prefixes: %d kept, want at most 8", i+1, n)
		}
	}
	n, ev := ob.Len()
	if n != 8 || ev != 1000-7 {
		t.Fatalf("kept %d, evicted %d; want 8, 993", n, ev)
	}
	if _, ok := ob.Prefix(PrefixOf(keep.Addr())); !ok {
		t.Error("the prefix sampled all along was evicted")
	}
	if _, ok := ob.Prefix(pfx("10.3.231.0/24")); !ok { // the last one
		t.Error("the newest prefix was evicted")
	}
	if _, ok := ob.Prefix(pfx("10.0.0.0/24")); ok {
		t.Error("the oldest prefix is still kept")
	}
}

// TestSummaryTop: the summary holds the hottest prefixes sampled within
// maxAge, at most n.
func TestSummaryTop(t *testing.T) {
	c := newClock()
	ob := NewObserver(ObserverOptions{Now: c.Now})
	ob.Observe(ap("198.51.100.1:443"), 5*ms1) // old: left out
	c.Advance(3 * time.Minute)
	for i := range 5 {
		for range i + 1 {
			ob.Observe(ap(fmt.Sprintf("10.0.%d.1:443", i)), time.Duration(i+1)*ms1)
		}
	}
	ob.ObserveDC("dc2", 7*ms1)
	s := ob.Summary(3, 2*time.Minute)
	var got []string
	for _, e := range s.Prefixes {
		got = append(got, e.Prefix.String())
	}
	if fmt.Sprint(got) != "[10.0.2.0/24 10.0.3.0/24 10.0.4.0/24]" {
		t.Fatalf("top 3: %v", got)
	}
	if s.Prefixes[2].Dst != ap("10.0.4.1:443") || s.Prefixes[2].Samples != 5 || s.DCs["dc2"].RTT != 7*ms1 {
		t.Fatalf("summary: %+v", s)
	}
}

// TestTCPInfoLoopback: a real loopback connection has a kernel RTT, small
// but not zero, and ObserveConn records it under the destination's /24;
// Resample reads it again once data went through.
func TestTCPInfoLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info, err := TCPInfo(c)
	if err != nil {
		t.Fatal(err)
	}
	if rtt := time.Duration(info.Rtt) * time.Microsecond; rtt <= 0 || rtt > 200*ms1 {
		t.Fatalf("loopback RTT %v: want (0, 200ms]", rtt)
	}
	ob := NewObserver(ObserverOptions{Resample: 50 * time.Millisecond})
	dst := netip.MustParseAddrPort(ln.Addr().String())
	ob.ObserveConn(c, dst)
	m, ok := ob.Prefix(pfx("127.0.0.0/24"))
	if !ok || m.Samples != 1 || m.RTT <= 0 || m.RTT > 200*ms1 {
		t.Fatalf("observed %+v %v", m, ok)
	}
	buf := make([]byte, 64<<10)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go c.Write(make([]byte, len(buf)))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "the second sample", func() bool {
		m, _ := ob.Prefix(pfx("127.0.0.0/24"))
		return m.Samples == 2
	})
	// Not a socket, or closed: nothing.
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if _, err := TCPInfo(p1); err == nil {
		t.Error("TCPInfo of a pipe succeeded")
	}
	c.Close()
	if _, err := TCPInfo(c); err == nil {
		t.Error("TCPInfo of a closed connection succeeded")
	}
}
