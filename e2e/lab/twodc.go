package lab

// The two-data-center lab (soft-unicast egress, issue 7): two clients, an
// origin and an etcd member behind an "internet" router, which reaches two
// data centers, each a router in front of its nodes. The anycast VIP and
// the IPv4 egress pool are announced by both data centers (ECMP at the
// inet router), and every node holds the whole egress pool (AnyIP), so
// return traffic to a shared egress address may reach any node of either
// data center: the nodes' XDP must steer it. SetVIPRoute, SetEgressRoute,
// SetDCVIPRoute and SetDCEgressRoute force paths.
//
//	 client1 ns wl-ID-client1   eth0 203.0.113.2/25, 2001:db8:c::2/64      ─┐
//	 client2 ns wl-ID-client2   eth0 203.0.113.130/25, 2001:db8:c:1::2/64  ─┤
//	 origin ns wl-ID-origin     eth0 198.18.0.2/24, 2001:db8:18::2/64      ─┤
//	 etcd1 ns wl-ID-etcd1       eth0 198.18.11.1/24                        ─┤
//	                                                                         │
//	 inet ns wl-ID-inet (forwarding on, fib_multipath_hash_policy=1: L4 ECMP)
//	   c1  203.0.113.1/25, 2001:db8:c::1/64           to client1
//	   c2  203.0.113.129/25, 2001:db8:c:1::1/64       to client2
//	   or0 198.18.0.1/24, 2001:db8:18::1/64           to the origin
//	   e1  198.18.11.254/24                           to etcd1
//	   dcD 198.18.(100+D).1/24, 2001:db8:18:(100+D)::1/64, MTU 1600   to DC router D
//	   198.18.N.0/24, 2001:db8:18:N::/64 (node N's underlay)   via N's DC router
//	   192.0.2.1/32, 2001:db8:1::1/128 (VIP)   via both DC routers (SetVIPRoute)
//	   198.51.100.0/24 (egress pool)           via both DC routers (SetEgressRoute)
//	     │
//	 dcD ns wl-ID-dcD (forwarding on, L4 ECMP; D = 1, 2)
//	   inet0 198.18.(100+D).2/24, 2001:db8:18:(100+D)::2/64, MTU 1600, default via inet
//	   nN    198.18.N.254/24, 2001:db8:18:N::fe/64, MTU 1600, XDP_PASS   to node N
//	   VIP and 198.51.100.0/24   via every node of D (SetDCVIPRoute, SetDCEgressRoute)
//	     │
//	 nodeN ns wl-ID-nodeN (forwarding off; DC D holds nodes (D-1)*k+1 .. D*k)
//	   eth0 198.18.N.1/24, 2001:db8:18:N::1/64, MTU 1600, default via its DC router
//	   lo   192.0.2.1/32, 2001:db8:1::1/128 (VIP); local 198.51.100.0/24 (AnyIP)
//	   net.ipv4.ip_local_port_range 1024 65535
//
// The clients and the origin route everything lab-wide via inet, except
// that the origin has no route to the clients' addresses (203.0.113.0/24,
// 2001:db8:c::/48) until RouteClientWAN: without it a client reaches the
// origin only through a node's egress. Their interfaces have TX checksum
// offload off, and the DC routers an XDP_PASS program on every interface
// facing a node, as XDP moving packets between nodes needs (DESIGN.md,
// the lab). Links that carry GUE (node and transit links) have MTU
// UnderlayMTU.
//
// ECMP follows the flow (5-tuple), so PathTo can predict it and tests can
// rely on it: every router interface clears the hash a packet brings
// (attachClearHash: otherwise the sending socket's random hash picks the
// path, and picks alike at every router), and each router hashes with its
// own fib_multipath_hash_seed (where the kernel has it) so that the inet
// router's choice of a data center does not also decide the data center's
// choice of a node.
//
// IPv6 egress is per node (a /64 by slot, known only once wedged runs):
// RouteToNode routes such a prefix through both routers to a node.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// Sizes of the two-data-center lab.
const (
	TwoDCCount         = 2
	MaxTwoDCNodesPerDC = 4
)

