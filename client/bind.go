// Package client is the WARP-style wedge client: the config file `wedge
// register` writes and `wedge connect` reads (config.go, configwrite.go), the
// calls to the registration API (register.go), the conn.Bind wrapper that
// makes a wireguard-go device a WARP-style client (this file), and the
// routes and DNS of TUN mode (routing.go).
//
// The Bind wrapper does three things below wireguard-go:
//
//   - ClientID: it stamps the ClientID into bytes 1..3 of every message it
//     sends (wireguard-go has computed MAC1 by then) and zeroes bytes 1..3
//     of every message it receives.
//   - Happy Eyeballs: given the server's IPv6 and IPv4 endpoints, it shows
//     wireguard-go one peer endpoint (DualEndpoint) and picks the family
//     underneath, racing handshakes over both and falling back when the
//     kept family stops answering.
//   - Fast reconnect: when the socket fails (a Send error such as ENOBUFS or
//     ENETUNREACH, or a receive error), it closes and reopens its inner Bind
//     itself, so the device, its peer, keys and the connections inside the
//     tunnel are untouched.
//
// It is the client side alone: it must not import server/, lb/ or e2e/ (the
// client binary links no node code; internal/api carries the API's types).
package client

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/wedge-edge/wedge/internal/clientid"
)

// DualEndpoint is the peer endpoint string (UAPI "endpoint=") that a Bind
// with Options.Endpoints parses to its dual endpoint.
const DualEndpoint = "wedge-dual:0"

// Defaults for Options.
const (
	// DefaultHappyEyeballsDelay is how long an initiation over IPv6 gets
	// before the same initiation is sent over IPv4 (RFC 8305's "Connection
	// Attempt Delay"). A node accepts only the first copy it gets (the
	// second has the same timestamp and is a replay), so with a working
	// IPv6 path and an RTT under the delay IPv6 wins. When the copies
	// reach two nodes (fronts that disagree for a moment while a cluster
	// starts), both answer; the Bind passes only the first answer on
	// (Bind.firstAnswer).
	DefaultHappyEyeballsDelay = 50 * time.Millisecond

	// DefaultStaleAfter: a settled family is dropped when a message that
	// demands an answer (a handshake message or transport data carrying a
	// packet; not a keepalive) went out on it this long ago and nothing
	// at all has come back on it since. A WireGuard peer answers data
	// within KeepaliveTimeout (10 s: its passive keepalive) and a
	// handshake initiation within an RTT, so a live path never goes this
	// long without an answer to data we sent.
	DefaultStaleAfter = 12 * time.Second

	// minReopenInterval spaces out socket reopens (the first is
	// immediate), so a socket that fails at once after reopening does
	// not spin.
	minReopenInterval = time.Second
)

// Options configure a Bind.
type Options struct {
	// ClientID is stamped into every message sent. Zero stamps nothing
	// (a standard client).
	ClientID clientid.ID
	// Endpoints are the server's endpoints. With any, the Bind parses
	// DualEndpoint to its dual endpoint and picks among them; at most
	// one IPv6 and one IPv4 endpoint are used (the first of each). With
	// none, endpoints pass through to the inner Bind unchanged.
	Endpoints []netip.AddrPort
	// HappyEyeballsDelay: 0 means DefaultHappyEyeballsDelay; negative
	// means send the initiation over both families at once.
	HappyEyeballsDelay time.Duration
	// StaleAfter: 0 means DefaultStaleAfter.
	StaleAfter time.Duration
	// Logger gets state changes (settled, racing, reopened); nil
	// discards. Nothing is logged per packet.
	Logger *slog.Logger
}

// State is what a Bind is doing, for status lines.
type State struct {
	// Family is 6 or 4 when a path is settled, 0 while racing (and
	// without Options.Endpoints).
	Family int
	// Endpoint is the server endpoint in use; invalid while racing.
	Endpoint netip.AddrPort
	// Since is when Family last changed (settled or started racing).
	Since time.Time
	// Races counts times a settled family was dropped and a new race
	// began.
	Races uint64
	// Reason says why the last race began ("" before the first).
	Reason string
	// Reopens counts socket reopens; ReopenError is the last reopen's
	// failure, if it failed.
	Reopens     uint64
	ReopenError string
	// Port is the local UDP port.
	Port uint16
}

