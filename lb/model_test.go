package lb

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/wedge-edge/wedge/server/wgmsg"
)

// The fixture cluster of the XDP tests and the model of the program:
// xState is what a test loads into the maps, and xState.expect what the
// program must do with a frame in that state, written from bpf/README.md
// without looking at the C. TestXDPFixtures checks the model against its
// rows; FuzzXDP (xdp_fuzz_test.go) holds the program to the model.
//
// The lab the test frames describe (addresses from the documentation ranges):
//
//	client 203.0.113.7:40000 / [2001:db8:c::7]:40001
//	   │ WireGuard to VIP 192.0.2.1 / 2001:db8::1 port 51820
//	   ▼
//	router 02:00:00:00:00:01 ──► node 0 "front" 02:00:00:00:00:02, underlay 198.18.0.1
//	                                 │ GUE (IPv4/UDP port 5555) back via the router
//	                                 ▼
//	                             node 1 "owner", underlay 198.18.0.2
//	node 2: 198.18.0.3 (valid); node 3: 198.18.0.4 (entry present, not valid)
//	node 4: departed, its heir is node 2; node 5: departed, its heir is
//	        the running node itself (lb.Node.Heir)
//
// Node indexes are slots: a session index tagged (wgmsg.Tag, key
// xIndexKey) with slot 1 belongs to node 1.

// XDP verdicts (enum xdp_action).
const (
	xdpAborted = 0
	xdpDrop    = 1
	xdpPass    = 2
	xdpTX      = 3
)

func xdpVerdictName(v uint32) string {
	switch v {
	case xdpAborted:
		return "ABORTED"
	case xdpDrop:
		return "DROP"
	case xdpPass:
		return "PASS"
	case xdpTX:
		return "TX"
	}
	return fmt.Sprintf("verdict(%d)", v)
}

const (
	xWGPort     = 51820
	xGUEPort    = 5555
	xClientPort = 40000
)

var (
	xRouterMAC = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	xNodeMAC   = [6]byte{0x02, 0, 0, 0, 0, 0x02}
	xVIP4      = netip.MustParseAddr("192.0.2.1")
	xVIP6      = netip.MustParseAddr("2001:db8::1")
	xClient4   = netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), xClientPort)
	xClient6   = netip.AddrPortFrom(netip.MustParseAddr("2001:db8:c::7"), xClientPort+1)
	xUnderlay  = []netip.Addr{
		netip.MustParseAddr("198.18.0.1"),
		netip.MustParseAddr("198.18.0.2"),
		netip.MustParseAddr("198.18.0.3"),
		netip.MustParseAddr("198.18.0.4"),
	}
	xStranger = netip.MustParseAddr("198.18.0.99")
	// Unstamped clients without a flow entry.
	xNoFlow4 = netip.MustParseAddrPort("203.0.113.7:40002")
	xNoFlow6 = netip.MustParseAddrPort("[2001:db8:c::8]:40001")
)

// xIndexKey is the fixture cluster's index key.
const xIndexKey = 0x9e3779b9

// xTag is a session index of slot tagged with the fixture's key.
func xTag(slot uint8, r uint32) uint32 { return wgmsg.Tag(slot, r, xIndexKey) }

// xBadTag is xTag with a wrong check: not tagged, but its slot byte is set.
func xBadTag(slot uint8, r uint32) uint32 { return xTag(slot, r) ^ 1<<20 }

// ---- the fixture state and the model ----

// xState is what a test loads into the maps, and what the model reads.
type xState struct {
	self     uint32
	enabled  bool
	indexKey uint32 // 0: index routing off
	hasTable bool
	table    func(slot uint32) uint32
	nodes    map[uint32]Node
	peers    map[netip.Addr]uint32
	pins     map[uint32]uint32
	flows    map[netip.AddrPort]uint32 // keys normalized with xFlowAddr
	// egress4 are the IPv4 egress addresses in the steering table, true
	// for this data center's own (the model knows no slices: it is for
	// states without egress steering, whose decapsulation still reads
	// the table).
	egress4 map[netip.Addr]bool
}

// xTable4 is the fixture Maglev table: slot i is owned by node i % 4.
func xTable4(slot uint32) uint32 { return slot % 4 }

// xCIDOwnedBy returns the n-th (from 0) ClientID that xTable4 gives to owner.
func xCIDOwnedBy(owner uint32, n int) uint32 {
	for cid := uint32(1); ; cid++ {
		if xTable4(Hash(cid)%XDPTableSize) == owner {
			if n == 0 {
				return cid
			}
			n--
		}
	}
}

