package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wedge-edge/wedge/internal/ratelog"
)

// ErrSliceExhausted is wrapped by the error of a dial that found every port
// of its source-port range in use: for TCP, by connections from the same
// source address to the same destination address and port; for UDP, by
// any other socket on the source address. It fails at once, without
// retrying or waiting for a port to free up.
var ErrSliceExhausted = errors.New("egress: source-port slice exhausted")

// ErrPortShare is wrapped by the error of a UDP dial whose client already
// holds its share (Config.UDPPortShare) of the source address's port range.
var ErrPortShare = errors.New("egress: client holds its share of the UDP source ports")

// checker is the part of *ACL the Dialer uses; tests replace it.
type checker interface {
	Check(dst netip.Addr) error
}

// Dialer reaches real destinations for the netstack forwarders: it applies
// the ACL, binds every socket to the egress source of the destination's
// family (or to the one Config.Route picks for the flow) and gives it a
// source port inside the node's slice (or the flow's range). It holds no
// background goroutines or sockets while idle and needs no Close. A Dialer
// is safe for concurrent use.
type Dialer struct {
	log            *slog.Logger
	acl            checker
	src4, src6     netip.Addr
	portLo, portHi uint16
	timeout        time.Duration
	pinger         *pinger
	route          func(netip.Addr, netip.AddrPort) (Source, error)
	kernel         kernelRange // ip_local_port_range, read only with route
	udpShare       int         // Config.UDPPortShare, defaulted
	clientOf       func(netip.Addr) (uint64, bool)
	observeTCP     func(net.Conn, netip.AddrPort)

	udpMu    sync.Mutex
	udpPorts map[udpHolder]int // UDP flows open per client and source address

	tcp, udp, ping counters
	refusals       refusalLog
}

// udpHolder is a client (its registration, or its address when unknown)
// and an egress source address.
type udpHolder struct {
	id     uint64
	client netip.Addr // zero when id names the client
	src    netip.Addr
}

// New validates cfg and returns a Dialer. It fails when cfg is invalid, when
// the host's interface addresses cannot be read, or when a port slice is
// set and the kernel lacks IP_LOCAL_PORT_RANGE (Linux 6.3) or would ignore
// the slice because it lies outside net.ipv4.ip_local_port_range. With
// Config.Route it also fails when the kernel lacks IP_LOCAL_PORT_RANGE.
func New(cfg Config) (*Dialer, error) {
	if cfg.Logger == nil {
		return nil, errors.New("egress: nil Logger")
	}
	if cfg.DialTimeout < 0 {
		return nil, fmt.Errorf("egress: negative dial timeout %v", cfg.DialTimeout)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	src4, src6, ignored, err := cfg.sources()
	if err != nil {
		return nil, err
	}
	if err := cfg.checkPorts(); err != nil {
		return nil, err
	}
	if cfg.PortLo != 0 {
		if err := probePortRange(cfg.PortLo, cfg.PortHi); err != nil {
			return nil, err
		}
	}
	var kernel kernelRange
	if cfg.Route != nil {
		if err := kernel.load(); err != nil {
			return nil, err
		}
		klo, khi := kernel.get()
		if err := probePortOption("Route", klo, khi); err != nil {
			return nil, err
		}
	}
	for _, s := range []netip.Addr{src4, src6} {
		if s.IsValid() {
			if err := probeSource(s); err != nil {
				return nil, err
			}
		}
	}
	own := append([]netip.Addr(nil), cfg.Own...)
	for _, s := range cfg.Sources {
		own = append(own, s.Unmap())
	}
	acl, err := NewACL(cfg.Allow, own)
	if err != nil {
		return nil, err
	}
	if ignored > 0 {
		cfg.Logger.Warn("egress: only the first source of each family is used", "ignored", ignored)
	}
	if cfg.UDPPortShare == 0 {
		cfg.UDPPortShare = DefaultUDPPortShare
	}
	d := &Dialer{
		udpShare:   cfg.UDPPortShare,
		clientOf:   cfg.ClientOf,
		observeTCP: cfg.ObserveTCP,
		udpPorts:   make(map[udpHolder]int),
		log:        cfg.Logger,
		acl:        acl,
		src4:       src4,
		src6:       src6,
		portLo:     cfg.PortLo,
		portHi:     cfg.PortHi,
		timeout:    cfg.DialTimeout,
		pinger:     newPinger(src4, src6),
		route:      cfg.Route,
		refusals:   refusalLog{log: cfg.Logger, limit: ratelog.Limiter{Every: refusalLogEvery}},
	}
	d.kernel.r.Store(kernel.r.Load())
	return d, nil
}

// DialTCP returns a TCP connection to dst, from the egress source of dst's
// family and a source port inside the slice, or from the Source that
// Config.Route picks for src, the client's inner address. An IPv4-mapped
// dst is dialed as IPv4. It returns an error wrapping ErrDenied when the
// ACL refuses dst, ErrNoEgress when Route refuses the flow or picks an
// unusable Source, and ErrSliceExhausted when every source port of the
// range already has a connection to dst. The dial is bounded by ctx and by
// Config.DialTimeout.
func (d *Dialer) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	c, err := d.dial(ctx, "tcp", src.Addr().Unmap(), dst)
	d.tcp.count(err)
	if err != nil {
		d.refusals.note("tcp", src.Addr().Unmap(), dst, err)
	}
	return c, err
}

