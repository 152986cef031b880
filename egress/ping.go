package egress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const (
	protoICMP   = 1
	protoICMPv6 = 58
)

// Modes of a pingFamily, decided by the first ping.
const (
	modeUnknown int32 = iota
	modeDgram         // unprivileged SOCK_DGRAM ICMP socket per ping
	modeRaw           // one shared raw socket, demultiplexed by id/seq
)

// pinger sends echo requests for both families. It applies no ACL.
type pinger struct {
	v4, v6 *pingFamily
}

func newPinger(src4, src6 netip.Addr) *pinger {
	return &pinger{v4: newPingFamily(false, src4), v6: newPingFamily(true, src6)}
}

// ping sends one echo request to dst (unmapped) and waits for its reply
// until ctx ends.
func (p *pinger) ping(ctx context.Context, dst netip.Addr, data []byte) error {
	if dst.Is4() {
		return p.v4.ping(ctx, dst, data)
	}
	return p.v6.ping(ctx, dst, data)
}

// pingFamily pings one address family. It first tries a datagram ICMP
// socket (kernel-assigned identifier, kernel demultiplexing), which
// net.ipv4.ping_group_range may forbid even to root; then it uses a raw
// socket shared by all pings in flight.
type pingFamily struct {
	v6   bool
	src  netip.Addr // zero: unbound
	mode atomic.Int32
	seq  atomic.Uint32 // sequence numbers for datagram sockets
	raw  rawPinger
}

func newPingFamily(v6 bool, src netip.Addr) *pingFamily {
	f := &pingFamily{v6: v6, src: src}
	f.raw = rawPinger{
		fam:     f,
		waiters: make(map[echoKey]*waiter),
		next:    rand.Uint32(),
	}
	return f
}

func (f *pingFamily) proto() int {
	if f.v6 {
		return protoICMPv6
	}
	return protoICMP
}

func (f *pingFamily) typeRequest() icmp.Type {
	if f.v6 {
		return ipv6.ICMPTypeEchoRequest
	}
	return ipv4.ICMPTypeEcho
}

func (f *pingFamily) typeReply() icmp.Type {
	if f.v6 {
		return ipv6.ICMPTypeEchoReply
	}
	return ipv4.ICMPTypeEchoReply
}

// laddr is the address the ping sockets bind.
func (f *pingFamily) laddr() string {
	switch {
	case f.src.IsValid():
		return f.src.String()
	case f.v6:
		return "::"
	}
	return "0.0.0.0"
}

// errNoDgram says datagram ICMP sockets are not permitted here.
var errNoDgram = errors.New("egress: datagram ICMP sockets unavailable")

func (f *pingFamily) ping(ctx context.Context, dst netip.Addr, data []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("egress: ping %s: %w", dst, err)
	}
	switch f.mode.Load() {
	case modeDgram:
		return f.pingDgram(ctx, dst, data)
	case modeRaw:
		return f.raw.ping(ctx, dst, data)
	}
	err := f.pingDgram(ctx, dst, data)
	if errors.Is(err, errNoDgram) {
		f.mode.Store(modeRaw)
		return f.raw.ping(ctx, dst, data)
	}
	f.mode.Store(modeDgram)
	return err
}

func marshalEcho(typ icmp.Type, id, seq uint16, data []byte) ([]byte, error) {
	m := icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(id), Seq: int(seq), Data: data}}
	// Checksum: computed here for ICMP; for ICMPv6 the kernel fills it in
	// (raw and datagram ICMPv6 sockets both do).
	b, err := m.Marshal(nil)
	if err != nil {
		return nil, fmt.Errorf("egress: building echo request: %w", err)
	}
	return b, nil
}

// parseReply returns the echo body of b when b is an echo reply.
func (f *pingFamily) parseReply(b []byte) (*icmp.Echo, bool) {
	m, err := icmp.ParseMessage(f.proto(), b)
	if err != nil || m.Type != f.typeReply() {
		return nil, false
	}
	e, ok := m.Body.(*icmp.Echo)
	return e, ok
}

func peerAddr(a net.Addr) netip.Addr {
	var ip net.IP
	switch v := a.(type) {
	case *net.UDPAddr:
		ip = v.IP
	case *net.IPAddr:
		ip = v.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}

func timeoutErr(ctx context.Context, dst netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("egress: ping %s: no reply: %w", dst, err)
	}
	// A read deadline taken from ctx can fire just before ctx itself.
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return fmt.Errorf("egress: ping %s: no reply: %w", dst, context.DeadlineExceeded)
	}
	return fmt.Errorf("egress: ping %s: no reply", dst)
}