// Bind wraps a conn.Bind; see the package comment. Safe for concurrent
// use, as conn.Bind requires.
type Bind struct {
	inner      conn.Bind
	id         clientid.ID
	log        *slog.Logger
	epoch      time.Time
	heDelay    time.Duration
	staleAfter time.Duration

	// Happy Eyeballs: paths in preference order (IPv6 first); nil dual
	// without Endpoints.
	dual    *dualEndpoint
	paths   []*path
	settled atomic.Int32 // index+1 of the settled path; 0 while racing

	heMu   sync.Mutex // guards the fields below
	since  time.Time
	races  uint64
	reason string

	reopens atomic.Uint64

	ansMu    sync.Mutex // guards answered
	answered [answeredKept]uint32
	ansNext  int

	mu         sync.RWMutex // guards the fields below; Send holds it for reading
	cur        *generation  // nil when closed
	port       uint16
	mark       uint32
	lastReopen time.Time
	reopenErr  error
	retry      *time.Timer // pending delayed reopen
	retryFor   *generation // the generation the pending reopen replaces
}

var _ conn.Bind = (*Bind)(nil)

// generation is one opening of the inner Bind. done is closed when it is
// replaced (next is the replacement) or the Bind is closed (next is nil).
type generation struct {
	fns  []conn.ReceiveFunc
	ok   bool // the inner Open succeeded
	done chan struct{}
	next *generation
}

// path is one server endpoint of a family.
type path struct {
	family int
	addr   netip.AddrPort
	ep     conn.Endpoint // parsed by the inner Bind

	lastRx     atomic.Int64 // Bind.now of the last message received from addr
	awaitSince atomic.Int64 // Bind.now of the first answer-demanding send since lastRx; 0: none
}

// dualEndpoint is the one endpoint wireguard-go sees when the Bind has
// Endpoints. Receive hands out this same object for every message, so
// wireguard-go's roaming (SetEndpointFromPacket) keeps it.
type dualEndpoint struct{ b *Bind }

var _ conn.Endpoint = (*dualEndpoint)(nil)

// NewBind wraps inner. Endpoints are parsed with inner.ParseEndpoint now.
func NewBind(inner conn.Bind, o Options) (*Bind, error) {
	if inner == nil {
		return nil, errors.New("client: NewBind: nil inner Bind")
	}
	if o.ClientID > clientid.Max {
		return nil, fmt.Errorf("client: NewBind: %w: %#x", clientid.ErrInvalid, uint32(o.ClientID))
	}
	b := &Bind{
		inner:      inner,
		id:         o.ClientID,
		log:        o.Logger,
		epoch:      time.Now(),
		heDelay:    o.HappyEyeballsDelay,
		staleAfter: o.StaleAfter,
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.heDelay == 0 {
		b.heDelay = DefaultHappyEyeballsDelay
	}
	if b.staleAfter <= 0 {
		b.staleAfter = DefaultStaleAfter
	}
	var v4, v6 netip.AddrPort
	for _, e := range o.Endpoints {
		e = netip.AddrPortFrom(e.Addr().Unmap(), e.Port())
		switch {
		case !e.IsValid() || e.Port() == 0:
			return nil, fmt.Errorf("client: NewBind: bad endpoint %v", e)
		case e.Addr().Is4() && !v4.IsValid():
			v4 = e
		case e.Addr().Is6() && !v6.IsValid():
			v6 = e
		}
	}
	for _, e := range []netip.AddrPort{v6, v4} {
		if !e.IsValid() {
			continue
		}
		ep, err := inner.ParseEndpoint(e.String())
		if err != nil {
			return nil, fmt.Errorf("client: NewBind: endpoint %v: %w", e, err)
		}
		fam := 4
		if e.Addr().Is6() {
			fam = 6
		}
		b.paths = append(b.paths, &path{family: fam, addr: e, ep: ep})
	}
	if len(b.paths) > 0 {
		b.dual = &dualEndpoint{b: b}
		b.since = time.Now()
	}
	if len(b.paths) == 1 {
		b.settled.Store(1) // nothing to race
	}
	return b, nil
}

// now is a monotonic clock in nanoseconds, never 0.
func (b *Bind) now() int64 { return int64(time.Since(b.epoch)) + 1 }

// Inner returns the wrapped Bind.
func (b *Bind) Inner() conn.Bind { return b.inner }

// Open opens the inner Bind. The ReceiveFuncs it returns survive reopens
// of the inner Bind: each keeps reading from the same-numbered ReceiveFunc
// of the latest opening (an opening with fewer leaves the extra ones
// waiting), and returns net.ErrClosed only after Close.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	fns, actual, err := b.inner.Open(port)
	if err != nil {
		return nil, 0, err
	}
	g := &generation{fns: fns, ok: true, done: make(chan struct{})}
	b.cur, b.port, b.reopenErr = g, actual, nil
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i := range fns {
		wrapped[i] = b.makeReceiveFunc(i, g, fns[i])
	}
	return wrapped, actual, nil
}