// DialTCPFor is DialTCP for a flow that is not one of this node's own
// clients': one relayed here from another data center (server/relay),
// whose client's tags came with it. route picks the source for dst (nil:
// the configured sources, as without Config.Route), checked as
// Config.Route's choice is; the ACL, the dial timeout, the counters and
// Config.ObserveTCP apply as to DialTCP.
func (d *Dialer) DialTCPFor(ctx context.Context, route func(dst netip.AddrPort) (Source, error), dst netip.AddrPort) (net.Conn, error) {
	c, err := d.dialFor(ctx, route, dst)
	d.tcp.count(err)
	if err != nil {
		d.refusals.note("tcp", netip.Addr{}, dst, err)
	}
	return c, err
}

func (d *Dialer) dialFor(ctx context.Context, route func(netip.AddrPort) (Source, error), dst netip.AddrPort) (net.Conn, error) {
	addr := dst.Addr().Unmap()
	if !addr.IsValid() || dst.Port() == 0 {
		return nil, fmt.Errorf("egress: invalid tcp destination %s", dst)
	}
	dst = netip.AddrPortFrom(addr, dst.Port())
	if err := checkDst(d.acl, dst); err != nil {
		return nil, err
	}
	var src Source
	if route == nil {
		src, _ = d.configured(dst)
	} else {
		s, err := route(dst)
		if err != nil {
			if !errors.Is(err, ErrNoEgress) {
				err = fmt.Errorf("%w: %w", ErrNoEgress, err)
			}
			return nil, err
		}
		if src, err = checkRoute(s, netip.Addr{}, dst, d.portLo, d.portHi, &d.kernel); err != nil {
			return nil, err
		}
	}
	c, err := d.connect(ctx, "tcp", src, dst)
	if err == nil && d.observeTCP != nil {
		d.observeTCP(c, dst)
	}
	return c, err
}

// DialUDP returns a connected UDP socket to dst, like DialTCP. Unlike TCP,
// a UDP source port is not shared between destinations: each flow holds
// its port until the connection is closed, and the range is exhausted
// when every port in it is held, whatever the destinations. So one client
// (Config.ClientOf) may hold at most 1/Config.UDPPortShare of the range on
// a source address; its further UDP flows fail with ErrPortShare until
// one of its sockets is closed.
func (d *Dialer) DialUDP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	c, err := d.dial(ctx, "udp", src.Addr().Unmap(), dst)
	d.udp.count(err)
	if err != nil {
		d.refusals.note("udp", src.Addr().Unmap(), dst, err)
	}
	return c, err
}

