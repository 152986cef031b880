package lb

import (
	"fmt"
	"net/netip"
	"slices"
)

// EgressTable is the steering of return traffic to egress addresses that a
// front writes to the program (bpf/README.md, Egress steering): made from
// the egress plan and the membership of every data center.
type EgressTable struct {
	// Local are the IPv4 addresses this data center owns. Their ports
	// from PortLo on are cut into Slices slices of Slice ports; slice k
	// belongs to the node whose slot is k+1.
	Local                 []netip.Addr
	PortLo, Slice, Slices uint16
	// Remote are other data centers' IPv4 addresses, by data center name.
	Remote map[netip.Addr]string
	// DCs are the live nodes (underlay addresses) of other data centers.
	// Return traffic for a data center goes to up to XDPDCTargets of its
	// nodes (the lowest addresses), and GUE is accepted from all of them:
	// they send us the return traffic of our addresses.
	DCs map[string][]netip.Addr
}

// egressState is what SetEgress last wrote.
type egressState struct {
	entries map[netip.Addr]Egress4
	dcIndex map[string]uint32 // data center name → index in dcs
	dcNodes map[string][]netip.Addr
	peers   map[netip.Addr]bool // other data centers' nodes, as GUE peers
	on      bool                // CONFIG_EGRESS
}

// remotePeerIndex is the value of another data center's node in peers4:
// the program only checks that the key is there.
const remotePeerIndex = 0xfffffffe

// SetEgress makes the program's egress steering match t. Addresses, data
// centers and peers that t no longer names are removed; an empty table
// turns steering off. New data centers and peers are in place before the
// addresses that use them, and removed after.
func (f *Front) SetEgress(t EgressTable) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.egress.dcIndex == nil {
		f.egress = egressState{entries: map[netip.Addr]Egress4{}, dcIndex: map[string]uint32{},
			dcNodes: map[string][]netip.Addr{}, peers: map[netip.Addr]bool{}}
	}
	st := &f.egress

	// Data centers: the ones named by an address or with nodes.
	names := map[string]bool{}
	for _, dc := range t.Remote {
		names[dc] = true
	}
	for dc := range t.DCs {
		names[dc] = true
	}
	taken := make([]bool, XDPMaxDCs)
	for dc, i := range st.dcIndex {
		if names[dc] {
			taken[i] = true
		}
	}
	index := map[string]uint32{}
	for _, dc := range sortedNames(names) {
		i, ok := st.dcIndex[dc]
		if !ok || !taken[i] {
			free := slices.Index(taken, false)
			if free < 0 {
				return fmt.Errorf("lb: egress: more than %d other data centers", XDPMaxDCs)
			}
			i = uint32(free)
			taken[i] = true
		}
		index[dc] = i
	}

	want := map[netip.Addr]Egress4{}
	for _, a := range t.Local {
		want[a] = Egress4{Local: true, PortLo: t.PortLo, Slice: t.Slice, Slices: t.Slices}
	}
	for a, dc := range t.Remote {
		if _, dup := want[a]; dup {
			return fmt.Errorf("lb: egress: %v is both this data center's and %s's", a, dc)
		}
		want[a] = Egress4{DC: index[dc]}
	}
	wantPeers := map[netip.Addr]bool{}
	for _, nodes := range t.DCs {
		for _, a := range nodes {
			wantPeers[a] = true
		}
	}

	// 1. New peers and data centers' nodes.
	for a := range wantPeers {
		if !st.peers[a] {
			if err := f.maps.SetPeer(a, remotePeerIndex); err != nil {
				return err
			}
			st.peers[a] = true
		}
	}
	for dc, i := range index {
		nodes := slices.Clone(t.DCs[dc])
		slices.SortFunc(nodes, func(a, b netip.Addr) int { return a.Compare(b) })
		nodes = slices.Compact(nodes)
		if len(nodes) > XDPDCTargets {
			nodes = nodes[:XDPDCTargets]
		}
		if old, ok := st.dcIndex[dc]; ok && old == i && slices.Equal(st.dcNodes[dc], nodes) {
			continue
		}
		if err := f.maps.SetDC(i, nodes); err != nil {
			return err
		}
		st.dcNodes[dc] = nodes
	}
	// 2. Addresses, then the flag.
	for a, e := range want {
		if old, ok := st.entries[a]; ok && old == e {
			continue
		}
		if err := f.maps.SetEgress4(a, e); err != nil {
			return err
		}
		st.entries[a] = e
	}
	on := len(want) > 0
	if on != st.on {
		st.on = on
		if err := f.writeConfig(); err != nil {
			return err
		}
	}
	// 3. What is gone.
	for a := range st.entries {
		if _, ok := want[a]; !ok {
			if err := f.maps.DeleteEgress4(a); err != nil {
				return err
			}
			delete(st.entries, a)
		}
	}
	used := map[uint32]bool{}
	for _, i := range index {
		used[i] = true
	}
	for dc, i := range st.dcIndex {
		if !used[i] {
			if err := f.maps.SetDC(i, nil); err != nil {
				return err
			}
		}
		if _, ok := index[dc]; !ok {
			delete(st.dcNodes, dc)
		}
	}
	st.dcIndex = index
	own := map[netip.Addr]bool{}
	for _, m := range f.members {
		own[m.Underlay] = true
	}
	for a := range st.peers {
		if !wantPeers[a] {
			if !own[a] {
				if err := f.maps.DeletePeer(a); err != nil {
					return err
				}
			}
			delete(st.peers, a)
		}
	}
	return nil
}

// EgressEntries returns how many egress addresses the program steers.
func (f *Front) EgressEntries() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.egress.entries)
}

func sortedNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