// Close closes the inner Bind; every ReceiveFunc from Open then returns
// net.ErrClosed.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.retry != nil {
		b.retry.Stop()
		b.retry, b.retryFor = nil, nil
	}
	err := b.inner.Close()
	if g := b.cur; g != nil {
		b.cur = nil
		close(g.done)
	}
	return err
}

// SetMark sets the inner Bind's mark, now and after every reopen.
func (b *Bind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mark = mark
	return b.inner.SetMark(mark)
}

// BatchSize is the inner Bind's.
func (b *Bind) BatchSize() int { return b.inner.BatchSize() }

// ParseEndpoint returns the dual endpoint for DualEndpoint (with
// Options.Endpoints), else the inner Bind's endpoint.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	if s == DualEndpoint {
		if b.dual == nil {
			return nil, fmt.Errorf("client: %s needs a Bind with Endpoints", DualEndpoint)
		}
		return b.dual, nil
	}
	return b.inner.ParseEndpoint(s)
}

// Send stamps the ClientID into every message of bufs and sends them:
// to the settled family's endpoint for the dual endpoint (or over both
// while racing), else to ep itself. It reopens the inner Bind when the
// send fails in a way a new socket may fix, and retries once.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if b.id != 0 {
		for _, buf := range bufs {
			clientid.Stamp(buf, b.id)
		}
	}
	if d, ok := ep.(*dualEndpoint); ok && d.b == b {
		return b.sendDual(bufs)
	}
	return b.send(bufs, ep)
}

// Message types and the size of a keepalive (an empty transport message).
const (
	msgInitiation  = 1
	msgResponse    = 2
	msgCookieReply = 3
	msgTransport   = 4
	keepaliveSize  = 32
)

// demandsAnswer reports whether the peer answers bufs: handshake
// initiations and responses (the initiator confirms with a keepalive) and
// transport data carrying a packet (passive keepalive within 10 s), but
// not keepalives or cookie replies.
func demandsAnswer(bufs [][]byte) bool {
	for _, buf := range bufs {
		if len(buf) == 0 {
			continue
		}
		switch buf[0] {
		case msgInitiation, msgResponse:
			return true
		case msgTransport:
			if len(buf) > keepaliveSize {
				return true
			}
		}
	}
	return false
}

func (b *Bind) sendDual(bufs [][]byte) error {
	now := b.now()
	demands := demandsAnswer(bufs)
	if s := b.settled.Load(); s != 0 {
		p := b.paths[s-1]
		if demands {
			p.awaitSince.CompareAndSwap(0, now)
		}
		racing := false
		if len(b.paths) > 1 {
			if a := p.awaitSince.Load(); a != 0 && time.Duration(now-a) > b.staleAfter {
				racing = b.unsettle(s, fmt.Sprintf("no answer over IPv%d for %v", p.family, time.Duration(now-a).Round(time.Millisecond)))
			}
		}
		if !racing {
			err := b.send(bufs, p.ep)
			if err == nil || len(b.paths) == 1 || !pathFailed(err) {
				return err
			}
			b.unsettle(s, fmt.Sprintf("send over IPv%d: %v", p.family, err))
		}
	}
	return b.race(bufs, now, demands)
}