// holdUDP reserves one of client's UDP ports on src, whose port range has
// ports ports; it returns the release function, or an error wrapping
// ErrPortShare when the client holds its share.
func (d *Dialer) holdUDP(client netip.Addr, src netip.Addr, ports int) (func(), error) {
	if d.udpShare < 0 {
		return func() {}, nil
	}
	h := udpHolder{client: client, src: src}
	if d.clientOf != nil {
		if id, ok := d.clientOf(client); ok {
			h = udpHolder{id: id, src: src}
		}
	}
	share := max(1, ports/d.udpShare)
	d.udpMu.Lock()
	defer d.udpMu.Unlock()
	if d.udpPorts[h] >= share {
		return nil, fmt.Errorf("%w: client %s holds %d UDP ports on %s, its share (1/%d) of %d", ErrPortShare, client, share, src, d.udpShare, ports)
	}
	d.udpPorts[h]++
	var once sync.Once
	return func() {
		once.Do(func() {
			d.udpMu.Lock()
			defer d.udpMu.Unlock()
			if d.udpPorts[h]--; d.udpPorts[h] <= 0 {
				delete(d.udpPorts, h)
			}
		})
	}, nil
}

// rangeSize is the number of ports of src's range: its own, or the
// kernel's.
func (d *Dialer) rangeSize(src Source) int {
	lo, hi := src.PortLo, src.PortHi
	if lo == 0 {
		if v := d.kernel.r.Load(); v != nil {
			lo, hi = v.lo, v.hi
		} else if klo, khi, err := kernelPortRange(); err == nil {
			lo, hi = klo, khi
		}
	}
	if lo == 0 || hi < lo {
		return 1 << 16
	}
	return int(hi) - int(lo) + 1
}

// udpConn is a UDP flow's socket that gives its port back to its client's
// share when closed.
type udpConn struct {
	net.Conn
	release func()
}

func (c *udpConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// sourceKey is the context key under which dial hands the flow's Source,
// with its effective port range, to control.
type sourceKey struct{}

// DialNode dials dst for the node's own purposes ("tcp" or "udp"), such as
// forwarding the clients' DNS queries to the upstream resolver: from src
// (port range included; the zero Source: the host's choice), and not
// subject to the egress ACL, which guards the clients' flows. It is not
// counted in Stats.
func (d *Dialer) DialNode(ctx context.Context, proto string, src Source, dst netip.AddrPort) (net.Conn, error) {
	if proto != "tcp" && proto != "udp" {
		return nil, fmt.Errorf("egress: DialNode: protocol %q, want tcp or udp", proto)
	}
	addr := dst.Addr().Unmap()
	if !addr.IsValid() || dst.Port() == 0 {
		return nil, fmt.Errorf("egress: invalid %s destination %s", proto, dst)
	}
	dst = netip.AddrPortFrom(addr, dst.Port())
	if !src.Addr.IsValid() {
		src.Addr = netip.IPv4Unspecified()
		if addr.Is6() {
			src.Addr = netip.IPv6Unspecified()
		}
	} else {
		var err error
		if src, err = checkRoute(src, netip.Addr{}, dst, 0, 0, &d.kernel); err != nil {
			return nil, err
		}
	}
	return d.connect(context.WithValue(ctx, nodeDialKey{}, true), proto, src, dst)
}

// nodeDialKey marks a DialNode dial in its context: control skips the ACL.
type nodeDialKey struct{}

func (d *Dialer) dial(ctx context.Context, proto string, client netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	addr := dst.Addr().Unmap()
	if !addr.IsValid() || dst.Port() == 0 {
		return nil, fmt.Errorf("egress: invalid %s destination %s", proto, dst)
	}
	dst = netip.AddrPortFrom(addr, dst.Port())
	if err := checkDst(d.acl, dst); err != nil {
		return nil, err
	}
	src, err := d.source(client, dst)
	if err != nil {
		return nil, err
	}
	if proto != "udp" {
		c, err := d.connect(ctx, proto, src, dst)
		if err == nil && d.observeTCP != nil {
			d.observeTCP(c, dst)
		}
		return c, err
	}
	release, err := d.holdUDP(client, src.Addr, d.rangeSize(src))
	if err != nil {
		return nil, err
	}
	c, err := d.connect(ctx, proto, src, dst)
	if err != nil {
		release()
		return nil, err
	}
	return &udpConn{Conn: c, release: release}, nil
}

// connect binds to src (its port range set in control) and connects to dst.
func (d *Dialer) connect(ctx context.Context, proto string, src Source, dst netip.AddrPort) (net.Conn, error) {
	addr := dst.Addr()
	network := proto + "4"
	if addr.Is6() {
		network = proto + "6"
	}
	nd := net.Dialer{
		Timeout:        d.timeout,
		ControlContext: d.control,
		// TCP keepalive after 15 s idle, every 15 s (Go's default, set
		// here on purpose): the client's own keepalives end at the
		// netstack, so these are what notice a dead destination (and keep
		// state on its side fresh) for a flow nobody writes to. It costs
		// four setsockopt calls per dial.
		KeepAlive: 15 * time.Second,
	}
	if proto == "tcp" {
		nd.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src.Addr, 0))
	} else {
		nd.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src.Addr, 0))
	}
	c, err := nd.DialContext(context.WithValue(ctx, sourceKey{}, src), network, dst.String())
	if err != nil {
		return nil, dialError(proto, src, dst, err)
	}
	if src.PortLo != 0 {
		// The kernel silently ignores a per-socket range outside
		// ip_local_port_range; it was checked, but the sysctl may change.
		lp := localPort(c.LocalAddr())
		if lp < src.PortLo || lp > src.PortHi {
			c.Close()
			return nil, fmt.Errorf("egress: kernel chose source port %d outside the slice %d-%d (check net.ipv4.ip_local_port_range)", lp, src.PortLo, src.PortHi)
		}
	}
	return c, nil
}

