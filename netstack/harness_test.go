package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	wgnetstack "golang.zx2c4.com/wireguard/tun/netstack"
)

// The harness wires client-side stacks (wireguard-go's tun/netstack, what
// a userspace client would run) to a server-side tun.Device (our Stack) with
// goroutines that shuttle packets between the devices' Read and Write, as
// wireguard-go would after decrypting. Packets the server emits are routed
// to the client that owns their destination address.
//
//	client A (tun/netstack, 100.96.0.2, fd57:6564:6765::2) ─┐
//	client B (tun/netstack, 100.96.0.3, fd57:6564:6765::3) ─┼─ pumps ─ server Stack ─ fakeDialer ─ 127.0.0.1 listeners
//	                                                         ┘

const testMTU = 1420

var (
	serverV4 = netip.MustParseAddr("100.96.0.1")
	serverV6 = netip.MustParseAddr("fd57:6564:6765::1")
	clientA  = []netip.Addr{netip.MustParseAddr("100.96.0.2"), netip.MustParseAddr("fd57:6564:6765::2")}
	clientB  = []netip.Addr{netip.MustParseAddr("100.96.0.3"), netip.MustParseAddr("fd57:6564:6765::3")}
	// remote is where clients think they connect; the fake dialer maps it
	// to a listener on 127.0.0.1. Never dialed for real.
	remote   = netip.MustParseAddr("198.18.0.10")
	remoteV6 = netip.MustParseAddr("2001:db8::10")
)

const pumpOffset = 16 // as wireguard-go: room for the transport header

type client struct {
	dev  tun.Device
	net  *wgnetstack.Net
	addr []netip.Addr
}

type harness struct {
	t       testing.TB
	srv     tun.Device
	stack   *Stack // srv when it is ours
	clients []*client
	wg      sync.WaitGroup
	closed  atomic.Bool
	// devMu orders the server pump's writes into the client devices
	// before their Close (wireguard-go's netTun races a Write's
	// notification with Close).
	devMu      sync.RWMutex
	devsClosed bool

	icmpMu sync.Mutex
	icmp   [][]byte // ICMP packets the server sent to clients
}

