package egress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// routeCall is one call of a recordingRoute.
type routeCall struct {
	client netip.Addr
	dst    netip.AddrPort
}

// recordingRoute is a Config.Route that returns a fixed Source (or error)
// and records what it was called with.
type recordingRoute struct {
	src Source
	err error

	mu    sync.Mutex
	calls []routeCall
}

func (r *recordingRoute) route(client netip.Addr, dst netip.AddrPort) (Source, error) {
	r.mu.Lock()
	r.calls = append(r.calls, routeCall{client, dst})
	r.mu.Unlock()
	return r.src, r.err
}

func (r *recordingRoute) called() []routeCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]routeCall(nil), r.calls...)
}

func newRouteDialer(t *testing.T, cfg Config, r *recordingRoute) *Dialer {
	t.Helper()
	cfg.Route = r.route
	return newLoopbackDialer(t, cfg)
}

func listenUDP(t *testing.T, addr string) net.PacketConn {
	t.Helper()
	ln, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// udpRoundTrip sends one datagram on c and returns the source the
// listener saw it from.
func udpRoundTrip(t *testing.T, c net.Conn, ln net.PacketConn) netip.AddrPort {
	t.Helper()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	_, peer, err := ln.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if addrPort(peer) != addrPort(c.LocalAddr()) {
		t.Fatalf("listener saw %s, dialer's local address is %s", peer, c.LocalAddr())
	}
	return addrPort(peer)
}

func TestRouteSource(t *testing.T) {
	for _, tc := range []struct {
		name, host string
		src        netip.Addr
	}{
		{"v4", "127.0.0.1", netip.MustParseAddr("127.0.0.2")},
		{"v6", "[::1]", netip.MustParseAddr("::1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.src.Is6() {
				skipNoIPv6(t)
			}
			lo, hi := testSlice(t, 4)
			r := &recordingRoute{src: Source{Addr: tc.src, PortLo: lo, PortHi: hi}}
			// Sources and PortLo/PortHi are what Route overrides.
			clo, chi := testSlice(t, 50)
			d := newRouteDialer(t, Config{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.3")}, PortLo: clo, PortHi: chi}, r)
			ln := listenTCP(t, tc.host+":0")
			uln := listenUDP(t, tc.host+":0")
			check := func(proto string, peer netip.AddrPort) {
				t.Helper()
				if peer.Addr() != tc.src {
					t.Errorf("%s: got source address %s, want %s", proto, peer.Addr(), tc.src)
				}
				if p := peer.Port(); p < lo || p > hi {
					t.Errorf("%s: got source port %d, want it in %d-%d", proto, p, lo, hi)
				}
			}

			_, peer, err := dialAndAccept(t, d, ln)
			if err != nil {
				t.Fatal(err)
			}
			check("tcp", peer)
			// A mapped client address reaches Route unmapped.
			mapped := netip.AddrPortFrom(netip.AddrFrom16(clientSrc.Addr().As16()), clientSrc.Port())
			uc, err := d.DialUDP(context.Background(), mapped, addrPort(uln.LocalAddr()))
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			check("udp", udpRoundTrip(t, uc, uln))

			want := []routeCall{
				{clientSrc.Addr(), addrPort(ln.Addr())},
				{clientSrc.Addr(), addrPort(uln.LocalAddr())},
			}
			if got := r.called(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("Route called with %v, want %v", got, want)
			}
			if got := d.Stats(); got.TCP != (Counts{OK: 1}) || got.UDP != (Counts{OK: 1}) {
				t.Errorf("got stats %+v, want 1 ok each", got)
			}
		})
	}
}

// TestRouteDefaultPorts: a Source without ports gets the node's slice.
func TestRouteDefaultPorts(t *testing.T) {
	lo, hi := testSlice(t, 50)
	r := &recordingRoute{src: Source{Addr: netip.MustParseAddr("127.0.0.2")}}
	d := newRouteDialer(t, Config{PortLo: lo, PortHi: hi}, r)
	_, peer, err := dialAndAccept(t, d, listenTCP(t, "127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	if peer.Addr() != r.src.Addr || peer.Port() < lo || peer.Port() > hi {
		t.Fatalf("got source %s, want 127.0.0.2 with a port in %d-%d", peer, lo, hi)
	}
}

// TestRouteRefused: Route's errors and unusable Sources fail the flow at
// once with ErrNoEgress, before any socket exists. The destination is in
// TEST-NET-1: a dial that got through would hang, not fail.
func TestRouteRefused(t *testing.T) {
	dst4 := netip.MustParseAddrPort("192.0.2.1:443")
	dst6 := netip.MustParseAddrPort("[2001:db8::1]:443")
	for _, tc := range []struct {
		name string
		r    *recordingRoute
		dst  netip.AddrPort
		want string
	}{
		{"route error", &recordingRoute{err: fmt.Errorf("%w: no pool for XX", ErrNoEgress)}, dst4, "no pool for XX"},
		{"route plain error", &recordingRoute{err: errors.New("plan not loaded")}, dst4, "plan not loaded"},
		{"no address", &recordingRoute{}, dst4, "no address"},
		{"v6 source for v4", &recordingRoute{src: Source{Addr: netip.MustParseAddr("::1")}}, dst4, "family"},
		{"v4 source for v6", &recordingRoute{src: Source{Addr: netip.MustParseAddr("127.0.0.2")}}, dst6, "family"},
		{"unspecified v4", &recordingRoute{src: Source{Addr: netip.IPv4Unspecified()}}, dst4, "unspecified"},
		{"unspecified v6", &recordingRoute{src: Source{Addr: netip.IPv6Unspecified()}}, dst6, "unspecified"},
		{"bad ports", &recordingRoute{src: Source{Addr: netip.MustParseAddr("127.0.0.2"), PortLo: 9, PortHi: 8}}, dst4, "low port above high port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newRouteDialer(t, Config{}, tc.r)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			for _, dial := range []func(context.Context, netip.AddrPort, netip.AddrPort) (net.Conn, error){d.DialTCP, d.DialUDP} {
				c, err := dial(ctx, clientSrc, tc.dst)
				if err == nil {
					c.Close()
					t.Fatalf("got a connection from %s, want ErrNoEgress", c.LocalAddr())
				}
				if !errors.Is(err, ErrNoEgress) || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "egress: ") {
					t.Fatalf("got %v, want ErrNoEgress saying %q", err, tc.want)
				}
			}
			if el := time.Since(start); el > time.Second {
				t.Errorf("refusals took %v, want them at once", el)
			}
			want := Counts{Failed: 1, NoEgress: 1}
			if got := d.Stats(); got.TCP != want || got.UDP != want {
				t.Errorf("got stats %+v, want %+v for tcp and udp", got, want)
			}
			if got := len(tc.r.called()); got != 2 {
				t.Errorf("Route called %d times, want 2", got)
			}
		})
	}
}