// race sends bufs while no family is settled: an initiation over IPv6
// first and over IPv4 after the Happy Eyeballs delay (at once if IPv6
// fails to send); anything else over both at once. Duplicates are
// harmless: the server drops the second initiation as a replay and
// duplicate transport messages by their counter.
func (b *Bind) race(bufs [][]byte, now int64, demands bool) error {
	var errs []error
	sent := false
	for i, p := range b.paths {
		if i > 0 && sent && b.heDelay > 0 && len(bufs) == 1 && len(bufs[0]) > 0 && bufs[0][0] == msgInitiation {
			b.sendLater(p, i, bufs[0])
			return nil
		}
		if demands {
			p.awaitSince.CompareAndSwap(0, now)
		}
		if err := b.send(bufs, p.ep); err != nil {
			errs = append(errs, fmt.Errorf("IPv%d: %w", p.family, err))
			continue
		}
		sent = true
	}
	if sent {
		return nil
	}
	return errors.Join(errs...)
}

// sendLater sends a copy of msg to path i after the Happy Eyeballs delay,
// unless another path has settled by then. Only handshake initiations
// take this path (one every few seconds at most), so the copy is cheap.
func (b *Bind) sendLater(p *path, i int, msg []byte) {
	c := append([]byte(nil), msg...)
	time.AfterFunc(b.heDelay, func() {
		if s := b.settled.Load(); s != 0 && int(s) != i+1 {
			return
		}
		p.awaitSince.CompareAndSwap(0, b.now())
		if err := b.send([][]byte{c}, p.ep); err != nil && !errors.Is(err, net.ErrClosed) {
			b.log.Debug("delayed initiation failed", "family", p.family, "err", err)
		}
	})
}

// settle makes path index i the one in use, if racing.
func (b *Bind) settle(i int) {
	b.heMu.Lock()
	defer b.heMu.Unlock()
	if !b.settled.CompareAndSwap(0, int32(i+1)) {
		return
	}
	b.since = time.Now()
	p := b.paths[i]
	b.log.Info("endpoint settled", "family", p.family, "endpoint", p.addr)
}

// unsettle starts a race if path s-1 is still the settled one. It
// reports whether the Bind is racing afterwards.
func (b *Bind) unsettle(s int32, reason string) bool {
	b.heMu.Lock()
	defer b.heMu.Unlock()
	if b.settled.CompareAndSwap(s, 0) {
		b.since = time.Now()
		b.races++
		b.reason = reason
		// Give the old path a fresh start: if it wins the race, its
		// staleness is measured from then.
		b.paths[s-1].awaitSince.Store(0)
		b.log.Warn("endpoint lost, racing IPv6 and IPv4 again", "reason", reason)
	}
	return b.settled.Load() == 0
}

// pathFailed reports whether a send error means this family's path is
// unusable from here (no route, no address), so the other family should
// be tried.
func pathFailed(err error) bool {
	// EINVAL: a blackhole route (RTN_BLACKHOLE) to the endpoint, or a
	// remembered source address that is gone: either way this family
	// cannot be used right now.
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.EINVAL) ||
		errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.ENETDOWN) ||
		errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EPERM)
}

// reopenable reports whether a send error may be cured by a new socket.
func reopenable(err error) bool {
	return errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EPERM) ||
		errors.Is(err, syscall.ENETDOWN) || errors.Is(err, syscall.ENODEV) ||
		errors.Is(err, syscall.EBADF) || errors.Is(err, syscall.ENOTCONN) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, net.ErrClosed)
}

// send sends through the current opening of the inner Bind, reopening it
// and retrying once on a reopenable error.
func (b *Bind) send(bufs [][]byte, ep conn.Endpoint) error {
	b.mu.RLock()
	g := b.cur
	if g == nil {
		b.mu.RUnlock()
		return net.ErrClosed
	}
	err := b.inner.Send(bufs, ep)
	b.mu.RUnlock()
	if err == nil || !reopenable(err) {
		return err
	}
	if !b.reopen(g, fmt.Errorf("send: %w", err)) {
		return err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.cur == nil {
		return net.ErrClosed
	}
	return b.inner.Send(bufs, ep)
}

// reopen replaces generation old with a new opening of the inner Bind,
// unless that was done already or the last reopen was too recent (then
// it is scheduled). It reports whether an open generation other than
// old is current on return.
func (b *Bind) reopen(old *generation, cause error) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.cur == nil:
		return false
	case b.cur != old:
		return b.cur.ok
	}
	if wait := minReopenInterval - time.Since(b.lastReopen); !b.lastReopen.IsZero() && wait > 0 {
		b.scheduleReopenLocked(wait, cause)
		return false
	}
	b.reopenLocked(cause)
	return b.cur.ok
}

