package socks5

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/internal/testutil"
)

// The tests run a Server on 127.0.0.1 whose Dial goes to real 127.0.0.1
// listeners (or fails as told), and talk to it with a minimal client.
//
//	test client ── TCP/UDP ──> Server (127.0.0.1) ── Dial ──> echo servers (127.0.0.1)

// startServer serves s on a new 127.0.0.1 listener until the test ends
// and returns the listener's address and a func that stops it and
// returns Serve's result.
func startServer(t *testing.T, s *Server) (string, func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() {
			ln.Close()
			select {
			case serveErr = <-errc:
			case <-time.After(10 * time.Second):
				serveErr = errors.New("Serve did not return after ln.Close")
			}
		})
		return serveErr
	}
	t.Cleanup(func() { stop() })
	return ln.Addr().String(), stop
}

// netDial is a Server.Dial on the host's network.
func netDial(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

func listenTCPEcho(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// socksDial connects to the proxy and does the no-auth handshake.
func socksDial(t *testing.T, proxy string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{5, 1, methodNoAuth}); err != nil {
		t.Fatal(err)
	}
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil {
		t.Fatalf("method reply: %v", err)
	}
	if m != [2]byte{5, methodNoAuth} {
		t.Fatalf("method reply: got %x, want 0500", m)
	}
	return c
}

// doRequest sends a request and reads the reply, returning REP and BND.
func doRequest(t *testing.T, c net.Conn, cmd byte, dst addr) (byte, addr) {
	t.Helper()
	if _, err := c.Write(dst.appendTo([]byte{5, cmd, 0})); err != nil {
		t.Fatal(err)
	}
	rep, bnd, err := readReply(c)
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	return rep, bnd
}

func readReply(c net.Conn) (byte, addr, error) {
	var h [3]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return 0, addr{}, err
	}
	if h[0] != 5 || h[2] != 0 {
		return 0, addr{}, fmt.Errorf("bad reply header %x", h)
	}
	var atyp [1]byte
	if _, err := io.ReadFull(c, atyp[:]); err != nil {
		return 0, addr{}, err
	}
	bnd, err := readAddr(c, atyp[0])
	return h[1], bnd, err
}

func ipAddr(ap netip.AddrPort) addr { return addr{ip: ap.Addr(), port: ap.Port()} }

func TestServeNilDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := (&Server{}).Serve(ln); !errors.Is(err, ErrNoDial) {
		t.Fatalf("Serve: got %v, want %v", err, ErrNoDial)
	}
}

func TestConnectEcho(t *testing.T) {
	echo := listenTCPEcho(t)
	proxy, _ := startServer(t, &Server{Dial: netDial})
	c := socksDial(t, proxy)
	rep, bnd := doRequest(t, c, cmdConnect, ipAddr(echo))
	if rep != repSucceeded {
		t.Fatalf("REP: got %#x, want %#x", rep, repSucceeded)
	}
	if bnd.ip != netip.MustParseAddr("127.0.0.1") || bnd.port == 0 {
		t.Fatalf("BND: got %v, want 127.0.0.1:port", bnd)
	}
	testutil.CheckEcho(t, c, 4<<20)
}

