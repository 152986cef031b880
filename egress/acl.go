package egress

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrDenied is wrapped by every error that refuses a destination because of
// the egress ACL. Callers branch on it with errors.Is.
var ErrDenied = errors.New("egress: destination denied by ACL")

// ownRefreshInterval bounds how stale the ACL's view of the host's interface
// addresses may be: a check re-reads them when the last read is older.
const ownRefreshInterval = 2 * time.Second

// rule is one row of a default table: addresses in prefix get verdict deny
// (or, for a more specific row inside a denied range, allow). The longest
// matching prefix wins.
type rule struct {
	prefix netip.Prefix
	deny   bool
	why    string
}

func r(s string, deny bool, why string) rule {
	return rule{netip.MustParsePrefix(s), deny, why}
}

// v4Rules are the IPv4 ranges denied by default (IANA IPv4 Special-Purpose
// Address Registry, RFC 6890 and successors). Addresses in no row are
// allowed. 0.0.0.0/8 and 127.0.0.0/8 are listed for the reason string but
// are handled before the table and cannot be opened by Config.Allow.
//
//	prefix              verdict  why
//	0.0.0.0/8           deny*    "this network" / unspecified (RFC 791, 1122)
//	10.0.0.0/8          deny     private-use (RFC 1918)
//	100.64.0.0/10       deny     shared address space, CGNAT (RFC 6598)
//	127.0.0.0/8         deny*    loopback (RFC 1122)
//	169.254.0.0/16      deny     link-local (RFC 3927), incl. cloud metadata
//	172.16.0.0/12       deny     private-use (RFC 1918)
//	192.0.0.0/24        deny     IETF protocol assignments (RFC 6890)
//	192.0.0.9/32        allow    PCP anycast (RFC 7723), globally reachable
//	192.0.0.10/32       allow    TURN anycast (RFC 8155), globally reachable
//	192.0.2.0/24        deny     documentation TEST-NET-1 (RFC 5737)
//	192.88.99.0/24      deny     deprecated 6to4 relay anycast (RFC 7526)
//	192.168.0.0/16      deny     private-use (RFC 1918)
//	198.18.0.0/15       deny     benchmarking (RFC 2544)
//	198.51.100.0/24     deny     documentation TEST-NET-2 (RFC 5737)
//	203.0.113.0/24      deny     documentation TEST-NET-3 (RFC 5737)
//	224.0.0.0/4         deny     multicast (RFC 5771)
//	240.0.0.0/4         deny     reserved (RFC 1112)
//	255.255.255.255/32  deny     limited broadcast (RFC 919)
//
// Globally reachable special-purpose ranges (AS112 192.31.196.0/24 and
// 192.175.48.0/24, AMT 192.52.193.0/24) are in no row and so allowed.
var v4Rules = []rule{
	r("0.0.0.0/8", true, "unspecified"),
	r("10.0.0.0/8", true, "private-use"),
	r("100.64.0.0/10", true, "shared address space (CGNAT)"),
	r("127.0.0.0/8", true, "loopback"),
	r("169.254.0.0/16", true, "link-local"),
	r("172.16.0.0/12", true, "private-use"),
	r("192.0.0.0/24", true, "IETF protocol assignments"),
	r("192.0.0.9/32", false, "PCP anycast"),
	r("192.0.0.10/32", false, "TURN anycast"),
	r("192.0.2.0/24", true, "documentation"),
	r("192.88.99.0/24", true, "deprecated 6to4 relay anycast"),
	r("192.168.0.0/16", true, "private-use"),
	r("198.18.0.0/15", true, "benchmarking"),
	r("198.51.100.0/24", true, "documentation"),
	r("203.0.113.0/24", true, "documentation"),
	r("224.0.0.0/4", true, "multicast"),
	r("240.0.0.0/4", true, "reserved"),
	r("255.255.255.255/32", true, "limited broadcast"),
}