// ClientIDs of the fixture, by their owner in xTable4 and their pins.
var (
	xCIDSelf       = xCIDOwnedBy(0, 0)
	xCIDNode1      = xCIDOwnedBy(1, 0)
	xCIDNode2      = xCIDOwnedBy(2, 0)
	xCIDInvalid    = xCIDOwnedBy(3, 0)
	xCIDPinnedTo2  = xCIDOwnedBy(0, 1) // table: self; pin: node 2
	xCIDPinnedSelf = xCIDOwnedBy(1, 1) // table: node 1; pin: self
	xCIDPinnedBad  = xCIDOwnedBy(1, 2) // table: node 1; pin: node 300, out of range
	xCIDPinnedTo3  = xCIDOwnedBy(0, 2) // table: self; pin: node 3, not valid
	xCIDPinnedTo7  = xCIDOwnedBy(3, 1) // table: node 3, not valid; pin: node 7, never set
	xCIDPinned4To2 = xCIDOwnedBy(1, 3) // table: node 1; pin: node 2 (v6 rows)
	xCIDPinnedHeir = xCIDOwnedBy(1, 4) // table: node 1; pin: node 4, departed (heir: node 2)
)

// Unstamped clients with flow entries.
var (
	xFlowSelf    = netip.MustParseAddrPort("203.0.113.8:40000")
	xFlowInvalid = netip.MustParseAddrPort("203.0.113.9:40000")
	xFlowHeir    = netip.MustParseAddrPort("203.0.113.10:40000") // to node 4, departed
)

func xFlowAddr(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
}

// Slots of departed nodes in xBaseState: 4's heir is node 2, 5's the
// running node.
const (
	xSlotHeir2    = 4
	xSlotHeirSelf = 5
)

// xBaseState is the state of node self in the fixture cluster.
func xBaseState(self uint32) *xState {
	s := &xState{
		self:     self,
		enabled:  true,
		indexKey: xIndexKey,
		hasTable: true,
		table:    xTable4,
		nodes:    map[uint32]Node{},
		peers:    map[netip.Addr]uint32{},
		pins: map[uint32]uint32{
			xCIDPinnedTo2:  2,
			xCIDPinnedSelf: self,
			xCIDPinnedBad:  300,
			xCIDPinnedTo3:  3,
			xCIDPinnedTo7:  7,
			xCIDPinned4To2: 2,
			xCIDPinnedHeir: xSlotHeir2,
		},
		flows: map[netip.AddrPort]uint32{
			xFlowAddr(xClient4):     1,
			xFlowAddr(xClient6):     2,
			xFlowAddr(xFlowSelf):    self,
			xFlowAddr(xFlowInvalid): 3,
			xFlowAddr(xFlowHeir):    xSlotHeir2,
		},
		// Egress steering is off (config.flags), but decapsulation
		// reads the table: return traffic to our address may be
		// unwrapped, to another data center's may not.
		egress4: map[netip.Addr]bool{xEgressLocal: true, xEgressRemote: false},
	}
	for i, a := range xUnderlay {
		s.nodes[uint32(i)] = Node{Underlay4: a, Valid: i != 3}
		if uint32(i) != self {
			s.peers[a] = uint32(i)
		}
	}
	// Departed nodes' slots with an heir: node 2, and this node.
	s.nodes[xSlotHeir2] = Node{Underlay4: xUnderlay[2], Heir: true}
	s.nodes[xSlotHeirSelf] = Node{Underlay4: xUnderlay[self], Heir: true}
	return s
}

func (s *xState) underlay() netip.Addr { return s.nodes[s.self].Underlay4 }

func (s *xState) config() Config {
	return Config{
		VIP4: xVIP4, VIP6: xVIP6,
		WGPort: xWGPort, GUEPort: xGUEPort,
		Self: s.self, SelfUnderlay4: s.underlay(),
		Enabled: s.enabled, IndexKey: s.indexKey,
	}
}

// apply writes s into o's maps. It adds and overwrites entries; it never
// deletes pins, flows or peers.
func (s *xState) apply(tb testing.TB, o *Objects) {
	tb.Helper()
	check := func(err error) {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
	}
	check(o.SetConfig(s.config()))
	for i, n := range s.nodes {
		check(o.SetNode(i, n))
	}
	for a, i := range s.peers {
		check(o.SetPeer(a, i))
	}
	for c, i := range s.pins {
		check(o.SetPin(c, i))
	}
	for f, i := range s.flows {
		check(o.SetFlow(f, i))
	}
	for a, local := range s.egress4 {
		e := Egress4{DC: 0}
		if local {
			e = Egress4{Local: true, PortLo: 1024, Slice: 2048, Slices: 8}
		}
		check(o.SetEgress4(a, e))
	}
	if s.hasTable {
		check(o.SetTable(xFill(s.table)))
	} else {
		check(o.ClearTable())
	}
}