// TestRouteDeniedFirst: the ACL decides before Route is asked.
func TestRouteDeniedFirst(t *testing.T) {
	r := &recordingRoute{src: Source{Addr: netip.MustParseAddr("127.0.0.2")}}
	d, err := New(Config{Logger: discardLogger(), Route: r.route})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.DialTCP(context.Background(), clientSrc, netip.MustParseAddrPort("10.0.0.1:80")); !errors.Is(err, ErrDenied) {
		t.Fatalf("got %v, want ErrDenied", err)
	}
	if n := len(r.called()); n != 0 {
		t.Fatalf("Route called %d times, want 0", n)
	}
	if got := d.Stats().TCP; got != (Counts{Denied: 1}) {
		t.Fatalf("got stats %+v, want 1 denied", got)
	}
}

// TestRouteNotLocal: an egress address the host does not have fails at
// bind() (EADDRNOTAVAIL), before anything is sent, with an error that says
// so and is not ErrSliceExhausted.
func TestRouteNotLocal(t *testing.T) {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_nonlocal_bind"); err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Skipf("net.ipv4.ip_nonlocal_bind is %q (%v): non-local binds succeed", b, err)
	}
	for _, tc := range []struct {
		name, host string
		src        netip.Addr
	}{
		{"v4", "127.0.0.1", netip.MustParseAddr("192.0.2.77")},
		{"v6", "[::1]", netip.MustParseAddr("2001:db8::77")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.src.Is6() {
				skipNoIPv6(t)
			}
			if probeSource(tc.src) == nil {
				t.Skipf("%s is local on this host", tc.src)
			}
			lo, hi := testSlice(t, 4)
			d := newRouteDialer(t, Config{}, &recordingRoute{src: Source{Addr: tc.src, PortLo: lo, PortHi: hi}})
			ln := listenTCP(t, tc.host+":0")
			uln := listenUDP(t, tc.host+":0")
			for _, dial := range []struct {
				proto string
				fn    func(context.Context, netip.AddrPort, netip.AddrPort) (net.Conn, error)
				dst   netip.AddrPort
			}{
				{"tcp", d.DialTCP, addrPort(ln.Addr())},
				{"udp", d.DialUDP, addrPort(uln.LocalAddr())},
			} {
				c, err := dial.fn(context.Background(), clientSrc, dial.dst)
				if err == nil {
					c.Close()
					t.Fatalf("%s: got a connection from %s, want an error", dial.proto, c.LocalAddr())
				}
				if !strings.Contains(err.Error(), "is not on this host") || !strings.Contains(err.Error(), "ip route add local") ||
					!errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, ErrSliceExhausted) || errors.Is(err, ErrNoEgress) {
					t.Fatalf("%s: got %v, want an egress address not on this host", dial.proto, err)
				}
				t.Logf("%s: %v", dial.proto, err)
			}
			want := Counts{Failed: 1}
			if got := d.Stats(); got.TCP != want || got.UDP != want {
				t.Errorf("got stats %+v, want %+v for tcp and udp", got, want)
			}
		})
	}
}

