package egress

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// permitAll is an ACL that lets tests reach loopback listeners.
type permitAll struct{}

func (permitAll) Check(netip.Addr) error { return nil }

// newLoopbackDialer returns a Dialer whose ACL permits everything, so tests
// can dial listeners on loopback.
func newLoopbackDialer(t *testing.T, cfg Config) *Dialer {
	t.Helper()
	cfg.Logger = discardLogger()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.acl = permitAll{}
	return d
}

// testSlice returns a random slice of n ports inside the kernel's range.
func testSlice(t *testing.T, n int) (lo, hi uint16) {
	t.Helper()
	klo, khi, err := kernelPortRange()
	if err != nil {
		t.Skip(err)
	}
	if int(khi)-int(klo)+1 < n {
		t.Skipf("ip_local_port_range %d-%d is narrower than %d ports", klo, khi, n)
	}
	lo = klo + uint16(rand.IntN(int(khi)-int(klo)+2-n))
	return lo, lo + uint16(n-1)
}

func skipNoIPv6(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
}

func listenTCP(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func addrPort(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.TCPAddr:
		return v.AddrPort()
	case *net.UDPAddr:
		return v.AddrPort()
	}
	return netip.AddrPort{}
}

var clientSrc = netip.MustParseAddrPort("100.96.0.2:40000")

// acceptPeer dials ln through d and returns the source address the listener
// saw; the connection is closed at the end of the test.
func dialAndAccept(t *testing.T, d *Dialer, ln net.Listener) (net.Conn, netip.AddrPort, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialTCP(ctx, clientSrc, addrPort(ln.Addr()))
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if addrPort(s.RemoteAddr()) != addrPort(c.LocalAddr()) {
		t.Fatalf("listener saw %s, dialer's local address is %s", s.RemoteAddr(), c.LocalAddr())
	}
	return c, addrPort(s.RemoteAddr()), nil
}

func TestDialTCPSourceAndSlice(t *testing.T) {
	for _, tc := range []struct {
		name, listen string
		sources      []netip.Addr
		want         netip.Addr // zero: any source
		v6           bool
	}{
		{"v4 source", "127.0.0.1:0", []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("::1")}, netip.MustParseAddr("127.0.0.2"), false},
		{"v4 no source", "127.0.0.1:0", nil, netip.Addr{}, false},
		{"v6 source", "[::1]:0", []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("::1")}, netip.MustParseAddr("::1"), true},
		{"v6 no source", "[::1]:0", nil, netip.Addr{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.v6 {
				skipNoIPv6(t)
			}
			lo, hi := testSlice(t, 50)
			d := newLoopbackDialer(t, Config{Sources: tc.sources, PortLo: lo, PortHi: hi})
			ln := listenTCP(t, tc.listen)
			for range 5 {
				_, peer, err := dialAndAccept(t, d, ln)
				if err != nil {
					t.Fatal(err)
				}
				if p := peer.Port(); p < lo || p > hi {
					t.Fatalf("got source port %d, want it in %d-%d", p, lo, hi)
				}
				if tc.want.IsValid() && peer.Addr() != tc.want {
					t.Fatalf("got source address %s, want %s", peer.Addr(), tc.want)
				}
			}
			if got := d.Stats().TCP; got.OK != 5 || got.Failed != 0 || got.Denied != 0 {
				t.Fatalf("got stats %+v, want 5 ok", got)
			}
		})
	}
}

