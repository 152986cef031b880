package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/wedge-edge/wedge/internal/happyeyeballs"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Addresses are the client's inner addresses (the wg-quick config's
	// Address =), IPv4 and/or IPv6. At least one is required; the client
	// can only dial families it has an address of.
	Addresses []netip.Addr
	// MTU is the tunnel MTU (1280..9000).
	MTU int
	// DNS are the servers Resolve queries through the tunnel, in order.
	// May be empty, in which case only IP literals resolve.
	DNS []netip.Addr
	// Logger receives rare events (never per packet or per dial). Required.
	Logger *slog.Logger
}

// Client is the client side of the tunnel in userspace: a gVisor stack
// owning the client's inner addresses, with default routes into the tunnel,
// served to wireguard-go as its tun.Device. Programs reach the tunnel
// through DialContext and Resolve instead of a kernel TUN. Create it with
// NewClient; Close releases everything, including open connections.
type Client struct {
	cfg    ClientConfig
	log    *slog.Logger
	stack  *stack.Stack
	link   *linkEndpoint
	events chan tun.Event
	has4   bool // an IPv4 address is configured
	has6   bool

	ctx    context.Context // canceled by Close; ends pending dials
	cancel context.CancelFunc

	droppedOut atomic.Uint64 // packets the stack emitted that Read could not take
	droppedIn  atomic.Uint64 // non-IP packets given to Write

	closeOnce sync.Once
}

var _ tun.Device = (*Client)(nil)

// NewClient builds and starts a Client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Logger == nil {
		return nil, fmt.Errorf("%w: nil Logger", ErrInvalidConfig)
	}
	if cfg.MTU < 1280 || cfg.MTU > 9000 {
		return nil, fmt.Errorf("%w: MTU %d outside 1280..9000", ErrInvalidConfig, cfg.MTU)
	}
	if len(cfg.Addresses) == 0 {
		return nil, fmt.Errorf("%w: no client address", ErrInvalidConfig)
	}
	c := &Client{
		log:    cfg.Logger,
		events: make(chan tun.Event, 1),
	}
	addrs := make([]netip.Addr, 0, len(cfg.Addresses))
	for _, a := range cfg.Addresses {
		a = a.Unmap()
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			return nil, fmt.Errorf("%w: client address %v", ErrInvalidConfig, a)
		}
		c.has4 = c.has4 || a.Is4()
		c.has6 = c.has6 || a.Is6()
		addrs = append(addrs, a.WithZone(""))
	}
	cfg.Addresses = addrs
	dns := make([]netip.Addr, 0, len(cfg.DNS))
	for _, a := range cfg.DNS {
		if !a.IsValid() || a.IsUnspecified() {
			return nil, fmt.Errorf("%w: DNS server %v", ErrInvalidConfig, a)
		}
		dns = append(dns, a.Unmap())
	}
	cfg.DNS = dns
	c.cfg = cfg
	c.link = newLinkEndpoint(uint32(cfg.MTU), func() { c.droppedOut.Add(1) })
	st, err := newGVisorStack(c.link, cfg.Addresses, false)
	if err != nil {
		return nil, err
	}
	c.stack = st
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.events <- tun.EventUp
	return c, nil
}

// File implements tun.Device: there is no file.
func (c *Client) File() *os.File { return nil }

// Name implements tun.Device.
func (c *Client) Name() (string, error) { return "wedge-client", nil }

// MTU implements tun.Device.
func (c *Client) MTU() (int, error) { return c.cfg.MTU, nil }

// Events implements tun.Device: one EventUp, closed by Close.
func (c *Client) Events() <-chan tun.Event { return c.events }

// BatchSize implements tun.Device; as Stack.BatchSize.
func (c *Client) BatchSize() int { return 128 }

// Read implements tun.Device. It blocks for the first packet the stack
// sends into the tunnel, then returns as many queued packets as fit in
// bufs, each copied at offset. It returns os.ErrClosed after Close.
func (c *Client) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	n, ok := c.link.read(bufs, sizes, offset)
	if !ok {
		return 0, os.ErrClosed
	}
	return n, nil
}

// Write implements tun.Device. Each bufs[i][offset:] is one IP packet out
// of the tunnel; the bytes are copied, bufs are not retained. Packets that
// are not IP are dropped, not reported. It returns os.ErrClosed after
// Close.
func (c *Client) Write(bufs [][]byte, offset int) (int, error) {
	if c.ctx.Err() != nil {
		return 0, os.ErrClosed
	}
	in, ok := c.link.beginIn()
	if !ok {
		return 0, os.ErrClosed
	}
	defer in.end()
	for _, b := range bufs {
		if len(b) <= offset {
			continue
		}
		p := b[offset:]
		proto, ok := ipProto(p)
		if !ok {
			c.droppedIn.Add(1)
			continue
		}
		in.deliver(proto, p)
	}
	return len(bufs), nil
}