// source returns the Source of a flow from client to dst (unmapped): the
// one Route picks, or the configured one. Its Addr is always valid (the
// wildcard address when the family has no source, so that the socket
// options set in control apply to the bind/connect the kernel does) and
// its port range is the effective one (both zero: the kernel's).
func (d *Dialer) source(client netip.Addr, dst netip.AddrPort) (Source, error) {
	if d.route == nil {
		return d.configured(dst)
	}
	s, err := d.route(client, dst)
	if err != nil {
		if !errors.Is(err, ErrNoEgress) {
			err = fmt.Errorf("%w: %w", ErrNoEgress, err)
		}
		return Source{}, err
	}
	return checkRoute(s, client, dst, d.portLo, d.portHi, &d.kernel)
}

// configured is the Source of a flow to dst without Config.Route: the
// configured source of dst's family (the wildcard address without one)
// and the node's slice.
func (d *Dialer) configured(dst netip.AddrPort) (Source, error) {
	s := Source{Addr: d.src4, PortLo: d.portLo, PortHi: d.portHi}
	if dst.Addr().Is6() {
		s.Addr = d.src6
	}
	if !s.Addr.IsValid() {
		s.Addr = netip.IPv4Unspecified()
		if dst.Addr().Is6() {
			s.Addr = netip.IPv6Unspecified()
		}
	}
	return s, nil
}

// checkRoute validates the Source that Route picked for a flow from client
// to dst and fills in the default port range lo..hi. Errors wrap
// ErrNoEgress.
func checkRoute(s Source, client netip.Addr, dst netip.AddrPort, lo, hi uint16, kernel *kernelRange) (Source, error) {
	bad := func(format string, args ...any) (Source, error) {
		return Source{}, fmt.Errorf("%w: route for %s to %s chose %s ports %d-%d: %s", ErrNoEgress, client, dst, s.Addr, s.PortLo, s.PortHi, fmt.Sprintf(format, args...))
	}
	s.Addr = s.Addr.Unmap()
	switch {
	case !s.Addr.IsValid():
		return bad("no address")
	case s.Addr.Is4() != dst.Addr().Is4():
		return bad("address family differs from the destination's")
	}
	if why := sourceProblem(s.Addr); why != "" {
		return bad("address %s: want a unicast address", why)
	}
	if s.PortLo == 0 && s.PortHi == 0 {
		s.PortLo, s.PortHi = lo, hi
		return s, nil // checked by New
	}
	if why := sliceProblem(s.PortLo, s.PortHi); why != "" {
		return bad("invalid port range: %s", why)
	}
	if klo, khi, ok := kernel.contains(s.PortLo, s.PortHi); !ok {
		return bad("port range outside net.ipv4.ip_local_port_range %d-%d, which the kernel would ignore: widen the sysctl", klo, khi)
	}
	return s, nil
}

