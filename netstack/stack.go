// Package netstack is the node's userspace network stack: a gVisor
// netstack behind a tun.Device that wireguard-go reads and writes. It
// terminates every TCP and UDP flow a client sends, to any destination, and
// re-originates it through a Dialer; it answers ICMP echo by pinging the
// real destination. Client is the other end for wedge connect's proxy mode:
// a stack owning the client's inner addresses, dialed into by programs.
// It is the only package that imports gVisor and nothing gVisor-typed
// appears in its API.
//
// It is the only package that imports gVisor, and nothing gVisor-typed
// leaves it. It must not import server/, client/, egress/, lb/ or
// cilium/ebpf: egress meets it through the Dialer interface (contract.go).
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/wedge-edge/wedge/internal/ratelog"
)

// Defaults for zero Config and Limits fields.
const (
	// DefaultTCPDialTimeout bounds the dial of the real destination; the
	// client's SYN is answered with RST when it passes.
	DefaultTCPDialTimeout = 10 * time.Second
	// DefaultTCPIdleTimeout is RFC 5382 REQ-5's floor for an established
	// TCP mapping (2h4m): long enough for any keepalive.
	DefaultTCPIdleTimeout = 2*time.Hour + 4*time.Minute
	// DefaultUDPIdleTimeout sits between Linux conntrack's unreplied (30s)
	// and stream (120s) UDP timeouts; each UDP flow holds a socket and
	// counts against the caps, so it is shorter than RFC 4787's 2 minutes.
	DefaultUDPIdleTimeout = 60 * time.Second

	DefaultMaxFlows            = 32768
	DefaultMaxFlowsPerClient   = 2048
	DefaultMaxPending          = 2048
	DefaultMaxPendingPerClient = 128

	// DefaultTCPSilentTimeout closes a TCP flow that carried no byte
	// either way: protocols where the server speaks first answer within
	// seconds, and clients that speak first do so at once.
	DefaultTCPSilentTimeout = 60 * time.Second
)

const (
	nicID = 1

	// maxPings bounds concurrent Dialer.Ping calls; echo requests beyond
	// it are dropped (and counted), as a router would under load.
	maxPings = 256
	// pingTimeout bounds one Dialer.Ping.
	pingTimeout = 5 * time.Second

	// Send and receive buffer ranges for the stack's TCP endpoints. The
	// forwarder sits at ~1 Gbit/s with client RTTs of a few ms to ~100 ms:
	// 1 Gbit/s x 50 ms is ~6 MiB of bandwidth-delay product, so the
	// maxima are 8 MiB (receive, auto-tuned up from the default) and
	// 6 MiB (send), as tailscale uses. gVisor does not auto-tune the send
	// buffer, so its default is 4 MiB rather than 1: a download measured
	// 0.58-0.62 Gbit/s with 1 MiB and 0.62-0.68 with 4 MiB in the lab. Memory
	// is only taken as data is queued, per flow.
	tcpRXBufMin = tcp.MinBufferSize
	tcpRXBufDef = tcp.DefaultReceiveBufferSize // 1 MiB
	tcpRXBufMax = 8 << 20
	tcpTXBufMin = tcp.MinBufferSize
	tcpTXBufDef = 4 << 20
	tcpTXBufMax = 6 << 20
)

// ErrInvalidConfig is wrapped by New's errors for a bad Config.
var ErrInvalidConfig = errors.New("netstack: invalid config")

