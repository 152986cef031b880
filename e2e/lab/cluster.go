package lab

// The cluster lab: a client and an origin on either side of a router, N
// wedged nodes behind the router sharing the anycast VIP, and an M-member
// etcd cluster (static bootstrap) the nodes reach through the router.
//
//	 client ns wl-ID-client
//	   eth0 203.0.113.2/24, 2001:db8:c::2/64, default via router
//	     │
//	 router ns wl-ID-router (forwarding on, fib_multipath_hash_policy=1: L4 ECMP)
//	   cl0 203.0.113.1/24, 2001:db8:c::1/64            to the client
//	   or0 198.18.0.1/24, 2001:db8:18::1/64            to the origin
//	   nN  198.18.N.254/24, 2001:db8:18:N::fe/64       to node N (N = 1..9)
//	   eM  198.18.(10+M).254/24                        to etcd member M (M = 1..9)
//	   192.0.2.1/32, 2001:db8:1::1/128 (VIP)  via node 1, or several (SetVIPRoute)
//	   198.51.100.(10+N)/32, 2001:db8:5100::(10+N)/128 (egress of N)  via node N
//	     │
//	 node ns wl-ID-nodeN (forwarding off)
//	   eth0 198.18.N.1/24, 2001:db8:18:N::1/64, default via router
//	   lo   192.0.2.1/32, 2001:db8:1::1/128 (VIP)
//	        198.51.100.(10+N)/32, 2001:db8:5100::(10+N)/128 (egress)
//
//	 etcd ns wl-ID-etcdM
//	   eth0 198.18.(10+M).1/24, default via router; etcd on :2379 (client), :2380 (peer)
//
//	 origin ns wl-ID-origin
//	   eth0 198.18.0.2/24, 2001:db8:18::2/64 (Origin4, Origin6: the single-node lab's)
//	   198.18.0.0/15, 198.51.100.0/24, 2001:db8:18::/48, 2001:db8:5100::/48 via router;
//	   no default route and no route to 203.0.113.0/24 or 2001:db8:c::/64,
//	   so the client reaches the origin only through a node's egress.
//
// NewHomeCluster puts the client behind a "home router" instead, which
// translates it (IPv4 only) to an address and port the test sets and
// changes (SetHomeNAT), as a NAT rebinding does:
//
//	 client ns: eth0 203.0.113.130/25, default via home (no IPv6)
//	 home ns wl-ID-home (forwarding on, nftables table ip wedge-home)
//	   lan0 203.0.113.129/25
//	   eth0 203.0.113.2/25 and 203.0.113.3/25 (HomeWAN), default via router
//	 router: cl0 203.0.113.1/25 faces the home router
//
// Node uplinks and the router's node-facing interfaces have MTU 1600 so a
// full-size client packet still fits once the front wraps it in GUE (+28
// bytes), as an operator would size the underlay.
//
// The router is plain kernel forwarding: nothing here loads XDP. The ECMP
// test (multipath VIP route) must attach a trivial XDP_PASS program on the
// router's node-facing interfaces (RouterNodeIf) and turn TX checksum
// offload off client-side (see DESIGN.md, the lab).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Limits of the cluster lab's address plan: node N uses 198.18.N.0/24 and
// etcd member M 198.18.(10+M).0/24.
const (
	MaxClusterNodes = 9
	MaxEtcdMembers  = 9
)

// Interface names and ports of the cluster lab.
const (
	RouterClientIf = "cl0"  // router side of the client link
	RouterOriginIf = "or0"  // router side of the origin link
	NodeUplinkIf   = "eth0" // a node's only interface (XDP attaches here)
	EtcdIf         = "eth0"

	EtcdClientPort = 2379
	EtcdPeerPort   = 2380
)

// Tools the cluster lab's etcd needs besides BaseTools.
var ToolsEtcd = []string{"etcd", "etcdctl", "ss"}

// Tools the home router (NewHomeCluster) needs besides BaseTools.
var ToolsHome = []string{"nft"}

