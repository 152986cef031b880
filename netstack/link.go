package netstack

import (
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// outQueueLen is how many packets the stack may queue for wireguard-go
// before it drops. wireguard-go reads up to its batch size (128) per call;
// a few batches absorb a burst from one TCP window opening without letting
// the queue (and the latency in it) grow without bound. A full queue drops
// the packet (ErrNoBufferSpace) and TCP recovers it like any loss.
const outQueueLen = 2048

// linkEndpoint is the NIC between gVisor and wireguard-go. Packets the
// stack emits are queued as packet buffers (one reference each) and copied
// out by Read; packets from wireguard-go are delivered synchronously by
// the caller of Write, through a GRO engine per Write (inBatch). It has no
// link header and needs no address resolution. It offers gVisor "host"
// GSO: TCP hands it segments of up to gsoMaxSize bytes, which read cuts
// into MTU-sized packets (gso.go), so wireguard-go still gets what it
// wants.
type linkEndpoint struct {
	mtu uint32

	// Used by read only (wireguard-go reads from one goroutine): a GSO
	// segment that did not fit the caller's remaining buffers, and the
	// buffer segments are flattened into before splitting.
	pending *stack.PacketBuffer
	scratch []byte

	out    chan *stack.PacketBuffer
	closed chan struct{} // closed by close
	once   sync.Once

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher

	onDrop func() // counts a packet dropped because the queue was full
}

var (
	_ stack.LinkEndpoint = (*linkEndpoint)(nil)
	_ stack.GSOEndpoint  = (*linkEndpoint)(nil)
)

// GSOMaxSize implements stack.GSOEndpoint.
func (*linkEndpoint) GSOMaxSize() uint32 { return gsoMaxSize }

// SupportedGSO implements stack.GSOEndpoint: segmentation is done here, in
// read, like a NIC doing TSO.
func (*linkEndpoint) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

func newLinkEndpoint(mtu uint32, onDrop func()) *linkEndpoint {
	return &linkEndpoint{
		mtu:    mtu,
		out:    make(chan *stack.PacketBuffer, outQueueLen),
		closed: make(chan struct{}),
		onDrop: onDrop,
	}
}

// ipProto returns the network protocol of a raw IP packet from its version
// nibble; false for anything but IPv4 and IPv6.
func ipProto(p []byte) (tcpip.NetworkProtocolNumber, bool) {
	switch p[0] >> 4 {
	case 4:
		return ipv4.ProtocolNumber, true
	case 6:
		return ipv6.ProtocolNumber, true
	}
	return 0, false
}

// An inBatch delivers the packets of one tun.Device Write (one batch
// wireguard-go decrypted for one peer) through gVisor's GRO, as a NIC's
// GRO would: consecutive full-sized segments of one TCP flow in the batch
// become one segment of up to 64 KiB, so the stack's per-segment work
// (IP and TCP demux, the endpoint's queue, one ACK decision) is paid once
// per train instead of once per packet. Only segments within one batch are
// merged, so nothing waits for a timer; gVisor's rules decide what merges
// (same flow, in sequence, same size and options, no SYN/FIN/RST/URG/PSH).
// wireguard-go writes from one goroutine per peer, so each Write takes its
// own engine from a pool. The batch is the engine's Dispatcher: it counts
// what it passes on to the NIC's dispatcher d.
type inBatch struct {
	g gro.GRO
	d stack.NetworkDispatcher
	n int // packets handed to d
}

var groPool = sync.Pool{New: func() any {
	b := new(inBatch)
	b.g.Init(true)
	b.g.Dispatcher = b
	return b
}}

// DeliverNetworkPacket implements stack.NetworkDispatcher for the GRO
// engine: it counts and passes on.
func (b *inBatch) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	b.n++
	b.d.DeliverNetworkPacket(proto, pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (b *inBatch) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	b.d.DeliverLinkPacket(proto, pkt)
}

// beginIn starts a batch; false when the NIC is not attached (stack
// closing). The batch must be ended with end.
func (e *linkEndpoint) beginIn() (*inBatch, bool) {
	e.mu.RLock()
	d := e.dispatcher
	e.mu.RUnlock()
	if d == nil {
		return nil, false
	}
	b := groPool.Get().(*inBatch)
	b.d = d
	return b, true
}

// deliver copies the raw IP packet p into a packet buffer and hands it to
// the batch's GRO, which delivers it now or at end.
func (b *inBatch) deliver(proto tcpip.NetworkProtocolNumber, p []byte) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
	pkt.NetworkProtocolNumber = proto
	// Authenticated by WireGuard (see Capabilities): GRO need not verify
	// the checksums it is about to make stale.
	pkt.RXChecksumValidated = true
	b.g.Enqueue(pkt)
	pkt.DecRef()
}

// end delivers what the batch still holds and returns its engine to the
// pool. gVisor's GRO.Flush delivers only the first held packet of each
// bucket (removing one resets the list links it walks), so end flushes
// until a round delivers nothing: then every bucket is empty.
func (b *inBatch) end() {
	for {
		n := b.n
		b.g.Flush()
		if b.n == n {
			break
		}
	}
	b.d, b.n = nil, 0
	groPool.Put(b)
}

// enqueue queues a packet for Read, taking one reference.
func (e *linkEndpoint) enqueue(pkt *stack.PacketBuffer) bool {
	select {
	case <-e.closed:
		return false
	default:
	}
	p := pkt.IncRef()
	select {
	case e.out <- p:
		return true
	default:
		p.DecRef()
		if e.onDrop != nil {
			e.onDrop()
		}
		return false
	}
}