// Config configures a Stack.
type Config struct {
	// MTU is the tunnel MTU (1280..9000); TCP's MSS follows from it.
	MTU int
	// Dialer re-originates terminated flows. Required.
	Dialer Dialer
	// Logger receives flow-level events (never per packet). Required.
	Logger *slog.Logger
	// Local are the node's own inner addresses (one per family), the
	// clients' DNS server. Echo requests to them are answered directly.
	Local []netip.Addr
	// DNSUpstream receives UDP and TCP sent to a Local address, port 53,
	// through a plain net.Dialer (the node's own query, not subject to the
	// egress ACL). Zero refuses DNS. Anything else sent to a Local address
	// is refused (TCP RST, ICMP port unreachable).
	DNSUpstream netip.AddrPort
	// DNSDial, if set, dials DNSUpstream ("udp" or "tcp") for the clients'
	// queries, say from an egress address of the data center's own
	// location; nil: a plain net.Dialer, the host's own address.
	DNSDial func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error)
	// Limits caps flows and pending dials; zero fields take defaults.
	Limits Limits
	// ClientOf, if set, names the client (registration) an inner source
	// address belongs to, so that a client's IPv4 and IPv6 addresses share
	// one set of budgets (limits.go). An address it returns false for, or
	// every address without it, is a client of its own. It is called once
	// per new flow, must be quick and safe for concurrent use.
	ClientOf func(netip.Addr) (uint64, bool)
	// OverQuota, if set, is asked once per new flow of a client ClientOf
	// names (not for DNS to a Local address): true refuses the flow
	// (TCP RST, ICMP unreachable for UDP), counted as Refused.OverQuota.
	// Flows already open go on. It must be quick and safe for concurrent
	// use.
	OverQuota func(client uint64) bool
	// TCPDialTimeout bounds a TCP dial (default DefaultTCPDialTimeout).
	TCPDialTimeout time.Duration
	// TCPIdleTimeout closes a TCP flow with no data either way for this
	// long (default DefaultTCPIdleTimeout).
	TCPIdleTimeout time.Duration
	// TCPSilentTimeout closes a TCP flow that has carried no byte either
	// way for this long (default DefaultTCPSilentTimeout; never longer than
	// TCPIdleTimeout): a connection opened only to hold a slot.
	TCPSilentTimeout time.Duration
	// UDPIdleTimeout closes a UDP flow with no datagram either way for
	// this long (default DefaultUDPIdleTimeout).
	UDPIdleTimeout time.Duration
	// IsDenied, when set, tells a Dialer error that means "denied by the
	// egress ACL" (e.g. errors.Is(err, egress.ErrDenied)) apart from other
	// dial failures: it is counted separately and UDP/ICMP get an
	// "administratively prohibited" unreachable instead of port
	// unreachable. Optional.
	IsDenied func(error) bool
}

// Limits caps the stack's resources. A client is a registration (see
// Config.ClientOf), or an inner source address. Zero fields take the
// Default* values. How they make a fair share is in limits.go.
type Limits struct {
	// MaxFlows caps open TCP+UDP flows, MaxFlowsPerClient per client.
	MaxFlows, MaxFlowsPerClient int
	// MaxPending caps in-flight TCP and UDP dials, MaxPendingPerClient per
	// client.
	MaxPending, MaxPendingPerClient int
	// PendingShare: a client may start a dial only while it holds fewer
	// than 1/PendingShare of the free dial slots.
	PendingShare int
	// FlowRate is the new flows per second a client may open on average,
	// FlowBurst how many at once (default: twice FlowRate, or
	// DefaultFlowBurst with the default rate). A negative FlowRate lifts
	// the limit.
	FlowRate, FlowBurst int
	// BufferPerClient is the buffer budget, in bytes, of one client's
	// TCP flows: what a client that stops reading (or whose origin does)
	// can make the node hold. Negative: no budget, every flow gets the
	// default buffers.
	BufferPerClient int
}

// Stack is a gVisor netstack serving as wireguard-go's tun.Device. Create
// it with New; Close releases everything, including open flows.
type Stack struct {
	cfg    Config
	log    *slog.Logger
	stack  *stack.Stack
	link   *linkEndpoint
	local  map[netip.Addr]bool
	events chan tun.Event

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // flow and ping goroutines
	work   *workers       // runs the TCP flows' goroutines
	pings  chan struct{}  // semaphore of maxPings

	limits limiter
	stats  counters

	refusals ratelog.Limiter // which refused flows get a log line (refusals.go)

	flowsMu sync.Mutex
	flows   map[flow]struct{} // open flows, closed by Close
	closed  bool

	closeOnce sync.Once
}

// flow is an open TCP or UDP flow that Close can end.
type flow interface{ close() }

var _ tun.Device = (*Stack)(nil)