// TestDialTCPSharedPort checks the point of IP_BIND_ADDRESS_NO_PORT plus
// IP_LOCAL_PORT_RANGE: with a one-port slice, connections to different
// destinations share the port; a second one to the same destination fails.
func TestDialTCPSharedPort(t *testing.T) {
	for _, tc := range []struct {
		name, host string
		src        netip.Addr
	}{
		{"v4", "127.0.0.1", netip.MustParseAddr("127.0.0.1")},
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
				p, _ := testSlice(t, 1)
				d := newLoopbackDialer(t, Config{Sources: []netip.Addr{tc.src}, PortLo: p, PortHi: p})
				ca, peerA, err := dialAndAccept(t, d, lnA)
				if err != nil {
					lastErr = err
					continue
				}
				_, peerB, err := dialAndAccept(t, d, lnB)
				if err != nil {
					t.Fatalf("second destination on port %d: %v", p, err)
				}
				if peerA.Port() != p || peerB.Port() != p {
					t.Fatalf("got source ports %d and %d, want both %d", peerA.Port(), peerB.Port(), p)
				}
				// Same destination again: the 4-tuple is taken and the
				// slice has no other port.
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := d.DialTCP(ctx, clientSrc, addrPort(lnA.Addr()))
				cancel()
				if err == nil {
					c.Close()
					t.Fatalf("third dial got %s, want an error (slice exhausted)", c.LocalAddr())
				}
				if !errors.Is(err, syscall.EADDRNOTAVAIL) {
					t.Logf("third dial: %v", err)
				}
				ca.Close()
				if got := d.Stats().TCP; got.OK != 2 || got.Failed != 1 {
					t.Fatalf("got stats %+v, want 2 ok 1 failed", got)
				}
				return
			}
			t.Fatalf("no free port found: %v", lastErr)
		})
	}
}

