package egress

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// DefaultDialTimeout bounds a dial or a ping whose context has no deadline
// when Config.DialTimeout is zero.
const DefaultDialTimeout = 10 * time.Second

// Config configures a Dialer.
type Config struct {
	// Sources are the egress source addresses. The first IPv4 and the
	// first IPv6 address are used; the others are ignored for now. A
	// family without a source is not bound: the kernel picks the host's
	// own address by route. Sources must be unicast (not unspecified,
	// multicast, broadcast or link-local) and must exist on the host.
	Sources []netip.Addr

	// PortLo and PortHi are this node's source-port slice, inclusive.
	// Every outgoing TCP and UDP flow gets a source port inside it. Both
	// zero means the kernel's default range (net.ipv4.ip_local_port_range).
	// The kernel only honours a slice inside net.ipv4.ip_local_port_range,
	// so New rejects one that is not.
	PortLo, PortHi uint16

	// Allow opens destination prefixes the ACL denies by default. It
	// cannot open loopback, unspecified or the node's own addresses.
	Allow []netip.Prefix

	// Own lists addresses of the node's own services that may not be on
	// any interface (the anycast VIP, advertised endpoints, the API
	// address). They are denied like the interface addresses.
	Own []netip.Addr

	// DialTimeout bounds each dial and ping whose context has no earlier
	// deadline. Zero means DefaultDialTimeout.
	DialTimeout time.Duration

	// Route, if set, picks the source of every TCP and UDP flow from the
	// client's inner address (DialTCP's and DialUDP's src, unmapped) and
	// the destination (unmapped, after the ACL allowed it); Sources and
	// PortLo/PortHi then only serve as the default port range and for
	// Ping. An error fails the flow at once; it should wrap ErrNoEgress,
	// and the Dialer wraps it if it does not. A Source that is not usable
	// for the destination (see Source) fails the flow with ErrNoEgress too.
	// Route is called once per flow, concurrently, and must not block.
	//
	// Ping does not use Route: it always leaves from Sources. An echo
	// reply carries no port, so replies to an address shared by several
	// nodes (each with its own port slice) reach whichever node the
	// network delivers them to, not necessarily the one that sent the
	// request.
	//
	// The ACL does not know the addresses Route returns: list them in Own
	// unless they are on an interface, so that clients cannot dial them.
	Route func(client netip.Addr, dst netip.AddrPort) (Source, error)

	// UDPPortShare: one client may hold at most 1/UDPPortShare of the
	// ports of a flow's port range (the slice, or the kernel's range) on
	// one source address with UDP flows, whose ports, unlike TCP's, are
	// not shared between destinations: without it one client could hold
	// the node's whole slice and fail every other client's UDP. Zero
	// means DefaultUDPPortShare; negative lifts the limit. Flows over it
	// fail with ErrPortShare.
	UDPPortShare int

	// ClientOf, if set, names the client (registration) an inner address
	// belongs to, so that a client's IPv4 and IPv6 addresses share one
	// UDPPortShare; an address it returns false for is a client of its
	// own. It must be quick and safe for concurrent use.
	ClientOf func(netip.Addr) (uint64, bool)

	// ObserveTCP, if set, is called with every TCP connection DialTCP
	// made for a client, right after connect() succeeded, and dst, the
	// address it was connected to (unmapped): the path table measures the
	// kernel's RTT of the socket there (server/paths). It runs on the
	// dialing goroutine, so it must be quick and must not keep c beyond
	// reading its socket options. DialNode's connections are not passed.
	ObserveTCP func(c net.Conn, dst netip.AddrPort)

	// Logger receives the Dialer's log lines; nothing is logged per flow.
	// Required.
	Logger *slog.Logger
}

// DefaultUDPPortShare: one client may hold an eighth of a range's ports
// with UDP flows.
const DefaultUDPPortShare = 8