// pingDgram pings through a datagram ICMP socket of its own. The kernel
// sets the identifier and only delivers replies carrying it.
func (f *pingFamily) pingDgram(ctx context.Context, dst netip.Addr, data []byte) error {
	network := "udp4"
	if f.v6 {
		network = "udp6"
	}
	c, err := icmp.ListenPacket(network, f.laddr())
	if err != nil {
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EPROTONOSUPPORT) {
			return fmt.Errorf("%w: %w", errNoDgram, err)
		}
		return fmt.Errorf("egress: ping %s: %w", dst, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	seq := uint16(f.seq.Add(1))
	b, err := marshalEcho(f.typeRequest(), 0, seq, data)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(b, &net.UDPAddr{IP: dst.AsSlice(), Zone: dst.Zone()}); err != nil {
		return fmt.Errorf("egress: ping %s: %w", dst, err)
	}
	buf := make([]byte, len(b)+64)
	for {
		n, peer, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, syscall.ETIMEDOUT) || isTimeout(err) {
				return timeoutErr(ctx, dst)
			}
			return fmt.Errorf("egress: ping %s: %w", dst, err)
		}
		e, ok := f.parseReply(buf[:n])
		if ok && uint16(e.Seq) == seq && peerAddr(peer) == dst.WithZone("") && bytes.Equal(e.Data, data) {
			return nil
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// echoKey identifies one echo request on a shared raw socket.
type echoKey struct{ id, seq uint16 }

// waiter is one ping waiting for its reply.
type waiter struct {
	dst  netip.Addr
	data []byte
	got  chan struct{} // capacity 1
}

// rawPinger owns one raw ICMP socket and its reader goroutine while at
// least one ping is in flight; the last ping to finish closes the socket
// and waits for the reader to exit, so nothing outlives the pings.
type rawPinger struct {
	fam *pingFamily

	mu      sync.Mutex // guards the fields below
	conn    *icmp.PacketConn
	done    chan struct{} // closed when conn's reader exits
	refs    int
	waiters map[echoKey]*waiter
	next    uint32 // next key, id in the high half
}

func (r *rawPinger) ping(ctx context.Context, dst netip.Addr, data []byte) error {
	w := &waiter{dst: dst.WithZone(""), data: data, got: make(chan struct{}, 1)}
	c, key, err := r.acquire(w)
	if err != nil {
		return fmt.Errorf("egress: ping %s: %w", dst, err)
	}
	defer r.release(key)
	b, err := marshalEcho(r.fam.typeRequest(), key.id, key.seq, data)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice(), Zone: dst.Zone()}); err != nil {
		return fmt.Errorf("egress: ping %s: %w", dst, err)
	}
	select {
	case <-w.got:
		return nil
	case <-ctx.Done():
		return timeoutErr(ctx, dst)
	}
}

// acquire registers w under a fresh key and returns the shared socket,
// opening it (and starting its reader) when no ping is in flight.
func (r *rawPinger) acquire(w *waiter) (*icmp.PacketConn, echoKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		c, err := r.open()
		if err != nil {
			return nil, echoKey{}, err
		}
		r.conn, r.done = c, make(chan struct{})
		go r.read(c, r.done)
	}
	var key echoKey
	for {
		r.next++
		key = echoKey{id: uint16(r.next >> 16), seq: uint16(r.next)}
		if _, busy := r.waiters[key]; !busy {
			break
		}
	}
	r.waiters[key] = w
	r.refs++
	return r.conn, key, nil
}

// release unregisters key; the last one out closes the socket and waits
// for its reader to exit.
func (r *rawPinger) release(key echoKey) {
	r.mu.Lock()
	delete(r.waiters, key)
	r.refs--
	if r.refs > 0 {
		r.mu.Unlock()
		return
	}
	c, done := r.conn, r.done
	r.conn, r.done = nil, nil
	r.mu.Unlock()
	c.Close()
	<-done
}

func (r *rawPinger) open() (*icmp.PacketConn, error) {
	network := "ip4:icmp"
	if r.fam.v6 {
		network = "ip6:ipv6-icmp"
	}
	c, err := icmp.ListenPacket(network, r.fam.laddr())
	if err != nil {
		return nil, fmt.Errorf("raw ICMP socket (needs CAP_NET_RAW, or a net.ipv4.ping_group_range that includes this group): %w", err)
	}
	// Only echo replies are of interest; the filter saves the reader
	// from every other ICMP message the host receives.
	if r.fam.v6 {
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeEchoReply)
		err = c.IPv6PacketConn().SetICMPFilter(&f)
	} else {
		var f ipv4.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv4.ICMPTypeEchoReply)
		err = c.IPv4PacketConn().SetICMPFilter(&f)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("setting ICMP filter: %w", err)
	}
	return c, nil
}

// read delivers echo replies on c to their waiters until c is closed.
func (r *rawPinger) read(c *icmp.PacketConn, done chan struct{}) {
	defer close(done)
	buf := make([]byte, 64<<10)
	for {
		n, peer, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient receive error (for example ENOBUFS) loses
			// at most the packet that caused it.
			continue
		}
		e, ok := r.fam.parseReply(buf[:n])
		if !ok {
			continue
		}
		from := peerAddr(peer)
		r.mu.Lock()
		w := r.waiters[echoKey{id: uint16(e.ID), seq: uint16(e.Seq)}]
		if w != nil && w.dst == from && bytes.Equal(w.data, e.Data) {
			select {
			case w.got <- struct{}{}:
			default:
			}
		}
		r.mu.Unlock()
	}
}
