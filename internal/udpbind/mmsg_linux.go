package udpbind

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// mmsghdr is struct mmsghdr from <sys/socket.h>; Go pads it like C does.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// rxOOBSize is the control buffer per received message: an IPV6_PKTINFO
// (the larger PKTINFO, 40 bytes with its header) and a UDP_GRO segment
// size (24), with room to spare.
const rxOOBSize = 128

// groBufSize is one message's buffer with UDP GRO: the kernel coalesces at
// most 64 KiB.
const groBufSize = 1 << 16

// receiver is the state of one socket's ReceiveFunc. wireguard-go calls each
// ReceiveFunc from one goroutine; mu serializes any other callers.
type receiver struct {
	mu    sync.Mutex
	sock  *socket
	bind  *Bind
	hs    [conn.IdealBatchSize]mmsghdr
	iovs  [conn.IdealBatchSize]unix.Iovec
	names [conn.IdealBatchSize]unix.RawSockaddrInet6
	oob   []byte // rxOOBSize per datagram

	// recvmmsg arguments and results, for readFn (bound once so RawConn.Read
	// does not allocate a closure per call).
	vlen   int
	n      int
	errno  syscall.Errno
	readFn func(fd uintptr) bool

	cache endpointCache

	// With UDP GRO (sock.gro) messages are read into rx (allocated on
	// first use) and cut into the caller's buffers, a datagram each; what
	// does not fit waits for the next call: messages next..got-1, the
	// first of them from byte off.
	rx             [][]byte
	rxSize, rxSeg  [conn.IdealBatchSize]int // bytes; segment size, 0 for one datagram
	rxEP           [conn.IdealBatchSize]*Endpoint
	next, got, off int
}

func newReceiver(s *socket, b *Bind) *receiver {
	r := &receiver{
		sock:  s,
		bind:  b,
		oob:   make([]byte, conn.IdealBatchSize*rxOOBSize),
		cache: endpointCache{m: make(map[epKey]*Endpoint), max: b.opts.cacheSize},
	}
	for i := range r.hs {
		h := &r.hs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Control = &r.oob[i*rxOOBSize]
	}
	r.readFn = r.read
	return r
}

func (r *receiver) read(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd,
			uintptr(unsafe.Pointer(&r.hs[0])), uintptr(r.vlen), 0, 0, 0)
		switch e {
		case 0:
			r.n, r.errno = int(n), 0
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait for the socket to become readable
		default:
			r.n, r.errno = 0, e
			return true
		}
	}
}

// receive is a conn.ReceiveFunc.
func (r *receiver) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sock.gro {
		return r.receiveGRO(bufs, sizes, eps)
	}

	r.vlen = min(len(bufs), len(r.hs))
	if r.vlen == 0 {
		return 0, nil
	}
	for i := range r.vlen {
		r.iovs[i].Base = unsafe.SliceData(bufs[i])
		r.iovs[i].SetLen(len(bufs[i]))
		h := &r.hs[i]
		h.hdr.Namelen = unix.SizeofSockaddrInet6
		h.hdr.SetControllen(rxOOBSize)
		h.hdr.Flags = 0
		h.len = 0
	}
	err := r.sock.rc.Read(r.readFn)
	for i := range r.vlen {
		r.iovs[i].Base = nil // don't keep the caller's buffers alive
	}
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			return 0, net.ErrClosed
		}
		return 0, err
	}
	if r.errno != 0 {
		return 0, os.NewSyscallError("recvmmsg", r.errno)
	}

	for i := range r.n {
		h := &r.hs[i]
		if h.hdr.Flags&unix.MSG_TRUNC != 0 {
			sizes[i] = 0 // longer than the buffer: drop
			continue
		}
		sizes[i] = int(h.len)
		k, _ := r.key(i, int(h.hdr.Controllen))
		eps[i] = r.cache.get(k, r.bind)
	}
	return r.n, nil
}

// receiveGRO hands out the datagrams of messages already read, reading
// more (blocking) only when none are left. Every datagram of a message
// shares its endpoint: the kernel only coalesces datagrams of one flow.
func (r *receiver) receiveGRO(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	r.skipDone()
	if r.next == r.got {
		if err := r.readGRO(min(len(bufs), len(r.hs))); err != nil {
			return 0, err
		}
		r.skipDone() // empty and dropped messages
	}
	n := 0
	for n < len(bufs) && r.next < r.got {
		i := r.next
		size, seg := r.rxSize[i], r.rxSeg[i]
		if seg <= 0 {
			seg = size
		}
		end := min(r.off+seg, size)
		d := r.rx[i][r.off:end]
		r.off = end
		if len(d) > len(bufs[n]) {
			sizes[n] = 0 // longer than the caller's buffer: drop
		} else {
			sizes[n] = copy(bufs[n], d)
		}
		eps[n] = r.rxEP[i]
		n++
		r.skipDone()
	}
	return n, nil
}

