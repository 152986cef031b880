package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/client/socks5"
	"github.com/wedge-edge/wedge/internal/testutil"
)

// Client tests wire a Client to a server-side Stack with two pumps, as
// wireguard-go would between the two ends of a tunnel:
//
//	DialContext/Resolve ─ Client (100.96.0.2, fd57:6564:6765::2) ─ pumps ─ Stack ─ fakeDialer ─ 127.0.0.1 listeners
//	                                                                         └─ Local DNS ─ fakeDNS (127.0.0.1, UDP+TCP)
//	socks5.Server (127.0.0.1) ─┘ (end to end)

// newClientPair starts a Stack with cfg (defaults as newHarness) and a
// Client with ccfg (Addresses clientA, MTU testMTU, DNS serverV4 when
// zero), wired together. Cleanup closes both and waits for the pumps.
func newClientPair(t testing.TB, cfg Config, ccfg ClientConfig) (*Client, *Stack) {
	t.Helper()
	s := newTestStack(t, cfg)
	if ccfg.Addresses == nil {
		ccfg.Addresses = clientA
	}
	if ccfg.MTU == 0 {
		ccfg.MTU = testMTU
	}
	if ccfg.DNS == nil {
		ccfg.DNS = []netip.Addr{serverV4}
	}
	if ccfg.Logger == nil {
		ccfg.Logger = testLogger(t)
	}
	c, err := NewClient(ccfg)
	if err != nil {
		s.Close()
		t.Fatalf("NewClient: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pump(c, func(b [][]byte) { s.Write(b, pumpOffset) }) }()
	go func() { defer wg.Done(); pump(s, func(b [][]byte) { c.Write(b, pumpOffset) }) }()
	t.Cleanup(func() {
		c.Close()
		s.Close()
		wg.Wait()
	})
	return c, s
}

func TestNewClientRejectsBadConfig(t *testing.T) {
	log := testLogger(t)
	for _, tc := range []struct {
		name string
		cfg  ClientConfig
	}{
		{"nil logger", ClientConfig{Addresses: clientA, MTU: 1420}},
		{"mtu low", ClientConfig{Addresses: clientA, MTU: 1279, Logger: log}},
		{"mtu high", ClientConfig{Addresses: clientA, MTU: 9001, Logger: log}},
		{"no address", ClientConfig{MTU: 1420, Logger: log}},
		{"invalid address", ClientConfig{Addresses: []netip.Addr{{}}, MTU: 1420, Logger: log}},
		{"unspecified address", ClientConfig{Addresses: []netip.Addr{netip.IPv4Unspecified()}, MTU: 1420, Logger: log}},
		{"invalid dns", ClientConfig{Addresses: clientA, DNS: []netip.Addr{{}}, MTU: 1420, Logger: log}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(tc.cfg)
			if err == nil {
				c.Close()
				t.Fatalf("NewClient: got nil error, want %v", ErrInvalidConfig)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("NewClient: got %v, want %v", err, ErrInvalidConfig)
			}
		})
	}
}

func TestClientDeviceContract(t *testing.T) {
	c, err := NewClient(ClientConfig{Addresses: clientA, MTU: 1380, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if ev := <-c.Events(); ev != 1 /* tun.EventUp */ {
		t.Fatalf("first event: got %v, want EventUp", ev)
	}
	if mtu, _ := c.MTU(); mtu != 1380 {
		t.Fatalf("MTU: got %d, want 1380", mtu)
	}
	done := make(chan error)
	go func() {
		for { // the dial's SYNs, then os.ErrClosed
			if _, err := c.Read([][]byte{make([]byte, 2000)}, []int{0}, 0); err != nil {
				done <- err
				return
			}
		}
	}()
	dialErr := make(chan error)
	go func() {
		// No peer: the SYN goes unanswered until Close.
		_, err := c.DialContext(context.Background(), "tcp", "198.18.0.10:80")
		dialErr <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	c.Close() // idempotent
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after Close: got %v, want os.ErrClosed", err)
	}
	if _, err := c.Write([][]byte{make([]byte, 40)}, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Write after Close: got %v, want os.ErrClosed", err)
	}
	select {
	case err := <-dialErr:
		if err == nil {
			t.Fatal("pending dial: got a conn, want an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending dial not ended by Close")
	}
	if _, err := c.DialContext(context.Background(), "tcp", "198.18.0.10:80"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("DialContext after Close: got %v, want net.ErrClosed", err)
	}
	if _, err := c.Resolve(context.Background(), "example.com"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Resolve after Close: got %v, want net.ErrClosed", err)
	}
	if _, ok := <-c.Events(); ok {
		t.Fatal("Events not closed by Close")
	}
}

func TestClientTCP(t *testing.T) {
	for _, tc := range []struct {
		name    string
		network string
		dst     netip.Addr
	}{{"v4", "tcp", remote}, {"v6", "tcp", remoteV6}, {"tcp4", "tcp4", remote}, {"tcp6", "tcp6", remoteV6}} {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDialer{tcpTarget: listenTCP(t, echoTCP)}
			c, _ := newClientPair(t, Config{Dialer: d}, ClientConfig{})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := c.DialContext(ctx, tc.network, netip.AddrPortFrom(tc.dst, 7).String())
			if err != nil {
				t.Fatalf("DialContext: %v", err)
			}
			defer conn.Close()
			testutil.CheckEcho(t, conn, 2<<20)
			d.mu.Lock()
			defer d.mu.Unlock()
			if want := netip.AddrPortFrom(tc.dst, 7); len(d.dials) != 1 || d.dials[0] != want {
				t.Fatalf("node dialed %v, want [%v]", d.dials, want)
			}
		})
	}
}

func TestClientTCPErrors(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		c, _ := newClientPair(t, Config{Dialer: &fakeDialer{refuse: true}}, ClientConfig{})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.DialContext(ctx, "tcp", "198.18.0.10:7")
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("DialContext: got %v, want ECONNREFUSED", err)
		}
	})
	t.Run("family without address", func(t *testing.T) {
		c, _ := newClientPair(t, Config{Dialer: &fakeDialer{}}, ClientConfig{Addresses: clientA[:1]})
		_, err := c.DialContext(context.Background(), "tcp", "[2001:db8::10]:7")
		if !errors.Is(err, syscall.ENETUNREACH) {
			t.Fatalf("DialContext: got %v, want ENETUNREACH", err)
		}
	})
	t.Run("context", func(t *testing.T) {
		c, _ := newClientPair(t, Config{Dialer: &fakeDialer{hang: true}}, ClientConfig{})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := c.DialContext(ctx, "tcp", "198.18.0.10:7")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("DialContext: got %v, want context.DeadlineExceeded", err)
		}
	})
	t.Run("bad network", func(t *testing.T) {
		c, _ := newClientPair(t, Config{Dialer: &fakeDialer{}}, ClientConfig{})
		if _, err := c.DialContext(context.Background(), "ip4", "198.18.0.10:7"); err == nil {
			t.Fatal("DialContext(ip4): got nil error")
		}
		if _, err := c.DialContext(context.Background(), "tcp", "198.18.0.10"); err == nil {
			t.Fatal("DialContext without port: got nil error")
		}
	})
}