// TestRouteTCPSliceShared is the point of per-flow slices on shared
// addresses: a TCP source port serves one connection per destination, so a
// 2-port range holds two connections to A and two more to B on the same
// two ports, and a third to A fails at once with ErrSliceExhausted (the
// kernel's connect() returns EADDRNOTAVAIL).
func TestRouteTCPSliceShared(t *testing.T) {
	for _, tc := range []struct {
		name, host string
		src        netip.Addr
	}{
		{"v4", "127.0.0.1", netip.MustParseAddr("127.0.0.2")},
		{"v6", "[::1]", netip.MustParseAddr("::1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.src.Is6() {
				skipNoIPv6(t)
			}
			lnA := listenTCP(t, tc.host+":0")
			lnB := listenTCP(t, tc.host+":0")
			var lastErr error
			for range 20 { // a random port may be taken; try others
				lo, hi := testSlice(t, 2)
				d := newRouteDialer(t, Config{}, &recordingRoute{src: Source{Addr: tc.src, PortLo: lo, PortHi: hi}})
				var conns []net.Conn
				ports := func(ln net.Listener) map[uint16]bool {
					got := map[uint16]bool{}
					for range 2 {
						c, peer, err := dialAndAccept(t, d, ln)
						if err != nil {
							lastErr = err
							return nil
						}
						conns = append(conns, c)
						got[peer.Port()] = true
					}
					return got
				}
				portsA := ports(lnA)
				if portsA == nil {
					for _, c := range conns {
						c.Close()
					}
					continue
				}
				want := map[uint16]bool{lo: true, hi: true}
				if fmt.Sprint(portsA) != fmt.Sprint(want) {
					t.Fatalf("to A: got source ports %v, want %v", portsA, want)
				}

				start := time.Now()
				c, err := d.DialTCP(context.Background(), clientSrc, addrPort(lnA.Addr()))
				el := time.Since(start)
				if err == nil {
					c.Close()
					t.Fatalf("third dial to A got %s, want ErrSliceExhausted", c.LocalAddr())
				}
				if !errors.Is(err, ErrSliceExhausted) || !errors.Is(err, syscall.EADDRNOTAVAIL) {
					t.Fatalf("third dial to A: got %v, want ErrSliceExhausted (EADDRNOTAVAIL at connect)", err)
				}
				if el > time.Second {
					t.Errorf("third dial to A took %v, want it to fail at once", el)
				}
				t.Logf("third dial to A (%v): %v", el, err)

				portsB := ports(lnB)
				if portsB == nil {
					t.Fatalf("to B with both ports busy towards A: %v", lastErr)
				}
				if fmt.Sprint(portsB) != fmt.Sprint(want) {
					t.Fatalf("to B: got source ports %v, want %v, the ones used towards A", portsB, want)
				}
				if got := d.Stats().TCP; got != (Counts{OK: 4, Failed: 1, SliceExhausted: 1}) {
					t.Fatalf("got stats %+v, want 4 ok, 1 failed of which 1 slice exhausted", got)
				}
				return
			}
			t.Fatalf("no free 2-port range found: %v", lastErr)
		})
	}
}

