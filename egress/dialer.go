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
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// checker is the part of *ACL the Dialer uses; tests replace it.
type checker interface {
	Check(dst netip.Addr) error
}

// Dialer reaches real destinations for the netstack forwarders: it applies
// the ACL, binds every socket to the egress source of the destination's
// family and gives it a source port inside the node's slice. It holds no
// background goroutines or sockets while idle and needs no Close. A Dialer
// is safe for concurrent use.
type Dialer struct {
	log            *slog.Logger
	acl            checker
	src4, src6     netip.Addr
	portLo, portHi uint16
	timeout        time.Duration
	pinger         *pinger

	tcp, udp, ping counters
}

// New validates cfg and returns a Dialer. It fails when cfg is invalid, when
// the host's interface addresses cannot be read, or when a port slice is
// set and the kernel lacks IP_LOCAL_PORT_RANGE (Linux 6.3) or would ignore
// the slice because it lies outside net.ipv4.ip_local_port_range.
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
	return &Dialer{
		log:     cfg.Logger,
		acl:     acl,
		src4:    src4,
		src6:    src6,
		portLo:  cfg.PortLo,
		portHi:  cfg.PortHi,
		timeout: cfg.DialTimeout,
		pinger:  newPinger(src4, src6),
	}, nil
}

// DialTCP returns a TCP connection to dst, from the egress source of dst's
// family and a source port inside the slice. An IPv4-mapped dst is dialed
// as IPv4. It returns an error wrapping ErrDenied when the ACL refuses
// dst. src, the client's inner address, is not used yet. The dial is
// bounded by ctx and by Config.DialTimeout.
func (d *Dialer) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	c, err := d.dial(ctx, "tcp", dst)
	d.tcp.count(err)
	return c, err
}

// DialUDP returns a connected UDP socket to dst, like DialTCP. Unlike TCP,
// a UDP source port is not shared between destinations: each flow holds
// its port until the connection is closed.
func (d *Dialer) DialUDP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	c, err := d.dial(ctx, "udp", dst)
	d.udp.count(err)
	return c, err
}

func (d *Dialer) dial(ctx context.Context, proto string, dst netip.AddrPort) (net.Conn, error) {
	addr := dst.Addr().Unmap()
	if !addr.IsValid() || dst.Port() == 0 {
		return nil, fmt.Errorf("egress: invalid %s destination %s", proto, dst)
	}
	if err := d.acl.Check(addr); err != nil {
		return nil, err
	}
	network, local := proto+"4", d.src4
	if addr.Is6() {
		network, local = proto+"6", d.src6
	}
	if !local.IsValid() {
		// Bind the wildcard address anyway so that the socket options
		// set in control apply to the bind/connect the kernel does.
		local = netip.IPv4Unspecified()
		if addr.Is6() {
			local = netip.IPv6Unspecified()
		}
	}
	nd := net.Dialer{
		Timeout:        d.timeout,
		ControlContext: d.control,
	}
	if proto == "tcp" {
		nd.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
	} else {
		nd.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
	}
	c, err := nd.DialContext(ctx, network, netip.AddrPortFrom(addr, dst.Port()).String())
	if err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	if d.portLo != 0 {
		// The kernel silently ignores a per-socket range outside
		// ip_local_port_range; New checked, but the sysctl may change.
		lp := localPort(c.LocalAddr())
		if lp < d.portLo || lp > d.portHi {
			c.Close()
			return nil, fmt.Errorf("egress: kernel chose source port %d outside the slice %d-%d (check net.ipv4.ip_local_port_range)", lp, d.portLo, d.portHi)
		}
	}
	return c, nil
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
// depth) and sets the source-port options.
func (d *Dialer) control(_ context.Context, network, address string, rc syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("egress: unexpected dial address %q: %w", address, err)
	}
	if err := d.acl.Check(ap.Addr()); err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = setPortOptions(int(fd), d.portLo, d.portHi)
	})
	if err != nil {
		return fmt.Errorf("egress: %s socket: %w", network, err)
	}
	return serr
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
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("egress: probing IP_LOCAL_PORT_RANGE: %w", err)
	}
	defer unix.Close(fd)
	if err := setPortOptions(fd, lo, hi); err != nil {
		if errors.Is(err, unix.ENOPROTOOPT) {
			return fmt.Errorf("egress: port slice %d-%d needs IP_LOCAL_PORT_RANGE (Linux 6.3 or later): %w", lo, hi, err)
		}
		return err
	}
	klo, khi, err := kernelPortRange()
	if err != nil {
		return err
	}
	if lo < klo || hi > khi {
		return fmt.Errorf("egress: port slice %d-%d is outside net.ipv4.ip_local_port_range %d-%d, which the kernel would ignore: widen the sysctl", lo, hi, klo, khi)
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

// Counts splits the attempts of one kind by outcome.
type Counts struct {
	OK     uint64 `json:"ok"`
	Failed uint64 `json:"failed"`
	Denied uint64 `json:"denied"` // refused by the ACL
}

// Stats returns a snapshot of the counters.
func (d *Dialer) Stats() Stats {
	return Stats{TCP: d.tcp.load(), UDP: d.udp.load(), Ping: d.ping.load()}
}

type counters struct {
	ok, failed, denied atomic.Uint64
}

func (c *counters) count(err error) {
	switch {
	case err == nil:
		c.ok.Add(1)
	case errors.Is(err, ErrDenied):
		c.denied.Add(1)
	default:
		c.failed.Add(1)
	}
}

func (c *counters) load() Counts {
	return Counts{OK: c.ok.Load(), Failed: c.failed.Load(), Denied: c.denied.Load()}
}