// v6Rules are the IPv6 defaults (IANA IPv6 Special-Purpose Address Registry
// and IPv6 Address Space registry). Unlike IPv4 the table starts from deny:
// only 2000::/3 is global unicast, everything else is reserved by the IETF,
// ULA, link-local, site-local or multicast. ::/128 and ::1/128 are handled
// before the table and cannot be opened by Config.Allow.
//
// Rows marked "v4" carry an IPv4 address inside the IPv6 one. They are
// allowed by the table, and then the embedded IPv4 address must pass the
// IPv4 decision too (see embeddedV4), so no form of IPv6 can reach an IPv4
// destination that IPv4 itself may not reach.
//
//	prefix              verdict  why
//	::/0                deny     not global unicast (outside 2000::/3)
//	::/96               v4       IPv4-compatible, deprecated (RFC 4291)
//	::ffff:0:0/96       v4       IPv4-mapped (RFC 4291)
//	64:ff9b::/96        v4       NAT64 well-known prefix (RFC 6052)
//	64:ff9b:1::/48      deny     local-use NAT64 (RFC 8215), not global; v4 if allowed
//	100::/64            deny     discard-only (RFC 6666), in ::/0 anyway
//	2000::/3            allow    global unicast
//	2001::/23           deny     IETF protocol assignments (RFC 2928)
//	2001::/32           v4       Teredo (RFC 4380): server and client v4
//	2001:1::1/128       allow    PCP anycast (RFC 7723)
//	2001:1::2/128       allow    TURN anycast (RFC 8155)
//	2001:1::3/128       allow    DNS-SD SRP anycast (RFC 9665)
//	2001:3::/32         allow    AMT (RFC 7450)
//	2001:4:112::/48     allow    AS112-v6 (RFC 7535)
//	2001:db8::/32       deny     documentation (RFC 3849)
//	2002::/16           v4       6to4 (RFC 3056): v4 at bytes 2..5
//	3fff::/20           deny     documentation (RFC 9637)
//	5f00::/16           deny     SRv6 SIDs (RFC 9602)
//	fc00::/7            deny     unique local (RFC 4193), in ::/0 anyway
//	fe80::/10           deny     link-local (RFC 4291), in ::/0 anyway
//	ff00::/8            deny     multicast (RFC 4291), in ::/0 anyway
//
// 2001::/23 also holds benchmarking 2001:2::/48 and ORCHID 2001:10::/28 and
// 2001:20::/28, which stay denied.
var v6Rules = []rule{
	r("::/0", true, "not global unicast"),
	r("::/128", true, "unspecified"),
	r("::1/128", true, "loopback"),
	r("::/96", false, "IPv4-compatible"),
	r("::ffff:0:0/96", false, "IPv4-mapped"),
	r("64:ff9b::/96", false, "NAT64"),
	r("64:ff9b:1::/48", true, "local-use NAT64"),
	r("100::/64", true, "discard-only"),
	r("2000::/3", false, "global unicast"),
	r("2001::/23", true, "IETF protocol assignments"),
	r("2001::/32", false, "Teredo"),
	r("2001:1::1/128", false, "PCP anycast"),
	r("2001:1::2/128", false, "TURN anycast"),
	r("2001:1::3/128", false, "DNS-SD SRP anycast"),
	r("2001:3::/32", false, "AMT"),
	r("2001:4:112::/48", false, "AS112-v6"),
	r("2001:db8::/32", true, "documentation"),
	r("2002::/16", false, "6to4"),
	r("3fff::/20", true, "documentation"),
	r("5f00::/16", true, "SRv6 SIDs"),
	r("fc00::/7", true, "unique local"),
	r("fe80::/10", true, "link-local"),
	r("fec0::/10", true, "deprecated site-local"),
	r("ff00::/8", true, "multicast"),
}

func init() {
	// Longest prefix first, so the first match is the longest match.
	for _, t := range [][]rule{v4Rules, v6Rules} {
		slices.SortStableFunc(t, func(a, b rule) int { return b.prefix.Bits() - a.prefix.Bits() })
	}
}