// New builds and starts a Stack.
func New(cfg Config) (*Stack, error) {
	if cfg.Dialer == nil {
		return nil, fmt.Errorf("%w: nil Dialer", ErrInvalidConfig)
	}
	if cfg.Logger == nil {
		return nil, fmt.Errorf("%w: nil Logger", ErrInvalidConfig)
	}
	if cfg.MTU < 1280 || cfg.MTU > 9000 {
		return nil, fmt.Errorf("%w: MTU %d outside 1280..9000", ErrInvalidConfig, cfg.MTU)
	}
	if cfg.DNSUpstream.IsValid() && cfg.DNSUpstream.Port() == 0 {
		return nil, fmt.Errorf("%w: DNS upstream %v has no port", ErrInvalidConfig, cfg.DNSUpstream)
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.TCPDialTimeout, DefaultTCPDialTimeout)
	def(&cfg.TCPIdleTimeout, DefaultTCPIdleTimeout)
	def(&cfg.UDPIdleTimeout, DefaultUDPIdleTimeout)
	def(&cfg.TCPSilentTimeout, DefaultTCPSilentTimeout)
	cfg.TCPSilentTimeout = min(cfg.TCPSilentTimeout, cfg.TCPIdleTimeout)
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defInt(&cfg.Limits.MaxFlows, DefaultMaxFlows)
	defInt(&cfg.Limits.MaxFlowsPerClient, DefaultMaxFlowsPerClient)
	defInt(&cfg.Limits.MaxPending, DefaultMaxPending)
	defInt(&cfg.Limits.MaxPendingPerClient, DefaultMaxPendingPerClient)
	defInt(&cfg.Limits.PendingShare, DefaultPendingShare)
	if cfg.Limits.FlowRate == 0 {
		cfg.Limits.FlowRate = DefaultFlowRate
		defInt(&cfg.Limits.FlowBurst, DefaultFlowBurst)
	}
	defInt(&cfg.Limits.FlowBurst, max(1, 2*cfg.Limits.FlowRate))
	if cfg.Limits.BufferPerClient == 0 {
		cfg.Limits.BufferPerClient = DefaultBufferPerClient
	}

	s := &Stack{
		cfg:    cfg,
		log:    cfg.Logger,
		local:  make(map[netip.Addr]bool),
		events: make(chan tun.Event, 1),
		pings:  make(chan struct{}, maxPings),
		flows:  make(map[flow]struct{}),
	}
	s.limits.init(cfg.Limits)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.work = newWorkers(s.ctx.Done())
	s.link = newLinkEndpoint(uint32(cfg.MTU), func() { s.stats.droppedOut.Add(1) })

	st, err := newGVisorStack(s.link, cfg.Local, true)
	if err != nil {
		return nil, err
	}
	s.stack = st
	for _, a := range cfg.Local {
		s.local[a.Unmap()] = true
	}

	// The forwarder's own in-flight cap only silences SYNs (no RST, no
	// count); ours (Limits.MaxPending) answers first with RST, so the
	// forwarder's is a backstop twice as large.
	tcpFwd := tcp.NewForwarder(st, 0 /* rcvWnd: stack default, auto-tuned */, 2*cfg.Limits.MaxPending, s.handleTCP)
	st.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	st.SetTransportProtocolHandler(udp.ProtocolNumber, s.handleUDP)

	s.events <- tun.EventUp
	return s, nil
}