// Close implements tun.Device. It aborts every open connection and pending
// dial (their calls return errors), stops the stack and waits for its
// goroutines. Read and Write return os.ErrClosed, DialContext and Resolve
// net.ErrClosed afterwards. It is idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		c.stack.Close()
		c.stack.Wait()
		c.link.close()
		close(c.events)
		if d := c.droppedOut.Load() + c.droppedIn.Load(); d > 0 {
			c.log.Info("netstack client closed", "dropped_out", c.droppedOut.Load(), "dropped_in", c.droppedIn.Load())
		}
	})
	return nil
}

// fallbackDelay is how long DialContext waits on one address family of a
// name before starting the other in parallel (RFC 8305's recommended
// "Connection Attempt Delay", as net.Dialer's default).
const fallbackDelay = happyeyeballs.Delay

// DialContext connects to address through the tunnel. network is tcp,
// tcp4, tcp6, udp, udp4 or udp6; address is "ip:port" or "host:port", a
// host being resolved with Resolve. A name with addresses of both families
// is dialed Happy-Eyeballs style (RFC 8305: IPv6 first, IPv4 after
// fallbackDelay); within a family the addresses are tried in turn. UDP
// returns a connected datagram net.Conn. TCP conns implement CloseWrite
// and CloseRead.
//
// Errors are *net.OpError wrapping a syscall.Errno where the stack knows
// the cause (ECONNREFUSED for a reset answer, which is also how the node
// reports any failure to reach the destination; ENETUNREACH for a family
// the client has no address of; ETIMEDOUT), or ctx's error, or a
// *net.DNSError from Resolve. It returns net.ErrClosed after Close.
func (c *Client) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var want4, want6, isTCP bool
	switch network {
	case "tcp", "udp":
		want4, want6 = true, true
	case "tcp4", "udp4":
		want4 = true
	case "tcp6", "udp6":
		want6 = true
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	isTCP = network[:3] == "tcp"
	if c.ctx.Err() != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.ErrClosed}
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.AddrError{Err: "invalid port", Addr: address}}
	}
	ips, err := c.Resolve(ctx, host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	var v4, v6 []netip.AddrPort
	for _, ip := range ips {
		ip = ip.Unmap().WithZone("")
		ap := netip.AddrPortFrom(ip, uint16(port))
		if ip.Is4() && want4 {
			v4 = append(v4, ap)
		} else if ip.Is6() && want6 {
			v6 = append(v6, ap)
		}
	}
	if len(v4) == 0 && len(v6) == 0 {
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.AddrError{Err: "no suitable address", Addr: host}}
	}
	dial := func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		if isTCP {
			return c.dialTCP(ctx, network, dst)
		}
		return c.dialUDP(network, dst)
	}
	// The families the client can reach first: the other fails at once.
	if !c.has6 && len(v4) > 0 {
		v6 = nil
	}
	if !c.has4 && len(v6) > 0 {
		v4 = nil
	}
	if !isTCP || len(v4) == 0 || len(v6) == 0 {
		return happyeyeballs.Serial(ctx, dial, append(v6, v4...))
	}
	return happyeyeballs.Dial(ctx, dial, v6, v4)
}

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
	if ap.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}, proto
}

// checkFamily returns ENETUNREACH for a family the client has no address
// of: the stack would have no source address for it.
func (c *Client) checkFamily(network string, dst netip.AddrPort) error {
	if dst.Addr().Is4() && !c.has4 || dst.Addr().Is6() && !c.has6 {
		return &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(dst), Err: syscall.ENETUNREACH}
	}
	return nil
}