// scheduleReopenLocked reopens the current generation after d, unless it
// has been replaced by a working one by then.
func (b *Bind) scheduleReopenLocked(d time.Duration, cause error) {
	b.retryFor = b.cur
	if b.retry != nil {
		return
	}
	b.retry = time.AfterFunc(d, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.retry = nil
		if b.cur != nil && (b.cur == b.retryFor || !b.cur.ok) {
			b.reopenLocked(cause)
		}
		b.retryFor = nil
	})
}

func (b *Bind) reopenLocked(cause error) {
	old := b.cur
	b.lastReopen = time.Now()
	b.reopens.Add(1)
	_ = b.inner.Close()
	fns, port, err := b.inner.Open(b.port)
	if err != nil && b.port != 0 {
		// Someone took the port meanwhile: any port will do, the server
		// roams to the new one.
		fns, port, err = b.inner.Open(0)
	}
	g := &generation{fns: fns, ok: err == nil, done: make(chan struct{})}
	old.next, b.cur = g, g
	close(old.done)
	b.reopenErr = err
	if err != nil {
		b.log.Error("socket reopen failed; retrying", "cause", cause, "err", err)
		b.scheduleReopenLocked(minReopenInterval, cause)
		return
	}
	if port != b.port {
		b.log.Info("socket reopened on a new port", "cause", cause, "port", port, "old_port", b.port)
	} else {
		b.log.Info("socket reopened", "cause", cause, "port", port)
	}
	b.port = port
	if b.mark != 0 {
		if err := b.inner.SetMark(b.mark); err != nil {
			b.log.Error("socket reopened without its mark", "mark", b.mark, "err", err)
		}
	}
}

// makeReceiveFunc wraps fn, the i-th ReceiveFunc of generation g. Like
// every ReceiveFunc it is called by one goroutine at a time.
func (b *Bind) makeReceiveFunc(i int, g *generation, fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			select {
			case <-g.done:
				if g.next == nil {
					return 0, net.ErrClosed
				}
				g, fn = g.next, nil
				if i < len(g.fns) {
					fn = g.fns[i]
				}
				continue
			default:
			}
			if fn == nil {
				<-g.done
				continue
			}
			n, err := fn(packets, sizes, eps)
			if n > 0 || err == nil {
				b.received(packets, sizes, eps, n)
				return n, nil
			}
			select {
			case <-g.done:
				continue // closed or reopened under us
			default:
			}
			// A receive error wireguard-go would give up on (it stops
			// reading after a non-temporary error): get a new socket.
			b.reopen(g, fmt.Errorf("receive: %w", err))
			<-g.done
		}
	}
}

// received zeroes the reserved bytes of n received messages and, with
// Endpoints, hands wireguard-go the dual endpoint for each and notes which
// family answered.
func (b *Bind) received(packets [][]byte, sizes []int, eps []conn.Endpoint, n int) {
	var now int64
	for i := range n {
		msg := packets[i][:sizes[i]]
		if len(msg) < clientid.HeaderLen {
			continue
		}
		clientid.Zero(msg)
		if msg[0] == msgResponse && !b.firstAnswer(msg) {
			sizes[i] = 0 // wireguard-go skips messages shorter than any
			continue
		}
		if b.dual == nil {
			continue
		}
		pi := b.pathOf(eps[i])
		eps[i] = b.dual
		if pi < 0 {
			continue // not from a configured endpoint: says nothing about paths
		}
		if now == 0 {
			now = b.now()
		}
		p := b.paths[pi]
		p.lastRx.Store(now)
		if p.awaitSince.Load() != 0 {
			p.awaitSince.Store(0)
		}
		if b.settled.Load() == 0 && (msg[0] == msgResponse || msg[0] == msgTransport) {
			b.settle(pi)
		}
	}
}