// newGVisorStack builds a gVisor stack on link with the addresses local and
// default routes out of link. Every option is set explicitly, with the
// reason. forwarder makes it the node's stack, accepting packets to any
// destination and answering from it (promiscuous and spoofing); without it
// the stack is a plain host (the client's), owning only local. Both share
// the TCP tuning: the client's downloads are the node's uploads.
func newGVisorStack(link stack.LinkEndpoint, local []netip.Addr, forwarder bool) (*stack.Stack, error) {
	st := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{
			ipv4.NewProtocol,
			// No DAD, router solicitations or MLD: the tunnel is
			// point-to-point and nothing answers them.
			ipv6.NewProtocolWithOptions(ipv6.Options{
				DADConfigs: stack.DADConfigurations{DupAddrDetectTransmits: 0},
				NDPConfigs: ipv6.NDPConfigurations{MaxRtrSolicitations: 0},
			}),
		},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		// HandleLocal loops packets the stack sends to its own addresses
		// back into it. The stack only ever answers clients, so off.
		HandleLocal: false,
	})
	fail := func(what string, e tcpip.Error) (*stack.Stack, error) {
		st.Close()
		st.Wait()
		return nil, fmt.Errorf("netstack: %s: %v", what, e)
	}
	tcpOpts := []struct {
		what string
		opt  tcpip.SettableTransportProtocolOption
	}{
		// SACK is off by default in gVisor; without it one loss in a
		// multi-MiB window costs a round trip per lost segment.
		{"enable SACK", ptr(tcpip.TCPSACKEnabled(true))},
		// RACK off: gVisor's RACK handles ACKs late, causing spurious
		// retransmissions and a collapsed cwnd
		// (https://github.com/tailscale/tailscale/issues/9707). Classic
		// dupack/SACK recovery is used instead.
		{"disable RACK", ptr(tcpip.TCPRecovery(0))},
		// Reno, not cubic: gVisor's sender cwnd arithmetic can overflow,
		// more readily with cubic (https://github.com/google/gvisor/issues/11632),
		// and at the ms RTTs between a client and this node cubic runs in
		// its Reno-friendly region anyway. Set explicitly so a changed
		// gVisor default does not change us silently.
		{"set reno", ptr(tcpip.CongestionControlOption("reno"))},
		// Receive window: start at 1 MiB, auto-tune up to 8 MiB (see
		// tcpRXBufMax) so a fast client is not window-limited.
		{"set receive buffer", &tcpip.TCPReceiveBufferSizeRangeOption{Min: tcpRXBufMin, Default: tcpRXBufDef, Max: tcpRXBufMax}},
		{"enable receive buffer moderation", ptr(tcpip.TCPModerateReceiveBufferOption(true))},
		// Send buffer: 1 MiB default, up to 6 MiB of unacknowledged data.
		{"set send buffer", &tcpip.TCPSendBufferSizeRangeOption{Min: tcpTXBufMin, Default: tcpTXBufDef, Max: tcpTXBufMax}},
		// Nagle off (TCPDelayEnabled is Nagle, not delayed ACK): the
		// splice writes whole reads, small writes are interactive
		// traffic. gVisor has no delayed-ACK timer to tune; it ACKs
		// promptly (quick ACK is on for every endpoint).
		{"disable Nagle", ptr(tcpip.TCPDelayEnabled(false))},
		// A closed flow's 4-tuple is the client's; TIME-WAIT only needs
		// to outlast stray segments inside the tunnel (WireGuard drops
		// replays; reordering there is milliseconds), and it bounds the
		// closed endpoints a client opening thousands of connections a
		// second leaves behind. A SYN that reuses a 4-tuple still in
		// TIME-WAIT takes it over (reopenTimeWait).
		{"set TIME-WAIT", ptr(tcpip.TCPTimeWaitTimeoutOption(time.Second))},
	}
	for _, o := range tcpOpts {
		if e := st.SetTransportProtocolOption(tcp.ProtocolNumber, o.opt); e != nil {
			return fail(o.what, e)
		}
	}
	if e := st.CreateNIC(nicID, link); e != nil {
		return fail("create NIC", e)
	}
	// Forwarder only. Promiscuous: accept packets to any destination, not
	// only to our addresses. Spoofing: reply from that destination address.
	if e := st.SetPromiscuousMode(nicID, forwarder); e != nil {
		return fail("promiscuous mode", e)
	}
	if e := st.SetSpoofing(nicID, forwarder); e != nil {
		return fail("spoofing", e)
	}
	// Forwarding off: every flow is terminated here, never routed.
	for _, p := range []tcpip.NetworkProtocolNumber{ipv4.ProtocolNumber, ipv6.ProtocolNumber} {
		if e := st.SetForwardingDefaultAndAllNICs(p, false); e != nil {
			return fail("disable forwarding", e)
		}
	}
	for _, a := range local {
		a = a.Unmap()
		proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if e := st.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); e != nil {
			return fail("add local address "+a.String(), e)
		}
	}
	// Default routes, both families, out of the one NIC.
	st.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	return st, nil
}

func ptr[T any](v T) *T { return &v }

// File implements tun.Device: there is no file.
func (s *Stack) File() *os.File { return nil }

// Name implements tun.Device.
func (s *Stack) Name() (string, error) { return "wedge-netstack", nil }

// MTU implements tun.Device.
func (s *Stack) MTU() (int, error) { return s.cfg.MTU, nil }

// Events implements tun.Device: one EventUp, closed by Close.
func (s *Stack) Events() <-chan tun.Event { return s.events }

// BatchSize implements tun.Device. It matches wireguard-go's
// conn.IdealBatchSize, the most it hands to Write or asks of Read.
func (s *Stack) BatchSize() int { return 128 }

// Read implements tun.Device. It blocks for the first packet the stack
// emits, then returns as many queued packets as fit in bufs, each copied at
// offset. It returns os.ErrClosed after Close.
func (s *Stack) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	n, ok := s.link.read(bufs, sizes, offset)
	if !ok {
		return 0, os.ErrClosed
	}
	s.stats.packetsOut.Add(uint64(n))
	var bytes int
	for _, sz := range sizes[:n] {
		bytes += sz
	}
	s.stats.bytesOut.Add(uint64(bytes))
	return n, nil
}