// TestRouteUDPSlice records what the kernel does for connected UDP with
// IP_BIND_ADDRESS_NO_PORT and IP_LOCAL_PORT_RANGE (Linux 6.18): bind()
// takes no port, and connect() autobinds before it sets the destination,
// so the port is chosen like for an unconnected socket: unique on the
// address, never shared between destinations. A 2-port range holds two
// UDP flows in all; a third fails at once with EAGAIN from connect(),
// reported as ErrSliceExhausted, whatever its destination, until a flow
// closes and frees its port.
func TestRouteUDPSlice(t *testing.T) {
	src := netip.MustParseAddr("127.0.0.2")
	lnA := listenUDP(t, "127.0.0.1:0")
	lnB := listenUDP(t, "127.0.0.1:0")
	var lastErr error
	for range 20 { // a random port may be taken; try others
		lo, hi := testSlice(t, 2)
		// One client takes the whole range here: no share per client.
		d := newRouteDialer(t, Config{UDPPortShare: -1}, &recordingRoute{src: Source{Addr: src, PortLo: lo, PortHi: hi}})
		dial := func(ln net.PacketConn) (net.Conn, error) {
			start := time.Now()
			c, err := d.DialUDP(context.Background(), clientSrc, addrPort(ln.LocalAddr()))
			if el := time.Since(start); el > time.Second {
				t.Errorf("UDP dial took %v, want it at once", el)
			}
			return c, err
		}
		c1, err := dial(lnA)
		if err != nil {
			lastErr = err
			continue
		}
		c2, err := dial(lnA)
		if err != nil {
			c1.Close()
			lastErr = err
			continue
		}
		defer c2.Close()
		p1, p2 := udpRoundTrip(t, c1, lnA).Port(), udpRoundTrip(t, c2, lnA).Port()
		if fmt.Sprint(map[uint16]bool{p1: true, p2: true}) != fmt.Sprint(map[uint16]bool{lo: true, hi: true}) {
			t.Fatalf("got source ports %d and %d, want %d and %d", p1, p2, lo, hi)
		}
		for _, ln := range []net.PacketConn{lnA, lnB} {
			c, err := dial(ln)
			if err == nil {
				c.Close()
				t.Fatalf("third flow (to %s) got %s, want ErrSliceExhausted", ln.LocalAddr(), c.LocalAddr())
			}
			if !errors.Is(err, ErrSliceExhausted) || !errors.Is(err, syscall.EAGAIN) {
				t.Fatalf("third flow (to %s): got %v, want ErrSliceExhausted (EAGAIN at connect)", ln.LocalAddr(), err)
			}
			t.Logf("third flow: %v", err)
		}
		c1.Close()
		c3, err := dial(lnB)
		if err != nil {
			t.Fatalf("after closing a flow: %v", err)
		}
		defer c3.Close()
		if p := udpRoundTrip(t, c3, lnB).Port(); p != p1 {
			t.Fatalf("got source port %d, want %d, the one freed", p, p1)
		}
		if got := d.Stats().UDP; got != (Counts{OK: 3, Failed: 2, SliceExhausted: 2}) {
			t.Fatalf("got stats %+v, want 3 ok, 2 failed of which 2 slice exhausted", got)
		}
		return
	}
	t.Fatalf("no free 2-port range found: %v", lastErr)
}

// pinnedKernel returns a kernelRange that holds lo..hi and does not
// re-read the sysctl.
func pinnedKernel(lo, hi uint16) *kernelRange {
	k := new(kernelRange)
	k.r.Store(&kernelRangeValue{lo: lo, hi: hi, at: time.Now().Add(time.Hour)})
	return k
}