// icmpSeen returns copies of the ICMP packets sent to clients so far.
func (h *harness) icmpSeen() [][]byte {
	h.icmpMu.Lock()
	defer h.icmpMu.Unlock()
	return append([][]byte(nil), h.icmp...)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newHarness starts a Stack with cfg (MTU, Logger, Local defaulted) and one
// client per address set.
func newHarness(t testing.TB, cfg Config, clients ...[]netip.Addr) *harness {
	t.Helper()
	s := newTestStack(t, cfg)
	h := newHarnessDev(t, s, clients...)
	h.stack = s
	return h
}

// newTestStack builds a server Stack from cfg, filling in the test MTU, a
// test logger and the server's inner addresses where cfg leaves them zero.
func newTestStack(t testing.TB, cfg Config) *Stack {
	t.Helper()
	if cfg.MTU == 0 {
		cfg.MTU = testMTU
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.Local == nil {
		cfg.Local = []netip.Addr{serverV4, serverV6}
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// newHarnessDev wires clients to any server-side device.
func newHarnessDev(t testing.TB, srv tun.Device, clients ...[]netip.Addr) *harness {
	h := &harness{t: t, srv: srv}
	for _, addrs := range clients {
		dev, n, err := wgnetstack.CreateNetTUN(addrs, nil, testMTU)
		if err != nil {
			t.Fatalf("CreateNetTUN: %v", err)
		}
		h.clients = append(h.clients, &client{dev: dev, net: n, addr: addrs})
	}
	for _, c := range h.clients {
		h.wg.Add(1)
		go func() { defer h.wg.Done(); pump(c.dev, func(b [][]byte) { srv.Write(b, pumpOffset) }) }()
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		pump(srv, func(b [][]byte) {
			for _, p := range b {
				if ip := p[pumpOffset:]; len(ip) >= 40 && (ip[0]>>4 == 4 && ip[9] == 1 || ip[0]>>4 == 6 && ip[6] == 58) {
					h.icmpMu.Lock()
					h.icmp = append(h.icmp, append([]byte(nil), ip...))
					h.icmpMu.Unlock()
				}
				if c := h.owner(p[pumpOffset:]); c != nil {
					h.devMu.RLock()
					if !h.devsClosed {
						c.dev.Write([][]byte{p}, pumpOffset)
					}
					h.devMu.RUnlock()
				}
			}
		})
	}()
	t.Cleanup(h.close)
	return h
}

// pump reads batches from dev and hands them to write until dev closes.
func pump(dev tun.Device, write func([][]byte)) {
	bs := dev.BatchSize()
	bufs := make([][]byte, bs)
	out := make([][]byte, bs)
	sizes := make([]int, bs)
	for i := range bufs {
		bufs[i] = make([]byte, pumpOffset+65535)
	}
	for {
		n, err := dev.Read(bufs, sizes, pumpOffset)
		if err != nil {
			return
		}
		for i := range n {
			out[i] = bufs[i][:pumpOffset+sizes[i]]
		}
		write(out[:n])
	}
}

func (h *harness) owner(p []byte) *client {
	if len(p) < 20 {
		return nil
	}
	var dst netip.Addr
	switch p[0] >> 4 {
	case 4:
		dst = netip.AddrFrom4([4]byte(p[16:20]))
	case 6:
		if len(p) < 40 {
			return nil
		}
		dst = netip.AddrFrom16([16]byte(p[24:40]))
	}
	for _, c := range h.clients {
		for _, a := range c.addr {
			if a == dst {
				return c
			}
		}
	}
	return nil
}

// close closes the clients first (while the server pump still drains
// them), then the server, then waits for the pumps.
func (h *harness) close() {
	if h.closed.Swap(true) {
		return
	}
	h.devMu.Lock()
	h.devsClosed = true
	h.devMu.Unlock()
	for _, c := range h.clients {
		c.dev.Close()
	}
	h.srv.Close()
	h.wg.Wait()
}

func (h *harness) dialTCP(t testing.TB, c int, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := h.clients[c].net.DialContextTCPAddrPort(ctx, dst)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// fakeDialer dials listeners on 127.0.0.1 whatever the destination, or
// refuses, or hangs until ctx ends.
type fakeDialer struct {
	tcpTarget string // host:port on 127.0.0.1
	udpTarget string
	refuse    bool // fail at once with ECONNREFUSED
	deny      bool // fail at once with errDenied
	hang      bool // block until ctx ends

	pingErr error

	mu    sync.Mutex
	dials []netip.AddrPort // dst of each call
	pings []netip.Addr
}

var errDenied = errors.New("fake: denied by ACL")

func (d *fakeDialer) record(dst netip.AddrPort) error {
	d.mu.Lock()
	d.dials = append(d.dials, dst)
	d.mu.Unlock()
	switch {
	case d.deny:
		return fmt.Errorf("dial %v: %w", dst, errDenied)
	case d.refuse:
		return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	return nil
}

func (d *fakeDialer) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	if err := d.record(dst); err != nil {
		return nil, err
	}
	if d.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.tcpTarget)
}

func (d *fakeDialer) DialUDP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	if err := d.record(dst); err != nil {
		return nil, err
	}
	if d.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "udp", d.udpTarget)
}

func (d *fakeDialer) Ping(ctx context.Context, dst netip.Addr, data []byte) error {
	d.mu.Lock()
	d.pings = append(d.pings, dst)
	d.mu.Unlock()
	return d.pingErr
}

// servers on 127.0.0.1

func listenTCP(t testing.TB, handle func(*net.TCPConn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	conns := make(map[net.Conn]bool)
	var mu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
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
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

// echoTCP copies back what it reads and half-closes at EOF.
func echoTCP(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