// skipDone moves next past messages with nothing left to hand out.
func (r *receiver) skipDone() {
	for r.next < r.got && r.off >= r.rxSize[r.next] {
		r.next, r.off = r.next+1, 0
	}
}

// readGRO reads up to vlen messages into rx.
func (r *receiver) readGRO(vlen int) error {
	if r.rx == nil {
		slab := make([]byte, len(r.hs)*groBufSize)
		r.rx = make([][]byte, len(r.hs))
		for i := range r.rx {
			r.rx[i] = slab[i*groBufSize : (i+1)*groBufSize : (i+1)*groBufSize]
		}
	}
	r.vlen = vlen
	for i := range vlen {
		r.iovs[i].Base = &r.rx[i][0]
		r.iovs[i].SetLen(groBufSize)
		h := &r.hs[i]
		h.hdr.Namelen = unix.SizeofSockaddrInet6
		h.hdr.SetControllen(rxOOBSize)
		h.hdr.Flags = 0
		h.len = 0
	}
	r.next, r.got, r.off = 0, 0, 0
	if err := r.sock.rc.Read(r.readFn); err != nil {
		if errors.Is(err, net.ErrClosed) {
			return net.ErrClosed
		}
		return err
	}
	if r.errno != 0 {
		return os.NewSyscallError("recvmmsg", r.errno)
	}
	for i := range r.n {
		h := &r.hs[i]
		r.rxSize[i], r.rxSeg[i], r.rxEP[i] = 0, 0, nil
		// A truncated control message may have lost the segment size:
		// the message cannot be cut, so it is dropped like a truncated one.
		if h.hdr.Flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			continue
		}
		k, seg := r.key(i, int(h.hdr.Controllen))
		size := int(h.len)
		r.rxSize[i], r.rxSeg[i], r.rxEP[i] = size, seg, r.cache.get(k, r.bind)
		if seg > 0 && size > seg {
			r.bind.groMsgs.Add(1)
			r.bind.groDgms.Add(uint64((size + seg - 1) / seg))
		}
	}
	r.got = r.n
	return nil
}