// Source is where one flow leaves from; Config.Route returns it.
type Source struct {
	// Addr is the egress address. It must be of the destination's family
	// (an IPv4-mapped address counts as IPv4), unicast (see
	// Config.Sources) and local to the host: on an interface, or inside
	// a prefix routed locally ("ip route add local PREFIX dev lo").
	Addr netip.Addr

	// PortLo and PortHi are the flow's source-port range, inclusive,
	// inside net.ipv4.ip_local_port_range. Both zero means Config.PortLo
	// and Config.PortHi. A TCP port is shared between destinations, so
	// the range only runs out (ErrSliceExhausted) when every port in it
	// already has a connection to the same destination address and port;
	// a UDP port is held by one flow until it is closed.
	PortLo, PortHi uint16

	// FreeBind binds Addr even though no interface holds it
	// (IP_FREEBIND, IPV6_FREEBIND): for IPv6 addresses that are the
	// host's by a local route only, which IPv6's bind() refuses (IPv4's
	// accepts them). The kernel then cannot tell an address that is not
	// the host's at all, whose replies never come back: set it only for
	// addresses made local that way.
	FreeBind bool
}

// ParsePortRange parses the --egress-ports flag, "LO-HI" (inclusive, both in
// 1..65535, LO <= HI). A single port "P" means "P-P".
func ParsePortRange(s string) (lo, hi uint16, err error) {
	s = strings.TrimSpace(s)
	los, his, ok := strings.Cut(s, "-")
	if !ok {
		his = los
	}
	parse := func(v string) (uint16, error) {
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 16)
		if err != nil || n == 0 {
			return 0, fmt.Errorf("egress: invalid port range %q: want LO-HI with ports in 1-65535", s)
		}
		return uint16(n), nil
	}
	if lo, err = parse(los); err != nil {
		return 0, 0, err
	}
	if hi, err = parse(his); err != nil {
		return 0, 0, err
	}
	if lo > hi {
		return 0, 0, fmt.Errorf("egress: invalid port range %q: low port above high port", s)
	}
	return lo, hi, nil
}

// ParsePrefix parses one --allow value: a CIDR prefix, or a bare IP address
// meaning /32 or /128. Host bits are cleared ("10.1.2.3/8" is 10.0.0.0/8)
// and an IPv4-mapped prefix becomes the IPv4 one. Zones are rejected.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("egress: invalid prefix %q: %w", s, err)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("egress: invalid prefix %q: %w", s, err)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("egress: invalid prefix %q: zones are not allowed", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return normPrefix(p)
}

// ParsePrefixes parses repeated --allow values with ParsePrefix; each value
// may also hold several prefixes separated by commas. Empty items are
// skipped.
func ParsePrefixes(values ...string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range values {
		for item := range strings.SplitSeq(v, ",") {
			if strings.TrimSpace(item) == "" {
				continue
			}
			p, err := ParsePrefix(item)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// sources returns the first IPv4 and the first IPv6 source (zero Addr when
// a family has none) and the number of sources ignored, or an error naming
// the first unusable source.
func (c *Config) sources() (src4, src6 netip.Addr, ignored int, err error) {
	for _, s := range c.Sources {
		if err := checkSource(s); err != nil {
			return netip.Addr{}, netip.Addr{}, 0, err
		}
		s = s.Unmap()
		switch {
		case s.Is4() && !src4.IsValid():
			src4 = s
		case s.Is6() && !src6.IsValid():
			src6 = s
		default:
			ignored++
		}
	}
	return src4, src6, ignored, nil
}

func checkSource(s netip.Addr) error {
	if !s.IsValid() {
		return errors.New("egress: invalid egress source address")
	}
	if why := sourceProblem(s); why != "" {
		return fmt.Errorf("egress: egress source %s %s: want a unicast address", s, why)
	}
	return nil
}

// sourceProblem says why the valid address s cannot be an egress source,
// or returns "".
func sourceProblem(s netip.Addr) string {
	var why string
	switch {
	case s.Zone() != "":
		why = "has a zone"
	case s.Unmap().IsUnspecified():
		why = "is unspecified"
	case s.Unmap().IsMulticast():
		why = "is multicast"
	case s.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = "is the broadcast address"
	case s.Unmap().IsLinkLocalUnicast():
		why = "is link-local"
	}
	return why
}

// checkPorts validates the slice bounds (not the kernel's support).
func (c *Config) checkPorts() error {
	if why := sliceProblem(c.PortLo, c.PortHi); why != "" {
		return fmt.Errorf("egress: invalid port slice %d-%d: %s", c.PortLo, c.PortHi, why)
	}
	return nil
}

// sliceProblem says why lo..hi is not a port range, or returns "". Both
// zero is fine: it means the default range.
func sliceProblem(lo, hi uint16) string {
	switch {
	case lo == 0 && hi == 0:
		return ""
	case lo == 0:
		return "low port must be at least 1"
	case lo > hi:
		return "low port above high port"
	}
	return ""
}
