package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// spliceBufSize is the largest copy buffer per direction: large enough
// that one read drains several MSS worth of gVisor's receive queue (or of
// the kernel socket) per system call / lock round. A flow whose buffer
// grant is smaller copies through a buffer of its grant's size.
const spliceBufSize = 256 << 10

// spliceBufs are pools of copy buffers by size: minGrant<<i bytes.
var spliceBufs [spliceClasses]sync.Pool

const spliceClasses = 5 // minGrant (16 KiB) .. spliceBufSize

func init() {
	if minGrant<<(spliceClasses-1) != spliceBufSize {
		panic("netstack: splice buffer classes do not end at spliceBufSize")
	}
	for i := range spliceBufs {
		size := minGrant << i
		spliceBufs[i].New = func() any { b := make([]byte, size); return &b }
	}
}

// spliceClass is the pool of the largest buffer not over size (at least
// minGrant).
func spliceClass(size int) int {
	i := 0
	for i+1 < spliceClasses && minGrant<<(i+1) <= size {
		i++
	}
	return i
}

// handleTCP is the tcp.Forwarder handler, run on a new goroutine per SYN.
// It hands the flow to a worker (see workers), which runs serveTCP for as
// long as the flow lives.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	if !s.enter() {
		r.Complete(true)
		return
	}
	s.work.run(func() {
		defer s.wg.Done()
		s.serveTCP(r)
	})
}

// serveTCP dials the real destination first and completes the client's
// handshake only when that succeeded; any refusal, error, timeout or cap
// answers RST, except a SYN refused for want of a dial slot, which is
// dropped for the client to send again (limits.go). Then it splices the two until both directions end.
func (s *Stack) serveTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	src := netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)
	c := &s.stats.tcp

	dns := s.isDNS(dst)
	if !dns && s.isLocal(dst.Addr()) {
		c.refusedLocal.Add(1)
		r.Complete(true)
		return
	}
	client := s.clientOf(src.Addr())
	if !dns && s.overQuota(client) {
		c.refuse(refusedOverQuota)
		r.Complete(true)
		return
	}
	if why := s.limits.acquire(client); why != admitted {
		s.refuse(c, why, "tcp", src, dst)
		r.Complete(!why.silent())
		return
	}

	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.TCPDialTimeout)
	var out net.Conn
	var err error
	if dns {
		out, err = s.dialDNS(ctx, "tcp")
	} else {
		out, err = s.cfg.Dialer.DialTCP(ctx, src, dst)
	}
	cancel()
	if err != nil {
		s.limits.releasePending(client)
		s.countDialError(c, err)
		r.Complete(true)
		return
	}
	if why := s.limits.promote(client); why != admitted {
		out.Close()
		s.refuse(c, why, "tcp", src, dst)
		r.Complete(true)
		return
	}

	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		// The client gave up (or sent RST) while we dialed.
		s.limits.releaseFlow(client)
		out.Close()
		r.Complete(true)
		return
	}
	r.Complete(false)
	// Keepalive on the client side is left to the client; the idle
	// timeouts below bound dead flows.
	grant := s.limits.grant(client)
	defer s.limits.ungrant(client, grant)
	if grant < maxGrant {
		// The client's budget runs low: small buffers both ways, so
		// neither a client that stops reading nor an origin that does
		// makes the node hold more than the grant in gVisor's queues.
		// (Setting them turns off their auto-tuning, which only full
		// grants keep.)
		c.smallBuffers.Add(1)
		ep.SocketOptions().SetSendBufferSize(int64(grant), true)
		if grant < tcpRXBufDef {
			ep.SocketOptions().SetReceiveBufferSize(int64(grant), true)
		}
	}
	in := gonet.NewTCPConn(&wq, ep)

	if dns {
		c.dns.Add(1)
	}
	c.total.Add(1)
	c.open.Add(1)
	f := &tcpFlow{in: in, ep: ep, out: out, buf: spliceClass(min(grant, spliceBufSize))}
	f.last.touch()
	if !s.addFlow(f) {
		f.close()
		c.open.Add(-1)
		s.limits.releaseFlow(client)
		return
	}
	switch f.splice(s.cfg.TCPIdleTimeout, s.cfg.TCPSilentTimeout, s.work.run) {
	case closedIdle:
		c.idle.Add(1)
	case closedSilent:
		c.silent.Add(1)
	}
	s.removeFlow(f)
	c.open.Add(-1)
	s.limits.releaseFlow(client)
}

