package paths

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkRoute: one decision with three other data centers of three
// nodes each, every one publishing 1,000 prefixes (the flow's cost).
func BenchmarkRoute(b *testing.B) {
	c := newClock()
	ob := NewObserver(ObserverOptions{Now: c.Now})
	tab := NewTable(Options{DC: "dc1", Node: "n1", Observer: ob, Now: c.Now})
	now := c.Now()
	for i := range 1000 {
		ob.Observe(ap(fmt.Sprintf("10.%d.%d.1:443", i/256, i%256)), 100*ms1)
	}
	for d := 2; d <= 4; d++ {
		ob.ObserveDC(fmt.Sprintf("dc%d", d), time.Duration(d)*ms1)
		for n := range 3 {
			s := Summary{At: now}
			for i := range 1000 {
				s.Prefixes = append(s.Prefixes, Entry{Prefix: pfx(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)),
					Measure: Measure{RTT: time.Duration(20+i%100) * ms1, Samples: 1, Updated: now}})
			}
			tab.SetSummary(fmt.Sprintf("dc%d", d), fmt.Sprintf("n%d", n), s)
		}
	}
	dsts := make([]netip.Addr, 1000)
	for i := range dsts {
		dsts[i] = netip.MustParseAddr(fmt.Sprintf("10.%d.%d.7", i/256, i%256))
	}
	b.ResetTimer()
	for i := range b.N {
		tab.Route(dsts[i%len(dsts)])
	}
}

// BenchmarkObserveConn: the sample egress takes of each TCP connection
// (a getsockopt and the average's update).
func BenchmarkObserveConn(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			buf := make([]byte, 1)
			c.Read(buf)
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ob := NewObserver(ObserverOptions{})
	dst := netip.MustParseAddrPort(ln.Addr().String())
	b.ResetTimer()
	for range b.N {
		ob.ObserveConn(c, dst)
	}
}