// dialTCP connects a TCP endpoint to dst. It is gonet.DialContextTCP with
// the failure kept as an errno (gonet flattens it to a string) and Close
// ending the wait.
func (c *Client) dialTCP(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
	if err := c.checkFamily(network, dst); err != nil {
		return nil, err
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(dst), Err: err}
	}
	fa, proto := fullAddr(dst)
	var wq waiter.Queue
	ep, terr := c.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, opErr(errnoOf(terr))
	}
	we, notify := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	terr = ep.Connect(fa)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-notify:
			terr = ep.LastError()
		case <-ctx.Done():
			ep.Close()
			return nil, opErr(ctx.Err())
		case <-c.ctx.Done():
			ep.Close()
			return nil, opErr(net.ErrClosed)
		}
	}
	if terr != nil {
		ep.Close()
		return nil, opErr(errnoOf(terr))
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

// dialUDP returns a UDP endpoint connected to dst.
func (c *Client) dialUDP(network string, dst netip.AddrPort) (net.Conn, error) {
	conn, _, err := c.dialUDPQueue(network, dst)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// dialUDPQueue is dialUDP also returning the endpoint's waiter queue, on
// which an ICMP error from dst is signalled as waiter.EventErr (gonet only
// wakes a Read for data).
func (c *Client) dialUDPQueue(network string, dst netip.AddrPort) (*gonet.UDPConn, *waiter.Queue, error) {
	if err := c.checkFamily(network, dst); err != nil {
		return nil, nil, err
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: net.UDPAddrFromAddrPort(dst), Err: err}
	}
	fa, proto := fullAddr(dst)
	wq := new(waiter.Queue)
	ep, terr := c.stack.NewEndpoint(udp.ProtocolNumber, proto, wq)
	if terr != nil {
		return nil, nil, opErr(errnoOf(terr))
	}
	if terr := ep.Connect(fa); terr != nil {
		ep.Close()
		return nil, nil, opErr(errnoOf(terr))
	}
	return gonet.NewUDPConn(wq, ep), wq, nil
}

// errnoOf maps the gVisor errors a connect can end with to the errno a
// kernel socket would report, so callers can branch with errors.Is (a
// SOCKS server picks its reply code from it).
func errnoOf(e tcpip.Error) error {
	switch e.(type) {
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		return syscall.ECONNABORTED
	case *tcpip.ErrNetworkUnreachable, *tcpip.ErrNoNet:
		return syscall.ENETUNREACH
	case *tcpip.ErrHostUnreachable:
		return syscall.EHOSTUNREACH
	case *tcpip.ErrHostDown:
		return syscall.EHOSTDOWN
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT
	case *tcpip.ErrNoPortAvailable:
		return syscall.EADDRNOTAVAIL
	case *tcpip.ErrNotPermitted:
		return syscall.EPERM
	case *tcpip.ErrAddressFamilyNotSupported:
		return syscall.EAFNOSUPPORT
	case *tcpip.ErrInvalidEndpointState, *tcpip.ErrClosedForSend, *tcpip.ErrClosedForReceive:
		return net.ErrClosed
	}
	return errors.New(e.String())
}

// Resolver settings.
const (
	// dnsPort is where Resolve sends queries on each ClientConfig.DNS.
	dnsPort = 53
	// dnsAttemptTimeout bounds one UDP try at one server; dnsAttempts
	// tries are made per server, resending unanswered queries (UDP loss),
	// as glibc's defaults (timeout:5 attempts:2) but shorter: the tunnel
	// hop is one RTT and the node's resolver answers or fails quickly.
	dnsAttemptTimeout = 2 * time.Second
	dnsAttempts       = 2
	// dnsUDPSize is the EDNS0 payload size advertised: DNS Flag Day
	// 2020's 1232 bytes, which fits any tunnel MTU without fragmenting.
	// Larger answers come truncated and are retried over TCP.
	dnsUDPSize = 1232
	// dnsTCPTimeout bounds one TCP query, connect included.
	dnsTCPTimeout = 5 * time.Second
)

// Resolve looks host up through the tunnel: A and AAAA queries to each
// ClientConfig.DNS server in turn, over UDP, retried over TCP when the
// answer is truncated. An IP literal is returned as is. Addresses of the
// families the client has come first, IPv6 before IPv4 within that order.
// CNAME chains in the answer are followed. Errors are *net.DNSError
// (IsNotFound for NXDOMAIN, no address or an invalid name, IsTimeout when
// no server answered in time), or net.ErrClosed after Close.
func (c *Client) Resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	if c.ctx.Err() != nil {
		return nil, net.ErrClosed
	}
	fqdn := host
	if !strings.HasSuffix(fqdn, ".") {
		fqdn += "."
	}
	if !isDomainName(fqdn) {
		return nil, &net.DNSError{Err: "invalid domain name", Name: host, IsNotFound: true}
	}
	name, err := dnsmessage.NewName(fqdn)
	if err != nil {
		return nil, &net.DNSError{Err: "invalid domain name", Name: host, IsNotFound: true}
	}
	if len(c.cfg.DNS) == 0 {
		return nil, &net.DNSError{Err: "no DNS server configured", Name: host}
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	defer context.AfterFunc(c.ctx, stop)()
	var lastErr *net.DNSError
	for _, srv := range c.cfg.DNS {
		addrs, err := c.lookup(ctx, srv, name)
		if err == nil {
			if len(addrs) == 0 {
				return nil, &net.DNSError{Err: "no such host", Name: host, Server: srv.String(), IsNotFound: true}
			}
			return c.sortAddrs(addrs), nil
		}
		if c.ctx.Err() != nil {
			return nil, net.ErrClosed
		}
		lastErr = &net.DNSError{Err: err.Error(), Name: host, Server: srv.String(), IsTimeout: isTimeout(err)}
		if errors.Is(err, errNXDomain) {
			lastErr.Err, lastErr.IsNotFound = "no such host", true
			return nil, lastErr
		}
		if ctx.Err() != nil {
			lastErr.IsTimeout = true
			break
		}
	}
	return nil, lastErr
}

// sortAddrs puts the families the client can reach first, IPv6 before
// IPv4, keeping the server's order within a family (it may balance).
func (c *Client) sortAddrs(addrs []netip.Addr) []netip.Addr {
	rank := func(a netip.Addr) int {
		switch {
		case a.Is6() && c.has6:
			return 0
		case a.Is4() && c.has4:
			return 1
		case a.Is6():
			return 2
		}
		return 3
	}
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int { return rank(a) - rank(b) })
	return addrs
}