// read blocks for one packet, then takes as many more as are queued, up to
// len(bufs), copying each at offset. Packets that do not fit a buffer are
// dropped. It returns ok=false once the endpoint is closed.
func (e *linkEndpoint) read(bufs [][]byte, sizes []int, offset int) (n int, ok bool) {
	pkt := e.pending
	e.pending = nil
	if pkt == nil {
		select {
		case pkt = <-e.out:
		case <-e.closed:
			return 0, false
		}
	}
	for {
		if isTCPGSO(pkt) {
			if n > 0 && n+maxSegments(pkt, e.mtu) > len(bufs) {
				e.pending = pkt // next Read starts with it
				return n, true
			}
			m, err := e.split(pkt, bufs[n:], sizes[n:], offset)
			if err == nil {
				n += m
			} else if e.onDrop != nil {
				e.onDrop()
			}
		} else if copyOut(pkt, bufs[n][offset:], &sizes[n]) {
			n++
		} else if e.onDrop != nil {
			e.onDrop()
		}
		pkt.DecRef()
		if n == len(bufs) {
			return n, true
		}
		select {
		case pkt = <-e.out:
			continue
		default:
		}
		if n > 0 {
			return n, true
		}
		// Everything taken so far was dropped: block again.
		select {
		case pkt = <-e.out:
		case <-e.closed:
			return 0, false
		}
	}
}

// isTCPGSO reports whether pkt came from a TCP endpoint using the link's
// GSO: it may be larger than the MTU and its checksum is only partial,
// whatever its size.
func isTCPGSO(pkt *stack.PacketBuffer) bool {
	t := pkt.GSOOptions.Type
	return t == stack.GSOTCPv4 || t == stack.GSOTCPv6
}

// maxSegments bounds how many packets split makes of pkt (headers are at
// least 40 bytes).
func maxSegments(pkt *stack.PacketBuffer, mtu uint32) int {
	return tcpSegments(pkt.Size(), 40, gsoMSS(pkt, mtu))
}

func gsoMSS(pkt *stack.PacketBuffer, mtu uint32) int {
	if mss := int(pkt.GSOOptions.MSS); mss > 0 {
		return mss
	}
	return int(mtu) - 40
}

// split flattens pkt and cuts it into packets in bufs.
func (e *linkEndpoint) split(pkt *stack.PacketBuffer, bufs [][]byte, sizes []int, offset int) (int, error) {
	size := pkt.Size()
	if cap(e.scratch) < size {
		e.scratch = make([]byte, size, max(size, gsoMaxSize+header.IPv6MinimumSize+60))
	}
	flat := e.scratch[:size]
	off := 0
	for _, s := range pkt.AsSlices() {
		off += copy(flat[off:], s)
	}
	return splitTCP(flat, gsoMSS(pkt, e.mtu), bufs, sizes, offset)
}

func copyOut(pkt *stack.PacketBuffer, dst []byte, size *int) bool {
	if pkt.Size() > len(dst) {
		return false
	}
	off := 0
	for _, s := range pkt.AsSlices() {
		off += copy(dst[off:], s)
	}
	*size = off
	return true
}

func (e *linkEndpoint) close() {
	e.once.Do(func() { close(e.closed) })
	for {
		select {
		case p := <-e.out:
			p.DecRef()
		default:
			return
		}
	}
}

// WritePackets implements stack.LinkWriter.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if !e.enqueue(pkt) {
			if n == 0 {
				return 0, &tcpip.ErrNoBufferSpace{}
			}
			break
		}
		n++
	}
	return n, nil
}

// MTU implements stack.NetworkLinkEndpoint. It is the tunnel MTU, so TCP's
// MSS is MTU-40 (IPv4) or MTU-60 (IPv6) and no packet needs fragmenting.
func (e *linkEndpoint) MTU() uint32 { return e.mtu }

// SetMTU implements stack.NetworkLinkEndpoint; the MTU is fixed by Config.
func (e *linkEndpoint) SetMTU(uint32) {}

// MaxHeaderLength implements stack.NetworkLinkEndpoint: no link header.
func (*linkEndpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.NetworkLinkEndpoint: a point-to-point link.
func (*linkEndpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.NetworkLinkEndpoint.
func (*linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.NetworkLinkEndpoint. The stack computes
// outbound checksums (the peers verify them). Inbound, the NIC marks every
// packet checksum-validated (CapabilityRXChecksumOffload), as Linux's
// WireGuard marks what it decrypted CHECKSUM_UNNECESSARY: the tunnel
// authenticated every byte, so nothing was corrupted on the way, and a
// client that sends bad checksums of its own only breaks its own flows.
// It is also what lets inBatch's GRO merge segments: a merged segment's
// IP and TCP checksums are stale, and the stack must not check them.
func (*linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

// Attach implements stack.NetworkLinkEndpoint.
func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	e.dispatcher = d
	e.mu.Unlock()
}

// IsAttached implements stack.NetworkLinkEndpoint.
func (e *linkEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait implements stack.NetworkLinkEndpoint: no goroutines of its own.
func (*linkEndpoint) Wait() {}

// ARPHardwareType implements stack.NetworkLinkEndpoint.
func (*linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.NetworkLinkEndpoint.
func (*linkEndpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.NetworkLinkEndpoint.
func (*linkEndpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.NetworkLinkEndpoint.
func (e *linkEndpoint) Close() { e.close() }

// SetOnCloseAction implements stack.NetworkLinkEndpoint.
func (*linkEndpoint) SetOnCloseAction(func()) {}