// Interface names of the two-data-center lab not shared with the cluster
// lab (which gives the inet router RouterOriginIf and RouterEtcdIf(1), the
// DC routers RouterNodeIf(n), and every leaf eth0).
const DCUplinkIf = "inet0" // a DC router's link to the inet router

// Tools the two-data-center lab needs besides BaseTools: ethtool (TX
// checksum offload) and etcd.
var ToolsTwoDC = slices.Concat(ToolsXDP, ToolsEtcd)

// Addresses of the clients of the two-data-center lab and of the inet
// router facing them: TwoDCClient4[i-1] is client i's. The two /25 halves
// of 203.0.113.0/24 are what a test GeoIP database tells apart.
var (
	TwoDCClient4     = []netip.Prefix{netip.MustParsePrefix("203.0.113.2/25"), netip.MustParsePrefix("203.0.113.130/25")}
	TwoDCClient6     = []netip.Prefix{netip.MustParsePrefix("2001:db8:c::2/64"), netip.MustParsePrefix("2001:db8:c:1::2/64")}
	TwoDCInetClient4 = []netip.Prefix{netip.MustParsePrefix("203.0.113.1/25"), netip.MustParsePrefix("203.0.113.129/25")}
	TwoDCInetClient6 = []netip.Prefix{netip.MustParsePrefix("2001:db8:c::1/64"), netip.MustParsePrefix("2001:db8:c:1::1/64")}

	// TwoDCClientNets are the clients' ranges, which the origin routes
	// only after RouteClientWAN.
	TwoDCClientNets = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:c::/48")}
)

// InetClientIf is the inet router's interface facing client i ("c1").
func InetClientIf(i int) string { return fmt.Sprintf("c%d", i) }

// InetDCIf is the inet router's interface facing DC router d ("dc1").
func InetDCIf(d int) string { return fmt.Sprintf("dc%d", d) }

// InetDC4 is the inet router's address on the transit link to DC d,
// 198.18.(100+d).1; DCUplink4 is the DC router's, 198.18.(100+d).2.
func InetDC4(d int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(100 + d), 1}) }

// DCUplink4: see InetDC4.
func DCUplink4(d int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(100 + d), 2}) }

// InetDC6 and DCUplink6 are InetDC4 and DCUplink4 in IPv6,
// 2001:db8:18:(100+d)::1 and ::2.
func InetDC6(d int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("2001:db8:18:%d::1", 100+d)) }

// DCUplink6: see InetDC6.
func DCUplink6(d int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("2001:db8:18:%d::2", 100+d)) }

// DCName is data center d's name, wedged's --dc ("dc1").
func DCName(d int) string { return fmt.Sprintf("dc%d", d) }

// TwoDC is the lab pictured above. Clients[i-1] is client i, DCRouters[d-1]
// data center d's router, Nodes[n-1] node n.
type TwoDC struct {
	Lab                *Lab
	Clients            []*NS
	Inet, Origin, Etcd *NS
	DCRouters          []*NS
	Nodes              []*NS
	NodesPerDC         int

	// etcd is a one-member cluster lab reduced to its etcd half: Etcd as
	// member 1, so StartEtcd and Etcdctl are the cluster lab's.
	etcd *Cluster
}

