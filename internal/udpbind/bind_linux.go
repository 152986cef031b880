package udpbind

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// Supported reports whether this package's Bind works on this OS.
const Supported = true

// Bind is a conn.Bind on one IPv4 and one IPv6-only UDP socket sharing a
// port. Packets are received with the local address they were sent to, and
// replies to an *Endpoint are sent from that address. Safe for concurrent
// use.
type Bind struct {
	opts     options
	txPool   sync.Pool // *txBatch
	fallback atomic.Uint64
	resets   atomic.Uint64
	gsoOff   atomic.Uint64
	groMsgs  atomic.Uint64
	groDgms  atomic.Uint64

	mu   sync.RWMutex // guards the fields below
	v4   *socket      // nil if closed or IPv4 unavailable
	v6   *socket      // nil if closed or IPv6 unavailable
	open bool
	mark uint32 // SO_MARK to apply to sockets, 0 for none
}

var _ conn.Bind = (*Bind)(nil)

// socket is one open UDP socket of a Bind.
type socket struct {
	pc  *net.UDPConn
	rc  syscall.RawConn
	is6 bool
	gso atomic.Bool // coalesce sends with UDP_SEGMENT
	gro bool        // UDP_GRO on: received messages may hold several datagrams
}

// New returns a closed Bind.
func New(opts ...Option) *Bind {
	b := &Bind{opts: defaultOptions()}
	for _, o := range opts {
		o(&b.opts)
	}
	b.txPool.New = func() any { return newTxBatch() }
	return b
}

// Stats returns the Bind's counters.
func (b *Bind) Stats() Stats {
	return Stats{
		SrcFallbacks: b.fallback.Load(), CacheResets: b.resets.Load(), GSOOff: b.gsoOff.Load(),
		Coalesced: b.groMsgs.Load(), Datagrams: b.groDgms.Load(),
	}
}

// Open listens on 0.0.0.0:port and [::]:port (IPV6_V6ONLY). With port 0
// the kernel picks the IPv4 port and the IPv6 socket takes the same one,
// retrying with a new port if it is taken. If a family is not supported by
// the kernel (EAFNOSUPPORT), the other is opened alone. It returns one
// ReceiveFunc per socket. A Bind can be opened again after Close.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open {
		return nil, 0, conn.ErrBindAlreadyOpen
	}

	var v4, v6 *socket
	var actual uint16
	for tries := 0; ; tries++ {
		var err error
		v4, actual, err = b.listen("udp4", port)
		if err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, 0, err
		}
		var port6 uint16
		v6, port6, err = b.listen("udp6", actual)
		if err != nil && port == 0 && errors.Is(err, unix.EADDRINUSE) && tries < 100 {
			v4.close()
			continue
		}
		if err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
			v4.close()
			return nil, 0, err
		}
		if v4 == nil {
			actual = port6
		}
		break
	}
	if v4 == nil && v6 == nil {
		return nil, 0, fmt.Errorf("udpbind: open: no IPv4 or IPv6: %w", unix.EAFNOSUPPORT)
	}
	if b.mark != 0 {
		if err := errors.Join(v4.setMark(b.mark), v6.setMark(b.mark)); err != nil {
			v4.close()
			v6.close()
			return nil, 0, err
		}
	}

	var fns []conn.ReceiveFunc
	if v4 != nil {
		fns = append(fns, b.makeReceiveIPv4(newReceiver(v4, b)))
	}
	if v6 != nil {
		fns = append(fns, b.makeReceiveIPv6(newReceiver(v6, b)))
	}
	b.v4, b.v6, b.open = v4, v6, true
	return fns, actual, nil
}

// The names end in IPv4/IPv6 so conn.ReceiveFunc.PrettyName reports v4/v6.
func (b *Bind) makeReceiveIPv4(r *receiver) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		return r.receive(bufs, sizes, eps)
	}
}

func (b *Bind) makeReceiveIPv6(r *receiver) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		return r.receive(bufs, sizes, eps)
	}
}

// listen opens one socket with the options this Bind needs set before bind.
func (b *Bind) listen(network string, port uint16) (*socket, uint16, error) {
	is6 := network == "udp6"
	var optErr error
	lc := net.ListenConfig{
		Control: func(_, _ string, c syscall.RawConn) error {
			err := c.Control(func(fd uintptr) {
				optErr = setSockopts(int(fd), is6, b.opts)
			})
			return errors.Join(err, optErr)
		},
	}
	pc, err := lc.ListenPacket(context.Background(), network, ":"+strconv.Itoa(int(port)))
	if err != nil {
		return nil, 0, fmt.Errorf("udpbind: listen %s port %d: %w", network, port, err)
	}
	udp := pc.(*net.UDPConn)
	rc, err := udp.SyscallConn()
	if err != nil {
		udp.Close()
		return nil, 0, fmt.Errorf("udpbind: listen %s: %w", network, err)
	}
	actual := uint16(udp.LocalAddr().(*net.UDPAddr).Port)
	sk := &socket{pc: udp, rc: rc, is6: is6}
	if !b.opts.noGSO {
		// The kernel knows UDP_SEGMENT (Linux ≥ 4.18) when it can report
		// the socket's current segment size.
		rc.Control(func(fd uintptr) {
			_, err := unix.GetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT)
			sk.gso.Store(err == nil)
		})
	}
	if !b.opts.noGRO {
		// Best effort: a kernel without UDP_GRO (< 5.0) receives datagram
		// by datagram as before.
		rc.Control(func(fd uintptr) {
			sk.gro = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1) == nil
		})
	}
	return sk, actual, nil
}