func TestClientUDP(t *testing.T) {
	for _, tc := range []struct {
		name string
		dst  netip.Addr
	}{{"v4", remote}, {"v6", remoteV6}} {
		t.Run(tc.name, func(t *testing.T) {
			echo := testutil.ListenUDPEcho(t, "udp4", "127.0.0.1:0")
			d := &fakeDialer{udpTarget: echo.String()}
			c, _ := newClientPair(t, Config{Dialer: d}, ClientConfig{})
			conn, err := c.DialContext(context.Background(), "udp", netip.AddrPortFrom(tc.dst, 5353).String())
			if err != nil {
				t.Fatalf("DialContext: %v", err)
			}
			defer conn.Close()
			buf := make([]byte, 2000)
			for i, msg := range []string{"one", "two", strings.Repeat("x", 1200)} {
				if _, err := conn.Write([]byte(msg)); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := conn.Read(buf)
				if err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
				if got := string(buf[:n]); got != "echo:"+msg {
					t.Fatalf("datagram %d: got %q, want %q", i, got[:min(len(got), 20)], "echo:"+msg[:min(len(msg), 15)])
				}
			}
			if ra := conn.RemoteAddr().(*net.UDPAddr).AddrPort(); ra != netip.AddrPortFrom(tc.dst, 5353) {
				t.Fatalf("RemoteAddr: got %v, want %v", ra, netip.AddrPortFrom(tc.dst, 5353))
			}
		})
	}
}