// TestConnectPipelined sends greeting, request and data in one write, as
// optimistic clients do: nothing past the request may be swallowed.
func TestConnectPipelined(t *testing.T) {
	echo := listenTCPEcho(t)
	proxy, _ := startServer(t, &Server{Dial: netDial})
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := append([]byte{5, 1, 0}, ipAddr(echo).appendTo([]byte{5, cmdConnect, 0})...)
	msg = append(msg, "hello"...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil {
		t.Fatal(err)
	}
	if rep, _, err := readReply(c); err != nil || rep != repSucceeded {
		t.Fatalf("reply: got %#x, %v, want success", rep, err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
		t.Fatalf("echo: got %q, %v, want hello", got, err)
	}
}

func TestConnectDomain(t *testing.T) {
	echo := listenTCPEcho(t)
	t.Run("resolve", func(t *testing.T) {
		var mu sync.Mutex
		var asked, dialed []string
		s := &Server{
			Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
				mu.Lock()
				dialed = append(dialed, address)
				mu.Unlock()
				return netDial(ctx, network, address)
			},
			Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
				mu.Lock()
				asked = append(asked, host)
				mu.Unlock()
				if host != "echo.test" {
					return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
				}
				return []netip.Addr{echo.Addr()}, nil
			},
		}
		proxy, _ := startServer(t, s)
		c := socksDial(t, proxy)
		if rep, _ := doRequest(t, c, cmdConnect, addr{name: "echo.test", port: echo.Port()}); rep != repSucceeded {
			t.Fatalf("REP: got %#x, want success", rep)
		}
		testutil.CheckEcho(t, c, 1000)
		c2 := socksDial(t, proxy)
		if rep, _ := doRequest(t, c2, cmdConnect, addr{name: "nx.test", port: 1}); rep != repHostUnreachable {
			t.Fatalf("REP for NXDOMAIN: got %#x, want %#x", rep, repHostUnreachable)
		}
		mu.Lock()
		defer mu.Unlock()
		if want := []string{"echo.test", "nx.test"}; fmt.Sprint(asked) != fmt.Sprint(want) {
			t.Fatalf("resolved: got %v, want %v", asked, want)
		}
		if want := []string{echo.String()}; fmt.Sprint(dialed) != fmt.Sprint(want) {
			t.Fatalf("dialed: got %v, want %v", dialed, want)
		}
	})
	t.Run("no resolver", func(t *testing.T) {
		var got atomic.Value
		s := &Server{Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			got.Store(address)
			return netDial(ctx, network, echo.String())
		}}
		proxy, _ := startServer(t, s)
		c := socksDial(t, proxy)
		if rep, _ := doRequest(t, c, cmdConnect, addr{name: "echo.test", port: 7}); rep != repSucceeded {
			t.Fatalf("REP: got %#x, want success", rep)
		}
		if got.Load() != "echo.test:7" {
			t.Fatalf("Dial address: got %v, want echo.test:7", got.Load())
		}
		testutil.CheckEcho(t, c, 1000)
	})
}

// TestConnectHappyEyeballs: the name's IPv6 address hangs; the IPv4 one is
// dialed after the fallback delay and wins.
func TestConnectHappyEyeballs(t *testing.T) {
	echo := listenTCPEcho(t)
	v6, v4 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("192.0.2.1")
	s := &Server{
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			if strings.HasPrefix(address, "[2001:db8::1]") {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return netDial(ctx, network, echo.String())
		},
		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) { return []netip.Addr{v6, v4}, nil },
	}
	proxy, _ := startServer(t, s)
	c := socksDial(t, proxy)
	start := time.Now()
	if rep, _ := doRequest(t, c, cmdConnect, addr{name: "dual.test", port: 80}); rep != repSucceeded {
		t.Fatalf("REP: got %#x, want success", rep)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("connect took %v, want about the fallback delay", d)
	}
	testutil.CheckEcho(t, c, 100)
}