// ACL decides which destinations the node may reach on behalf of clients.
//
// The decision for an IPv4 address, or an IPv6 address without an embedded
// IPv4 one, is:
//
//  1. loopback, unspecified and the node's own addresses are denied, always;
//  2. an address inside an Allow prefix is allowed;
//  3. otherwise the default table (v4Rules, v6Rules) decides.
//
// Rule 1 is not subject to Allow on purpose: a client must never reach the
// node itself (its API, its metrics, its WireGuard port, other clients'
// sessions through it), whatever an operator opened. To reach a service on
// the node, run it elsewhere. The cluster's infrastructure (SetInfra:
// members' underlays, etcd, the DNS upstream, the GUE port) is denied
// the same way, before Allow.
//
// An IPv6 address that embeds an IPv4 address (IPv4-mapped, IPv4-compatible,
// NAT64, 6to4, Teredo) is allowed only when both the IPv6 decision and the
// IPv4 decision for every embedded address allow it.
//
// The node's own addresses are the host's interface addresses, re-read when
// a check happens and the last read is older than 2 s, plus the fixed
// addresses given to NewACL. An ACL is safe for concurrent use.
type ACL struct {
	allow4, allow6 []netip.Prefix
	fixedOwn       []netip.Addr

	// listAddrs returns the host's interface addresses; a field so tests
	// can replace it.
	listAddrs func() ([]netip.Addr, error)
	now       func() time.Time

	own      atomic.Pointer[map[netip.Addr]struct{}]
	nextRead atomic.Int64 // unix nanoseconds after which own is re-read
	readMu   sync.Mutex   // held by the one goroutine re-reading own

	infra atomic.Pointer[infraSet] // nil: none set (SetInfra)
}

// Infra is the cluster's own infrastructure, which clients may not reach
// through the node whatever Allow opens (SetInfra): a client must not
// talk to etcd, the other nodes' services, or the GUE port, from an
// address the cluster trusts.
type Infra struct {
	// Members are every cluster member's underlay address: all their
	// ports, all protocols (ping too).
	Members []netip.Addr
	// Etcd are the etcd endpoints' addresses: all their ports.
	Etcd []netip.Addr
	// DNS is the resolver the node forwards the clients' queries to
	// (its own forwarder dials it with Dialer.DialNode, which the ACL
	// does not guard): that address and port only, TCP and UDP.
	DNS []netip.AddrPort
	// Ports are denied on every address (the GUE port: nodes accept GUE
	// from each other's underlays, which may be the egress address).
	Ports []uint16
}

// infraSet is Infra as the checks read it: each entry with its reason.
type infraSet struct {
	addrs     map[netip.Addr]string
	addrPorts map[netip.AddrPort]string
	ports     map[uint16]string
}

// SetInfra replaces the infrastructure the ACL denies (see Infra). It is
// safe to call while checks run, for example on every membership change.
// Invalid addresses and port 0 are ignored.
func (a *ACL) SetInfra(in Infra) {
	set := &infraSet{addrs: map[netip.Addr]string{}, addrPorts: map[netip.AddrPort]string{}, ports: map[uint16]string{}}
	for _, m := range in.Members {
		if m.IsValid() {
			set.addrs[m.WithZone("").Unmap()] = "a cluster member's underlay"
		}
	}
	for _, e := range in.Etcd {
		if e.IsValid() {
			set.addrs[e.WithZone("").Unmap()] = "an etcd endpoint"
		}
	}
	for _, d := range in.DNS {
		if d.Addr().IsValid() {
			set.addrPorts[netip.AddrPortFrom(d.Addr().WithZone("").Unmap(), d.Port())] = "the DNS upstream (use the tunnel's DNS address)"
		}
	}
	for _, p := range in.Ports {
		if p != 0 {
			set.ports[p] = "the cluster's GUE port"
		}
	}
	a.infra.Store(set)
}

// CheckAddrPort is Check for a TCP or UDP destination: the address must
// pass Check, and neither the port nor the address and port may be the
// cluster's infrastructure (SetInfra). The Dialer checks every flow
// with it.
func (a *ACL) CheckAddrPort(dst netip.AddrPort) error {
	if err := a.Check(dst.Addr()); err != nil {
		return err
	}
	set := a.infra.Load()
	if set == nil {
		return nil
	}
	if why, ok := set.ports[dst.Port()]; ok {
		return fmt.Errorf("%w: port %d (%s)", ErrDenied, dst.Port(), why)
	}
	if len(set.addrPorts) == 0 {
		return nil
	}
	addr := dst.Addr().WithZone("").Unmap()
	var buf [4]netip.Addr
	for _, x := range append(embeddedV4(addr, buf[:0]), addr) {
		if why, ok := set.addrPorts[netip.AddrPortFrom(x, dst.Port())]; ok {
			return fmt.Errorf("%w: %s (%s)", ErrDenied, dst, why)
		}
	}
	return nil
}