func TestClientDialByName(t *testing.T) {
	dns := startFakeDNS(t)
	d := &fakeDialer{tcpTarget: listenTCP(t, echoTCP)}
	c, _ := newClientPair(t, Config{Dialer: d, DNSUpstream: dns.addr}, ClientConfig{})
	for _, tc := range []struct {
		network string
		want    netip.AddrPort
	}{
		{"tcp", netip.AddrPortFrom(remoteV6, 7)}, // IPv6 first
		{"tcp4", netip.AddrPortFrom(remote, 7)},
	} {
		t.Run(tc.network, func(t *testing.T) {
			d.mu.Lock()
			d.dials = nil
			d.mu.Unlock()
			conn, err := c.DialContext(context.Background(), tc.network, "echo.test:7")
			if err != nil {
				t.Fatalf("DialContext: %v", err)
			}
			defer conn.Close()
			testutil.CheckEcho(t, conn, 1000)
			d.mu.Lock()
			defer d.mu.Unlock()
			if len(d.dials) != 1 || d.dials[0] != tc.want {
				t.Fatalf("node dialed %v, want [%v]", d.dials, tc.want)
			}
		})
	}
}

func TestClientCloseNoLeak(t *testing.T) {
	echo := testutil.ListenUDPEcho(t, "udp4", "127.0.0.1:0")
	tcpTarget := listenTCP(t, echoTCP)
	testutil.CheckGoroutines(t, func() {
		d := &fakeDialer{tcpTarget: tcpTarget, udpTarget: echo.String()}
		s, err := New(Config{MTU: testMTU, Dialer: d, Logger: testLogger(t), Local: []netip.Addr{serverV4, serverV6}})
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewClient(ClientConfig{Addresses: clientA, MTU: testMTU, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); pump(c, func(b [][]byte) { s.Write(b, pumpOffset) }) }()
		go func() { defer wg.Done(); pump(s, func(b [][]byte) { c.Write(b, pumpOffset) }) }()

		tc, err := c.DialContext(context.Background(), "tcp", "198.18.0.10:7")
		if err != nil {
			t.Fatal(err)
		}
		tc.Write([]byte("x"))
		io.ReadFull(tc, make([]byte, 1))
		uc, err := c.DialContext(context.Background(), "udp", "198.18.0.10:53")
		if err != nil {
			t.Fatal(err)
		}
		uc.Write([]byte("x"))
		uc.Read(make([]byte, 100))
		readErr := make(chan error, 2)
		for _, conn := range []net.Conn{tc, uc} {
			go func() { _, err := conn.Read(make([]byte, 100)); readErr <- err }()
		}

		c.Close()
		c.Close()
		for range 2 {
			select {
			case err := <-readErr:
				if err == nil {
					t.Fatal("Read on an open conn after Close: got nil error")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Read on an open conn not ended by Close")
			}
		}
		tc.Close()
		uc.Close()
		s.Close()
		wg.Wait()
	})
}

// socksConnect does a no-auth SOCKS5 CONNECT to host:port (a domain name
// or an IP) through the proxy and returns the connection.
func socksConnect(t *testing.T, proxy, host string, port uint16) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := []byte{5, 1, 0, 5, 1, 0}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		req = append(append(req, 1), ip.AsSlice()...)
	} else if err == nil {
		req = append(append(req, 4), ip.AsSlice()...)
	} else {
		req = append(append(req, 3, byte(len(host))), host...)
	}
	if _, err := c.Write(binary.BigEndian.AppendUint16(req, port)); err != nil {
		t.Fatal(err)
	}
	resp := make([]byte, 2+4)
	if _, err := io.ReadFull(c, resp); err != nil {
		t.Fatalf("SOCKS reply: %v", err)
	}
	if resp[0] != 5 || resp[1] != 0 || resp[2] != 5 || resp[3] != 0 {
		t.Fatalf("SOCKS reply: got %x, want method 00 and REP 00", resp)
	}
	rest := map[byte]int{1: 4 + 2, 4: 16 + 2}[resp[5]]
	if _, err := io.ReadFull(c, make([]byte, rest)); err != nil || rest == 0 {
		t.Fatalf("SOCKS reply BND (ATYP %d): %v", resp[5], err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// TestSOCKS5EndToEnd: a plain TCP client speaks SOCKS5 to a socks5.Server
// whose Dial and Resolve are a Client's, wired to a node Stack whose
// dialer reaches an echo server on 127.0.0.1.
func TestSOCKS5EndToEnd(t *testing.T) {
	dns := startFakeDNS(t)
	udpEcho := testutil.ListenUDPEcho(t, "udp4", "127.0.0.1:0")
	d := &fakeDialer{tcpTarget: listenTCP(t, echoTCP), udpTarget: udpEcho.String()}
	c, _ := newClientPair(t, Config{Dialer: d, DNSUpstream: dns.addr}, ClientConfig{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &socks5.Server{Dial: c.DialContext, Resolve: c.Resolve, Logger: testLogger(t)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	for _, tc := range []struct {
		name string
		host string
		want netip.AddrPort
	}{
		{"ipv4", remote.String(), netip.AddrPortFrom(remote, 7)},
		{"ipv6", remoteV6.String(), netip.AddrPortFrom(remoteV6, 7)},
		{"domain", "v4only.test", netip.AddrPortFrom(remote, 7)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d.mu.Lock()
			d.dials = nil
			d.mu.Unlock()
			conn := socksConnect(t, ln.Addr().String(), tc.host, 7)
			testutil.CheckEcho(t, conn, 1<<20)
			d.mu.Lock()
			defer d.mu.Unlock()
			if len(d.dials) != 1 || d.dials[0] != tc.want {
				t.Fatalf("node dialed %v, want [%v]", d.dials, tc.want)
			}
		})
	}
	t.Run("udp associate", func(t *testing.T) {
		ctrl, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer ctrl.Close()
		ctrl.SetDeadline(time.Now().Add(10 * time.Second))
		ctrl.Write([]byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0})
		resp := make([]byte, 2+10)
		if _, err := io.ReadFull(ctrl, resp); err != nil || resp[3] != 0 || resp[5] != 1 {
			t.Fatalf("UDP ASSOCIATE reply: got %x, %v, want success with an IPv4 BND", resp, err)
		}
		relay := netip.AddrPortFrom(netip.AddrFrom4([4]byte(resp[6:10])), binary.BigEndian.Uint16(resp[10:]))
		uc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relay))
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		// To v4only.test:53 by name: resolved through the tunnel.
		msg := append([]byte{0, 0, 0, 3, byte(len("v4only.test"))}, "v4only.test"...)
		msg = append(binary.BigEndian.AppendUint16(msg, 53), "query"...)
		if _, err := uc.Write(msg); err != nil {
			t.Fatal(err)
		}
		uc.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 1500)
		n, err := uc.Read(buf)
		if err != nil {
			t.Fatalf("UDP answer: %v", err)
		}
		// RSV, FRAG, ATYP 1, 198.18.0.10, port 53, payload.
		want := append(append([]byte{0, 0, 0, 1}, remote.AsSlice()...), 0, 53)
		want = append(want, "echo:query"...)
		if !bytes.Equal(buf[:n], want) {
			t.Fatalf("UDP answer: got %x, want %x", buf[:n], want)
		}
	})
}
