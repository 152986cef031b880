package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// maxDatagram is the copy buffer per UDP direction: the largest datagram.
const maxDatagram = 64 << 10

var datagramBufs = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// handleUDP is the stack's UDP transport handler. gVisor calls it, on the
// goroutine that called Write, for a datagram that matches no endpoint:
// the first of a new (client src, dst) flow. It creates the flow's
// endpoint at once, so later datagrams queue in it while the real
// destination is dialed in the background.
//
// Returning false makes gVisor answer ICMP port unreachable (the
// transport dispatcher maps an unhandled packet to
// TransportPacketDestinationPortUnreachable); that is how refusals known
// here (a Local address, a cap) are answered. A dial that fails later is
// answered with an ICMP unreachable built from the first datagram.
func (s *Stack) handleUDP(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	src := netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)
	c := &s.stats.udp

	if !dst.Addr().IsGlobalUnicast() && !dst.Addr().IsLoopback() {
		// Multicast, broadcast, unspecified, link-local: nothing to
		// forward to, and ICMP errors must not answer them.
		s.stats.droppedIn.Add(1)
		return true
	}
	dns := s.isDNS(dst)
	if !dns && s.isLocal(dst.Addr()) {
		c.refusedLocal.Add(1)
		return false
	}
	client := s.clientOf(src.Addr())
	if !dns && s.overQuota(client) {
		c.refuse(refusedOverQuota)
		return false
	}
	if why := s.limits.acquire(client); why != admitted {
		s.refuse(c, why, "udp", src, dst)
		return false
	}
	if !s.enter() {
		s.limits.releasePending(client)
		return true
	}

	// The ICMP error for a failed dial quotes the first datagram.
	v := stack.PayloadSince(pkt.NetworkHeader())
	quote := append([]byte(nil), v.AsSlice()[:min(v.Size(), icmpv6MaxQuote)]...)
	v.Release()

	var wq waiter.Queue
	ep, terr := udp.NewForwarderRequest(s.stack, id, pkt).CreateEndpoint(&wq)
	if terr != nil {
		s.limits.releasePending(client)
		s.wg.Done()
		s.stats.droppedIn.Add(1)
		return true
	}
	in := gonet.NewUDPConn(&wq, ep)

	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.TCPDialTimeout)
		var out net.Conn
		var err error
		if dns {
			out, err = s.dialDNS(ctx, "udp")
		} else {
			out, err = s.cfg.Dialer.DialUDP(ctx, src, dst)
		}
		cancel()
		if err != nil {
			s.limits.releasePending(client)
			s.countDialError(c, err)
			in.Close()
			s.sendRaw(unreachable(quote, s.denied(err)))
			return
		}
		if why := s.limits.promote(client); why != admitted {
			s.refuse(c, why, "udp", src, dst)
			in.Close()
			out.Close()
			s.sendRaw(unreachable(quote, true))
			return
		}
		if dns {
			c.dns.Add(1)
		}
		c.total.Add(1)
		c.open.Add(1)
		f := &udpFlow{in: in, out: out}
		f.last.touch()
		if s.addFlow(f) {
			if f.relay(s.cfg.UDPIdleTimeout) {
				c.idle.Add(1)
			}
			s.removeFlow(f)
		}
		f.close()
		c.open.Add(-1)
		s.limits.releaseFlow(client)
	}()
	return true
}

// udpFlow relays datagrams between the client's endpoint (in) and a
// connected socket to the destination (out).
type udpFlow struct {
	in   *gonet.UDPConn
	out  net.Conn
	last atomicTime
	once sync.Once
}

func (f *udpFlow) close() {
	f.once.Do(func() {
		f.in.Close()
		f.out.Close()
	})
}

// relay copies datagrams both ways until either side fails or the flow is
// idle for idle. It reports whether the idle timeout ended it.
func (f *udpFlow) relay(idle time.Duration) bool {
	it := startIdleTimer(&f.last, func() time.Duration { return idle }, f.close)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		defer func() { done <- struct{}{} }()
		defer f.close()
		bp := datagramBufs.Get().(*[]byte)
		defer datagramBufs.Put(bp)
		buf := *bp
		for {
			n, err := src.Read(buf)
			if err != nil {
				// A connected UDP socket reports an ICMP port
				// unreachable from the destination as ECONNREFUSED on
				// the next call; the flow itself is still usable.
				if errors.Is(err, syscall.ECONNREFUSED) {
					continue
				}
				return
			}
			f.last.touch()
			if _, err := dst.Write(buf[:n]); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				return
			}
		}
	}
	go cp(f.out, f.in)
	go cp(f.in, f.out)
	<-done
	<-done
	return it.stop()
}