func TestConnectFailureReplies(t *testing.T) {
	// A port on 127.0.0.1 with nothing listening: a real ECONNREFUSED.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()

	fail := func(err error) func(context.Context, string, string) (net.Conn, error) {
		return func(context.Context, string, string) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
		}
	}
	for _, tc := range []struct {
		name    string
		dial    func(context.Context, string, string) (net.Conn, error)
		resolve func(context.Context, string) ([]netip.Addr, error)
		dst     addr
		want    byte
	}{
		{"refused", netDial, nil, ipAddr(closedPort), repConnectionRefused},
		{"network unreachable", fail(syscall.ENETUNREACH), nil, ipAddr(closedPort), repNetworkUnreachable},
		{"host unreachable", fail(syscall.EHOSTUNREACH), nil, ipAddr(closedPort), repHostUnreachable},
		{"not allowed", fail(syscall.EACCES), nil, ipAddr(closedPort), repNotAllowed},
		{"general", fail(errors.New("boom")), nil, ipAddr(closedPort), repGeneralFailure},
		{"timeout", func(ctx context.Context, _, _ string) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}, nil, ipAddr(closedPort), repHostUnreachable},
		{"nxdomain", netDial, func(context.Context, string) ([]netip.Addr, error) {
			return nil, &net.DNSError{Err: "no such host", IsNotFound: true}
		}, addr{name: "nx.test", port: 80}, repHostUnreachable},
		{"no addresses", netDial, func(context.Context, string) ([]netip.Addr, error) { return nil, nil },
			addr{name: "empty.test", port: 80}, repHostUnreachable},
		{"resolver broken", netDial, func(context.Context, string) ([]netip.Addr, error) {
			return nil, errors.New("no DNS server configured")
		}, addr{name: "x.test", port: 80}, repGeneralFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy, _ := startServer(t, &Server{Dial: tc.dial, Resolve: tc.resolve, DialTimeout: 200 * time.Millisecond})
			c := socksDial(t, proxy)
			if rep, _ := doRequest(t, c, cmdConnect, tc.dst); rep != tc.want {
				t.Fatalf("REP: got %#x, want %#x", rep, tc.want)
			}
			// The server closes after a failure reply.
			if n, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("after failure: got %d, %v, want EOF", n, err)
			}
		})
	}
}

func TestUnsupported(t *testing.T) {
	proxy, _ := startServer(t, &Server{Dial: netDial})
	dst := addr{ip: netip.MustParseAddr("127.0.0.1"), port: 9}

	t.Run("method", func(t *testing.T) {
		c, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte{5, 2, 0x01, 0x02}) // GSSAPI, username/password
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, []byte{5, methodNoAcceptable}) {
			t.Fatalf("got %x, %v, want 05ff then EOF", got, err)
		}
	})
	t.Run("version", func(t *testing.T) {
		c, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte{4, 1, 0, 80, 127, 0, 0, 1, 0}) // SOCKS4 CONNECT
		// Closed with unread bytes: EOF or a reset, but no reply.
		got, err := io.ReadAll(c)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) || len(got) != 0 {
			t.Fatalf("got %x, %v, want the connection closed without reply", got, err)
		}
	})
	for _, tc := range []struct {
		name string
		req  []byte
		want byte
	}{
		{"bind", dst.appendTo([]byte{5, cmdBind, 0}), repCommandNotSupported},
		{"unknown command", dst.appendTo([]byte{5, 0x09, 0}), repCommandNotSupported},
		{"address type", []byte{5, cmdConnect, 0, 0x05, 1, 2, 3, 4, 0, 80}, repAddrNotSupported},
		{"empty domain", []byte{5, cmdConnect, 0, atypDomain, 0, 0, 80}, repGeneralFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := socksDial(t, proxy)
			c.Write(tc.req)
			rep, _, err := readReply(c)
			if err != nil || rep != tc.want {
				t.Fatalf("REP: got %#x, %v, want %#x", rep, err, tc.want)
			}
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	proxy, _ := startServer(t, &Server{Dial: netDial, HandshakeTimeout: 100 * time.Millisecond})
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		{"partial greeting", []byte{5, 2, 0}},
		{"no request", []byte{5, 1, 0}},
		{"partial request", []byte{5, 1, 0, 5, 1, 0, 3, 10, 'a'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", proxy)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(tc.send)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			if _, err := io.ReadAll(c); err != nil {
				t.Fatalf("read: %v, want EOF from the server", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("closed after %v, want about 100ms", d)
			}
		})
	}
}

