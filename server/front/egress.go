package front

import (
	"net/netip"
	"slices"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/lb"
	"github.com/wedge-edge/wedge/server/cluster"
)

// egressTable is the XDP front's steering for plan p and the members of
// every data center: data center dc's addresses sliced, the others' sent
// to their data centers' live nodes.
func egressTable(p *egress.Plan, dc string, members []cluster.Member) lb.EgressTable {
	lo, size, n := p.Slicing()
	t := lb.EgressTable{Local: p.Addrs4(dc), PortLo: lo, Slice: size, Slices: n,
		Remote: map[netip.Addr]string{}, DCs: map[string][]netip.Addr{}}
	for _, other := range p.DataCenters() {
		if other == dc {
			continue
		}
		for _, a := range p.Addrs4(other) {
			t.Remote[a] = other
		}
	}
	for _, m := range members {
		if m.DC != dc && m.Underlay.Is4() && !slices.Contains(t.DCs[m.DC], m.Underlay) {
			t.DCs[m.DC] = append(t.DCs[m.DC], m.Underlay)
		}
	}
	return t
}