// NewTwoDC builds the two-data-center lab with nodesPerDC nodes
// (1..MaxTwoDCNodesPerDC) in each data center; etcd is not started (see
// StartEtcd). The VIP and the egress pool are routed via both data centers
// and, in each, via all its nodes.
func NewTwoDC(l *Lab, nodesPerDC int) (*TwoDC, error) {
	if nodesPerDC < 1 || nodesPerDC > MaxTwoDCNodesPerDC {
		return nil, fmt.Errorf("lab: two data centers of %d nodes: want 1..%d", nodesPerDC, MaxTwoDCNodesPerDC)
	}
	td := &TwoDC{Lab: l, NodesPerDC: nodesPerDC}
	var err error
	for i := 1; i <= len(TwoDCClient4); i++ {
		ns, err := l.NewNS(fmt.Sprintf("client%d", i))
		if err != nil {
			return nil, err
		}
		td.Clients = append(td.Clients, ns)
	}
	if td.Inet, err = l.NewNS("inet"); err != nil {
		return nil, err
	}
	if td.Origin, err = l.NewNS("origin"); err != nil {
		return nil, err
	}
	if td.Etcd, err = l.NewNS("etcd1"); err != nil {
		return nil, err
	}
	for d := 1; d <= TwoDCCount; d++ {
		ns, err := l.NewNS(DCName(d))
		if err != nil {
			return nil, err
		}
		td.DCRouters = append(td.DCRouters, ns)
	}
	for n := 1; n <= TwoDCCount*nodesPerDC; n++ {
		ns, err := l.NewNS(fmt.Sprintf("node%d", n))
		if err != nil {
			return nil, err
		}
		td.Nodes = append(td.Nodes, ns)
	}
	td.etcd = &Cluster{Lab: l, Etcd: []*NS{td.Etcd}, etcd: make([]*Proc, 1)}

	v4Default := netip.MustParsePrefix("0.0.0.0/0")
	v6Default := netip.MustParsePrefix("::/0")
	inet := td.Inet
	var steps []func() error
	for _, r := range append([]*NS{inet}, td.DCRouters...) {
		steps = append(steps,
			func() error { return r.SetForwarding(true) },
			func() error { return r.Sysctl("net.ipv4.fib_multipath_hash_policy", "1") },
			func() error { return r.Sysctl("net.ipv6.fib_multipath_hash_policy", "1") },
		)
	}
	// Distinct seeds: with the same one, a flow the inet router hashes to
	// a data center would also hash to the same position among that data
	// center's nodes, and with two nodes per data center only the first
	// of each would ever see the flows ECMP splits.
	for i, r := range append([]*NS{inet}, td.DCRouters...) {
		steps = append(steps, func() error { return setHashSeed(r, 1001+i) })
	}

	for i, cl := range td.Clients {
		c := i + 1
		rif := InetClientIf(c)
		steps = append(steps,
			func() error { return l.Veth(cl, ClientIf, inet, rif) },
			func() error { return cl.AddrAdd(ClientIf, TwoDCClient4[i]) },
			func() error { return cl.AddrAdd(ClientIf, TwoDCClient6[i]) },
			func() error { return inet.AddrAdd(rif, TwoDCInetClient4[i]) },
			func() error { return inet.AddrAdd(rif, TwoDCInetClient6[i]) },
			func() error { return cl.RouteAdd(v4Default, TwoDCInetClient4[i].Addr()) },
			func() error { return cl.RouteAdd(v6Default, TwoDCInetClient6[i].Addr()) },
			func() error { return cl.TxOff(ClientIf) },
			// As in the cluster lab: connection-rate runs reuse TIME_WAIT ports.
			func() error { return cl.Sysctl("net.ipv4.tcp_tw_reuse", "1") },
			func() error { return cl.Sysctl("net.ipv4.ip_local_port_range", "1024 65535") },
		)
	}

	o := td.Origin
	steps = append(steps,
		func() error { return l.Veth(inet, RouterOriginIf, o, OriginIf) },
		func() error { return inet.AddrAdd(RouterOriginIf, RouterOrigin4) },
		func() error { return inet.AddrAdd(RouterOriginIf, RouterOrigin6) },
		func() error { return o.AddrAdd(OriginIf, Origin4) },
		func() error { return o.AddrAdd(OriginIf, Origin6) },
		func() error { return o.AddrAdd(OriginIf, Resolver4) },
		func() error { return o.RouteAdd(Origins4, RouterOrigin4.Addr()) },
		func() error { return o.RouteAdd(EgressPool4, RouterOrigin4.Addr()) },
		func() error { return o.RouteAdd(ClusterOrigins6, RouterOrigin6.Addr()) },
		func() error { return o.RouteAdd(EgressPool6, RouterOrigin6.Addr()) },
		func() error { return o.TxOff(OriginIf) },

		func() error { return l.Veth(inet, RouterEtcdIf(1), td.Etcd, EtcdIf) },
		func() error { return inet.AddrAdd(RouterEtcdIf(1), netip.PrefixFrom(routerEtcd4(1), 24)) },
		func() error { return td.Etcd.AddrAdd(EtcdIf, netip.PrefixFrom(EtcdAddr(1), 24)) },
		func() error { return td.Etcd.RouteAdd(v4Default, routerEtcd4(1)) },
	)

	for i, r := range td.DCRouters {
		d := i + 1
		rif := InetDCIf(d)
		steps = append(steps,
			func() error { return l.Veth(inet, rif, r, DCUplinkIf) },
			func() error { return setMTU(inet, rif, UnderlayMTU) },
			func() error { return setMTU(r, DCUplinkIf, UnderlayMTU) },
			func() error { return inet.AddrAdd(rif, netip.PrefixFrom(InetDC4(d), 24)) },
			func() error { return inet.AddrAdd(rif, netip.PrefixFrom(InetDC6(d), 64)) },
			func() error { return r.AddrAdd(DCUplinkIf, netip.PrefixFrom(DCUplink4(d), 24)) },
			func() error { return r.AddrAdd(DCUplinkIf, netip.PrefixFrom(DCUplink6(d), 64)) },
			func() error { return r.RouteAdd(v4Default, InetDC4(d)) },
			func() error { return r.RouteAdd(v6Default, InetDC6(d)) },
		)
		for _, n := range td.DCNodes(d) {
			node := td.Nodes[n-1]
			nif := RouterNodeIf(n)
			steps = append(steps,
				func() error { return l.Veth(r, nif, node, NodeUplinkIf) },
				func() error { return setMTU(r, nif, UnderlayMTU) },
				func() error { return setMTU(node, NodeUplinkIf, UnderlayMTU) },
				func() error { return r.AddrAdd(nif, netip.PrefixFrom(RouterNode4(n), 24)) },
				func() error { return r.AddrAdd(nif, netip.PrefixFrom(RouterNode6(n), 64)) },
				func() error { return r.AttachXDPPass(nif) },
				func() error { return node.AddrAdd(NodeUplinkIf, netip.PrefixFrom(NodeUnderlay(n), 24)) },
				func() error { return node.AddrAdd(NodeUplinkIf, netip.PrefixFrom(NodeUnderlay6(n), 64)) },
				func() error { return node.RouteAdd(v4Default, RouterNode4(n)) },
				func() error { return node.RouteAdd(v6Default, RouterNode6(n)) },
				func() error { return node.AddrAdd("lo", netip.PrefixFrom(VIP4, 32)) },
				func() error { return node.AddrAdd("lo", netip.PrefixFrom(VIP6, 128)) },
				func() error { return localRoute(node, EgressPool4) },
				func() error { return node.Sysctl("net.ipv4.ip_local_port_range", "1024 65535") },
				func() error { return node.SetForwarding(false) },
				func() error { return inet.RouteAdd(netip.PrefixFrom(NodeUnderlay(n), 24).Masked(), DCUplink4(d)) },
				func() error { return inet.RouteAdd(netip.PrefixFrom(NodeUnderlay6(n), 64).Masked(), DCUplink6(d)) },
			)
		}
		steps = append(steps,
			func() error { return td.SetDCVIPRoute(d, td.DCNodes(d)...) },
			func() error { return td.SetDCEgressRoute(d, td.DCNodes(d)...) },
		)
	}
	// Every router interface clears the hash of what it receives: ECMP
	// follows the 5-tuple, independently at each router.
	inetIfs := []string{RouterOriginIf, RouterEtcdIf(1)}
	for i := range td.Clients {
		inetIfs = append(inetIfs, InetClientIf(i+1))
	}
	for d := 1; d <= TwoDCCount; d++ {
		inetIfs = append(inetIfs, InetDCIf(d))
		r := td.DCRouters[d-1]
		steps = append(steps, func() error { return r.attachClearHash(DCUplinkIf) })
		for _, n := range td.DCNodes(d) {
			steps = append(steps, func() error { return r.attachClearHash(RouterNodeIf(n)) })
		}
	}
	for _, rif := range inetIfs {
		steps = append(steps, func() error { return inet.attachClearHash(rif) })
	}
	steps = append(steps,
		func() error { return td.SetVIPRoute(1, 2) },
		func() error { return td.SetEgressRoute(1, 2) },
	)
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return td, nil
}

