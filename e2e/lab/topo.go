package lab

// The single-node lab: one client, one node, one origin.
//
//	 client ns wl-ID-client         node ns wl-ID-node                           origin ns wl-ID-origin
//	┌─────────────────────────┐      ┌───────────────────────────────────────┐      ┌─────────────────────────┐
//	│ eth0                    │      │ cl0                            or0    │      │ eth0                    │
//	│ 203.0.113.2/24          ├veth──┤ 203.0.113.1/24      198.18.0.1/24     ├veth──┤ 198.18.0.2/24           │
//	│ 2001:db8:c::2/64        │      │ 2001:db8:c::1/64  2001:db8:18::1/64   │      │ 2001:db8:18::2/64       │
//	│                         │      │                                       │      │                         │
//	│ default via node        │      │ lo 192.0.2.1/32           (VIP)       │      │ 198.51.100.0/24 and     │
//	│ wg-quick: 0/0, ::/0     │      │    2001:db8:1::1/128                  │      │ 2001:db8:5100::/48      │
//	│ into the tunnel         │      │ lo 198.51.100.10/32    (egress)       │      │ via node (egress)       │
//	│                         │      │    2001:db8:5100::10/128              │      │ originsrv :80 :53       │
//	│                         │      │ forwarding off (wedged), on           │      │ iperf3 -s :5201         │
//	│                         │      │ (baseline, RouteClientWAN)            │      │                         │
//	└─────────────────────────┘      └───────────────────────────────────────┘      └─────────────────────────┘
//
// wedged terminates every inner flow and dials the origin from an egress
// address, so the node forwards nothing and the origin has no route to the
// client's WAN: the only way from client to origin is the tunnel. The
// baseline (a plain wireguard-go server) forwards and SNATs to the egress
// address instead. RouteClientWAN adds plain routing for the lab self-test.

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Addresses of the single-node lab.
var (
	ClientWAN4 = netip.MustParsePrefix("203.0.113.2/24")
	ClientWAN6 = netip.MustParsePrefix("2001:db8:c::2/64")
	NodeWAN4   = netip.MustParsePrefix("203.0.113.1/24")
	NodeWAN6   = netip.MustParsePrefix("2001:db8:c::1/64")

	VIP4 = netip.MustParseAddr("192.0.2.1")
	VIP6 = netip.MustParseAddr("2001:db8:1::1")

	NodeUnder4 = netip.MustParsePrefix("198.18.0.1/24")
	NodeUnder6 = netip.MustParsePrefix("2001:db8:18::1/64")
	Origin4    = netip.MustParsePrefix("198.18.0.2/24")
	Origin6    = netip.MustParsePrefix("2001:db8:18::2/64")
	// Resolver4 is a second address of the origin that the nodes use as
	// their DNS upstream (--dns-upstream). The egress ACL denies a node's
	// upstream to its clients, so it must not be the address the clients
	// reach the origin's servers on.
	Resolver4 = netip.MustParsePrefix("198.18.0.53/24")

	Egress4     = netip.MustParseAddr("198.51.100.10")
	Egress6     = netip.MustParseAddr("2001:db8:5100::10")
	EgressPool4 = netip.MustParsePrefix("198.51.100.0/24")
	EgressPool6 = netip.MustParsePrefix("2001:db8:5100::/48")

	// Origins is what wedged must --allow for the lab's origin to be reachable.
	Origins4 = netip.MustParsePrefix("198.18.0.0/15")
	Origins6 = netip.MustParsePrefix("2001:db8:18::/64")
)

// Names of things in the single-node lab.
const (
	OriginName = "origin.wedge.test." // originsrv answers A/AAAA with the origin's addresses
	WhoamiName = "whoami.wedge.test." // originsrv answers with the querier's address
	HTTPPort   = 80
	DNSPort    = 53
	IperfPort  = 5201
	EchoPort   = 7 // originsrv's TCP echo (interactive sessions)
)

// originDNSAddrs are the addresses originsrv answers DNS on: the origin's
// own (clients query it through the tunnel) and Resolver4 (the nodes'
// upstream).
func originDNSAddrs() string {
	var out []string
	for _, a := range []netip.Addr{Origin4.Addr(), Origin6.Addr(), Resolver4.Addr()} {
		out = append(out, netip.AddrPortFrom(a, DNSPort).String())
	}
	return strings.Join(out, ",")
}

// SingleNode is the client ↔ node ↔ origin lab pictured above.
type SingleNode struct {
	Lab                  *Lab
	Client, Node, Origin *NS
}

// Interface names inside the namespaces.
const (
	ClientIf     = "eth0"
	NodeClientIf = "cl0"
	NodeOriginIf = "or0"
	OriginIf     = "eth0"
)