func xFill(f func(slot uint32) uint32) []uint32 {
	slots := make([]uint32, XDPTableSize)
	for i := range slots {
		slots[i] = f(uint32(i))
	}
	return slots
}

// xWant is what the program must do with one frame.
type xWant struct {
	verdict uint32
	counts  map[string]uint64 // counter deltas; absent names stay unchanged
	out     []byte            // PASS, DROP: the output frame
	to      netip.Addr        // TX: the owner's underlay
	sport   uint16            // TX: the outer UDP source port
}

func xCounts(names ...string) map[string]uint64 {
	m := make(map[string]uint64, len(names))
	for _, n := range names {
		m[n]++
	}
	return m
}

// expect is the model: what the program does with frame f in state s,
// written from bpf/README.md without looking at the C.
func (s *xState) expect(f []byte) xWant {
	pass := func(c string) xWant { return xWant{verdict: xdpPass, counts: xCounts(c), out: f} }
	if !s.enabled || len(f) < 14 {
		return pass("not_ours")
	}
	be := binary.BigEndian
	switch be.Uint16(f[12:]) {
	case 0x0800:
		if len(f) < 14+20 {
			return pass("not_ours")
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[0]>>4 != 4 || ihl < 20 || ip[9] != 17 || be.Uint16(ip[6:])&0x3fff != 0 {
			return pass("not_ours")
		}
		if len(f) < 14+ihl+8+4 {
			return pass("not_ours")
		}
		udp := ip[ihl:]
		dst := netip.AddrFrom4([4]byte(ip[16:20]))
		dport := be.Uint16(udp[2:])
		if dst == s.underlay() && dport == xGUEPort {
			return s.expectDecap(f)
		}
		if dst != xVIP4 || dport != xWGPort {
			return pass("not_ours")
		}
		tot, ulen := int(be.Uint16(ip[2:])), int(be.Uint16(udp[4:]))
		if 14+tot > len(f) || ulen < 8 || ihl+ulen > tot || !xPlausible(udp[8], ulen-8) {
			return pass("malformed")
		}
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), be.Uint16(udp[0:]))
		return s.steer(f, udp[8:], src, tot)
	case 0x86dd:
		if len(f) < 14+40+8+4 {
			return pass("not_ours")
		}
		ip := f[14:]
		udp := ip[40:]
		if ip[0]>>4 != 6 || ip[6] != 17 || netip.AddrFrom16([16]byte(ip[24:40])) != xVIP6 ||
			be.Uint16(udp[2:]) != xWGPort {
			return pass("not_ours")
		}
		plen, ulen := int(be.Uint16(ip[4:])), int(be.Uint16(udp[4:]))
		if 14+40+plen > len(f) || ulen < 8 || ulen > plen || !xPlausible(udp[8], ulen-8) {
			return pass("malformed")
		}
		src := netip.AddrPortFrom(netip.AddrFrom16([16]byte(ip[8:24])), be.Uint16(udp[0:]))
		return s.steer(f, udp[8:], src, 40+plen)
	}
	return pass("not_ours")
}

func xCID(wg []byte) uint32 { return uint32(wg[1])<<16 | uint32(wg[2])<<8 | uint32(wg[3]) }

// xReceiver is the receiver index of a plausible WireGuard message: the
// little-endian uint32 at byte 8 of a response, 4 of a cookie reply or data
// message (server/wgmsg). An initiation has none.
func xReceiver(wg []byte) (uint32, bool) {
	switch wg[0] {
	case 2:
		return binary.LittleEndian.Uint32(wg[8:]), true
	case 3, 4:
		return binary.LittleEndian.Uint32(wg[4:]), true
	}
	return 0, false
}

func xPlausible(typ byte, n int) bool {
	switch typ {
	case 1:
		return n == 148
	case 2:
		return n == 92
	case 3:
		return n == 64
	case 4:
		return n >= 32
	}
	return false
}