// attachClearHash attaches, at iface's tcx ingress in ns, a program that
// clears the packet's hash (bpf_set_hash_invalid). A packet keeps the hash
// its sending socket gave it (sk_txhash, random per socket, changed by TCP
// on a retransmission timeout) across veths and routers, and with an L4
// hash present fib_multipath_hash uses it instead of hashing the 5-tuple:
// ECMP would then follow the socket, not the flow, `ip route get` could
// not predict it, and every router on the way would hash alike. It stays
// until the lab's cleanup.
func (ns *NS) attachClearHash(iface string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.FnSetHashInvalid.Call(), // R1 is the skb
			asm.Mov.Imm(asm.R0, 0),      // TCX_PASS
			asm.Return(),
		},
	})
	if err != nil {
		return fmt.Errorf("lab: clear-hash program: %w", err)
	}
	var l link.Link
	err = ns.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		l, err = link.AttachTCX(link.TCXOptions{Program: prog, Attach: ebpf.AttachTCXIngress, Interface: ifi.Index})
		return err
	})
	if err != nil {
		prog.Close()
		return fmt.Errorf("lab: [%s] attach clear-hash to %s ingress (tcx, Linux 6.6+): %w", ns.Name, iface, err)
	}
	ns.lab.onCleanup(func() error {
		l.Close()
		return prog.Close()
	})
	return nil
}