var (
	errNXDomain   = errors.New("no such host")
	errServerFail = errors.New("server failure")
)

// dnsQuery is one question in flight and, once answered, its outcome.
type dnsQuery struct {
	qtype dnsmessage.Type
	id    uint16
	msg   []byte
	done  bool
	tcp   bool // truncated over UDP: ask again over TCP
	rcode dnsmessage.RCode
	addrs []netip.Addr
}

// lookup asks server for name's A and AAAA records. Both queries share one
// UDP socket; unanswered ones are resent each attempt. It returns the
// addresses (possibly none: NODATA), errNXDomain, or another error when
// this server gave no usable answer.
func (c *Client) lookup(ctx context.Context, server netip.Addr, name dnsmessage.Name) ([]netip.Addr, error) {
	qs := []*dnsQuery{{qtype: dnsmessage.TypeAAAA}, {qtype: dnsmessage.TypeA}}
	for _, q := range qs {
		q.id = uint16(rand.Uint32())
		var err error
		if q.msg, err = buildQuery(q.id, name, q.qtype); err != nil {
			return nil, err
		}
	}
	dst := netip.AddrPortFrom(server, dnsPort)
	conn, wq, err := c.dialUDPQueue("udp", dst)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	// An ICMP port or host unreachable for the server: give up on it at
	// once rather than at the timeout.
	var unreachable atomic.Bool
	we := waiter.NewFunctionEntry(waiter.EventErr, func(waiter.EventMask) {
		unreachable.Store(true)
		conn.SetReadDeadline(time.Now())
	})
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)

	buf := make([]byte, dnsUDPSize+512)
	var lastErr error
	for attempt := 0; attempt < dnsAttempts && ctx.Err() == nil; attempt++ {
		pending := 0
		for _, q := range qs {
			if !q.done {
				pending++
				if _, err := conn.Write(q.msg); err != nil {
					return nil, err
				}
			}
		}
		conn.SetReadDeadline(time.Now().Add(dnsAttemptTimeout))
		for pending > 0 {
			n, err := conn.Read(buf)
			if unreachable.Load() {
				return nil, fmt.Errorf("DNS server %v: %w", dst, syscall.ECONNREFUSED)
			}
			if err != nil {
				if isTimeout(err) || ctx.Err() != nil {
					lastErr = err
					break
				}
				// An ICMP error on the connected socket (port
				// unreachable): the server is not there.
				return nil, err
			}
			if q := matchAnswer(qs, name, buf[:n]); q != nil {
				pending--
			}
		}
		if pending == 0 {
			lastErr = nil
			break
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	for _, q := range qs {
		if !q.done {
			if lastErr == nil {
				lastErr = os.ErrDeadlineExceeded
			}
			return nil, fmt.Errorf("no answer from %v: %w", dst, lastErr)
		}
		if q.tcp {
			if err := c.exchangeTCP(ctx, dst, name, q); err != nil {
				return nil, err
			}
		}
	}
	var addrs []netip.Addr
	for _, q := range qs {
		switch q.rcode {
		case dnsmessage.RCodeSuccess:
			addrs = append(addrs, q.addrs...)
		case dnsmessage.RCodeNameError:
			return nil, errNXDomain
		default:
			return nil, fmt.Errorf("%w: %v", errServerFail, q.rcode)
		}
	}
	return addrs, nil
}

// exchangeTCP asks q again over TCP (RFC 7766) and records the answer.
func (c *Client) exchangeTCP(ctx context.Context, dst netip.AddrPort, name dnsmessage.Name, q *dnsQuery) error {
	ctx, cancel := context.WithTimeout(ctx, dnsTCPTimeout)
	defer cancel()
	conn, err := c.dialTCP(ctx, "tcp", dst)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })()
	msg := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(q.msg)), uint16(len(q.msg)))
	if _, err := conn.Write(append(msg, q.msg...)); err != nil {
		return err
	}
	var l [2]byte
	if _, err := io.ReadFull(conn, l[:]); err != nil {
		return err
	}
	buf := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	q.done, q.tcp = false, false
	if matchAnswer([]*dnsQuery{q}, name, buf) == nil || q.tcp {
		return fmt.Errorf("bad answer over TCP from %v", dst)
	}
	return nil
}

