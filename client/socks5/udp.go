package socks5

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxUDPDatagram is the largest datagram either way.
	maxUDPDatagram = 64 << 10
	// udpQueueLen is how many datagrams to one destination may wait while
	// it is dialed or its conn is busy; more are dropped, as a router
	// drops under load.
	udpQueueLen = 64
)

// association is one UDP ASSOCIATE (RFC 1928 §7): a relay socket on the IP
// the client reached the TCP listener on, accepting datagrams only from
// the client's IP, relaying each destination over its own connected conn
// from Dial. It ends with its TCP control connection.
type association struct {
	c    *conf
	log  *slog.Logger
	pc   *net.UDPConn
	ctx  context.Context // canceled by close
	stop context.CancelFunc

	clientIP netip.Addr
	// client is the one source (IP and port) datagrams are accepted
	// from and replies go to. Known from the request's DST.PORT or, when
	// the client sent port 0, locked to the first datagram's source.
	client atomic.Pointer[netip.AddrPort]

	mu    sync.Mutex
	flows map[string]*udpFlow // by destination as the client wrote it

	wg sync.WaitGroup // run and the flows' goroutines

	dropped atomic.Uint64 // datagrams dropped: foreign source, bad header, fragment, cap, queue
}

// associate serves UDP ASSOCIATE on the control connection ctrl. want is
// the request's DST: the address the client will send from (zeros when it
// does not know). Only its port is used: the client's IP is the control
// connection's peer, which is right behind a NAT where DST.ADDR is not.
func (c *conf) associate(ctx context.Context, log *slog.Logger, ctrl net.Conn, want addr) {
	local := addrFromNet(ctrl.LocalAddr())
	peer := addrFromNet(ctrl.RemoteAddr())
	if local.name != "" || !local.ip.IsValid() || !peer.ip.IsValid() {
		writeReply(ctrl, repGeneralFailure, addr{})
		return
	}
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local.ip, 0)))
	if err != nil {
		log.Debug("socks5: udp relay listen failed", "err", err)
		writeReply(ctrl, repGeneralFailure, addr{})
		return
	}
	a := &association{
		c:        c,
		log:      log,
		pc:       pc,
		clientIP: peer.ip,
		flows:    make(map[string]*udpFlow),
	}
	a.ctx, a.stop = context.WithCancel(ctx)
	if want.port != 0 {
		ap := netip.AddrPortFrom(peer.ip, want.port)
		a.client.Store(&ap)
	}
	bnd := addrFromNet(pc.LocalAddr())
	if err := writeReply(ctrl, repSucceeded, bnd); err != nil {
		pc.Close()
		return
	}
	log.Debug("socks5: udp associate", "relay", bnd)
	a.wg.Add(1)
	go a.run()
	// The association lasts until the control connection closes (or
	// Serve stops, which closes it). Anything the client sends on it
	// has no meaning and is discarded.
	io.Copy(io.Discard, ctrl)
	a.close()
	if n := a.dropped.Load(); n > 0 {
		log.Debug("socks5: udp associate ended", "dropped", n)
	}
}