// setHashSeed sets ns's fib_multipath_hash_seed (both families use it). A
// kernel older than 6.11 has none; its namespaces then share one seed.
func setHashSeed(ns *NS, seed int) error {
	if _, err := os.Stat("/proc/sys/net/ipv4/fib_multipath_hash_seed"); err != nil {
		return nil
	}
	return ns.Sysctl("net.ipv4.fib_multipath_hash_seed", fmt.Sprint(seed))
}

// localRoute makes the whole of p local to ns (AnyIP: ip route add local p
// dev lo), so a socket can bind any address of it.
func localRoute(ns *NS, p netip.Prefix) error {
	args := []string{"ip"}
	if p.Addr().Is6() {
		args = append(args, "-6")
	}
	_, err := ns.Run(append(args, "route", "add", "local", p.String(), "dev", "lo")...)
	return err
}

// routeArgs is the `ip route replace` command routing dst via gws: one
// gateway, or an ECMP route with one nexthop each (vipRouteArgs for a
// prefix).
func routeArgs(dst netip.Prefix, gws []netip.Addr) []string {
	args := []string{"ip"}
	if dst.Addr().Is6() {
		args = append(args, "-6")
	}
	args = append(args, "route", "replace", dst.String())
	if len(gws) == 1 {
		return append(args, "via", gws[0].String())
	}
	for _, gw := range gws {
		args = append(args, "nexthop", "via", gw.String())
	}
	return args
}

// NodeDC is the data center (1-based) node n belongs to.
func (td *TwoDC) NodeDC(n int) int { return (n-1)/td.NodesPerDC + 1 }