// answeredKept is how many handshakes' answers firstAnswer remembers:
// wireguard-go has one handshake in flight per peer, and a new initiation
// gets a new index, so a few cover every late duplicate.
const answeredKept = 8

// firstAnswer reports whether response msg is the first one for its
// initiation (its receiver index is the index the initiation carried).
// A second one is another node's answer to a copy of the same initiation
// sent over the other family while racing, which happens when the copies
// reach two nodes: fronts that disagree for a moment while a cluster
// starts. It must not reach wireguard-go: its two handshake workers can
// consume both responses to one initiation (each passes the state check
// under a read lock before either writes), and the second
// BeginSymmetricSession then makes a current keypair whose local index is
// 0 (the first one cleared the handshake's), while the index table still
// maps the real index to the first keypair. The client sends under the
// second node's keys and decrypts nothing that node answers: its
// connections stall until the next handshake, 15 s on (seen in the
// cold-start test: two responses, two keepalives, then only SYN
// retransmissions). The first answer wins, as Happy Eyeballs picks the
// first connection.
func (b *Bind) firstAnswer(msg []byte) bool {
	if len(msg) < 12 {
		return true // wireguard-go rejects it
	}
	r := binary.LittleEndian.Uint32(msg[8:12])
	b.ansMu.Lock()
	defer b.ansMu.Unlock()
	for _, a := range b.answered {
		if a == r && r != 0 {
			return false
		}
	}
	b.answered[b.ansNext] = r
	b.ansNext = (b.ansNext + 1) % answeredKept
	return true
}

// pathOf returns the index of the path whose endpoint ep is, or -1.
func (b *Bind) pathOf(ep conn.Endpoint) int {
	ap, ok := addrPortOf(ep)
	if !ok {
		return -1
	}
	for i, p := range b.paths {
		if p.addr == ap {
			return i
		}
	}
	return -1
}

// addrPortOf returns ep's remote address without allocating for the
// endpoint types of udpbind and conn.StdNetBind.
func addrPortOf(ep conn.Endpoint) (netip.AddrPort, bool) {
	var ap netip.AddrPort
	switch e := ep.(type) {
	case nil:
		return ap, false
	case *conn.StdNetEndpoint:
		ap = e.AddrPort
	case interface{ AddrPort() netip.AddrPort }: // *udpbind.Endpoint
		ap = e.AddrPort()
	default:
		var err error
		if ap, err = netip.ParseAddrPort(ep.DstToString()); err != nil {
			return ap, false
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()), true
}

// State returns what the Bind is doing.
func (b *Bind) State() State {
	var s State
	b.heMu.Lock()
	if i := b.settled.Load(); i != 0 && b.dual != nil {
		p := b.paths[i-1]
		s.Family, s.Endpoint = p.family, p.addr
	}
	s.Since, s.Races, s.Reason = b.since, b.races, b.reason
	b.heMu.Unlock()
	s.Reopens = b.reopens.Load()
	b.mu.RLock()
	s.Port = b.port
	if b.reopenErr != nil {
		s.ReopenError = b.reopenErr.Error()
	}
	b.mu.RUnlock()
	return s
}

// The dual endpoint describes the settled path (or the preferred one while
// racing).

func (d *dualEndpoint) path() *path {
	if i := d.b.settled.Load(); i != 0 {
		return d.b.paths[i-1]
	}
	return d.b.paths[0]
}

// ClearSrc does nothing: the dual endpoint never pins a source address, so
// the kernel picks one per send and a network change needs no clearing.
func (d *dualEndpoint) ClearSrc()           {}
func (d *dualEndpoint) SrcToString() string { return "" }
func (d *dualEndpoint) DstToString() string { return d.path().addr.String() }

// DstToBytes is fixed (it feeds the peer's cookie MAC2 computation,
// which must not change with the family).
func (d *dualEndpoint) DstToBytes() []byte { return []byte(DualEndpoint) }
func (d *dualEndpoint) DstIP() netip.Addr  { return d.path().addr.Addr() }
func (d *dualEndpoint) SrcIP() netip.Addr  { return netip.Addr{} }
