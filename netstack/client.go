package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

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