// DCNodes lists data center d's nodes, in order.
func (td *TwoDC) DCNodes(d int) []int {
	var ns []int
	for n := (d-1)*td.NodesPerDC + 1; n <= d*td.NodesPerDC; n++ {
		ns = append(ns, n)
	}
	return ns
}

func (td *TwoDC) checkNode(n int) error {
	if n < 1 || n > len(td.Nodes) {
		return fmt.Errorf("lab: no node %d (have %d)", n, len(td.Nodes))
	}
	return nil
}

// replaceRoutes routes each of dsts in ns via one gateway per item: gw4(item)
// for an IPv4 destination, gw6(item) for an IPv6 one.
func replaceRoutes(ns *NS, what string, items []int, dsts []netip.Prefix, gw4, gw6 func(int) netip.Addr) error {
	if len(items) == 0 {
		return fmt.Errorf("lab: %s: no next hop", what)
	}
	for _, dst := range dsts {
		var gws []netip.Addr
		for _, i := range items {
			if dst.Addr().Is4() {
				gws = append(gws, gw4(i))
			} else {
				gws = append(gws, gw6(i))
			}
		}
		if _, err := ns.Run(routeArgs(dst, gws)...); err != nil {
			return err
		}
	}
	return nil
}

func (td *TwoDC) checkDCs(what string, dcs []int) error {
	for _, d := range dcs {
		if d < 1 || d > TwoDCCount {
			return fmt.Errorf("lab: %s: no data center %d", what, d)
		}
	}
	return nil
}

func (td *TwoDC) checkDCNodes(what string, d int, nodes []int) error {
	if err := td.checkDCs(what, []int{d}); err != nil {
		return err
	}
	for _, n := range nodes {
		if err := td.checkNode(n); err != nil {
			return err
		}
		if td.NodeDC(n) != d {
			return fmt.Errorf("lab: %s: node %d is in data center %d, not %d", what, n, td.NodeDC(n), d)
		}
	}
	return nil
}

var (
	vipPrefixes = []netip.Prefix{netip.PrefixFrom(VIP4, 32), netip.PrefixFrom(VIP6, 128)}
	egressPools = []netip.Prefix{EgressPool4}
)

// SetVIPRoute routes the VIP (v4 and v6) in the inet router via the given
// data centers: a plain route for one, an ECMP route (L4 hash) for both.
// It replaces the previous route.
func (td *TwoDC) SetVIPRoute(dcs ...int) error {
	if err := td.checkDCs("SetVIPRoute", dcs); err != nil {
		return err
	}
	return replaceRoutes(td.Inet, "SetVIPRoute", dcs, vipPrefixes, DCUplink4, DCUplink6)
}

// SetEgressRoute routes the IPv4 egress pool (EgressPool4) in the inet
// router via the given data centers, as SetVIPRoute does the VIP.
func (td *TwoDC) SetEgressRoute(dcs ...int) error {
	if err := td.checkDCs("SetEgressRoute", dcs); err != nil {
		return err
	}
	return replaceRoutes(td.Inet, "SetEgressRoute", dcs, egressPools, DCUplink4, DCUplink6)
}

// SetDCVIPRoute routes the VIP (v4 and v6) in data center d's router via
// the given nodes of d: a plain route for one, ECMP for several.
func (td *TwoDC) SetDCVIPRoute(d int, nodes ...int) error {
	if err := td.checkDCNodes("SetDCVIPRoute", d, nodes); err != nil {
		return err
	}
	return replaceRoutes(td.DCRouters[d-1], "SetDCVIPRoute", nodes, vipPrefixes, NodeUnderlay, NodeUnderlay6)
}

// SetDCEgressRoute routes the IPv4 egress pool in data center d's router
// via the given nodes of d, as SetDCVIPRoute does the VIP.
func (td *TwoDC) SetDCEgressRoute(d int, nodes ...int) error {
	if err := td.checkDCNodes("SetDCEgressRoute", d, nodes); err != nil {
		return err
	}
	return replaceRoutes(td.DCRouters[d-1], "SetDCEgressRoute", nodes, egressPools, NodeUnderlay, NodeUnderlay6)
}