// checkDst applies c to a TCP or UDP destination: CheckAddrPort when c
// has it (an *ACL does), else Check of the address.
func checkDst(c checker, dst netip.AddrPort) error {
	if pc, ok := c.(interface{ CheckAddrPort(netip.AddrPort) error }); ok {
		return pc.CheckAddrPort(dst)
	}
	return c.Check(dst.Addr())
}

// ACL is the ACL the Dialer checks flows with, for SetInfra; nil when a
// test replaced it.
func (d *Dialer) ACL() *ACL {
	a, _ := d.acl.(*ACL)
	return a
}

// NewACL returns an ACL that opens the prefixes in allow (see ACL for what
// stays closed) and treats own, besides the host's interface addresses, as
// the node's own addresses. own should list every address the node's
// services answer on that may not be on an interface: egress sources, the
// anycast VIP, advertised endpoints, the API listen address. It fails when
// the interface addresses cannot be read or an argument is invalid.
func NewACL(allow []netip.Prefix, own []netip.Addr) (*ACL, error) {
	return newACL(allow, own, hostAddrs, time.Now)
}

func newACL(allow []netip.Prefix, own []netip.Addr, list func() ([]netip.Addr, error), now func() time.Time) (*ACL, error) {
	a := &ACL{listAddrs: list, now: now}
	for _, p := range allow {
		p, err := normPrefix(p)
		if err != nil {
			return nil, err
		}
		if p.Addr().Is4() {
			a.allow4 = append(a.allow4, p)
		} else {
			a.allow6 = append(a.allow6, p)
		}
	}
	for _, o := range own {
		if !o.IsValid() {
			return nil, errors.New("egress: invalid own address")
		}
		a.fixedOwn = append(a.fixedOwn, o.WithZone("").Unmap())
	}
	if err := a.readOwn(); err != nil {
		return nil, err
	}
	return a, nil
}

// normPrefix validates p, masks it and turns an IPv4-mapped prefix into
// the IPv4 one.
func normPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("egress: invalid prefix %q", p)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("egress: prefix %s has a zone", p)
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func hostAddrs() ([]netip.Addr, error) {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ifas))
	for _, ifa := range ifas {
		var ip net.IP
		switch v := ifa.(type) {
		case *net.IPNet:
			ip = v.IP
		case *net.IPAddr:
			ip = v.IP
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap())
		}
	}
	return out, nil
}

// readOwn re-reads the host's addresses into a.own.
func (a *ACL) readOwn() error {
	addrs, err := a.listAddrs()
	if err != nil {
		return fmt.Errorf("egress: reading interface addresses: %w", err)
	}
	m := make(map[netip.Addr]struct{}, len(addrs)+len(a.fixedOwn))
	for _, o := range a.fixedOwn {
		m[o] = struct{}{}
	}
	for _, o := range addrs {
		m[o.WithZone("").Unmap()] = struct{}{}
	}
	a.own.Store(&m)
	a.nextRead.Store(a.now().Add(ownRefreshInterval).UnixNano())
	return nil
}

// ownSet returns the current set of own addresses, re-reading them first
// when they are stale and no other goroutine is doing so. When a re-read
// fails the previous set stays in use and the read is retried later.
func (a *ACL) ownSet() map[netip.Addr]struct{} {
	if a.now().UnixNano() >= a.nextRead.Load() && a.readMu.TryLock() {
		if a.now().UnixNano() >= a.nextRead.Load() {
			if err := a.readOwn(); err != nil {
				a.nextRead.Store(a.now().Add(ownRefreshInterval).UnixNano())
			}
		}
		a.readMu.Unlock()
	}
	return *a.own.Load()
}