// setSockopts runs before bind(2).
func setSockopts(fd int, is6 bool, o options) error {
	// Socket buffers: best effort. Plain SO_*BUF is clamped to
	// net.core.{r,w}mem_max; the FORCE variants need CAP_NET_ADMIN and
	// override it. Failure only costs throughput under bursts.
	if o.rcvBuf > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, o.rcvBuf)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, o.rcvBuf)
	}
	if o.sndBuf > 0 {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, o.sndBuf)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, o.sndBuf)
	}
	// PKTINFO tells us the local address each packet was sent to: the
	// source for replies. Required: without it replies can leave from the
	// wrong address.
	if !is6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
			return fmt.Errorf("udpbind: IP_PKTINFO: %w", err)
		}
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
		return fmt.Errorf("udpbind: IPV6_RECVPKTINFO: %w", err)
	}
	// IPv4 has its own socket; v4-mapped addresses would bypass it.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
		return fmt.Errorf("udpbind: IPV6_V6ONLY: %w", err)
	}
	// UDP_GRO is set after bind (listen), where it can fail softly.
	return nil
}

func (s *socket) close() error {
	if s == nil {
		return nil
	}
	return s.pc.Close()
}

func (s *socket) setMark(mark uint32) error {
	if s == nil {
		return nil
	}
	var opErr error
	err := s.rc.Control(func(fd uintptr) {
		opErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	})
	if err = errors.Join(err, opErr); err != nil {
		return fmt.Errorf("udpbind: SO_MARK: %w", err)
	}
	return nil
}

// Close closes both sockets. Every ReceiveFunc returned by Open then returns
// net.ErrClosed, and Send returns net.ErrClosed until the next Open.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := errors.Join(b.v4.close(), b.v6.close())
	b.v4, b.v6, b.open = nil, nil, false
	return err
}

// SetMark sets SO_MARK on both sockets, now and after every later Open.
func (b *Bind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mark = mark
	return errors.Join(b.v4.setMark(mark), b.v6.setMark(mark))
}

// BatchSize is conn.IdealBatchSize.
func (b *Bind) BatchSize() int { return conn.IdealBatchSize }

// ParseEndpoint parses s as ip:port (an IPv6 zone may be an interface name
// or index). The endpoint has no Src: replies to it leave from the kernel's
// chosen address until the peer's first packet arrives. v4-mapped addresses
// are unmapped.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	addr := ap.Addr().Unmap()
	var scope uint32
	if z := addr.Zone(); z != "" {
		if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			scope = uint32(n)
		} else if ifi, err := net.InterfaceByName(z); err == nil {
			scope = uint32(ifi.Index)
		} else {
			return nil, fmt.Errorf("udpbind: endpoint %q: unknown zone: %w", s, err)
		}
	}
	return &Endpoint{dst: netip.AddrPortFrom(addr, ap.Port()), scope: scope}, nil
}

// Send sends bufs to ep, an *Endpoint, from ep.Src() when known. If the
// kernel refuses that source (it is no longer a local address), the rest is
// sent once more without it. More than BatchSize
// bufs are sent in several sendmmsg batches.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	dst := e.dst.Addr().Unmap()
	b.mu.RLock()
	s, open := b.v4, b.open
	if dst.Is6() {
		s = b.v6
	}
	b.mu.RUnlock()
	if !open {
		return net.ErrClosed
	}
	if s == nil {
		return fmt.Errorf("udpbind: send to %v: %w", e.dst, unix.EAFNOSUPPORT)
	}

	tx := b.txPool.Get().(*txBatch)
	defer b.txPool.Put(tx)
	tx.setDst(dst, e.dst.Port(), e.scope)
	withSrc := tx.setSrc(dst, e.src, e.srcIf)
	for len(bufs) > 0 {
		chunk := bufs[:min(len(bufs), conn.IdealBatchSize)]
		bufs = bufs[len(chunk):]
		gso := s.gso.Load()
		tx.fill(chunk, withSrc, gso)
		err := tx.send(s.rc)
		if gso && errors.Is(err, unix.EIO) {
			// The egress device cannot segment UDP (no checksum
			// offload): send datagram by datagram from now on.
			s.gso.Store(false)
			b.gsoOff.Add(1)
			gso = false
			chunk = chunk[tx.unsent():]
			tx.release()
			tx.fill(chunk, withSrc, gso)
			err = tx.send(s.rc)
		}
		if withSrc && srcRefused(err) {
			// The address the peer sent to is gone; answer from
			// whatever the kernel picks rather than not at all.
			b.fallback.Add(1)
			withSrc = false
			chunk = chunk[tx.unsent():]
			tx.release()
			tx.fill(chunk, withSrc, gso)
			err = tx.send(s.rc)
		}
		tx.release()
		if err != nil {
			return err
		}
	}
	return nil
}

// srcRefused reports whether a sendmmsg error may mean the PKTINFO source
// address is not local: IPv4 routing fails with ENETUNREACH, IPv6 control
// message checks with EINVAL; EADDRNOTAVAIL for good measure. A genuine
// ENETUNREACH costs one more failing sendmmsg.
func srcRefused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENETUNREACH) ||
		errors.Is(err, unix.EADDRNOTAVAIL)
}