// Addresses and names of the home router (NewHomeCluster).
var (
	HomeClient4 = netip.MustParsePrefix("203.0.113.130/25") // the client behind it
	HomeLAN4    = netip.MustParsePrefix("203.0.113.129/25")
	// HomeWAN are the home router's WAN addresses: SetHomeSNAT picks one.
	HomeWAN       = []netip.Prefix{netip.MustParsePrefix("203.0.113.2/25"), netip.MustParsePrefix("203.0.113.3/25")}
	homeRouterWAN = netip.MustParsePrefix("203.0.113.1/25")
)

const (
	// HomeClientPort is the UDP port the client behind the home router
	// must send from: the only one SetHomeNAT translates.
	HomeClientPort = 51000

	HomeLANIf = "lan0"
	HomeWANIf = "eth0"
	// UnderlayMTU is the MTU of the node links: room for GUE's 28 bytes.
	UnderlayMTU = 1600
)

// Fixed addresses of the cluster lab (the rest are functions of N and M).
var (
	RouterWAN4    = netip.MustParsePrefix("203.0.113.1/24")
	RouterWAN6    = netip.MustParsePrefix("2001:db8:c::1/64")
	RouterOrigin4 = netip.MustParsePrefix("198.18.0.1/24")
	RouterOrigin6 = netip.MustParsePrefix("2001:db8:18::1/64")

	// ClusterOrigins6 is the v6 range the origin routes via the router
	// and wedged --allows: every node underlay and the origin.
	ClusterOrigins6 = netip.MustParsePrefix("2001:db8:18::/48")
)

// RouterNodeIf is the router's interface facing node n ("n1").
func RouterNodeIf(n int) string { return fmt.Sprintf("n%d", n) }

// RouterEtcdIf is the router's interface facing etcd member m ("e1").
func RouterEtcdIf(m int) string { return fmt.Sprintf("e%d", m) }

// NodeUnderlay is node n's uplink address, 198.18.n.1.
func NodeUnderlay(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(n), 1}) }

// NodeUnderlay6 is node n's v6 uplink address, 2001:db8:18:n::1.
func NodeUnderlay6(n int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:db8:18:%d::1", n))
}

// RouterNode4 and RouterNode6 are the router's addresses facing node n
// (198.18.n.254, 2001:db8:18:n::fe): the node's default gateways.
func RouterNode4(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(n), 254}) }

// RouterNode6: see RouterNode4.
func RouterNode6(n int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:db8:18:%d::fe", n))
}

// NodeEgress4 is node n's egress address, 198.51.100.(10+n).
func NodeEgress4(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + n)}) }

// NodeEgress6 is node n's v6 egress address, 2001:db8:5100::(10+n) (the
// same digits as the v4 one: node 1 has 2001:db8:5100::11).
func NodeEgress6(n int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:db8:5100::%d", 10+n))
}

// EtcdAddr is etcd member m's address, 198.18.(10+m).1.
func EtcdAddr(m int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(10 + m), 1}) }

// routerEtcd4 is the router's address facing etcd member m.
func routerEtcd4(m int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(10 + m), 254}) }

// EtcdName is etcd member m's --name ("e1").
func EtcdName(m int) string { return fmt.Sprintf("e%d", m) }

// EtcdClientURL is etcd member m's client URL, "http://198.18.(10+m).1:2379".
func EtcdClientURL(m int) string {
	return "http://" + netip.AddrPortFrom(EtcdAddr(m), EtcdClientPort).String()
}

// EtcdPeerURL is etcd member m's peer URL, "http://198.18.(10+m).1:2380".
func EtcdPeerURL(m int) string {
	return "http://" + netip.AddrPortFrom(EtcdAddr(m), EtcdPeerPort).String()
}

// etcdURLs joins the client URLs of members.
func etcdURLs(members []int) string {
	urls := make([]string, len(members))
	for i, m := range members {
		urls[i] = EtcdClientURL(m)
	}
	return strings.Join(urls, ",")
}