// key parses message i's remote address and PKTINFO, and the segment size
// of a UDP GRO message (0 for a single datagram).
func (r *receiver) key(i, oobLen int) (k epKey, seg int) {
	sa := &r.names[i]
	port := ntohs(sa.Port)
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		k.dst = netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	} else {
		k.dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
		k.scope = sa.Scope_id
	}

	oob := r.oob[i*rxOOBSize:][:min(oobLen, rxOOBSize)]
	for len(oob) >= unix.SizeofCmsghdr {
		hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		oob = rest
		switch {
		case hdr.Level == unix.IPPROTO_IP && hdr.Type == unix.IP_PKTINFO &&
			len(data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst;
			// in_addr ipi_addr; }. For a unicast datagram to a local
			// address ipi_spec_dst is the header's destination; for
			// broadcast it is an address of the interface, a usable
			// source where the header's is not.
			src := netip.AddrFrom4([4]byte(data[4:8]))
			if src.IsUnspecified() {
				src = netip.AddrFrom4([4]byte(data[8:12]))
			}
			k.src = src
		case hdr.Level == unix.IPPROTO_IPV6 && hdr.Type == unix.IPV6_PKTINFO &&
			len(data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo { in6_addr ipi6_addr; int ipi6_ifindex; }
			src := netip.AddrFrom16([16]byte(data[0:16])).Unmap()
			k.src = src
			if src.Is6() && src.IsLinkLocalUnicast() {
				// A link-local source is ambiguous without its
				// interface; anything else routes normally.
				k.srcIf = int32(binary.NativeEndian.Uint32(data[16:20]))
			}
		case hdr.Level == unix.SOL_UDP && hdr.Type == unix.UDP_GRO && len(data) >= 4:
			seg = int(int32(binary.NativeEndian.Uint32(data[:4])))
		}
	}
	if k.src.IsValid() && k.src.Is4() != k.dst.Addr().Is4() {
		k.src, k.srcIf = netip.Addr{}, 0
	}
	return k, seg
}

// ntohs reads a network-order port stored in a uint16 field.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// htons is ntohs's inverse (the same swap).
func htons(p uint16) uint16 { return ntohs(p) }

// epKey identifies an Endpoint: the peer and the local address it sent to.
type epKey struct {
	dst   netip.AddrPort // no zone; see scope
	src   netip.Addr
	scope uint32
	srcIf int32
}

// endpointCache maps keys to shared immutable Endpoints, so receiving from a
// known peer does not allocate. Guarded by its receiver's mu.
type endpointCache struct {
	m   map[epKey]*Endpoint
	max int
}

func (c *endpointCache) get(k epKey, b *Bind) *Endpoint {
	if e, ok := c.m[k]; ok {
		return e
	}
	if len(c.m) >= c.max {
		clear(c.m) // bounded memory under address churn or spoofing
		b.resets.Add(1)
	}
	e := &Endpoint{dst: k.dst, src: k.src, scope: k.scope, srcIf: k.srcIf}
	if k.scope != 0 {
		e.dst = netip.AddrPortFrom(k.dst.Addr().WithZone(zoneName(k.scope)), k.dst.Port())
	}
	c.m[k] = e
	return e
}

// zoneName names interface index i for an IPv6 zone.
func zoneName(i uint32) string {
	if ifi, err := net.InterfaceByIndex(int(i)); err == nil {
		return ifi.Name
	}
	return strconv.FormatUint(uint64(i), 10)
}

// txBatch is the sendmmsg state of one Send. All datagrams share one
// destination and one source, hence one sockaddr and one control message.
type txBatch struct {
	hs   [conn.IdealBatchSize]mmsghdr
	iovs [conn.IdealBatchSize]unix.Iovec
	name unix.RawSockaddrInet6
	nlen uint32
	oob  []byte // one IP_PKTINFO or IPV6_PKTINFO; len 0 when no source

	// With UDP GSO, one message carries several datagrams (one iovec
	// each, all gsoSize long but the last); its control message adds
	// UDP_SEGMENT. msgOOB holds each message's control message, first[i]
	// the index in bufs of message i's first datagram.
	msgOOB [conn.IdealBatchSize][txOOBSize]byte
	first  [conn.IdealBatchSize]int

	// sendmmsg progress, for writeFn (bound once so RawConn.Write does not
	// allocate a closure per call).
	start, vlen int
	nbufs       int
	errno       syscall.Errno
	writeFn     func(fd uintptr) bool
}

func newTxBatch() *txBatch {
	t := &txBatch{oob: make([]byte, 0, unix.CmsgSpace(unix.SizeofInet6Pktinfo))}
	t.writeFn = t.write
	return t
}

func (t *txBatch) setDst(a netip.Addr, port uint16, scope uint32) {
	t.name = unix.RawSockaddrInet6{}
	if a.Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&t.name))
		sa4.Family = unix.AF_INET
		sa4.Port = htons(port)
		sa4.Addr = a.As4()
		t.nlen = unix.SizeofSockaddrInet4
		return
	}
	t.name.Family = unix.AF_INET6
	t.name.Port = htons(port)
	t.name.Addr = a.As16()
	t.name.Scope_id = scope
	t.nlen = unix.SizeofSockaddrInet6
}

// setSrc builds the PKTINFO control message selecting src as the source
// address, ifindex 0 (routing as usual) unless src is IPv6 link-local. It
// reports whether there is one: src must be valid and of dst's family.
func (t *txBatch) setSrc(dst, src netip.Addr, srcIf int32) bool {
	t.oob = t.oob[:0]
	src = src.Unmap()
	if !src.IsValid() || src.IsUnspecified() || src.Is4() != dst.Is4() {
		return false
	}
	if src.Is4() {
		t.oob = t.oob[:unix.CmsgSpace(unix.SizeofInet4Pktinfo)]
		clear(t.oob)
		h := (*unix.Cmsghdr)(unsafe.Pointer(&t.oob[0]))
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&t.oob[unix.CmsgLen(0)]))
		info.Spec_dst = src.As4()
		return true
	}
	t.oob = t.oob[:unix.CmsgSpace(unix.SizeofInet6Pktinfo)]
	clear(t.oob)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&t.oob[0]))
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&t.oob[unix.CmsgLen(0)]))
	info.Addr = src.As16()
	info.Ifindex = uint32(srcIf)
	return true
}