func TestMaxConns(t *testing.T) {
	proxy, _ := startServer(t, &Server{Dial: netDial, MaxConns: 1})
	first := socksDial(t, proxy) // holds the one slot in the request phase
	second, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(second); err != nil || len(got) != 0 {
		t.Fatalf("over the limit: got %x, %v, want EOF", got, err)
	}
	first.Close()
	// The slot frees once the first connection's handler ends.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte{5, 1, 0})
		var m [2]byte
		_, err = io.ReadFull(c, m[:])
		c.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("slot not freed after the first connection closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// udpAssociate opens an association and returns the control connection
// and a UDP socket connected to the relay.
func udpAssociate(t *testing.T, proxy string) (net.Conn, *net.UDPConn) {
	t.Helper()
	ctrl := socksDial(t, proxy)
	uc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	rep, bnd := doRequest(t, ctrl, cmdUDPAssociate, addr{ip: netip.IPv4Unspecified()})
	if rep != repSucceeded {
		t.Fatalf("REP: got %#x, want success", rep)
	}
	if bnd.ip != netip.MustParseAddr("127.0.0.1") || bnd.port == 0 {
		t.Fatalf("BND: got %v, want 127.0.0.1:port (the listener's IP)", bnd)
	}
	relay := netip.AddrPortFrom(bnd.ip, bnd.port)
	uc.Close()
	uc, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relay))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	return ctrl, uc
}

// exchange sends payload to dst through the relay and returns the answer's
// source and payload, or an error after timeout.
func exchange(uc *net.UDPConn, frag byte, dst addr, payload []byte, timeout time.Duration) (addr, []byte, error) {
	msg := dst.appendTo([]byte{0, 0, frag})
	if _, err := uc.Write(append(msg, payload...)); err != nil {
		return addr{}, nil, err
	}
	uc.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 65535)
	n, err := uc.Read(buf)
	if err != nil {
		return addr{}, nil, err
	}
	f, src, p, err := parseUDPHeader(buf[:n])
	if err != nil || f != 0 {
		return addr{}, nil, fmt.Errorf("bad reply header (frag %d): %v", f, err)
	}
	return src, p, nil
}

func TestUDPAssociate(t *testing.T) {
	echo := testutil.ListenUDPEcho(t, "udp", "127.0.0.1:0")
	var opened, closed atomic.Int32
	s := &Server{
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			c, err := netDial(ctx, network, address)
			if err == nil {
				opened.Add(1)
				c = &countClose{Conn: c, n: &closed}
			}
			return c, err
		},
		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			if host == "echo.test" {
				return []netip.Addr{echo.Addr()}, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		},
	}
	proxy, _ := startServer(t, s)
	ctrl, uc := udpAssociate(t, proxy)

	src, p, err := exchange(uc, 0, ipAddr(echo), []byte("ping"), 5*time.Second)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if string(p) != "echo:ping" || src != ipAddr(echo) {
		t.Fatalf("answer: got %q from %v, want \"echo:ping\" from %v", p, src, echo)
	}
	// Same destination by name: a second flow, answered from the IP.
	src, p, err = exchange(uc, 0, addr{name: "echo.test", port: echo.Port()}, []byte("by name"), 5*time.Second)
	if err != nil || string(p) != "echo:by name" || src != ipAddr(echo) {
		t.Fatalf("by name: got %q from %v, %v, want \"echo:by name\" from %v", p, src, err, echo)
	}
	// A large datagram.
	big := bytes.Repeat([]byte{0xab}, 60000)
	if _, p, err := exchange(uc, 0, ipAddr(echo), big, 5*time.Second); err != nil || !bytes.Equal(p, append([]byte("echo:"), big...)) {
		t.Fatalf("60000-byte datagram: got %d bytes, %v", len(p), err)
	}
	// Fragments are dropped.
	if _, _, err := exchange(uc, 1, ipAddr(echo), []byte("frag"), 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("FRAG=1: got %v, want no answer", err)
	}
	// Another socket of the client's IP, after the port locked on the
	// first datagram: dropped.
	other, err := net.DialUDP("udp", nil, uc.RemoteAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, _, err := exchange(other, 0, ipAddr(echo), []byte("intruder"), 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("from another port: got %v, want no answer", err)
	}
	// Still working for the client.
	if _, p, err := exchange(uc, 0, ipAddr(echo), []byte("again"), 5*time.Second); err != nil || string(p) != "echo:again" {
		t.Fatalf("after drops: got %q, %v", p, err)
	}
	if got := opened.Load(); got != 2 {
		t.Fatalf("flows dialed: got %d, want 2 (one per destination as written)", got)
	}

	// Closing the control connection ends the association and its flows.
	ctrl.Close()
	testutil.WaitFor(t, 5*time.Second, "flows closed", func() bool { return closed.Load() == opened.Load() })
	if _, _, err := exchange(uc, 0, ipAddr(echo), []byte("late"), 300*time.Millisecond); err == nil {
		t.Fatal("after the control connection closed: got an answer, want none")
	}
}