// etcdArgs is the command line of etcd member m of a static cluster of
// members members. The same arguments restart a member: with its data
// directory present etcd ignores the --initial-* flags and rejoins.
func etcdArgs(dataDir, token string, m, members int) []string {
	peers := make([]string, members)
	for i := range members {
		peers[i] = EtcdName(i+1) + "=" + EtcdPeerURL(i+1)
	}
	return []string{
		"etcd",
		"--name", EtcdName(m),
		"--data-dir", dataDir,
		"--listen-client-urls", EtcdClientURL(m),
		"--advertise-client-urls", EtcdClientURL(m),
		"--listen-peer-urls", EtcdPeerURL(m),
		"--initial-advertise-peer-urls", EtcdPeerURL(m),
		"--initial-cluster", strings.Join(peers, ","),
		"--initial-cluster-state", "new",
		"--initial-cluster-token", token,
		"--logger", "zap", "--log-level", "warn", "--log-outputs", "stderr",
	}
}

// vipRouteArgs is the `ip route replace` command routing dst via gws: one
// gateway, or an ECMP route with one nexthop each.
func vipRouteArgs(dst netip.Addr, gws []netip.Addr) []string {
	args := []string{"ip"}
	if dst.Is6() {
		args = append(args, "-6")
	}
	args = append(args, "route", "replace", netip.PrefixFrom(dst, dst.BitLen()).String())
	if len(gws) == 1 {
		return append(args, "via", gws[0].String())
	}
	for _, gw := range gws {
		args = append(args, "nexthop", "via", gw.String())
	}
	return args
}

// Cluster is the lab pictured above. Nodes[n-1] is node n, Etcd[m-1] etcd
// member m.
type Cluster struct {
	Lab                    *Lab
	Client, Router, Origin *NS
	Nodes                  []*NS
	Etcd                   []*NS
	Home                   *NS // nil unless NewHomeCluster

	mu       sync.Mutex
	etcd     []*Proc          // the member's current process, nil when not started or stopped
	homeMaps []netip.AddrPort // every translation SetHomeNAT made, oldest first
}

// NewCluster builds the cluster lab with nodes nodes (1..MaxClusterNodes)
// and etcdMembers etcd namespaces (0..MaxEtcdMembers; nothing started: see
// StartEtcdCluster). The VIP is routed via node 1.
func NewCluster(l *Lab, nodes, etcdMembers int) (*Cluster, error) {
	return newCluster(l, nodes, etcdMembers, false)
}

// NewHomeCluster is NewCluster with the client behind the home router
// (pictured above), which translates nothing until SetHomeNAT.
func NewHomeCluster(l *Lab, nodes, etcdMembers int) (*Cluster, error) {
	return newCluster(l, nodes, etcdMembers, true)
}