func TestCheckRoute(t *testing.T) {
	a := netip.MustParseAddr
	dst4 := netip.MustParseAddrPort("192.0.2.1:443")
	dst6 := netip.MustParseAddrPort("[2001:db8::1]:443")
	client := a("100.96.0.2")
	tests := []struct {
		name string
		src  Source
		dst  netip.AddrPort
		want Source // zero: want an error
		err  string
	}{
		{"default ports", Source{Addr: a("198.51.100.1")}, dst4, Source{Addr: a("198.51.100.1"), PortLo: 40000, PortHi: 40999}, ""},
		{"own ports", Source{Addr: a("198.51.100.1"), PortLo: 33000, PortHi: 33003}, dst4, Source{Addr: a("198.51.100.1"), PortLo: 33000, PortHi: 33003}, ""},
		{"one port", Source{Addr: a("198.51.100.1"), PortLo: 33000, PortHi: 33000}, dst4, Source{Addr: a("198.51.100.1"), PortLo: 33000, PortHi: 33000}, ""},
		{"whole kernel range", Source{Addr: a("198.51.100.1"), PortLo: 32768, PortHi: 60999}, dst4, Source{Addr: a("198.51.100.1"), PortLo: 32768, PortHi: 60999}, ""},
		{"mapped source", Source{Addr: a("::ffff:198.51.100.1")}, dst4, Source{Addr: a("198.51.100.1"), PortLo: 40000, PortHi: 40999}, ""},
		{"v6", Source{Addr: a("2001:db8:1::5"), PortLo: 50000, PortHi: 50999}, dst6, Source{Addr: a("2001:db8:1::5"), PortLo: 50000, PortHi: 50999}, ""},
		{"invalid", Source{}, dst4, Source{}, "no address"},
		{"family v6 for v4", Source{Addr: a("2001:db8:1::5")}, dst4, Source{}, "family"},
		{"family v4 for v6", Source{Addr: a("198.51.100.1")}, dst6, Source{}, "family"},
		{"mapped for v6", Source{Addr: a("::ffff:198.51.100.1")}, dst6, Source{}, "family"},
		{"unspecified", Source{Addr: a("0.0.0.0")}, dst4, Source{}, "unspecified"},
		{"unspecified v6", Source{Addr: a("::")}, dst6, Source{}, "unspecified"},
		{"multicast", Source{Addr: a("224.0.0.1")}, dst4, Source{}, "multicast"},
		{"broadcast", Source{Addr: a("255.255.255.255")}, dst4, Source{}, "broadcast"},
		{"link-local", Source{Addr: a("fe80::1")}, dst6, Source{}, "link-local"},
		{"zone", Source{Addr: a("2001:db8:1::5%eth0")}, dst6, Source{}, "zone"},
		{"lo zero", Source{Addr: a("198.51.100.1"), PortHi: 33000}, dst4, Source{}, "at least 1"},
		{"lo above hi", Source{Addr: a("198.51.100.1"), PortLo: 33001, PortHi: 33000}, dst4, Source{}, "low port above high port"},
		{"below kernel range", Source{Addr: a("198.51.100.1"), PortLo: 32767, PortHi: 33000}, dst4, Source{}, "outside net.ipv4.ip_local_port_range 32768-60999"},
		{"above kernel range", Source{Addr: a("198.51.100.1"), PortLo: 60000, PortHi: 61000}, dst4, Source{}, "ip_local_port_range"},
		{"plan default", Source{Addr: a("198.51.100.1"), PortLo: 1024, PortHi: 3071}, dst4, Source{}, "widen the sysctl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := checkRoute(tt.src, client, tt.dst, 40000, 40999, pinnedKernel(32768, 60999))
			if tt.err == "" {
				if err != nil || got != tt.want {
					t.Fatalf("got (%+v, %v), want %+v", got, err, tt.want)
				}
				return
			}
			if !errors.Is(err, ErrNoEgress) || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), client.String()) {
				t.Fatalf("got (%+v, %v), want ErrNoEgress saying %q", got, err, tt.err)
			}
		})
	}
}