// reopenTimeWait lets a client's SYN (p, an IP packet) open a new flow on
// a 4-tuple whose last flow the node's side closed first and still holds
// in TIME-WAIT. gVisor passes such a SYN only to a listening endpoint, and
// the forwarder is none, so it would be dropped until TIME-WAIT ends and
// the client would retry after 1 s, 3 s, ... Linux accepts a SYN in
// TIME-WAIT with a higher sequence number or timestamp; a client reusing
// its 4-tuple does exactly that (after a simultaneous close both sides
// are in TIME-WAIT, and Linux's tcp_tw_reuse reopens from its side within
// the second). Here the TIME-WAIT endpoint is aborted (its RST carries the
// old connection's sequence numbers, which the client's new connection
// does not accept) and the SYN then reaches the forwarder. Old duplicate
// SYNs, what TIME-WAIT guards against, do not occur inside the tunnel:
// WireGuard drops replays. A client can only take over its own 4-tuples:
// wireguard-go drops packets whose source is outside the sending peer's
// allowed IPs.
func (s *Stack) reopenTimeWait(proto tcpip.NetworkProtocolNumber, p []byte) {
	var ipLen int
	var src, dst tcpip.Address
	switch proto {
	case ipv4.ProtocolNumber:
		if len(p) < header.IPv4MinimumSize {
			return
		}
		ip := header.IPv4(p)
		ipLen = int(ip.HeaderLength())
		if ip.Protocol() != uint8(header.TCPProtocolNumber) || ip.More() || ip.FragmentOffset() != 0 || ipLen < header.IPv4MinimumSize {
			return
		}
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	default: // IPv6; SYNs behind extension headers are left alone
		if len(p) < header.IPv6MinimumSize {
			return
		}
		ip := header.IPv6(p)
		if ip.NextHeader() != uint8(header.TCPProtocolNumber) {
			return
		}
		ipLen = header.IPv6MinimumSize
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	if len(p) < ipLen+header.TCPMinimumSize {
		return
	}
	seg := header.TCP(p[ipLen:])
	if seg.Flags()&(header.TCPFlagSyn|header.TCPFlagAck|header.TCPFlagRst) != header.TCPFlagSyn {
		return
	}
	id := stack.TransportEndpointID{LocalPort: seg.DestinationPort(), LocalAddress: dst, RemotePort: seg.SourcePort(), RemoteAddress: src}
	ep, ok := s.stack.FindTransportEndpoint(proto, tcp.ProtocolNumber, id, nicID).(*tcp.Endpoint)
	if ok && ep.EndpointState() == tcp.StateTimeWait {
		ep.Abort()
		s.stats.tcpReopened.Add(1)
	}
}

// tcpFlow is a spliced pair: in is the client's connection (gVisor), out
// the real destination's.
type tcpFlow struct {
	in      *gonet.TCPConn
	ep      tcpip.Endpoint // in's
	out     net.Conn
	buf     int // spliceBufs class of the copy buffers
	last    atomicTime
	carried atomic.Bool // a byte went either way

	once sync.Once
}

// closedBy is what ended a flow.
type closedBy int

const (
	closedByPeer closedBy = iota // an end closed, reset or failed
	closedIdle                   // the idle timeout
	closedSilent                 // the timeout of flows that never carried a byte
)

func (f *tcpFlow) close() {
	f.once.Do(func() {
		f.in.Close()
		f.out.Close()
	})
}

// splice copies both ways until both directions end, half-closing each
// side as its peer finishes sending, and closes both. It reports whether
// one of the idle timeouts ended the flow: idle, or silent while no byte
// went either way. One direction is copied by the calling goroutine, the
// other by one that run starts.
func (f *tcpFlow) splice(idle, silent time.Duration, run func(func())) closedBy {
	limit := func() time.Duration {
		if f.carried.Load() {
			return idle
		}
		return silent
	}
	it := startIdleTimer(&f.last, limit, f.close)
	copyDir := func(dst, src net.Conn) {
		if err := f.copy(dst, src); err != nil {
			// A reset or error on either side ends the other too.
			f.close()
		}
	}
	done := make(chan struct{})
	run(func() {
		copyDir(f.out, f.in)
		close(done)
	})
	copyDir(f.in, f.out)
	<-done
	idled := it.stop()
	f.close()
	switch {
	case !idled:
		return closedByPeer
	case f.carried.Load() || silent >= idle:
		return closedIdle
	}
	return closedSilent
}

type closeWriter interface{ CloseWrite() error }

// copy moves src to dst until src's EOF, then half-closes dst. It returns
// nil on a clean EOF.
func (f *tcpFlow) copy(dst, src net.Conn) error {
	bp := spliceBufs[f.buf].Get().(*[]byte)
	defer spliceBufs[f.buf].Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			f.last.touch()
			if !f.carried.Load() {
				f.carried.Store(true)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				return rerr
			}
			if cw, ok := dst.(closeWriter); ok {
				if err := cw.CloseWrite(); err != nil {
					return err
				}
				return nil
			}
			return errors.New("netstack: cannot half-close")
		}
	}
}