func newCluster(l *Lab, nodes, etcdMembers int, home bool) (*Cluster, error) {
	if nodes < 1 || nodes > MaxClusterNodes {
		return nil, fmt.Errorf("lab: cluster of %d nodes: want 1..%d", nodes, MaxClusterNodes)
	}
	if etcdMembers < 0 || etcdMembers > MaxEtcdMembers {
		return nil, fmt.Errorf("lab: %d etcd members: want 0..%d", etcdMembers, MaxEtcdMembers)
	}
	c := &Cluster{Lab: l, etcd: make([]*Proc, etcdMembers)}
	var err error
	if c.Client, err = l.NewNS("client"); err != nil {
		return nil, err
	}
	if c.Router, err = l.NewNS("router"); err != nil {
		return nil, err
	}
	if c.Origin, err = l.NewNS("origin"); err != nil {
		return nil, err
	}
	for n := 1; n <= nodes; n++ {
		ns, err := l.NewNS(fmt.Sprintf("node%d", n))
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, ns)
	}
	for m := 1; m <= etcdMembers; m++ {
		ns, err := l.NewNS(fmt.Sprintf("etcd%d", m))
		if err != nil {
			return nil, err
		}
		c.Etcd = append(c.Etcd, ns)
	}

	if home {
		if c.Home, err = l.NewNS("home"); err != nil {
			return nil, err
		}
	}

	v4Default := netip.MustParsePrefix("0.0.0.0/0")
	v6Default := netip.MustParsePrefix("::/0")
	r := c.Router
	var steps []func() error
	if home {
		h := c.Home
		steps = []func() error{
			func() error { return l.Veth(c.Client, ClientIf, h, HomeLANIf) },
			func() error { return c.Client.AddrAdd(ClientIf, HomeClient4) },
			func() error { return h.AddrAdd(HomeLANIf, HomeLAN4) },
			func() error { return c.Client.RouteAdd(v4Default, HomeLAN4.Addr()) },
			func() error { return l.Veth(h, HomeWANIf, r, RouterClientIf) },
			func() error { return h.AddrAdd(HomeWANIf, HomeWAN[0]) },
			func() error { return h.AddrAdd(HomeWANIf, HomeWAN[1]) },
			func() error { return r.AddrAdd(RouterClientIf, homeRouterWAN) },
			func() error { return h.RouteAdd(v4Default, homeRouterWAN.Addr()) },
			func() error { return h.SetForwarding(true) },
		}
	} else {
		steps = []func() error{
			func() error { return l.Veth(c.Client, ClientIf, r, RouterClientIf) },
			func() error { return c.Client.AddrAdd(ClientIf, ClientWAN4) },
			func() error { return c.Client.AddrAdd(ClientIf, ClientWAN6) },
			func() error { return r.AddrAdd(RouterClientIf, RouterWAN4) },
			func() error { return r.AddrAdd(RouterClientIf, RouterWAN6) },
			func() error { return c.Client.RouteAdd(v4Default, RouterWAN4.Addr()) },
			func() error { return c.Client.RouteAdd(v6Default, RouterWAN6.Addr()) },
		}
	}
	steps = append(steps,
		// As in the single-node lab: connection-rate runs reuse TIME_WAIT ports.
		func() error { return c.Client.Sysctl("net.ipv4.tcp_tw_reuse", "1") },
		func() error { return c.Client.Sysctl("net.ipv4.ip_local_port_range", "1024 65535") },

		func() error { return l.Veth(r, RouterOriginIf, c.Origin, OriginIf) },
		func() error { return r.AddrAdd(RouterOriginIf, RouterOrigin4) },
		func() error { return r.AddrAdd(RouterOriginIf, RouterOrigin6) },
		func() error { return c.Origin.AddrAdd(OriginIf, Origin4) },
		func() error { return c.Origin.AddrAdd(OriginIf, Origin6) },
		func() error { return c.Origin.AddrAdd(OriginIf, Resolver4) },
		func() error { return c.Origin.RouteAdd(Origins4, RouterOrigin4.Addr()) },
		func() error { return c.Origin.RouteAdd(EgressPool4, RouterOrigin4.Addr()) },
		func() error { return c.Origin.RouteAdd(ClusterOrigins6, RouterOrigin6.Addr()) },
		func() error { return c.Origin.RouteAdd(EgressPool6, RouterOrigin6.Addr()) },

		func() error { return r.SetForwarding(true) },
		func() error { return r.Sysctl("net.ipv4.fib_multipath_hash_policy", "1") },
		func() error { return r.Sysctl("net.ipv6.fib_multipath_hash_policy", "1") },
	)
	for i, node := range c.Nodes {
		n := i + 1
		rif := RouterNodeIf(n)
		steps = append(steps,
			func() error { return l.Veth(r, rif, node, NodeUplinkIf) },
			func() error { return setMTU(r, rif, UnderlayMTU) },
			func() error { return setMTU(node, NodeUplinkIf, UnderlayMTU) },
			func() error { return r.AddrAdd(rif, netip.PrefixFrom(RouterNode4(n), 24)) },
			func() error { return r.AddrAdd(rif, netip.PrefixFrom(RouterNode6(n), 64)) },
			func() error { return node.AddrAdd(NodeUplinkIf, netip.PrefixFrom(NodeUnderlay(n), 24)) },
			func() error { return node.AddrAdd(NodeUplinkIf, netip.PrefixFrom(NodeUnderlay6(n), 64)) },
			func() error { return node.RouteAdd(v4Default, RouterNode4(n)) },
			func() error { return node.RouteAdd(v6Default, RouterNode6(n)) },
			func() error { return node.AddrAdd("lo", netip.PrefixFrom(VIP4, 32)) },
			func() error { return node.AddrAdd("lo", netip.PrefixFrom(VIP6, 128)) },
			func() error { return node.AddrAdd("lo", netip.PrefixFrom(NodeEgress4(n), 32)) },
			func() error { return node.AddrAdd("lo", netip.PrefixFrom(NodeEgress6(n), 128)) },
			func() error { return node.SetForwarding(false) },
			func() error { return r.RouteAdd(netip.PrefixFrom(NodeEgress4(n), 32), NodeUnderlay(n)) },
			func() error { return r.RouteAdd(netip.PrefixFrom(NodeEgress6(n), 128), NodeUnderlay6(n)) },
		)
	}
	for i, e := range c.Etcd {
		m := i + 1
		rif := RouterEtcdIf(m)
		steps = append(steps,
			func() error { return l.Veth(r, rif, e, EtcdIf) },
			func() error { return r.AddrAdd(rif, netip.PrefixFrom(routerEtcd4(m), 24)) },
			func() error { return e.AddrAdd(EtcdIf, netip.PrefixFrom(EtcdAddr(m), 24)) },
			func() error { return e.RouteAdd(v4Default, routerEtcd4(m)) },
		)
	}
	steps = append(steps, func() error { return c.SetVIPRoute(1) })
	// At cleanup, SIGKILL etcd before the lab stops processes with SIGTERM:
	// a member stopped last, without quorum, spends StopTimeout trying to
	// hand over leadership, and its data is thrown away anyway.
	l.onCleanup(func() error {
		for m := 1; m <= len(c.Etcd); m++ {
			c.KillEtcd(m)
		}
		return nil
	})
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// SetVIPRoute routes the VIP (v4 and v6) in the router via the given nodes:
// a plain route for one node, an ECMP route (L4 hash) for several. It
// replaces the previous route.
func (c *Cluster) SetVIPRoute(nodes ...int) error {
	if len(nodes) == 0 {
		return errors.New("lab: SetVIPRoute: no node")
	}
	var gw4, gw6 []netip.Addr
	for _, n := range nodes {
		if n < 1 || n > len(c.Nodes) {
			return fmt.Errorf("lab: SetVIPRoute: no node %d (have %d)", n, len(c.Nodes))
		}
		gw4 = append(gw4, NodeUnderlay(n))
		gw6 = append(gw6, NodeUnderlay6(n))
	}
	if _, err := c.Router.Run(vipRouteArgs(VIP4, gw4)...); err != nil {
		return err
	}
	_, err := c.Router.Run(vipRouteArgs(VIP6, gw6)...)
	return err
}