// close ends the association: the relay socket, every flow, and waits for
// their goroutines.
func (a *association) close() {
	a.stop()
	a.pc.Close()
	a.mu.Lock()
	for _, f := range a.flows {
		f.close()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// run reads the client's datagrams and hands each to its destination's
// flow until the relay socket is closed.
func (a *association) run() {
	defer a.wg.Done()
	buf := make([]byte, maxUDPDatagram)
	for {
		n, from, err := a.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || a.ctx.Err() != nil {
				return
			}
			continue // e.g. ECONNREFUSED from an ICMP error to a reply
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if !a.accept(from) {
			a.dropped.Add(1)
			continue
		}
		frag, dst, payload, err := parseUDPHeader(buf[:n])
		if err != nil || frag != 0 {
			// No fragmentation support: RFC 1928 lets an
			// implementation drop any datagram with FRAG != 0.
			a.dropped.Add(1)
			continue
		}
		a.send(dst, payload)
	}
}

// accept reports whether a datagram from src belongs to the client,
// locking the client's port on the first one when it was not given.
func (a *association) accept(src netip.AddrPort) bool {
	if src.Addr() != a.clientIP {
		return false
	}
	if c := a.client.Load(); c != nil {
		return *c == src
	}
	a.client.Store(&src) // run is the only writer
	return true
}

// send queues payload for dst, opening the destination's flow first.
func (a *association) send(dst addr, payload []byte) {
	key := dst.hostPort()
	a.mu.Lock()
	f := a.flows[key]
	if f == nil {
		if len(a.flows) >= a.c.MaxUDPDestinations || a.ctx.Err() != nil {
			a.mu.Unlock()
			a.dropped.Add(1)
			return
		}
		f = &udpFlow{a: a, dst: dst, key: key, queue: make(chan []byte, udpQueueLen), done: make(chan struct{})}
		f.touch()
		a.flows[key] = f
		a.wg.Add(1)
		go f.run()
	}
	a.mu.Unlock()
	select {
	case f.queue <- append([]byte(nil), payload...):
	default:
		a.dropped.Add(1)
	}
}

func (a *association) remove(f *udpFlow) {
	a.mu.Lock()
	if a.flows[f.key] == f {
		delete(a.flows, f.key)
	}
	a.mu.Unlock()
}

// udpFlow relays one destination of an association over a connected conn.
type udpFlow struct {
	a     *association
	dst   addr
	key   string
	queue chan []byte // datagrams from the client
	done  chan struct{}
	once  sync.Once
	last  atomic.Int64 // unix nanos of the last datagram either way

	mu   sync.Mutex
	conn net.Conn // set once dialed
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

func (f *udpFlow) close() {
	f.once.Do(func() {
		close(f.done)
		f.mu.Lock()
		if f.conn != nil {
			f.conn.Close()
		}
		f.mu.Unlock()
	})
}

// run dials the destination, then writes queued datagrams to it and
// relays its answers back until the flow is idle or closed.
func (f *udpFlow) run() {
	a := f.a
	defer a.wg.Done()
	defer a.remove(f)
	defer f.close()

	ctx, cancel := context.WithTimeout(a.ctx, a.c.DialTimeout)
	conn, err := a.c.dial(ctx, "udp", f.dst)
	cancel()
	if err != nil {
		// Dropped with the queue; the next datagram to dst dials again.
		a.log.Debug("socks5: udp dial failed", "dst", f.dst, "err", err)
		return
	}
	f.mu.Lock()
	select {
	case <-f.done:
		f.mu.Unlock()
		conn.Close()
		return
	default:
	}
	f.conn = conn
	f.mu.Unlock()

	// Replies carry the address that answered, as RFC 1928 §7 asks.
	src := addrFromNet(conn.RemoteAddr())
	if !src.ip.IsValid() || src.ip.IsUnspecified() {
		src = f.dst
	}
	a.wg.Add(1)
	go f.readLoop(conn, src)

	idle := time.NewTimer(a.c.UDPIdleTimeout)
	defer idle.Stop()
	for {
		select {
		case p := <-f.queue:
			f.touch()
			if _, err := conn.Write(p); err != nil && !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, net.ErrClosed) {
				// ICMP errors surface on the next call of a connected
				// socket; the flow itself stays usable.
				a.log.Debug("socks5: udp write failed", "dst", f.dst, "err", err)
			}
		case <-idle.C:
			if d := time.Since(time.Unix(0, f.last.Load())); d < a.c.UDPIdleTimeout {
				idle.Reset(a.c.UDPIdleTimeout - d)
				continue
			}
			return
		case <-f.done:
			return
		}
	}
}

// readLoop relays the destination's datagrams to the client with the SOCKS
// UDP header until the conn is closed.
func (f *udpFlow) readLoop(conn net.Conn, src addr) {
	a := f.a
	defer a.wg.Done()
	defer f.close()
	hdr := appendUDPHeader(nil, src)
	buf := make([]byte, len(hdr)+maxUDPDatagram)
	copy(buf, hdr)
	for {
		n, err := conn.Read(buf[len(hdr):])
		if err != nil {
			select {
			case <-f.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				return
			}
			// An ICMP error from the destination (port unreachable);
			// gVisor's conns report it once as an opaque error. Keep
			// reading, but not in a tight loop on a persistent error.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		f.touch()
		client := a.client.Load()
		if client == nil {
			continue
		}
		if _, err := a.pc.WriteToUDPAddrPort(buf[:len(hdr)+n], *client); err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}