func (s *xState) expectDecap(f []byte) xWant {
	reject := xWant{verdict: xdpDrop, counts: xCounts("decap_reject"), out: f}
	refused := xWant{verdict: xdpDrop, counts: xCounts("decap_refused"), out: f}
	if _, ok := s.peers[netip.AddrFrom4([4]byte(f[26:30]))]; !ok || f[14] != 0x45 {
		return reject
	}
	be := binary.BigEndian
	var etype []byte
	in := f[42:]
	switch in[0] >> 4 {
	case 4:
		// UDP to the IPv4 VIP's WireGuard port, or TCP or UDP to an
		// egress address of this data center; not a fragment.
		if len(in) < 20 {
			return reject
		}
		ihl := int(in[0]&0x0f) * 4
		if (in[9] != 6 && in[9] != 17) || ihl < 20 || be.Uint16(in[6:])&0x3fff != 0 || len(in) < ihl+4 {
			return refused
		}
		dst := netip.AddrFrom4([4]byte(in[16:20]))
		toVIP := in[9] == 17 && dst == xVIP4 && be.Uint16(in[ihl+2:]) == xWGPort
		if !toVIP && !s.egress4[dst] {
			return refused
		}
		etype = []byte{0x08, 0x00}
	case 6:
		// UDP to the IPv6 VIP's WireGuard port only.
		if len(in) < 40 {
			return reject
		}
		if len(in) < 48 || in[6] != 17 || netip.AddrFrom16([16]byte(in[24:40])) != xVIP6 || be.Uint16(in[42:]) != xWGPort {
			return refused
		}
		etype = []byte{0x86, 0xdd}
	default:
		return reject
	}
	out := slices.Concat(f[:12], etype, f[42:])
	return xWant{verdict: xdpPass, counts: xCounts("decap"), out: out}
}

func (s *xState) steer(f, wg []byte, src netip.AddrPort, ipLen int) xWant {
	counts := map[string]uint64{}
	pass := func(c string) xWant {
		counts[c]++
		return xWant{verdict: xdpPass, counts: counts, out: f}
	}
	cid := xCID(wg)
	key := xFlowAddr(src)
	var owner, entropy uint32
	indexed := false
	if s.indexKey != 0 {
		// A response, cookie reply or data message whose receiver index
		// is tagged goes to the node index of its slot: always when
		// unstamped; when stamped, while that node is this one, valid or
		// a departed one's with an heir (else the ClientID decides). An
		// unstamped one with a slot but a wrong check goes by the flows
		// (index_bad); a stamped one by its ClientID, uncounted.
		if idx, ok := xReceiver(wg); ok {
			if slot, ok := wgmsg.SlotOf(idx, s.indexKey); ok {
				n := s.nodes[uint32(slot)]
				if cid == 0 || uint32(slot) == s.self || n.Valid || n.Heir {
					counts["index_hit"]++
					owner, indexed = uint32(slot), true
					entropy = Hash(idx&wgmsg.IndexRandomMask ^ s.indexKey ^ uint32(slot)<<20)
				}
			} else if idx>>24 != 0 && cid == 0 {
				counts["index_bad"]++
			}
		}
	}
	if indexed {
		// owner from the index
	} else if cid != 0 {
		pinned := false
		if p, ok := s.pins[cid]; ok {
			// A pin counts while its node is this one or valid; a pin
			// to a node that is gone is ignored (the table decides).
			if p == s.self || s.nodes[p].Valid {
				counts["pin_hit"]++
				owner, pinned = p, true
			} else {
				counts["pin_stale"]++
			}
		}
		if !pinned {
			if !s.hasTable {
				return pass("no_table")
			}
			owner = s.table(Hash(cid) % XDPTableSize)
		}
	} else {
		fl, ok := s.flows[key]
		if !ok {
			return pass("fallback")
		}
		counts["flow_hit"]++
		owner = fl
	}
	if owner == s.self {
		return pass("local")
	}
	n := s.nodes[owner]
	if !n.Valid {
		// A departed node's slot with an heir takes what a tagged
		// index sends there (index_heir instead of index_hit), and
		// nothing else.
		if !indexed || !n.Heir {
			return pass("no_node")
		}
		delete(counts, "index_hit")
		counts["index_heir"]++
		if n.Underlay4 == s.underlay() {
			return pass("local")
		}
	}
	if ipLen > 0xffff-28 {
		return pass("encap_err")
	}
	counts["forwarded"]++
	// The entropy of the outer source port, as bpf/README.md describes it:
	// fmix32(cid) for a stamped packet, whatever chose its owner; for an
	// unstamped one with a tagged index the check's hash (above); or for
	// other unstamped clients fmix32 of the flow key's four address words
	// XORed with its port, all loaded as the CPU (little endian here)
	// loads them from the key's wire-order bytes.
	switch {
	case cid != 0:
		entropy = Hash(cid)
	case indexed:
	default:
		a := key.Addr().As16()
		var p [2]byte
		binary.BigEndian.PutUint16(p[:], key.Port())
		le := binary.LittleEndian
		entropy = Hash(le.Uint32(a[0:]) ^ le.Uint32(a[4:]) ^ le.Uint32(a[8:]) ^ le.Uint32(a[12:]) ^
			uint32(le.Uint16(p[:])))
	}
	return xWant{verdict: xdpTX, counts: counts, to: n.Underlay4, sport: uint16(49152 + entropy%16384)}
}
