package client

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
)

// nopBind is a Bind that parses endpoints and does nothing else.
type nopBind struct{}

func (nopBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) { return nil, 0, nil }
func (nopBind) Close() error                                    { return nil }
func (nopBind) SetMark(uint32) error                            { return nil }
func (nopBind) Send([][]byte, conn.Endpoint) error              { return nil }
func (nopBind) BatchSize() int                                  { return 1 }
func (nopBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	return memEndpoint{ap}, err
}

// memNet is an in-memory dual-stack network: memBinds own addresses and
// exchange datagrams; a family's delivery can be switched off to
// blackhole it.
type memNet struct {
	mu    sync.Mutex
	binds map[netip.AddrPort]*memBind
	drop4 atomic.Bool
	drop6 atomic.Bool
}

func newMemNet() *memNet { return &memNet{binds: map[netip.AddrPort]*memBind{}} }

func (n *memNet) blackhole(fam int, on bool) {
	if fam == 4 {
		n.drop4.Store(on)
	} else {
		n.drop6.Store(on)
	}
}

type datagram struct {
	b   []byte
	src netip.AddrPort
}

// memBind is a conn.Bind on a memNet with one IPv4 and one IPv6 address.
// It can be closed and opened again, keeps its port across reopens when
// asked for it, and can be told to fail Sends.
type memBind struct {
	net      *memNet
	v4, v6   netip.Addr
	rx4, rx6 chan datagram

	failSends atomic.Int32 // Sends to fail with ENOBUFS
	failRecvs atomic.Int32 // receives to fail with ENETDOWN
	unreach6  atomic.Bool  // Sends to IPv6 fail with ENETUNREACH
	opens     atomic.Int32
	sent      func(msg []byte, to netip.AddrPort) // sees every message sent, if set

	mu     sync.Mutex
	port   uint16
	closed chan struct{} // nil when not open
}

type memEndpoint struct{ ap netip.AddrPort }

func (e memEndpoint) AddrPort() netip.AddrPort { return e.ap }
func (memEndpoint) ClearSrc()                  {}
func (memEndpoint) SrcToString() string        { return "" }
func (e memEndpoint) DstToString() string      { return e.ap.String() }
func (e memEndpoint) DstToBytes() []byte       { b, _ := e.ap.MarshalBinary(); return b }
func (e memEndpoint) DstIP() netip.Addr        { return e.ap.Addr() }
func (memEndpoint) SrcIP() netip.Addr          { return netip.Addr{} }

var nextPort atomic.Uint32

func (n *memNet) newBind(v4, v6 string) *memBind {
	return &memBind{net: n, v4: netip.MustParseAddr(v4), v6: netip.MustParseAddr(v6),
		rx4: make(chan datagram, 1024), rx6: make(chan datagram, 1024)}
}

func (b *memBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	if port == 0 {
		port = uint16(40000 + nextPort.Add(1))
	}
	b.net.mu.Lock()
	b.net.binds[netip.AddrPortFrom(b.v4, port)] = b
	b.net.binds[netip.AddrPortFrom(b.v6, port)] = b
	b.net.mu.Unlock()
	b.port, b.closed = port, make(chan struct{})
	b.opens.Add(1)
	closed := b.closed
	recv := func(ch chan datagram) conn.ReceiveFunc {
		return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			if b.failRecvs.Load() > 0 && b.failRecvs.Add(-1) >= 0 {
				return 0, &net.OpError{Op: "read", Net: "udp", Err: os.NewSyscallError("recvmmsg", syscall.ENETDOWN)}
			}
			select {
			case <-closed:
				return 0, net.ErrClosed
			case d := <-ch:
				sizes[0] = copy(packets[0], d.b)
				eps[0] = memEndpoint{d.src}
				return 1, nil
			}
		}
	}
	return []conn.ReceiveFunc{recv(b.rx4), recv(b.rx6)}, port, nil
}

func (b *memBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed != nil {
		close(b.closed)
		b.closed = nil
	}
	return nil
}

func (b *memBind) SetMark(uint32) error { return nil }
func (b *memBind) BatchSize() int       { return 1 }

func (b *memBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	return memEndpoint{ap}, err
}

func (b *memBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.mu.Lock()
	open, port := b.closed != nil, b.port
	b.mu.Unlock()
	if !open {
		return net.ErrClosed
	}
	if b.failSends.Load() > 0 && b.failSends.Add(-1) >= 0 {
		return &net.OpError{Op: "write", Net: "udp", Err: os.NewSyscallError("sendmmsg", syscall.ENOBUFS)}
	}
	e, ok := ep.(memEndpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	if e.ap.Addr().Is6() && b.unreach6.Load() {
		return &net.OpError{Op: "write", Net: "udp", Err: os.NewSyscallError("sendmmsg", syscall.ENETUNREACH)}
	}
	dst := e.ap
	src, drop := netip.AddrPortFrom(b.v4, port), b.net.drop4.Load()
	if dst.Addr().Is6() {
		src, drop = netip.AddrPortFrom(b.v6, port), b.net.drop6.Load()
	}
	for _, buf := range bufs {
		if b.sent != nil {
			b.sent(buf, dst)
		}
		if drop {
			continue
		}
		b.net.mu.Lock()
		to := b.net.binds[dst]
		b.net.mu.Unlock()
		if to == nil {
			continue
		}
		ch := to.rx4
		if dst.Addr().Is6() {
			ch = to.rx6
		}
		select {
		case ch <- datagram{append([]byte(nil), buf...), src}:
		default:
		}
	}
	return nil
}