// RouteToNode routes p (say node n's IPv6 egress /64) to node n: in the
// inet router via n's data center, in that data center's router via n.
// The node must make p's addresses its own (an address, or a local route).
func (td *TwoDC) RouteToNode(p netip.Prefix, n int) error {
	if err := td.checkNode(n); err != nil {
		return err
	}
	d := td.NodeDC(n)
	if err := replaceRoutes(td.Inet, "RouteToNode", []int{d}, []netip.Prefix{p.Masked()}, DCUplink4, DCUplink6); err != nil {
		return err
	}
	return replaceRoutes(td.DCRouters[d-1], "RouteToNode", []int{n}, []netip.Prefix{p.Masked()}, NodeUnderlay, NodeUnderlay6)
}

// RouteClientWAN lets the origin reach the clients directly (plain kernel
// forwarding, for checks of the lab itself; wedged needs no such route).
func (td *TwoDC) RouteClientWAN() error {
	if err := td.Origin.RouteAdd(TwoDCClientNets[0], RouterOrigin4.Addr()); err != nil {
		return err
	}
	return td.Origin.RouteAdd(TwoDCClientNets[1], RouterOrigin6.Addr())
}

// inetIf is the inet router's interface a packet from src arrives on: a
// client's, the origin's or etcd's.
func (td *TwoDC) inetIf(src netip.Addr) (string, error) {
	for i := range td.Clients {
		if TwoDCClient4[i].Contains(src) || TwoDCClient6[i].Contains(src) {
			return InetClientIf(i + 1), nil
		}
	}
	if Origin4.Contains(src) || Origin6.Contains(src) {
		return RouterOriginIf, nil
	}
	if netip.PrefixFrom(EtcdAddr(1), 24).Contains(src) {
		return RouterEtcdIf(1), nil
	}
	return "", fmt.Errorf("lab: %v is no address of a client, the origin or etcd", src)
}