// dialError explains a failed dial from src to dst: a source address that
// is not on the host, and a port range with no port left, are told apart
// by the system call that failed (checked against Linux 6.18): bind()
// fails with EADDRNOTAVAIL for a non-local address, for TCP and UDP alike;
// with IP_BIND_ADDRESS_NO_PORT, bind() takes no port and connect() picks
// one, failing with EADDRNOTAVAIL for TCP (no port of the range is free
// for this 4-tuple) and EAGAIN for UDP (the autobind found no port of the
// range free at all).
func dialError(proto string, src Source, dst netip.AddrPort, err error) error {
	var se *os.SyscallError
	if !errors.As(err, &se) {
		return fmt.Errorf("egress: %w", err)
	}
	switch {
	case se.Syscall == "bind" && errors.Is(se.Err, unix.EADDRNOTAVAIL):
		return fmt.Errorf("egress: egress address %s is not on this host (add it to an interface, or route its prefix to the host with \"ip route add local PREFIX dev lo\"): %w", src.Addr, err)
	case se.Syscall == "connect" && proto == "tcp" && errors.Is(se.Err, unix.EADDRNOTAVAIL):
		return fmt.Errorf("%w: every port of %s on %s is in use towards %s: %w", ErrSliceExhausted, portsString(src), src.Addr, dst, err)
	case se.Syscall == "connect" && proto == "udp" && errors.Is(se.Err, unix.EAGAIN):
		return fmt.Errorf("%w: every UDP port of %s on %s is in use: %w", ErrSliceExhausted, portsString(src), src.Addr, err)
	}
	return fmt.Errorf("egress: %w", err)
}

func portsString(s Source) string {
	if s.PortLo == 0 {
		return "net.ipv4.ip_local_port_range"
	}
	return fmt.Sprintf("%d-%d", s.PortLo, s.PortHi)
}

func localPort(a net.Addr) uint16 {
	switch v := a.(type) {
	case *net.TCPAddr:
		return uint16(v.Port)
	case *net.UDPAddr:
		return uint16(v.Port)
	}
	return 0
}

// control runs on every socket after socket() and before bind()/connect().
// It checks the ACL again on the address actually connected to (defense in
// depth) and sets the source-port options: the port range of the Source
// that dial put in ctx, or the node's slice.
func (d *Dialer) control(ctx context.Context, network, address string, rc syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("egress: unexpected dial address %q: %w", address, err)
	}
	if node, _ := ctx.Value(nodeDialKey{}).(bool); !node {
		if err := checkDst(d.acl, ap); err != nil {
			return err
		}
	}
	lo, hi := d.portLo, d.portHi
	free := false
	if s, ok := ctx.Value(sourceKey{}).(Source); ok {
		lo, hi, free = s.PortLo, s.PortHi, s.FreeBind
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if free {
			if serr = setFreeBind(int(fd), ap.Addr().Is6()); serr != nil {
				return
			}
		}
		serr = setPortOptions(int(fd), lo, hi)
	})
	if err != nil {
		return fmt.Errorf("egress: %s socket: %w", network, err)
	}
	return serr
}

// setFreeBind lets the socket bind an address no interface holds.
func setFreeBind(fd int, v6 bool) error {
	level, opt := unix.SOL_IP, unix.IP_FREEBIND
	if v6 {
		level, opt = unix.SOL_IPV6, unix.IPV6_FREEBIND
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		return fmt.Errorf("egress: setting free bind: %w", err)
	}
	return nil
}