func TestDialTCPMapped(t *testing.T) {
	d := newLoopbackDialer(t, Config{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.3")}})
	ln := listenTCP(t, "127.0.0.1:0")
	dst := netip.AddrPortFrom(netip.AddrFrom16(netip.MustParseAddr("127.0.0.1").As16()), addrPort(ln.Addr()).Port())
	c, err := d.DialTCP(context.Background(), clientSrc, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := addrPort(c.LocalAddr()).Addr(); got != netip.MustParseAddr("127.0.0.3") {
		t.Fatalf("got source %s, want 127.0.0.3", got)
	}
}

func TestDialTCPRefused(t *testing.T) {
	d := newLoopbackDialer(t, Config{})
	ln := listenTCP(t, "127.0.0.1:0")
	dst := addrPort(ln.Addr())
	ln.Close()
	if _, err := d.DialTCP(context.Background(), clientSrc, dst); err == nil || errors.Is(err, ErrDenied) {
		t.Fatalf("got %v, want connection refused", err)
	}
	if _, err := d.DialTCP(context.Background(), clientSrc, netip.MustParseAddrPort("127.0.0.1:0")); err == nil {
		t.Fatal("port 0: got no error")
	}
	if got := d.Stats().TCP; got.Failed != 2 {
		t.Fatalf("got stats %+v, want 2 failed", got)
	}
}

func TestDialUDP(t *testing.T) {
	for _, tc := range []struct {
		name, listen string
		src          netip.Addr
	}{
		{"v4", "127.0.0.1:0", netip.MustParseAddr("127.0.0.2")},
		{"v4 no source", "127.0.0.1:0", netip.Addr{}},
		{"v6", "[::1]:0", netip.MustParseAddr("::1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.src.Is6() {
				skipNoIPv6(t)
			}
			lo, hi := testSlice(t, 50)
			var srcs []netip.Addr
			if tc.src.IsValid() {
				srcs = append(srcs, tc.src)
			}
			d := newLoopbackDialer(t, Config{Sources: srcs, PortLo: lo, PortHi: hi})
			ln, err := net.ListenPacket("udp", tc.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := d.DialUDP(context.Background(), clientSrc, addrPort(ln.LocalAddr()))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			ln.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			n, peer, err := ln.ReadFrom(buf)
			if err != nil {
				t.Fatal(err)
			}
			pa := addrPort(peer)
			if pa != addrPort(c.LocalAddr()) {
				t.Fatalf("listener saw %s, dialer's local address is %s", pa, c.LocalAddr())
			}
			if pa.Port() < lo || pa.Port() > hi {
				t.Fatalf("got source port %d, want it in %d-%d", pa.Port(), lo, hi)
			}
			if tc.src.IsValid() && pa.Addr() != tc.src {
				t.Fatalf("got source %s, want %s", pa.Addr(), tc.src)
			}
			if _, err := ln.WriteTo(buf[:n], peer); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping" {
				t.Fatalf("echo: got %q, %v", buf[:n], err)
			}
			if got := d.Stats().UDP; got.OK != 1 {
				t.Fatalf("got stats %+v, want 1 ok", got)
			}
		})
	}
}

// TestDialerACL uses the real ACL: loopback and private destinations are
// denied before any packet is sent, and counted.
func TestDialerACL(t *testing.T) {
	d, err := New(Config{Logger: discardLogger(), Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenTCP(t, "127.0.0.1:0")
	ctx := context.Background()
	if _, err := d.DialTCP(ctx, clientSrc, addrPort(ln.Addr())); !errors.Is(err, ErrDenied) {
		t.Errorf("DialTCP loopback: got %v, want ErrDenied", err)
	}
	if _, err := d.DialTCP(ctx, clientSrc, netip.MustParseAddrPort("[::ffff:127.0.0.1]:80")); !errors.Is(err, ErrDenied) {
		t.Errorf("DialTCP mapped loopback: got %v, want ErrDenied", err)
	}
	if _, err := d.DialUDP(ctx, clientSrc, netip.MustParseAddrPort("10.0.0.1:53")); !errors.Is(err, ErrDenied) {
		t.Errorf("DialUDP private: got %v, want ErrDenied", err)
	}
	if _, err := d.DialUDP(ctx, clientSrc, netip.MustParseAddrPort("[64:ff9b::a00:1]:53")); !errors.Is(err, ErrDenied) {
		t.Errorf("DialUDP NAT64 private: got %v, want ErrDenied", err)
	}
	if err := d.Ping(ctx, netip.MustParseAddr("127.0.0.1"), nil); !errors.Is(err, ErrDenied) {
		t.Errorf("Ping loopback: got %v, want ErrDenied", err)
	}
	want := Stats{TCP: Counts{Denied: 2}, UDP: Counts{Denied: 2}, Ping: Counts{Denied: 1}}
	if got := d.Stats(); got != want {
		t.Errorf("got stats %+v, want %+v", got, want)
	}
	// Defense in depth: the socket control function checks too.
	if err := d.control(ctx, "tcp4", "127.0.0.1:80", nil); !errors.Is(err, ErrDenied) {
		t.Errorf("control: got %v, want ErrDenied", err)
	}
}

// TestUDPPortShare: one client holds at most 1/UDPPortShare of the
// range's ports with UDP flows, counted over both its inner addresses
// (ClientOf); its next flow fails at once with ErrPortShare, counted, while
// another client still gets ports; closing a flow gives its port back.
func TestUDPPortShare(t *testing.T) {
	lo, hi := testSlice(t, 32)
	a4, a6 := netip.MustParseAddrPort("100.96.0.2:1000"), netip.MustParseAddrPort("[fd57:6564:6765::2]:1000")
	b4 := netip.MustParseAddrPort("100.96.0.3:1000")
	clientOf := func(a netip.Addr) (uint64, bool) {
		switch a {
		case a4.Addr(), a6.Addr():
			return 1, true
		}
		return 0, false
	}
	d := newLoopbackDialer(t, Config{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.2")}, PortLo: lo, PortHi: hi,
		UDPPortShare: 8, ClientOf: clientOf})
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := addrPort(ln.LocalAddr())
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// 32 ports / 8 = 4 for client A, whichever of its addresses it uses.
	for i := range 4 {
		src := a4
		if i%2 == 1 {
			src = a6
		}
		c, err := d.DialUDP(context.Background(), src, dst)
		if err != nil {
			t.Fatalf("client A's UDP flow %d: %v", i, err)
		}
		held = append(held, c)
	}
	start := time.Now()
	if c, err := d.DialUDP(context.Background(), a6, dst); !errors.Is(err, ErrPortShare) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("client A's fifth UDP flow: %v, want ErrPortShare", err)
	} else if el := time.Since(start); el > time.Second {
		t.Errorf("refusal took %v, want it at once", el)
	}
	cb, err := d.DialUDP(context.Background(), b4, dst)
	if err != nil {
		t.Fatalf("client B while A holds its share: %v", err)
	}
	held = append(held, cb)
	held[0].Close()
	c, err := d.DialUDP(context.Background(), a4, dst)
	if err != nil {
		t.Fatalf("client A after closing a flow: %v", err)
	}
	held = append(held, c)
	if got := d.Stats().UDP; got != (Counts{OK: 6, Failed: 1, PortShare: 1}) {
		t.Fatalf("stats %+v, want 6 ok, 1 failed by the port share", got)
	}
}

// TestObserveTCP: Config.ObserveTCP sees each client TCP connection once,
// with the unmapped destination, and neither failed dials, UDP nor
// DialNode's connections.
func TestObserveTCP(t *testing.T) {
	type seen struct {
		dst   netip.AddrPort
		local netip.AddrPort
	}
	var got []seen
	d := newLoopbackDialer(t, Config{ObserveTCP: func(c net.Conn, dst netip.AddrPort) {
		got = append(got, seen{dst, addrPort(c.LocalAddr())})
	}})
	ln := listenTCP(t, "127.0.0.1:0")
	port := addrPort(ln.Addr()).Port()
	mapped := netip.AddrPortFrom(netip.AddrFrom16(netip.MustParseAddr("127.0.0.1").As16()), port)
	ctx := context.Background()
	c, err := d.DialTCP(ctx, clientSrc, mapped)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(got) != 1 || got[0].dst != addrPort(ln.Addr()) || got[0].local != addrPort(c.LocalAddr()) {
		t.Fatalf("after one dial: observed %v, want [%v from %v]", got, addrPort(ln.Addr()), c.LocalAddr())
	}
	// Refused (nothing listens there), UDP and the node's own dials: not observed.
	closed := listenTCP(t, "127.0.0.1:0")
	cdst := addrPort(closed.Addr())
	closed.Close()
	if _, err := d.DialTCP(ctx, clientSrc, cdst); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	if u, err := d.DialUDP(ctx, clientSrc, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 9)); err == nil {
		u.Close()
	}
	if n, err := d.DialNode(ctx, "tcp", Source{}, addrPort(ln.Addr())); err == nil {
		n.Close()
	} else {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("observed %d connections, want 1: %v", len(got), got)
	}
}

// TestDialTCPFor: a relayed flow's dial leaves from the source its route
// picks (port range included) or, without a route, as a client's would;
// it is observed and counted; the ACL refuses what it refuses to clients;
// a route's refusal is ErrNoEgress.
func TestDialTCPFor(t *testing.T) {
	lo, hi := testSlice(t, 64)
	var observed int
	d := newLoopbackDialer(t, Config{ObserveTCP: func(net.Conn, netip.AddrPort) { observed++ }})
	ln := listenTCP(t, "127.0.0.1:0")
	dst := addrPort(ln.Addr())
	ctx := context.Background()
	c, err := d.DialTCPFor(ctx, func(got netip.AddrPort) (Source, error) {
		if got != dst {
			t.Errorf("route asked for %v, want %v", got, dst)
		}
		return Source{Addr: netip.MustParseAddr("127.0.0.1"), PortLo: lo, PortHi: hi}, nil
	}, dst)
	if err != nil {
		t.Fatal(err)
	}
	if p := addrPort(c.LocalAddr()).Port(); p < lo || p > hi {
		t.Errorf("relayed flow left from port %d, want %d-%d", p, lo, hi)
	}
	c.Close()
	c, err = d.DialTCPFor(ctx, nil, dst)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if observed != 2 || d.Stats().TCP.OK != 2 {
		t.Errorf("observed %d, counted %+v; want 2 each", observed, d.Stats().TCP)
	}
	if _, err := d.DialTCPFor(ctx, func(netip.AddrPort) (Source, error) { return Source{}, errors.New("no DE address") }, dst); !errors.Is(err, ErrNoEgress) {
		t.Errorf("a route's refusal: %v, want ErrNoEgress", err)
	}
	strict, err := New(Config{Logger: discardLogger(), Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := strict.DialTCPFor(ctx, nil, dst); !errors.Is(err, ErrDenied) {
		t.Errorf("loopback through the default ACL: %v, want ErrDenied", err)
	}
}