// routeGet returns the gateway ns's routing picks for proto (udp, tcp)
// from src arriving on iif to dst, with the L4 hash inputs.
func routeGet(ns *NS, iif, proto string, src, dst netip.AddrPort) (netip.Addr, error) {
	out, err := ns.Run("ip", "-j", "route", "get", dst.Addr().String(), "from", src.Addr().String(),
		"iif", iif, "ipproto", proto, "sport", fmt.Sprint(src.Port()), "dport", fmt.Sprint(dst.Port()))
	if err != nil {
		return netip.Addr{}, err
	}
	var rs []struct {
		Gateway string `json:"gateway"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil || len(rs) != 1 {
		return netip.Addr{}, fmt.Errorf("lab: [%s] ip route get: %v: %.300s", ns.Name, err, out)
	}
	gw, err := netip.ParseAddr(rs[0].Gateway)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("lab: [%s] ip route get %v: no gateway: %.300s", ns.Name, dst, out)
	}
	return gw, nil
}

// PathTo returns the node the routers deliver a proto ("udp", "tcp")
// packet from src (a client's or the origin's address) to dst (the VIP, an
// egress address) to, as the kernels compute it with `ip route get` and
// the L4 hash inputs: the inet router's choice of a data center, then that
// data center router's choice of a node. It answers for the routers' view;
// a test confirms with counters or a listener.
func (td *TwoDC) PathTo(proto string, src, dst netip.AddrPort) (int, error) {
	iif, err := td.inetIf(src.Addr())
	if err != nil {
		return 0, err
	}
	gw, err := routeGet(td.Inet, iif, proto, src, dst)
	if err != nil {
		return 0, err
	}
	d := 0
	for k := 1; k <= TwoDCCount; k++ {
		if gw == DCUplink4(k) || gw == DCUplink6(k) {
			d = k
		}
	}
	if d == 0 {
		return 0, fmt.Errorf("lab: inet routes %v via %v, no data center", dst, gw)
	}
	if gw, err = routeGet(td.DCRouters[d-1], DCUplinkIf, proto, src, dst); err != nil {
		return 0, err
	}
	for _, n := range td.DCNodes(d) {
		if gw == NodeUnderlay(n) || gw == NodeUnderlay6(n) {
			return n, nil
		}
	}
	return 0, fmt.Errorf("lab: %s routes %v via %v, none of its nodes", DCName(d), dst, gw)
}

// StartOrigin runs originsrv and iperf3 -s in the origin namespace, as the
// single-node lab's StartOrigin does.
func (td *TwoDC) StartOrigin(originsrv string) (*Origin, error) {
	return StartOrigin(td.Origin, originsrv)
}

// EtcdEndpoints is the etcd member's client URL (wedged's --etcd).
func (td *TwoDC) EtcdEndpoints() string { return td.etcd.EtcdEndpoints() }

// StartEtcd starts the etcd member (data in <lab dir>/etcd-1, kept by
// StopEtcd so a restart keeps the data) and waits until it answers
// `etcdctl endpoint health`.
func (td *TwoDC) StartEtcd() (*Proc, error) {
	p, err := td.etcd.StartEtcd(1)
	if err != nil {
		return nil, err
	}
	if err := td.etcd.WaitEtcdHealthy(30 * time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

// StopEtcd stops the etcd member (SIGTERM, then SIGKILL after StopTimeout)
// and waits for it to exit.
func (td *TwoDC) StopEtcd() { td.etcd.StopEtcd(1) }

// WaitEtcdHealthy waits until the running member answers `etcdctl endpoint
// health`, failing at once when it exited by itself or was never started.
func (td *TwoDC) WaitEtcdHealthy(timeout time.Duration) error {
	return td.etcd.WaitEtcdHealthy(timeout)
}

// Etcdctl runs etcdctl (API v3) against the member, in its namespace, and
// returns its combined output.
func (td *TwoDC) Etcdctl(args ...string) (string, error) { return td.etcd.Etcdctl(nil, args...) }

// ServiceKey is the path of the service key WedgedArgs names, <lab
// dir>/service.key: the test makes it (wedged genkey) before any node
// starts.
func (td *TwoDC) ServiceKey() string { return filepath.Join(td.Lab.Dir, "service.key") }

// NodeIface is wedged's --name on node n: unique across labs, the same
// across restarts of that node's wedged, at most 15 bytes.
func (td *TwoDC) NodeIface(n int) string { return nodeIface(td.Lab, n) }

// WedgedArgs returns the arguments for wedged on node n: state in
// <lab dir>/wedged-N, UDP port 51820, API on DefaultAPI, the VIP as v4 and
// v6 endpoints, the origin's DNS server as upstream, the origins allowed,
// NodeIface(n), the cluster flags (the etcd member, node id "nodeN", its
// data center's name, its underlay address, ServiceKey) and the XDP front
// on its uplink for both VIPs. No egress address or port slice: the test
// adds --egress-plan and --geoip (or --egress) to extra, which is appended.
func (td *TwoDC) WedgedArgs(n int, extra ...string) []string {
	args := nodeWedgedArgs(td.Lab, n, td.EtcdEndpoints(), DCName(td.NodeDC(n)), td.ServiceKey())
	args = append(args, "--xdp", NodeUplinkIf, "--vip", VIP4.String(), "--vip", VIP6.String())
	return append(args, extra...)
}

// StartWedged runs wedged on node n with WedgedArgs(n, extra...) and waits
// for its API.
func (td *TwoDC) StartWedged(n int, bin string, extra ...string) (*Wedged, error) {
	if err := td.checkNode(n); err != nil {
		return nil, err
	}
	return StartWedged(td.Nodes[n-1], bin, td.WedgedArgs(n, extra...)...)
}