// setPortOptions sets IP_BIND_ADDRESS_NO_PORT, so that bind() only records
// the source address and the port is chosen at connect() time for the full
// 4-tuple (a TCP source port is then shared between destinations), and,
// when lo is not 0, IP_LOCAL_PORT_RANGE so the kernel picks the port inside
// lo..hi. Both are SOL_IP options that IPv6 sockets accept too.
func setPortOptions(fd int, lo, hi uint16) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
		return fmt.Errorf("egress: setting IP_BIND_ADDRESS_NO_PORT: %w", err)
	}
	if lo == 0 {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, int(uint32(lo)|uint32(hi)<<16)); err != nil {
		return fmt.Errorf("egress: setting IP_LOCAL_PORT_RANGE %d-%d: %w", lo, hi, err)
	}
	return nil
}

// probePortRange checks that the kernel supports IP_LOCAL_PORT_RANGE and
// will honour lo..hi: the kernel clamps a per-socket range to
// net.ipv4.ip_local_port_range and ignores the bounds outside it.
func probePortRange(lo, hi uint16) error {
	if err := probePortOption(fmt.Sprintf("port slice %d-%d", lo, hi), lo, hi); err != nil {
		return err
	}
	klo, khi, err := kernelPortRange()
	if err != nil {
		return err
	}
	if !inRange(lo, hi, klo, khi) {
		return fmt.Errorf("egress: port slice %d-%d is outside net.ipv4.ip_local_port_range %d-%d, which the kernel would ignore: widen the sysctl", lo, hi, klo, khi)
	}
	return nil
}

// probePortOption checks that the kernel supports IP_LOCAL_PORT_RANGE by
// setting lo..hi on a socket; what names the feature that needs it.
func probePortOption(what string, lo, hi uint16) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("egress: probing IP_LOCAL_PORT_RANGE: %w", err)
	}
	defer unix.Close(fd)
	if err := setPortOptions(fd, lo, hi); err != nil {
		if errors.Is(err, unix.ENOPROTOOPT) {
			return fmt.Errorf("egress: %s needs IP_LOCAL_PORT_RANGE (Linux 6.3 or later): %w", what, err)
		}
		return err
	}
	return nil
}

// probeSource checks that the host can bind src, without taking a port.
func probeSource(src netip.Addr) error {
	var family int
	var sa unix.Sockaddr
	if src.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: src.As4()}
	} else {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: src.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("egress: egress source %s: %w", src, err)
	}
	defer unix.Close(fd)
	if err := setPortOptions(fd, 0, 0); err != nil {
		return err
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("egress: egress source %s is not usable on this host: %w", src, err)
	}
	return nil
}

func inRange(lo, hi, klo, khi uint16) bool { return klo <= lo && hi <= khi }

// kernelRange caches net.ipv4.ip_local_port_range for checking per-flow
// ranges without reading /proc per flow. A range outside the cached one
// re-reads the sysctl, at most once per kernelRefresh, so that widening
// it takes effect without a restart; narrowing it is caught after
// connect() by the check on the port the kernel chose.
type kernelRange struct {
	r atomic.Pointer[kernelRangeValue]
}

type kernelRangeValue struct {
	lo, hi uint16
	at     time.Time
}

const kernelRefresh = time.Second

func (k *kernelRange) load() error {
	lo, hi, err := kernelPortRange()
	if err != nil {
		return err
	}
	k.r.Store(&kernelRangeValue{lo: lo, hi: hi, at: time.Now()})
	return nil
}

func (k *kernelRange) get() (lo, hi uint16) {
	v := k.r.Load()
	return v.lo, v.hi
}