// TestKernelRangeRefresh: a range outside the cached sysctl re-reads it
// once the cache is old, so widening the sysctl needs no restart.
func TestKernelRangeRefresh(t *testing.T) {
	klo, khi, err := kernelPortRange()
	if err != nil {
		t.Skip(err)
	}
	if khi-klo < 2 {
		t.Skipf("ip_local_port_range %d-%d too narrow", klo, khi)
	}
	k := pinnedKernel(klo+1, khi-1)
	if _, _, ok := k.contains(klo, khi); ok {
		t.Fatal("fresh cache: got the real range accepted, want the cached one used")
	}
	k.r.Load().at = time.Now().Add(-kernelRefresh)
	if lo, hi, ok := k.contains(klo, khi); !ok || lo != klo || hi != khi {
		t.Fatalf("stale cache: got %d-%d ok=%v, want %d-%d ok", lo, hi, ok, klo, khi)
	}
}

func TestCountsJSON(t *testing.T) {
	b, err := json.Marshal(Counts{OK: 1, Failed: 2, Denied: 3, NoEgress: 4, SliceExhausted: 5, PortShare: 6})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"ok":1,"failed":2,"denied":3,"no_egress":4,"slice_exhausted":5,"port_share":6}`
	if string(b) != want {
		t.Fatalf("got %s, want %s", b, want)
	}
}

// TestDialNode: the node's own dials (DNS to the upstream) leave from the
// Source given, in its port range, and are not held to the clients' ACL.
func TestDialNode(t *testing.T) {
	d, err := New(Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenTCP(t, "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := d.DialTCP(ctx, clientSrc, addrPort(ln.Addr())); !errors.Is(err, ErrDenied) {
		t.Fatalf("a client's flow to loopback: %v, want ErrDenied", err)
	}
	lo, hi := testSlice(t, 4)
	src := netip.MustParseAddr("127.0.0.3")
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := d.DialNode(ctx, "tcp", Source{Addr: src, PortLo: lo, PortHi: hi}, addrPort(ln.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case sc := <-accepted:
		peer := addrPort(sc.RemoteAddr())
		sc.Close()
		if peer.Addr() != src || peer.Port() < lo || peer.Port() > hi {
			t.Fatalf("the listener saw %v, want %v with a port in %d-%d", peer, src, lo, hi)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
	}
	u := listenUDP(t, "127.0.0.1:0")
	uc, err := d.DialNode(ctx, "udp", Source{}, addrPort(u.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	uc.Close()
	if _, err := d.DialNode(ctx, "sctp", Source{}, addrPort(ln.Addr())); err == nil {
		t.Error("DialNode accepted sctp")
	}
	if _, err := d.DialNode(ctx, "tcp", Source{Addr: netip.MustParseAddr("::1")}, addrPort(ln.Addr())); !errors.Is(err, ErrNoEgress) {
		t.Errorf("an IPv6 source towards IPv4: %v, want ErrNoEgress", err)
	}
	if st := d.Stats(); st.TCP.OK != 0 {
		t.Errorf("DialNode was counted as a client's flow: %+v", st.TCP)
	}
}

// TestRouteFreeBind: with FreeBind a flow binds an address no interface
// holds (as IPv6 needs for a prefix made local by a route); without, the
// same address is refused as not on this host. A connected UDP socket
// shows it: its connect sends nothing.
func TestRouteFreeBind(t *testing.T) {
	if b, err := os.ReadFile("/proc/sys/net/ipv6/ip_nonlocal_bind"); err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Skipf("net.ipv6.ip_nonlocal_bind is %q (%v): non-local binds succeed anyway", b, err)
	}
	skipNoIPv6(t)
	src := netip.MustParseAddr("2001:db8::78")
	uln := listenUDP(t, "[::1]:0")
	for _, free := range []bool{false, true} {
		d := newRouteDialer(t, Config{}, &recordingRoute{src: Source{Addr: src, FreeBind: free}})
		c, err := d.DialUDP(context.Background(), clientSrc, addrPort(uln.LocalAddr()))
		switch {
		case free && err != nil:
			t.Fatalf("FreeBind: %v", err)
		case free && addrPort(c.LocalAddr()).Addr() != src:
			t.Fatalf("FreeBind: bound to %v, want %v", c.LocalAddr(), src)
		case !free && err == nil:
			c.Close()
			t.Fatalf("without FreeBind %v was bound", src)
		case !free && !strings.Contains(err.Error(), "is not on this host"):
			t.Fatalf("without FreeBind: %v, want not on this host", err)
		}
		if c != nil {
			c.Close()
		}
	}
}