// buildQuery returns a recursive query for name, type qtype, with an EDNS0
// record advertising dnsUDPSize.
func buildQuery(id uint16, name dnsmessage.Name, qtype dnsmessage.Type) ([]byte, error) {
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), dnsmessage.Header{ID: id, RecursionDesired: true})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(dnsmessage.Question{Name: name, Type: qtype, Class: dnsmessage.ClassINET}); err != nil {
		return nil, err
	}
	if err := b.StartAdditionals(); err != nil {
		return nil, err
	}
	var rh dnsmessage.ResourceHeader
	if err := rh.SetEDNS0(dnsUDPSize, dnsmessage.RCodeSuccess, false); err != nil {
		return nil, err
	}
	if err := b.OPTResource(rh, dnsmessage.OPTResource{}); err != nil {
		return nil, err
	}
	return b.Finish()
}

// matchAnswer parses msg as a response to one of the pending qs (same ID
// and question) and records its outcome there, returning it; nil for
// anything else (a stray, late or malformed message).
func matchAnswer(qs []*dnsQuery, name dnsmessage.Name, msg []byte) *dnsQuery {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || !h.Response {
		return nil
	}
	question, err := p.Question()
	if err != nil || question.Class != dnsmessage.ClassINET || !strings.EqualFold(question.Name.String(), name.String()) {
		return nil
	}
	var q *dnsQuery
	for _, c := range qs {
		if c.id == h.ID && c.qtype == question.Type && !c.done {
			q = c
		}
	}
	if q == nil {
		return nil
	}
	q.done = true
	if h.Truncated {
		q.tcp = true
		return q
	}
	q.rcode = h.RCode
	if h.RCode != dnsmessage.RCodeSuccess {
		return q
	}
	if err := p.SkipAllQuestions(); err != nil {
		q.rcode = dnsmessage.RCodeFormatError
		return q
	}
	// Follow the CNAME chain from name; keep only addresses of names on
	// it. Recursive servers put the chain in order, so one pass suffices.
	owner := strings.ToLower(name.String())
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			q.rcode = dnsmessage.RCodeFormatError
			return q
		}
		onChain := rh.Class == dnsmessage.ClassINET && strings.ToLower(rh.Name.String()) == owner
		switch {
		case onChain && rh.Type == dnsmessage.TypeCNAME:
			r, err := p.CNAMEResource()
			if err != nil {
				q.rcode = dnsmessage.RCodeFormatError
				return q
			}
			owner = strings.ToLower(r.CNAME.String())
		case onChain && rh.Type == dnsmessage.TypeA && q.qtype == dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				q.rcode = dnsmessage.RCodeFormatError
				return q
			}
			q.addrs = append(q.addrs, netip.AddrFrom4(r.A))
		case onChain && rh.Type == dnsmessage.TypeAAAA && q.qtype == dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				q.rcode = dnsmessage.RCodeFormatError
				return q
			}
			q.addrs = append(q.addrs, netip.AddrFrom16(r.AAAA))
		default:
			if err := p.SkipAnswer(); err != nil {
				q.rcode = dnsmessage.RCodeFormatError
				return q
			}
		}
	}
	return q
}

// isDomainName reports whether s (ending in a dot) is a name Resolve will
// ask for: labels of 1..63 letters, digits, '-' and '_', at most 254
// bytes with the dot (net's rules).
func isDomainName(s string) bool {
	if len(s) < 2 || len(s) > 254 {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9', ch == '_', ch == '-':
			label++
			if label > 63 {
				return false
			}
		case ch == '.':
			if label == 0 {
				return false
			}
			label = 0
		default:
			return false
		}
	}
	return true
}