// contains reports whether lo..hi lies inside the kernel's range, and
// returns that range.
func (k *kernelRange) contains(lo, hi uint16) (klo, khi uint16, ok bool) {
	v := k.r.Load()
	if v == nil { // a Dialer without Route, asked by DialNode
		if k.load() != nil {
			return 0, 0, false
		}
		v = k.r.Load()
	}
	if inRange(lo, hi, v.lo, v.hi) {
		return v.lo, v.hi, true
	}
	if time.Since(v.at) >= kernelRefresh && k.load() == nil {
		v = k.r.Load()
	}
	return v.lo, v.hi, inRange(lo, hi, v.lo, v.hi)
}

// kernelPortRange reads the network namespace's ephemeral port range.
func kernelPortRange() (lo, hi uint16, err error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, fmt.Errorf("egress: reading ip_local_port_range: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("egress: unexpected ip_local_port_range %q", b)
	}
	l, err1 := strconv.ParseUint(f[0], 10, 16)
	h, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("egress: unexpected ip_local_port_range %q", b)
	}
	return uint16(l), uint16(h), nil
}

// Ping sends one ICMP (IPv4) or ICMPv6 echo request carrying data to dst,
// from the egress source of dst's family when one is set, and returns nil
// once the matching echo reply (same identifier, sequence, data and peer)
// arrived. It returns an error wrapping ErrDenied when the ACL refuses dst,
// and an error when ctx ends or Config.DialTimeout passes first. It uses
// an unprivileged datagram ICMP socket when net.ipv4.ping_group_range
// permits, otherwise a raw socket (CAP_NET_RAW).
func (d *Dialer) Ping(ctx context.Context, dst netip.Addr, data []byte) error {
	err := d.doPing(ctx, dst, data)
	d.ping.count(err)
	return err
}

func (d *Dialer) doPing(ctx context.Context, dst netip.Addr, data []byte) error {
	dst = dst.Unmap()
	if !dst.IsValid() {
		return errors.New("egress: ping: invalid destination")
	}
	if err := d.acl.Check(dst); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	return d.pinger.ping(ctx, dst, data)
}

// Stats are the Dialer's counters since New.
type Stats struct {
	TCP  Counts `json:"tcp"`
	UDP  Counts `json:"udp"`
	Ping Counts `json:"ping"` // OK counts replies received
}

// Counts splits the attempts of one kind by outcome: every attempt counts
// in exactly one of OK, Failed and Denied. NoEgress, SliceExhausted and
// PortShare count three kinds of failure, also counted in Failed.
type Counts struct {
	OK     uint64 `json:"ok"`
	Failed uint64 `json:"failed"`
	Denied uint64 `json:"denied"` // refused by the ACL

	NoEgress       uint64 `json:"no_egress"`       // ErrNoEgress: Config.Route refused or picked an unusable Source
	SliceExhausted uint64 `json:"slice_exhausted"` // ErrSliceExhausted: no source port free
	PortShare      uint64 `json:"port_share"`      // ErrPortShare: the client holds its share of the UDP ports
}

// Stats returns a snapshot of the counters.
func (d *Dialer) Stats() Stats {
	return Stats{TCP: d.tcp.load(), UDP: d.udp.load(), Ping: d.ping.load()}
}

type counters struct {
	ok, failed, denied                  atomic.Uint64
	noEgress, sliceExhausted, portShare atomic.Uint64
}

func (c *counters) count(err error) {
	switch {
	case err == nil:
		c.ok.Add(1)
		return
	case errors.Is(err, ErrDenied):
		c.denied.Add(1)
		return
	case errors.Is(err, ErrNoEgress):
		c.noEgress.Add(1)
	case errors.Is(err, ErrSliceExhausted):
		c.sliceExhausted.Add(1)
	case errors.Is(err, ErrPortShare):
		c.portShare.Add(1)
	}
	c.failed.Add(1)
}

func (c *counters) load() Counts {
	return Counts{
		OK:             c.ok.Load(),
		Failed:         c.failed.Load(),
		Denied:         c.denied.Load(),
		NoEgress:       c.noEgress.Load(),
		SliceExhausted: c.sliceExhausted.Load(),
		PortShare:      c.portShare.Load(),
	}
}