// GSO limits: at most 64 datagrams per message (the kernel's
// UDP_MAX_SEGMENTS is 128 on new kernels), and a whole GSO packet, link
// header included, below the device's gso_max_size (64 KiB by default).
// The kernel checks the frame (skb->len at transmit, Ethernet header and
// all) against gso_max_size and segments a larger one in software before
// the device: the datagrams still leave, but one by one, and the peer's
// GRO gets no train. wireguard-go's StdNetBind stops at what one IP
// datagram can hold (65,507 bytes), which 46 datagrams of 1,424 bytes
// (a 1,392-byte inner packet) reach: the frame is then 65,546 bytes, and
// every full batch was segmented. linkRoom leaves space for an Ethernet
// header with VLAN tags and more.
const (
	maxGSOSegments    = 64
	gsoMaxSize        = 1 << 16
	linkRoom          = 64
	maxIPv4PayloadLen = gsoMaxSize - 1 - linkRoom - 20 - 8
	maxIPv6PayloadLen = gsoMaxSize - 1 - linkRoom - 40 - 8
	txOOBSize         = 64 // CmsgSpace(IPV6_PKTINFO) + CmsgSpace(UDP_SEGMENT)
)

// fill prepares the messages for bufs. With gso, runs of datagrams of one
// size (the last of a run may be shorter) share a message, so the kernel
// builds one GSO packet instead of walking its UDP path per datagram; the
// receiver's GRO keeps it whole up to its socket.
func (t *txBatch) fill(bufs [][]byte, withSrc, gso bool) {
	maxPayload := maxIPv4PayloadLen
	if t.name.Family == unix.AF_INET6 {
		maxPayload = maxIPv6PayloadLen
	}
	n := 0
	for i := 0; i < len(bufs); {
		seg, k, total := len(bufs[i]), 1, len(bufs[i])
		for gso && i+k < len(bufs) && k < maxGSOSegments {
			l := len(bufs[i+k])
			if l > seg || total+l > maxPayload {
				break
			}
			k++
			total += l
			if l < seg {
				break // a shorter datagram must end the message
			}
		}
		for j := i; j < i+k; j++ {
			t.iovs[j].Base = unsafe.SliceData(bufs[j])
			t.iovs[j].SetLen(len(bufs[j]))
		}
		h := &t.hs[n].hdr
		*h = unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&t.name)),
			Namelen: t.nlen,
			Iov:     &t.iovs[i],
		}
		h.SetIovlen(k)
		oob := t.msgOOB[n][:0]
		if withSrc {
			oob = append(oob, t.oob...)
		}
		if k > 1 {
			off := len(oob)
			oob = oob[:off+unix.CmsgSpace(2)]
			clear(oob[off:])
			c := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
			c.Level, c.Type = unix.SOL_UDP, unix.UDP_SEGMENT
			c.SetLen(unix.CmsgLen(2))
			*(*uint16)(unsafe.Pointer(&oob[off+unix.CmsgLen(0)])) = uint16(seg)
		}
		if len(oob) > 0 {
			h.Control = &oob[0]
			h.SetControllen(len(oob))
		}
		t.first[n] = i
		n++
		i += k
	}
	t.start, t.vlen, t.nbufs = 0, n, len(bufs)
}

// unsent returns the index in the filled bufs of the first datagram not
// yet sent.
func (t *txBatch) unsent() int {
	if t.start >= t.vlen {
		return t.nbufs
	}
	return t.first[t.start]
}

// release drops references to the caller's buffers before pooling.
func (t *txBatch) release() {
	for i := range t.nbufs {
		t.iovs[i].Base = nil
	}
}

// send writes datagrams start..vlen, resuming after partial writes.
func (t *txBatch) send(rc syscall.RawConn) error {
	t.errno = 0
	err := rc.Write(t.writeFn)
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			return net.ErrClosed
		}
		return err
	}
	if t.errno != 0 {
		return os.NewSyscallError("sendmmsg", t.errno)
	}
	return nil
}

func (t *txBatch) write(fd uintptr) bool {
	for t.start < t.vlen {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd,
			uintptr(unsafe.Pointer(&t.hs[t.start])), uintptr(t.vlen-t.start), 0, 0, 0)
		switch e {
		case 0:
			t.start += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false // socket buffer full: wait until writable
		default:
			t.errno = e
			return true
		}
	}
	return true
}