// NewSingleNode builds the lab with node forwarding off.
func NewSingleNode(l *Lab) (*SingleNode, error) {
	s := &SingleNode{Lab: l}
	var err error
	for _, p := range []struct {
		ns    **NS
		short string
	}{{&s.Client, "client"}, {&s.Node, "node"}, {&s.Origin, "origin"}} {
		if *p.ns, err = l.NewNS(p.short); err != nil {
			return nil, err
		}
	}
	if err := l.Veth(s.Client, ClientIf, s.Node, NodeClientIf); err != nil {
		return nil, err
	}
	if err := l.Veth(s.Node, NodeOriginIf, s.Origin, OriginIf); err != nil {
		return nil, err
	}
	steps := []func() error{
		func() error { return s.Client.AddrAdd(ClientIf, ClientWAN4) },
		func() error { return s.Client.AddrAdd(ClientIf, ClientWAN6) },
		func() error { return s.Client.RouteAdd(netip.MustParsePrefix("0.0.0.0/0"), NodeWAN4.Addr()) },
		func() error { return s.Client.RouteAdd(netip.MustParsePrefix("::/0"), NodeWAN6.Addr()) },
		// Connection-rate runs close thousands of connections a second:
		// reuse TIME_WAIT ports rather than run out of them.
		func() error { return s.Client.Sysctl("net.ipv4.tcp_tw_reuse", "1") },
		func() error { return s.Client.Sysctl("net.ipv4.ip_local_port_range", "1024 65535") },

		func() error { return s.Node.AddrAdd(NodeClientIf, NodeWAN4) },
		func() error { return s.Node.AddrAdd(NodeClientIf, NodeWAN6) },
		func() error { return s.Node.AddrAdd(NodeOriginIf, NodeUnder4) },
		func() error { return s.Node.AddrAdd(NodeOriginIf, NodeUnder6) },
		func() error { return s.Node.AddrAdd("lo", netip.PrefixFrom(VIP4, 32)) },
		func() error { return s.Node.AddrAdd("lo", netip.PrefixFrom(VIP6, 128)) },
		func() error { return s.Node.AddrAdd("lo", netip.PrefixFrom(Egress4, 32)) },
		func() error { return s.Node.AddrAdd("lo", netip.PrefixFrom(Egress6, 128)) },
		func() error { return s.Node.SetForwarding(false) },

		func() error { return s.Origin.AddrAdd(OriginIf, Origin4) },
		func() error { return s.Origin.AddrAdd(OriginIf, Origin6) },
		func() error { return s.Origin.AddrAdd(OriginIf, Resolver4) },
		func() error { return s.Origin.RouteAdd(EgressPool4, NodeUnder4.Addr()) },
		func() error { return s.Origin.RouteAdd(EgressPool6, NodeUnder6.Addr()) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// RouteClientWAN lets the origin answer the client's WAN addresses directly
// (for plain kernel forwarding through the node; wedged needs no such route).
func (s *SingleNode) RouteClientWAN() error {
	if err := s.Origin.RouteAdd(ClientWAN4.Masked(), NodeUnder4.Addr()); err != nil {
		return err
	}
	return s.Origin.RouteAdd(ClientWAN6.Masked(), NodeUnder6.Addr())
}

// Origin is what StartOrigin runs in the origin namespace.
type Origin struct {
	Srv, Iperf *Proc
}

// StartOrigin runs originsrv (HTTP :80, DNS :53 UDP+TCP, v4 and v6) and
// iperf3 -s in the origin namespace and waits until they listen.
func (s *SingleNode) StartOrigin(originsrv string) (*Origin, error) {
	return StartOrigin(s.Origin, originsrv)
}

// StartOrigin runs originsrv and iperf3 -s in ns, an origin namespace
// holding Origin4 and Origin6 (the single-node and the cluster lab's), and
// waits until they listen.
func StartOrigin(ns *NS, originsrv string) (*Origin, error) {
	srv, err := ns.Start("originsrv", nil, originsrv, "serve",
		"-http", fmt.Sprintf(":%d", HTTPPort), "-dns", originDNSAddrs(),
		"-echo", fmt.Sprintf(":%d", EchoPort), "-name", OriginName, "-a", Origin4.Addr().String(), "-aaaa", Origin6.Addr().String())
	if err != nil {
		return nil, err
	}
	ip, err := ns.Start("iperf3", nil, "iperf3", "-s", "-p", fmt.Sprint(IperfPort))
	if err != nil {
		return nil, err
	}
	o := &Origin{Srv: srv, Iperf: ip}
	for _, addr := range []netip.AddrPort{
		netip.AddrPortFrom(Origin4.Addr(), HTTPPort),
		netip.AddrPortFrom(Origin6.Addr(), HTTPPort),
		netip.AddrPortFrom(Origin4.Addr(), DNSPort),
	} {
		if err := waitConnect(ns, srv, addr.String(), 10*time.Second); err != nil {
			return nil, err
		}
	}
	// Not a connection: iperf3 -s logs an error for each one that does
	// not run a test.
	if err := ns.WaitListen(ip, IperfPort, 10*time.Second); err != nil {
		return nil, err
	}
	return o, nil
}

// waitConnect waits until addr accepts TCP connections inside ns, failing
// early when p exits.
func waitConnect(ns *NS, p *Proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if p.Exited() {
			return p.exitedError()
		}
		err := ns.WaitTCP(addr, 200*time.Millisecond)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
	}
}

// WaitListen waits until a TCP socket listens on port inside ns (ss -ltn),
// failing early when p (if not nil) exits.
func (ns *NS) WaitListen(p *Proc, port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if p != nil && p.Exited() {
			return p.exitedError()
		}
		out, err := ns.Command(context.Background(), "ss", "-Hltn", fmt.Sprintf("sport = :%d", port)).Output()
		if err == nil && len(strings.TrimSpace(string(out))) > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: [%s] nothing listens on TCP port %d after %v (%v)", ns.Name, port, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
