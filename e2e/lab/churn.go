package lab

// More clients of the cluster lab, each in a namespace of its own (so each
// can run a full-tunnel wg-quick), on a link of its own to the router:
//
//	client ns wl-ID-cN                   router ns
//	eth0 100.64.N.2/30 ──────veth─────── xN 100.64.N.1/30
//	default via the router
//
// N is 1..MaxClusterClients. 100.64.0.0/10 is the carrier-grade NAT
// range, where many real clients come from; registrations' inner
// addresses are in 100.96.0.0/12, so wg-quick's routes do not collide.
// IPv4 only: their wg-quick configs use the VIP's v4 endpoint.
//
// And a NAT rebinding for clients that share a namespace (the cluster
// lab's client namespace): SetClientPortMaps rewrites the source port of
// a client's WireGuard packets on the router, statelessly, as SetHomeNAT
// does for the single client behind the home router.

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// MaxClusterClients is how many extra client namespaces AddClient makes.
const MaxClusterClients = 32

// ClusterClientAddr returns extra client n's address and the router's end
// of its link.
func ClusterClientAddr(n int) (client, router netip.Prefix) {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(n), 2}), 30),
		netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(n), 1}), 30)
}

// AddClient makes extra client namespace n ("cN") and links it to the
// router (pictured above). Its uplink has TX checksum offload off, as the
// XDP front needs of every client (TxOff).
func (c *Cluster) AddClient(n int) (*NS, error) {
	if n < 1 || n > MaxClusterClients {
		return nil, fmt.Errorf("lab: extra client %d: want 1..%d", n, MaxClusterClients)
	}
	ns, err := c.Lab.NewNS(fmt.Sprintf("c%d", n))
	if err != nil {
		return nil, err
	}
	rif := fmt.Sprintf("x%d", n)
	cl, r := ClusterClientAddr(n)
	for _, step := range []func() error{
		func() error { return c.Lab.Veth(ns, ClientIf, c.Router, rif) },
		func() error { return ns.AddrAdd(ClientIf, cl) },
		func() error { return c.Router.AddrAdd(rif, r) },
		func() error { return ns.RouteAdd(netip.MustParsePrefix("0.0.0.0/0"), r.Addr()) },
		func() error { return ns.TxOff(ClientIf) },
	} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return ns, nil
}

// PortMap is one client's translation: its WireGuard socket's port From
// leaves as To.
type PortMap struct {
	From, To uint16
}

// SetClientPortMaps makes the router translate, from now on, the source
// port of UDP to serverPort (WireGuard's, 51820) coming from the client
// namespace (behind RouterClientIf) from each map's From to its To, and
// the destination port of UDP from serverPort to the client's address
// (ClientWAN4, ClientWAN6) and any To given so far (here or in an
// earlier call) back to its From: a NAT rebinding for one of the several
// clients sharing the client namespace, whose earlier mappings have not
// timed out yet (as SetHomeNAT, which translates the one client behind
// the home router). It is stateless (nftables payload rewrites in table
// inet wedge-ports, no conntrack) and works for IPv4 and IPv6. A From
// absent from maps is no longer translated on the way out. Give To ports
// nothing in the client namespace binds (ip_local_reserved_ports).
//
// The rewrite is on the router, not in the client namespace: there, a
// UDP GSO packet (wireguard-go's, wedge connect's) is still one packet
// whose checksum is left to segmentation, and rewriting its port in
// nftables leaves every segment with a bad checksum (the node drops it,
// UdpInCsumErrors). The client's uplink segments it in software (TxOff)
// before it reaches the router.
func (c *Cluster) SetClientPortMaps(serverPort uint16, maps []PortMap) error {
	portMaps.mu.Lock()
	defer portMaps.mu.Unlock()
	given := portMaps.m[c]
	if given == nil {
		given = map[uint16]uint16{}
		portMaps.m[c] = given
		c.Lab.onCleanup(func() error {
			portMaps.mu.Lock()
			defer portMaps.mu.Unlock()
			delete(portMaps.m, c)
			return nil
		})
	}
	back := slices.Clone(maps)
	for to, from := range given {
		if !slices.ContainsFunc(maps, func(m PortMap) bool { return m.To == to }) {
			back = append(back, PortMap{From: from, To: to})
		}
	}
	var rules []string
	for _, m := range maps {
		rules = append(rules, fmt.Sprintf("\t\tiifname %q udp dport %d udp sport %d udp sport set %d", RouterClientIf, serverPort, m.From, m.To))
	}
	for _, m := range back {
		rules = append(rules,
			fmt.Sprintf("\t\tip daddr %s udp sport %d udp dport %d udp dport set %d", ClientWAN4.Addr(), serverPort, m.To, m.From),
			fmt.Sprintf("\t\tip6 daddr %s udp sport %d udp dport %d udp dport set %d", ClientWAN6.Addr(), serverPort, m.To, m.From))
	}
	ruleset := fmt.Sprintf(`table inet wedge-ports
delete table inet wedge-ports
table inet wedge-ports {
	chain pre {
		type filter hook prerouting priority raw; policy accept;
		notrack
%s
	}
}
`, strings.Join(rules, "\n"))
	if _, err := c.Router.RunStdin(ruleset, "nft", "-f", "-"); err != nil {
		return err
	}
	for _, m := range back {
		given[m.To] = m.From
	}
	return nil
}

// portMaps holds, for each cluster, every translation SetClientPortMaps
// made (To → From).
var portMaps = struct {
	mu sync.Mutex
	m  map[*Cluster]map[uint16]uint16
}{m: map[*Cluster]map[uint16]uint16{}}
