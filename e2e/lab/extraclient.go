package lab

import (
	"fmt"
	"net/netip"
)

// More clients of the single-node lab, each in a namespace of its own
// (so each can run a full-tunnel wg-quick), on a /30 of its own:
//
//	client ns wl-ID-hN             node ns
//	eth0 192.0.2.(64+4N+2)/30 ──veth── hN 192.0.2.(64+4N+1)/30
//	default via the node           (the VIP 192.0.2.1 is on lo)
//
// N is 0..15. They reach the node's v4 endpoint only.

// ExtraClientAddr returns extra client n's WAN address and the node's end.
func ExtraClientAddr(n int) (client, node netip.Prefix) {
	base := 64 + 4*n
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(base + 2)}), 30),
		netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(base + 1)}), 30)
}

// AddClient makes extra client namespace n ("hN") and links it to the node.
func (s *SingleNode) AddClient(n int) (*NS, error) {
	if n < 0 || n > 15 {
		return nil, fmt.Errorf("lab: extra client %d: want 0..15", n)
	}
	ns, err := s.Lab.NewNS(fmt.Sprintf("h%d", n))
	if err != nil {
		return nil, err
	}
	nodeIf := fmt.Sprintf("h%d", n)
	if err := s.Lab.Veth(ns, ClientIf, s.Node, nodeIf); err != nil {
		return nil, err
	}
	cl, node := ExtraClientAddr(n)
	if err := ns.AddrAdd(ClientIf, cl); err != nil {
		return nil, err
	}
	if err := s.Node.AddrAdd(nodeIf, node); err != nil {
		return nil, err
	}
	if err := ns.RouteAdd(netip.MustParsePrefix("0.0.0.0/0"), node.Addr()); err != nil {
		return nil, err
	}
	return ns, nil
}

// Blackhole4 is a prefix the node routes to the origin, whose namespace
// does not forward: a SYN to it is never answered. Call RouteBlackhole
// first.
var Blackhole4 = netip.MustParsePrefix("198.18.9.0/24")

// RouteBlackhole routes Blackhole4 from the node to the origin.
func (s *SingleNode) RouteBlackhole() error {
	return s.Node.RouteAdd(Blackhole4, Origin4.Addr())
}