func setMTU(ns *NS, dev string, mtu int) error {
	_, err := ns.Run("ip", "link", "set", dev, "mtu", fmt.Sprint(mtu))
	return err
}

// SetHomeNAT makes the home router translate the client's UDP from
// HomeClientPort (the client must use it: ListenPort) to out from now on.
// The translation is stateless (nftables payload rewrites, no conntrack):
// outbound packets leave from out at once, and inbound packets to out or
// to any earlier translation still reach the client, as on a NAT whose
// earlier mappings have not timed out (or a carrier NAT pool that moved
// the client's outbound flow to another box). That is the NAT rebinding
// of a busy client: its next packets, not a timer, tell the server.
// Nothing else is translated.
func (c *Cluster) SetHomeNAT(out netip.AddrPort) error {
	if c.Home == nil {
		return errors.New("lab: SetHomeNAT: the cluster has no home router (NewHomeCluster)")
	}
	if !out.Addr().Is4() || out.Port() == 0 || !slices.ContainsFunc(HomeWAN, func(p netip.Prefix) bool { return p.Addr() == out.Addr() }) {
		return fmt.Errorf("lab: SetHomeNAT %v: want one of the home router's WAN addresses and a port", out)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	maps := append(slices.Clone(c.homeMaps), out)
	var in []string
	for _, m := range maps {
		in = append(in, m.Addr().String()+" . "+fmt.Sprint(m.Port()))
	}
	client := HomeClient4.Addr()
	rules := fmt.Sprintf(`table ip wedge-home
delete table ip wedge-home
table ip wedge-home {
	chain pre {
		type filter hook prerouting priority raw; policy accept;
		notrack
		iifname %[6]q ip daddr . udp dport { %[7]s } ip daddr set %[2]s udp dport set %[3]d
	}
	chain out {
		type filter hook output priority raw; policy accept;
		notrack
	}
	# The source is rewritten after routing: before it, a packet from the
	# LAN with one of this router's own addresses as source is a martian.
	chain post {
		type filter hook postrouting priority srcnat; policy accept;
		oifname %[6]q ip saddr %[2]s udp sport %[3]d ip saddr set %[4]s udp sport set %[5]d
	}
}
`, HomeLANIf, client, HomeClientPort, out.Addr(), out.Port(), HomeWANIf, strings.Join(in, ", "))
	if _, err := c.Home.RunStdin(rules, "nft", "-f", "-"); err != nil {
		return err
	}
	c.homeMaps = maps
	return nil
}

// ECMPNode returns the node the router's multipath route to the VIP
// currently picks for UDP from src to the VIP's WireGuard port (51820),
// as the kernel computes it (ip route get with the L4 hash inputs). It
// answers for the router's view; a test confirms with counters.
func (c *Cluster) ECMPNode(src netip.AddrPort) (int, error) {
	vip := VIP4
	if src.Addr().Is6() {
		vip = VIP6
	}
	out, err := c.Router.Run("ip", "-j", "route", "get", vip.String(), "from", src.Addr().String(),
		"iif", RouterClientIf, "ipproto", "udp", "sport", fmt.Sprint(src.Port()), "dport", "51820")
	if err != nil {
		return 0, err
	}
	var rs []struct {
		Gateway string `json:"gateway"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil || len(rs) != 1 {
		return 0, fmt.Errorf("lab: ip route get: %v: %.300s", err, out)
	}
	gw, err := netip.ParseAddr(rs[0].Gateway)
	if err != nil {
		return 0, fmt.Errorf("lab: ip route get: no gateway: %.300s", out)
	}
	for n := 1; n <= len(c.Nodes); n++ {
		if gw == NodeUnderlay(n) || gw == NodeUnderlay6(n) {
			return n, nil
		}
	}
	return 0, fmt.Errorf("lab: ip route get: gateway %v is no node", gw)
}

// StartOrigin runs originsrv and iperf3 -s in the origin namespace, as the
// single-node lab's StartOrigin does.
func (c *Cluster) StartOrigin(originsrv string) (*Origin, error) {
	return StartOrigin(c.Origin, originsrv)
}

// EtcdEndpoints is the comma-separated client URLs of every etcd member
// (wedged's --etcd).
func (c *Cluster) EtcdEndpoints() string { return etcdURLs(c.allMembers()) }

func (c *Cluster) allMembers() []int {
	ms := make([]int, len(c.Etcd))
	for i := range ms {
		ms[i] = i + 1
	}
	return ms
}

func (c *Cluster) checkMember(m int) error {
	if m < 1 || m > len(c.Etcd) {
		return fmt.Errorf("lab: no etcd member %d (have %d)", m, len(c.Etcd))
	}
	return nil
}

// StartEtcd starts etcd member m in its namespace, as part of the static
// cluster of all members, and waits until it listens on its client port
// (not until the cluster has a leader: see WaitEtcdHealthy). Its data
// directory, <lab dir>/etcd-M, survives StopEtcd and KillEtcd, so starting
// a stopped member again rejoins it with its data.
func (c *Cluster) StartEtcd(m int) (*Proc, error) {
	if err := c.checkMember(m); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if p := c.etcd[m-1]; p != nil && !p.Exited() {
		c.mu.Unlock()
		return nil, fmt.Errorf("lab: etcd member %d already runs (pid %d)", m, p.Pid())
	}
	ns := c.Etcd[m-1]
	dataDir := filepath.Join(c.Lab.Dir, fmt.Sprintf("etcd-%d", m))
	p, err := ns.Start("etcd", nil, etcdArgs(dataDir, "wedge-lab-"+c.Lab.ID, m, len(c.Etcd))...)
	if err == nil {
		c.etcd[m-1] = p
	}
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := ns.WaitListen(p, EtcdClientPort, 20*time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

// StartEtcdCluster starts every member and waits until all are healthy.
func (c *Cluster) StartEtcdCluster() error {
	if len(c.Etcd) == 0 {
		return errors.New("lab: cluster lab without etcd members")
	}
	for m := 1; m <= len(c.Etcd); m++ {
		if _, err := c.StartEtcd(m); err != nil {
			return err
		}
	}
	return c.WaitEtcdHealthy(30 * time.Second)
}

// StopEtcd stops member m (SIGTERM, SIGKILL after StopTimeout) and waits
// for it to exit. Stopping a member that does not run does nothing.
func (c *Cluster) StopEtcd(m int) {
	if p := c.takeEtcd(m); p != nil {
		p.Stop()
	}
}

// KillEtcd kills member m with SIGKILL and waits for it to exit.
func (c *Cluster) KillEtcd(m int) {
	if p := c.takeEtcd(m); p != nil {
		p.Kill()
	}
}

func (c *Cluster) takeEtcd(m int) *Proc {
	if c.checkMember(m) != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.etcd[m-1]
	c.etcd[m-1] = nil
	return p
}

// EtcdProc returns member m's current process, nil when it was never
// started or was stopped or killed.
func (c *Cluster) EtcdProc(m int) *Proc {
	if c.checkMember(m) != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.etcd[m-1]
}

// runningMembers lists the members started and not stopped since, and
// fails when one of them exited by itself.
func (c *Cluster) runningMembers() ([]int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ms []int
	for i, p := range c.etcd {
		if p == nil {
			continue
		}
		if p.Exited() {
			return nil, p.exitedError()
		}
		ms = append(ms, i+1)
	}
	if len(ms) == 0 {
		return nil, errors.New("lab: no etcd member runs")
	}
	return ms, nil
}

// Etcdctl runs etcdctl (API v3) with --endpoints set to the client URLs of
// members (nil: every member) in the namespace of the first of them, and
// returns its combined output.
func (c *Cluster) Etcdctl(members []int, args ...string) (string, error) {
	if members == nil {
		members = c.allMembers()
	}
	if len(members) == 0 {
		return "", errors.New("lab: etcdctl: no etcd member")
	}
	for _, m := range members {
		if err := c.checkMember(m); err != nil {
			return "", err
		}
	}
	argv := append([]string{"etcdctl", "--endpoints", etcdURLs(members),
		"--dial-timeout", "2s", "--command-timeout", "5s"}, args...)
	return c.Etcd[members[0]-1].RunEnv([]string{"ETCDCTL_API=3"}, argv...)
}

// WaitEtcdHealthy waits until every running member (started and not
// stopped or killed since) answers `etcdctl endpoint health`, which takes
// a quorum read: the running members must have a leader. It fails at once
// when a member exited by itself.
func (c *Cluster) WaitEtcdHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ms, err := c.runningMembers()
		if err != nil {
			return err
		}
		_, err = c.Etcdctl(ms, "endpoint", "health")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: etcd members %v not healthy after %v: %w", ms, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// EtcdLeader returns the member the running members report as leader.
func (c *Cluster) EtcdLeader() (int, error) {
	ms, err := c.runningMembers()
	if err != nil {
		return 0, err
	}
	out, err := c.Etcdctl(ms, "endpoint", "status", "--write-out", "json")
	if err != nil {
		return 0, err
	}
	return parseEtcdLeader(out)
}

// parseEtcdLeader finds, in `etcdctl endpoint status -w json`, the member
// whose id is the leader id, and returns its number (from its client URL).
func parseEtcdLeader(out string) (int, error) {
	var sts []struct {
		Endpoint string
		Status   struct {
			Header struct {
				MemberID uint64 `json:"member_id"`
			} `json:"header"`
			Leader uint64 `json:"leader"`
		}
	}
	if err := json.Unmarshal([]byte(out), &sts); err != nil {
		return 0, fmt.Errorf("lab: etcdctl endpoint status: %w: %.300s", err, out)
	}
	for _, st := range sts {
		if st.Status.Leader == 0 || st.Status.Header.MemberID != st.Status.Leader {
			continue
		}
		for m := 1; m <= MaxEtcdMembers; m++ {
			if st.Endpoint == EtcdClientURL(m) {
				return m, nil
			}
		}
		return 0, fmt.Errorf("lab: etcd leader at unknown endpoint %q", st.Endpoint)
	}
	return 0, fmt.Errorf("lab: no etcd leader among the endpoints: %.300s", out)
}

// NodeIface is wedged's --name on node n: unique across labs, the same
// across restarts of that node's wedged, at most 15 bytes.
func (c *Cluster) NodeIface(n int) string { return nodeIface(c.Lab, n) }

// WedgedArgs returns the arguments for wedged on node n: state in
// <lab dir>/wedged-N, UDP port 51820, API on DefaultAPI (the node
// namespace's loopback), the VIP as v4 and v6 endpoints, node n's egress
// addresses, a port slice, the origin's DNS server as upstream, the
// origins allowed, NodeIface(n), and the cluster flags (every etcd member,
// node id "nodeN", dc "lab", its underlay address, a service key shared by
// all nodes in the lab directory). extra is appended.
func (c *Cluster) WedgedArgs(n int, extra ...string) []string {
	args := nodeWedgedArgs(c.Lab, n, c.EtcdEndpoints(), "lab", filepath.Join(c.Lab.Dir, "service.key"))
	args = append(args,
		"--egress", NodeEgress4(n).String(),
		"--egress", NodeEgress6(n).String(),
		"--egress-ports", "40000-49999",
	)
	return append(args, extra...)
}

// nodeWedgedArgs are the arguments every multi-node lab gives wedged on
// node n: state in <lab dir>/wedged-N, UDP port 51820, API on DefaultAPI,
// the VIP as v4 and v6 endpoints, the origin's DNS server as upstream, the
// origins allowed, nodeIface, and the cluster flags (etcd, node id
// "nodeN", data center dc, node n's underlay address, the service key).
func nodeWedgedArgs(l *Lab, n int, etcd, dc, serviceKey string) []string {
	return []string{
		"--state", filepath.Join(l.Dir, fmt.Sprintf("wedged-%d", n)),
		"--listen", "51820",
		"--api", DefaultAPI,
		"--endpoint", netip.AddrPortFrom(VIP4, 51820).String(),
		"--endpoint", netip.AddrPortFrom(VIP6, 51820).String(),
		"--dns-upstream", netip.AddrPortFrom(Resolver4.Addr(), DNSPort).String(),
		"--allow", Origins4.String(),
		"--allow", ClusterOrigins6.String(),
		"--name", nodeIface(l, n),
		"--etcd", etcd,
		"--node-id", fmt.Sprintf("node%d", n),
		"--dc", dc,
		"--underlay", NodeUnderlay(n).String(),
		"--service-key", serviceKey,
	}
}

// nodeIface is wedged's --name on node n of lab l: unique across labs, the
// same across restarts of that node's wedged, at most 15 bytes.
func nodeIface(l *Lab, n int) string { return fmt.Sprintf("wl%sn%d", l.ID, n) }

// StartWedged runs wedged on node n with WedgedArgs(n, extra...) and waits
// for its API.
func (c *Cluster) StartWedged(n int, bin string, extra ...string) (*Wedged, error) {
	if n < 1 || n > len(c.Nodes) {
		return nil, fmt.Errorf("lab: no node %d (have %d)", n, len(c.Nodes))
	}
	return StartWedged(c.Nodes[n-1], bin, c.WedgedArgs(n, extra...)...)
}