// TestUDPAssociateGivenPort: the client names its port in the request;
// datagrams from any other port are dropped from the first one on.
func TestUDPAssociateGivenPort(t *testing.T) {
	echo := testutil.ListenUDPEcho(t, "udp", "127.0.0.1:0")
	proxy, _ := startServer(t, &Server{Dial: netDial})
	ctrl := socksDial(t, proxy)
	uc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	mine := uc.LocalAddr().(*net.UDPAddr).AddrPort()
	rep, bnd := doRequest(t, ctrl, cmdUDPAssociate, ipAddr(mine))
	if rep != repSucceeded {
		t.Fatalf("REP: got %#x", rep)
	}
	relay := net.UDPAddrFromAddrPort(netip.AddrPortFrom(bnd.ip, bnd.port))
	other, err := net.DialUDP("udp", nil, relay)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, _, err := exchange(other, 0, ipAddr(echo), []byte("x"), 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("from an unannounced port: got %v, want no answer", err)
	}
	msg := append(ipAddr(echo).appendTo([]byte{0, 0, 0}), "hi"...)
	if _, err := uc.WriteToUDP(msg, relay); err != nil {
		t.Fatal(err)
	}
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, _, err := uc.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("from the announced port: %v", err)
	}
	if _, _, p, _ := parseUDPHeader(buf[:n]); string(p) != "echo:hi" {
		t.Fatalf("answer: got %q, want echo:hi", p)
	}
}

type countClose struct {
	net.Conn
	n    *atomic.Int32
	once sync.Once
}

func (c *countClose) Close() error {
	c.once.Do(func() { c.n.Add(1) })
	return c.Conn.Close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestServeCloseNoLeak: closing the listener ends a CONNECT relay, a UDP
// association and a handshake in progress, Serve returns nil and no
// goroutine is left.
func TestServeCloseNoLeak(t *testing.T) {
	tcpEcho := listenTCPEcho(t)
	udpEcho := testutil.ListenUDPEcho(t, "udp", "127.0.0.1:0")
	testutil.CheckGoroutines(t, func() {
		proxy, stop := startServer(t, &Server{Dial: netDial})
		relayConn := socksDial(t, proxy)
		if rep, _ := doRequest(t, relayConn, cmdConnect, ipAddr(tcpEcho)); rep != repSucceeded {
			t.Fatalf("REP: got %#x", rep)
		}
		relayConn.Write([]byte("x"))
		io.ReadFull(relayConn, make([]byte, 1))
		ctrl, uc := udpAssociate(t, proxy)
		if _, _, err := exchange(uc, 0, ipAddr(udpEcho), []byte("x"), 5*time.Second); err != nil {
			t.Fatal(err)
		}
		pending := socksDial(t, proxy)

		if err := stop(); err != nil {
			t.Fatalf("Serve: got %v, want nil", err)
		}
		for name, c := range map[string]net.Conn{"relay": relayConn, "udp control": ctrl, "handshake": pending} {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadAll(c); err != nil {
				t.Fatalf("%s conn after Serve returned: %v, want EOF", name, err)
			}
			c.Close()
		}
		uc.Close()
	})
}