// Write implements tun.Device. Each bufs[i][offset:] is one IP packet from
// a client; the bytes are copied, bufs are not retained. Malformed packets
// are dropped and counted, not reported as errors, so one bad packet does
// not fail a batch. It returns os.ErrClosed after Close.
func (s *Stack) Write(bufs [][]byte, offset int) (int, error) {
	if s.ctx.Err() != nil {
		return 0, os.ErrClosed
	}
	in, ok := s.link.beginIn()
	if !ok {
		return 0, os.ErrClosed
	}
	defer in.end()
	var bytes int
	defer func() { s.stats.bytesIn.Add(uint64(bytes)) }()
	for _, b := range bufs {
		if len(b) <= offset {
			continue
		}
		p := b[offset:]
		s.stats.packetsIn.Add(1)
		bytes += len(p)
		proto, ok := ipProto(p)
		if !ok {
			s.stats.droppedIn.Add(1)
			continue
		}
		if s.interceptEcho(p) {
			continue
		}
		s.reopenTimeWait(proto, p)
		in.deliver(proto, p)
	}
	return len(bufs), nil
}

// Close implements tun.Device. It stops the stack, closes every open flow
// and waits for the stack's goroutines. Read and Write return os.ErrClosed
// afterwards. It is idempotent.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.flowsMu.Lock()
		s.closed = true
		fs := make([]flow, 0, len(s.flows))
		for f := range s.flows {
			fs = append(fs, f)
		}
		s.flowsMu.Unlock()
		for _, f := range fs {
			f.close()
		}
		s.stack.Close()
		s.wg.Wait()
		s.work.wait()
		s.stack.Wait()
		s.link.close()
		close(s.events)
	})
	return nil
}

// addFlow registers f so Close can end it; false after Close.
func (s *Stack) addFlow(f flow) bool {
	s.flowsMu.Lock()
	defer s.flowsMu.Unlock()
	if s.closed {
		return false
	}
	s.flows[f] = struct{}{}
	return true
}

func (s *Stack) removeFlow(f flow) {
	s.flowsMu.Lock()
	delete(s.flows, f)
	s.flowsMu.Unlock()
}

// isLocal reports whether a is one of Config.Local.
func (s *Stack) isLocal(a netip.Addr) bool { return s.local[a.Unmap()] }

// isDNS reports whether dst is the node's DNS service and it is enabled.
func (s *Stack) isDNS(dst netip.AddrPort) bool {
	return dst.Port() == 53 && s.cfg.DNSUpstream.IsValid() && s.isLocal(dst.Addr())
}

func (s *Stack) denied(err error) bool {
	return s.cfg.IsDenied != nil && s.cfg.IsDenied(err)
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

func addrFrom(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip.Unmap()
}

// atomicTime is a monotonic "last activity" stamp.
type atomicTime struct{ ns atomic.Int64 }

func (t *atomicTime) touch()               { t.ns.Store(nanotime()) }
func (t *atomicTime) since() time.Duration { return time.Duration(nanotime() - t.ns.Load()) }
func nanotime() int64                      { return int64(time.Since(epoch)) }

var epoch = time.Now()

// idleTimer calls onIdle once last has not been touched for idle(), which
// it asks each time it checks (a flow's limit may change as it lives).
type idleTimer struct {
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
	fired   bool
}

func startIdleTimer(last *atomicTime, idle func() time.Duration, onIdle func()) *idleTimer {
	it := &idleTimer{}
	it.mu.Lock()
	defer it.mu.Unlock()
	it.t = time.AfterFunc(idle(), func() {
		it.mu.Lock()
		if it.stopped {
			it.mu.Unlock()
			return
		}
		if d, lim := last.since(), idle(); d < lim {
			it.t.Reset(lim - d)
			it.mu.Unlock()
			return
		}
		it.fired = true
		it.mu.Unlock()
		onIdle()
	})
	return it
}

// stop stops the timer and reports whether it had fired.
func (it *idleTimer) stop() bool {
	it.mu.Lock()
	defer it.mu.Unlock()
	it.stopped = true
	it.t.Stop()
	return it.fired
}

// enter registers a goroutine with Close's wait group; false after Close.
func (s *Stack) enter() bool {
	s.flowsMu.Lock()
	defer s.flowsMu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// dialDNS dials the DNS upstream for a client's query.
func (s *Stack) dialDNS(ctx context.Context, network string) (net.Conn, error) {
	if s.cfg.DNSDial != nil {
		return s.cfg.DNSDial(ctx, network, s.cfg.DNSUpstream)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, s.cfg.DNSUpstream.String())
}