// Check returns nil when dst may be reached, or an error wrapping ErrDenied
// that names the reason. A zone on dst is ignored.
func (a *ACL) Check(dst netip.Addr) error {
	if !dst.IsValid() {
		return fmt.Errorf("%w: invalid address", ErrDenied)
	}
	dst = dst.WithZone("")
	own := a.ownSet()
	if dst.Is4In6() {
		if why := a.decide(dst.Unmap(), own); why != "" {
			return fmt.Errorf("%w: %s (%s)", ErrDenied, dst, why)
		}
		return nil
	}
	if why := a.decide(dst, own); why != "" {
		return fmt.Errorf("%w: %s (%s)", ErrDenied, dst, why)
	}
	if dst.Is6() {
		var buf [4]netip.Addr
		for _, v4 := range embeddedV4(dst, buf[:0]) {
			if why := a.decide(v4, own); why != "" {
				return fmt.Errorf("%w: %s (embeds %s: %s)", ErrDenied, dst, v4, why)
			}
		}
	}
	return nil
}

// decide applies rules 1-3 of ACL to addr (IPv4 or plain IPv6, unzoned) and
// returns "" to allow or the reason to deny.
func (a *ACL) decide(addr netip.Addr, own map[netip.Addr]struct{}) string {
	switch {
	case addr.IsLoopback():
		return "loopback"
	case addr.IsUnspecified(), addr.Is4() && addr.As4()[0] == 0:
		return "unspecified"
	}
	if _, ok := own[addr]; ok {
		return "the node's own address"
	}
	if set := a.infra.Load(); set != nil {
		if why, ok := set.addrs[addr]; ok {
			return why
		}
	}
	allow, rules := a.allow6, v6Rules
	if addr.Is4() {
		allow, rules = a.allow4, v4Rules
	}
	for _, p := range allow {
		if p.Contains(addr) {
			return ""
		}
	}
	for _, ru := range rules {
		if ru.prefix.Contains(addr) {
			if ru.deny {
				return ru.why
			}
			return ""
		}
	}
	return ""
}

var (
	pfxCompat      = netip.MustParsePrefix("::/96")
	pfxNAT64       = netip.MustParsePrefix("64:ff9b::/96")
	pfxNAT64Local  = netip.MustParsePrefix("64:ff9b:1::/48")
	pfx6to4        = netip.MustParsePrefix("2002::/16")
	pfxTeredo      = netip.MustParsePrefix("2001::/32")
	addrLoopback6  = netip.IPv6Loopback()
	addrUnspecied6 = netip.IPv6Unspecified()
)

// embeddedV4 appends to buf the IPv4 addresses that the IPv6 address a
// carries and that a router or translator on the path could turn into an
// IPv4 destination. IPv4-mapped addresses are handled by the caller.
//
//	::/96           IPv4-compatible: bytes 12..15 (not :: and ::1)
//	64:ff9b::/96    NAT64 well-known prefix: bytes 12..15
//	64:ff9b:1::/48  local-use NAT64 (RFC 8215): the operator picks the
//	                RFC 6052 prefix length inside it, so every layout
//	                possible there (/48, /56, /64, /96) is extracted
//	2002::/16       6to4: bytes 2..5
//	2001::/32       Teredo: server at bytes 4..7, client at bytes
//	                12..15 XOR 0xff
func embeddedV4(a netip.Addr, buf []netip.Addr) []netip.Addr {
	b := a.As16()
	v4 := func(x0, x1, x2, x3 byte) netip.Addr { return netip.AddrFrom4([4]byte{x0, x1, x2, x3}) }
	switch {
	case pfxCompat.Contains(a):
		if a != addrUnspecied6 && a != addrLoopback6 {
			buf = append(buf, v4(b[12], b[13], b[14], b[15]))
		}
	case pfxNAT64.Contains(a):
		buf = append(buf, v4(b[12], b[13], b[14], b[15]))
	case pfxNAT64Local.Contains(a):
		// RFC 6052 section 2.2; byte 8 (bits 64..71) is never used.
		buf = append(buf,
			v4(b[6], b[7], b[9], b[10]),    // /48
			v4(b[7], b[9], b[10], b[11]),   // /56
			v4(b[9], b[10], b[11], b[12]),  // /64
			v4(b[12], b[13], b[14], b[15]), // /96
		)
	case pfx6to4.Contains(a):
		buf = append(buf, v4(b[2], b[3], b[4], b[5]))
	case pfxTeredo.Contains(a):
		buf = append(buf,
			v4(b[4], b[5], b[6], b[7]),
			v4(b[12]^0xff, b[13]^0xff, b[14]^0xff, b[15]^0xff),
		)
	}
	return buf
}
