package lb

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestFront drives the XDP program through Front.Update as membership
// changes, and checks where stamped packets go: to this node (XDP_PASS) or
// encapsulated to the owner the Maglev table of the active members names.
func TestFront(t *testing.T) {
	requireBPF(t)
	objs := xLoad(t)
	under := map[string]netip.Addr{
		"a": netip.MustParseAddr("198.18.1.1"),
		"b": netip.MustParseAddr("198.18.2.1"),
		"c": netip.MustParseAddr("198.18.3.1"),
	}
	f, err := NewFront(objs, FrontConfig{VIP4: xVIP4, VIP6: xVIP6, WGPort: xWGPort, GUEPort: xGUEPort,
		Self: "a", SelfUnderlay: under["a"]})
	if err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddrPort("203.0.113.7:40000")

	// check runs 300 ClientIDs through the program and compares each
	// verdict and outer destination with what table says.
	check := func(what string, table []string) {
		t.Helper()
		ref, err := NewTable(table, XDPTableSize)
		if err != nil {
			t.Fatal(err)
		}
		moved := 0
		for cid := uint32(1); cid <= 300; cid++ {
			want, _ := ref.Owner(cid)
			if got, _ := f.Owner(cid); got != want {
				t.Fatalf("%s: Front.Owner(%d) = %q, want %q", what, cid, got, want)
			}
			if r, ok := f.Route(cid); !ok || r.ID != want || r.Self != (want == "a") || r.Underlay != under[want] {
				t.Fatalf("%s: Front.Route(%d) = %+v, %v; want %s at %v", what, cid, r, ok, want, under[want])
			}
			verdict, out, _, err := xRun(t, objs, xClient(src, cid, 4))
			if err != nil {
				t.Fatal(err)
			}
			if want == "a" {
				if verdict != uint32(xdpPass) {
					t.Fatalf("%s: cid %d owned here: verdict %s", what, cid, xdpVerdictName(verdict))
				}
				continue
			}
			moved++
			if verdict != uint32(xdpTX) {
				t.Fatalf("%s: cid %d owned by %s: verdict %s, want TX", what, cid, want, xdpVerdictName(verdict))
			}
			dst, _ := netip.AddrFromSlice(out[14+16 : 14+20])
			if dst != under[want] {
				t.Fatalf("%s: cid %d sent to %v, want %s at %v", what, cid, dst, want, under[want])
			}
		}
		if len(table) > 1 && moved == 0 {
			t.Fatalf("%s: nothing forwarded", what)
		}
	}
	check("alone", []string{"a"})

	all := []Member{{ID: "a", Underlay: under["a"], Active: true}, {ID: "b", Underlay: under["b"], Active: true}, {ID: "c", Underlay: under["c"], Active: true}}
	if err := f.Update(all); err != nil {
		t.Fatal(err)
	}
	check("a, b, c", []string{"a", "b", "c"})
	bIdx, _ := f.Index("b")

	// b drains: out of the table, but its entry and GUE peer stay, and
	// its pinned clients still reach it. b pins 777 and 1000 (outside
	// check's 1..300), c pins 1000 too: b's pin wins (ids sort b first).
	// 0 is never a ClientID and is ignored.
	drainB := []Member{all[0], {ID: "b", Underlay: under["b"], Pins: []uint32{777, 1000, 0}}, {ID: "c", Underlay: under["c"], Active: true, Pins: []uint32{1000}}}
	if err := f.Update(drainB); err != nil {
		t.Fatal(err)
	}
	check("b draining", []string{"a", "c"})
	if i, _ := f.Index("b"); i != bIdx {
		t.Fatalf("b's index changed from %d to %d while it stayed a member", bIdx, i)
	}
	if f.Pins() != 2 {
		t.Fatalf("pins: got %d, want 2", f.Pins())
	}
	for _, cid := range []uint32{777, 1000} {
		verdict, out, _, _ := xRun(t, objs, xClient(src, cid, 4))
		if dst, _ := netip.AddrFromSlice(out[14+16 : 14+20]); verdict != uint32(xdpTX) || dst != under["b"] {
			t.Fatalf("pinned client %d of draining b: %s to %v", cid, xdpVerdictName(verdict), dst)
		}
		if r, _ := f.Route(cid); r.ID != "b" || r.Index != bIdx || r.Self {
			t.Fatalf("Front.Route(%d) of a client pinned to draining b = %+v", cid, r)
		}
	}
	gueFromB := xGUE(under["b"], under["a"], xGUEPort, xClient(src, 5, 4)[14:])
	if v, _, _, _ := xRun(t, objs, gueFromB); v != uint32(xdpPass) {
		t.Fatalf("GUE from draining b: %s, want PASS (decapsulated)", xdpVerdictName(v))
	}

	// b dies: its entry, its peer and its pins go; c's pin of 1000 is
	// now the one that counts.
	if err := f.Update([]Member{all[0], drainB[2]}); err != nil {
		t.Fatal(err)
	}
	check("b gone", []string{"a", "c"})
	var idx uint32
	if err := objs.objs.Pins.Lookup(uint32(777), &idx); err == nil {
		t.Fatalf("b's pin of 777 outlived b (to node %d)", idx)
	}
	cIdx, _ := f.Index("c")
	if err := objs.objs.Pins.Lookup(uint32(1000), &idx); err != nil || idx != cIdx {
		t.Fatalf("pin of 1000 after b left: node %d, %v; want c's %d", idx, err, cIdx)
	}
	if r, _ := f.Route(1000); r.ID != "c" || r.Index != cIdx {
		t.Fatalf("Front.Route(1000) after b left = %+v, want c (its pin)", r)
	}
	if err := f.Update([]Member{all[0], all[2]}); err != nil {
		t.Fatal(err)
	}
	if f.Pins() != 0 {
		t.Fatalf("pins after c withdrew its own: %d", f.Pins())
	}
	var n wedgeLBNode
	if err := objs.objs.Nodes.Lookup(bIdx, &n); err != nil || n.Flags&nodeValid != 0 {
		t.Fatalf("b's node entry after it left: %+v, %v", n, err)
	}
	if v, _, _, _ := xRun(t, objs, gueFromB); v != uint32(xdpDrop) {
		t.Fatalf("GUE from departed b: %s, want DROP", xdpVerdictName(v))
	}

	// This node is never dropped, even when missing from a view.
	if err := f.Update([]Member{all[2]}); err != nil {
		t.Fatal(err)
	}
	check("a missing from the view", []string{"c"})
}

// xFakeMaps records what a Front writes, as the program would see it, and
// after every single write checks that the order of writes keeps every
// packet's path valid (Front.Update):
//
//   - every node index the table or a pin names, other than the config's
//     self, has a valid entry, and not one with this node's own underlay
//     (that packet would be sent out to this node itself); or it has no
//     valid entry (its packets are delivered here) and the next config
//     makes it this node's index;
//   - an entry so named never changes hands to another member (or to not
//     valid) while it is named;
//   - the GUE peers of members that stay never go missing.
type xFakeMaps struct {
	t       *testing.T
	self    netip.Addr            // this node's underlay
	who     map[netip.Addr]string // underlay → member id
	keep    map[netip.Addr]bool   // peers that must stay during the Update
	cfg     Config
	configs int // SetConfig calls: one per step
	nodes   map[uint32]Node
	peers   map[netip.Addr]uint32
	pins    map[uint32]uint32
	table   []uint32
	inTable map[uint32]bool
	// named without a valid entry: must be the next config's self
	pendingSelf map[uint32]string
	egress      map[netip.Addr]Egress4
	dcs         map[uint32][]netip.Addr
}

func newXFakeMaps(t *testing.T, self netip.Addr, who map[netip.Addr]string) *xFakeMaps {
	return &xFakeMaps{t: t, self: self, who: who, nodes: map[uint32]Node{}, peers: map[netip.Addr]uint32{},
		pins: map[uint32]uint32{}, inTable: map[uint32]bool{}, pendingSelf: map[uint32]string{},
		egress: map[netip.Addr]Egress4{}, dcs: map[uint32][]netip.Addr{}}
}

// Egress steering: plain records, checked by TestFrontEgress. An address
// may only name a data center index that was set, and a data center's
// nodes must be peers first.
func (m *xFakeMaps) SetEgress4(a netip.Addr, e Egress4) error {
	m.t.Helper()
	if !e.Local {
		if _, ok := m.dcs[e.DC]; !ok {
			m.t.Fatalf("SetEgress4(%v): data center index %d was never set", a, e.DC)
		}
	}
	m.egress[a] = e
	return nil
}

func (m *xFakeMaps) DeleteEgress4(a netip.Addr) error { delete(m.egress, a); return nil }

func (m *xFakeMaps) SetDC(i uint32, nodes []netip.Addr) error {
	m.t.Helper()
	for _, a := range nodes {
		if _, ok := m.peers[a]; !ok {
			m.t.Fatalf("SetDC(%d): node %v is not a peer yet", i, a)
		}
	}
	m.dcs[i] = slices.Clone(nodes)
	return nil
}

func (m *xFakeMaps) named(i uint32) bool {
	if i == m.cfg.Self {
		return false
	}
	if m.inTable[i] {
		return true
	}
	for _, p := range m.pins {
		if p == i {
			return true
		}
	}
	return false
}

func (m *xFakeMaps) check(op string) {
	m.t.Helper()
	named := map[uint32]bool{}
	for i := range m.inTable {
		named[i] = true
	}
	for _, i := range m.pins {
		named[i] = true
	}
	delete(named, m.cfg.Self)
	for i := range named {
		if n := m.nodes[i]; n.Heir {
			m.t.Fatalf("after %s: node index %d, an heir's entry, is named by the table or a pin", op, i)
		} else if !n.Valid {
			if _, ok := m.pendingSelf[i]; !ok {
				m.pendingSelf[i] = op
			}
		} else if n.Underlay4 == m.self {
			m.t.Fatalf("after %s: node index %d is named and has this node's underlay, but the config's self is %d: sent to itself", op, i, m.cfg.Self)
		}
	}
	for a := range m.keep {
		if _, ok := m.peers[a]; !ok {
			m.t.Fatalf("after %s: peer %v (%s, a member throughout) missing", op, a, m.who[a])
		}
	}
}

func (m *xFakeMaps) SetConfig(c Config) error {
	for i, op := range m.pendingSelf {
		if i != c.Self {
			m.t.Fatalf("after %s: node index %d was named without a valid entry, and it is not this node's (%d)", op, i, c.Self)
		}
	}
	clear(m.pendingSelf)
	m.cfg = c
	m.configs++
	m.check(fmt.Sprintf("SetConfig(self %d)", c.Self))
	return nil
}

func (m *xFakeMaps) SetNode(i uint32, n Node) error {
	m.t.Helper()
	if i >= XDPMaxNodes {
		return fmt.Errorf("node index %d", i)
	}
	old := m.nodes[i]
	if m.named(i) && old.Valid && (!n.Valid || m.who[old.Underlay4] != m.who[n.Underlay4]) {
		m.t.Fatalf("SetNode(%d): a named entry goes from %s to %s (valid %v)", i, m.who[old.Underlay4], m.who[n.Underlay4], n.Valid)
	}
	if n.Heir && (n.Valid || m.named(i) || m.who[n.Underlay4] == "") {
		m.t.Fatalf("SetNode(%d): an heir's entry (to %v) that is valid, named by the table or a pin, or not a member's", i, n.Underlay4)
	}
	m.nodes[i] = n
	m.check(fmt.Sprintf("SetNode(%d, %s %v)", i, m.who[n.Underlay4], n.Valid))
	return nil
}

func (m *xFakeMaps) SetPeer(a netip.Addr, i uint32) error {
	m.peers[a] = i
	m.check(fmt.Sprintf("SetPeer(%s)", m.who[a]))
	return nil
}

func (m *xFakeMaps) DeletePeer(a netip.Addr) error {
	delete(m.peers, a)
	m.check(fmt.Sprintf("DeletePeer(%s)", m.who[a]))
	return nil
}

func (m *xFakeMaps) SetPin(cid, i uint32) error {
	m.pins[cid] = i
	m.check(fmt.Sprintf("SetPin(%d, %d)", cid, i))
	return nil
}

func (m *xFakeMaps) DeletePin(cid uint32) error {
	delete(m.pins, cid)
	m.check(fmt.Sprintf("DeletePin(%d)", cid))
	return nil
}

func (m *xFakeMaps) SetTable(slots []uint32) error {
	m.table = slices.Clone(slots)
	m.inTable = map[uint32]bool{}
	var seen [XDPMaxNodes]bool
	for _, i := range slots {
		if i >= XDPMaxNodes {
			m.inTable[i] = true
		} else if !seen[i] {
			seen[i], m.inTable[i] = true, true
		}
	}
	m.check("SetTable")
	return nil
}

func (m *xFakeMaps) ClearTable() error {
	m.table, m.inTable = nil, map[uint32]bool{}
	m.check("ClearTable")
	return nil
}

// TestFrontSlots follows node indexes through membership changes, with
// every map write checked by xFakeMaps: a member's index is its slot, a
// member without one gets one counted down from 255, and indexes change
// hands (departed and new, slot changes, swaps, collisions) without any
// packet finding a wrong or missing entry on the way.
func TestFrontSlots(t *testing.T) {
	ids := "abcdefghijklm"
	under := map[string]netip.Addr{}
	who := map[netip.Addr]string{}
	for i, r := range ids {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 1})
		under[string(r)], who[a] = a, string(r)
	}
	m := newXFakeMaps(t, under["a"], who)
	const key = 0x1234abcd
	f, err := newFront(m, FrontConfig{VIP4: xVIP4, WGPort: xWGPort, GUEPort: xGUEPort, Self: "a", SelfUnderlay: under["a"],
		SelfSlot: 5, IndexKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if i, _ := f.Index("a"); i != 5 || m.cfg.Self != 5 || m.cfg.IndexKey != key {
		t.Fatalf("alone: index %d, config self %d key %#x; want 5, 5, %#x", i, m.cfg.Self, m.cfg.IndexKey, key)
	}

	// mem is "id:slot" → a member, active, pinning a ClientID of its own.
	mem := func(spec string) Member {
		id, slot, _ := strings.Cut(spec, ":")
		n, err := strconv.Atoi(slot)
		if err != nil {
			t.Fatal(err)
		}
		return Member{ID: id, Underlay: under[id], Active: true, Slot: uint8(n), Pins: []uint32{1000 + uint32(id[0])}}
	}
	var last []Member
	for _, c := range []struct {
		what    string
		members string         // "id:slot ..."
		want    map[string]int // id → node index
		steps   int            // SetConfig calls: the steps the Update takes
	}{
		{"slots and two without", "a:5 b:7 c:0 d:0", map[string]int{"a": 5, "b": 7, "c": 255, "d": 254}, 1},
		{"b departs, new e takes its slot", "a:5 c:0 d:0 e:7", map[string]int{"a": 5, "c": 255, "d": 254, "e": 7}, 2},
		{"new g takes slotless c's index", "a:5 c:0 d:0 e:7 g:255", map[string]int{"a": 5, "c": 253, "d": 254, "e": 7, "g": 255}, 2},
		{"e and g swap slots", "a:5 c:0 d:0 e:255 g:7", map[string]int{"a": 5, "c": 253, "d": 254, "e": 255, "g": 7}, 3},
		{"this node's slot changes, h takes the old one", "a:9 c:0 d:0 e:255 g:7 h:5", map[string]int{"a": 9, "c": 253, "d": 254, "e": 255, "g": 7, "h": 5}, 2},
		{"three slots rotate", "a:9 c:0 d:0 e:7 g:5 h:255", map[string]int{"a": 9, "c": 253, "d": 254, "e": 7, "g": 5, "h": 255}, 4},
		{"e loses its slot: keeps the index", "a:9 c:0 d:0 e:0 g:5 h:255", map[string]int{"a": 9, "c": 253, "d": 254, "e": 7, "g": 5, "h": 255}, 1},
		{"i claims g's slot: the holder keeps it", "a:9 c:0 d:0 e:0 g:5 h:255 i:5", map[string]int{"a": 9, "c": 253, "d": 254, "e": 7, "g": 5, "h": 255, "i": 252}, 1},
		// i departs; j avoids i's index 252 while i still holds it.
		{"j claims this node's slot", "a:9 c:0 d:0 e:0 g:5 h:255 j:9", map[string]int{"a": 9, "c": 253, "d": 254, "e": 7, "g": 5, "h": 255, "j": 251}, 1},
		{"k and l claim one new slot: k sorts first", "a:9 c:0 k:100 l:100", map[string]int{"a": 9, "c": 253, "k": 100, "l": 252}, 1},
		{"this node missing from the view keeps its slot", "c:0 k:100 l:100", map[string]int{"a": 9, "c": 253, "k": 100, "l": 252}, 1},
		{"l's own slot", "c:0 k:100 l:101", map[string]int{"a": 9, "c": 253, "k": 100, "l": 101}, 1},
		{"alone again", "a:9", map[string]int{"a": 9}, 1},
	} {
		var ms []Member
		for _, spec := range strings.Fields(c.members) {
			ms = append(ms, mem(spec))
		}
		// Peers of members before and after must stay throughout.
		m.keep = map[netip.Addr]bool{}
		for _, o := range last {
			for _, n := range ms {
				if o.ID == n.ID && n.ID != "a" {
					m.keep[n.Underlay] = true
				}
			}
		}
		before := m.configs
		if err := f.Update(ms); err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		last = ms
		if steps := m.configs - before; steps != c.steps {
			t.Errorf("%s: %d steps, want %d", c.what, steps, c.steps)
		}
		// The final maps: each member at its index, nothing else.
		valid := map[uint32]string{}
		for i, n := range m.nodes {
			if n.Valid {
				valid[i] = who[n.Underlay4]
			}
		}
		wantValid := map[uint32]string{}
		wantPeers := map[netip.Addr]uint32{}
		wantPins := map[uint32]uint32{}
		for id, i := range c.want {
			if got, ok := f.Index(id); !ok || got != uint32(i) {
				t.Errorf("%s: %s at index %d (%v), want %d", c.what, id, got, ok, i)
			}
			wantValid[uint32(i)] = id
			if id != "a" {
				wantPeers[under[id]] = uint32(i)
			}
		}
		for _, n := range ms {
			wantPins[1000+uint32(n.ID[0])] = uint32(c.want[n.ID])
		}
		if !maps.Equal(valid, wantValid) || !maps.Equal(m.peers, wantPeers) || !maps.Equal(m.pins, wantPins) ||
			m.cfg.Self != uint32(c.want["a"]) {
			t.Fatalf("%s: entries %v peers %v pins %v self %d;\nwant %v, %v, %v, %d", c.what, valid, m.peers, m.pins, m.cfg.Self,
				wantValid, wantPeers, wantPins, c.want["a"])
		}
		if f.TableNodes() == 0 || len(m.table) != XDPTableSize {
			t.Fatalf("%s: no table", c.what)
		}
		for i, idx := range m.table {
			if _, ok := valid[idx]; !ok {
				t.Fatalf("%s: table slot %d names index %d, not a member's", c.what, i, idx)
			}
		}
	}
}

// TestFrontIndexRouting drives the program through Front.Update with
// slots and checks where unstamped data messages with tagged receiver
// indexes go: to the node whose slot the index carries.
func TestFrontIndexRouting(t *testing.T) {
	requireBPF(t)
	objs := xLoad(t)
	under := map[string]netip.Addr{
		"a": netip.MustParseAddr("198.18.1.1"),
		"b": netip.MustParseAddr("198.18.2.1"),
		"c": netip.MustParseAddr("198.18.3.1"),
		"e": netip.MustParseAddr("198.18.5.1"),
	}
	f, err := NewFront(objs, FrontConfig{VIP4: xVIP4, VIP6: xVIP6, WGPort: xWGPort, GUEPort: xGUEPort,
		Self: "a", SelfUnderlay: under["a"], SelfSlot: 5, IndexKey: xIndexKey})
	if err != nil {
		t.Fatal(err)
	}
	var cfg wedgeLBConfig
	if err := objs.objs.Config.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Self != 5 || cfg.IndexKey != xIndexKey || cfg.Flags&configIndex == 0 {
		t.Fatalf("config: self %d, index key %#x, flags %#x; want 5, %#x, the index flag", cfg.Self, cfg.IndexKey, cfg.Flags, uint32(xIndexKey))
	}
	// route sends a data message tagged with slot from a client without
	// a flow entry and reports where it went: the owner's id, "local",
	// or "no_node".
	byUnder := map[netip.Addr]string{}
	for id, a := range under {
		byUnder[a] = id
	}
	route := func(slot uint8) string {
		t.Helper()
		v, out, delta, err := xRun(t, objs, xIdx(xNoFlow4, 4, xTag(slot, 0x4242)))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case v == xdpTX && delta["index_hit"] == 1:
			dst, _ := netip.AddrFromSlice(out[14+16 : 14+20])
			return byUnder[dst]
		case v == xdpPass && delta["index_hit"] == 1 && delta["local"] == 1:
			return "local"
		case v == xdpPass && delta["index_hit"] == 1 && delta["no_node"] == 1:
			return "no_node"
		}
		return fmt.Sprintf("%s %v", xdpVerdictName(v), delta)
	}
	expect := func(what string, want map[uint8]string) {
		t.Helper()
		for slot, w := range want {
			if got := route(slot); got != w {
				t.Errorf("%s: slot %d went to %s, want %s", what, slot, got, w)
			}
		}
	}
	expect("alone", map[uint8]string{5: "local", 7: "no_node", 255: "no_node"})

	m := func(id string, slot uint8) Member {
		return Member{ID: id, Underlay: under[id], Active: true, Slot: slot}
	}
	if err := f.Update([]Member{m("a", 5), m("b", 7), m("c", 0)}); err != nil {
		t.Fatal(err)
	}
	if i, _ := f.Index("c"); i != 255 {
		t.Fatalf("slotless c at index %d, want 255", i)
	}
	expect("a, b, c", map[uint8]string{5: "local", 7: "b", 9: "no_node"})

	// b departs and e takes its slot in the same view.
	if err := f.Update([]Member{m("a", 5), m("c", 0), m("e", 7)}); err != nil {
		t.Fatal(err)
	}
	expect("b replaced by e", map[uint8]string{5: "local", 7: "e"})
	for _, c := range []struct {
		from string
		want uint32
	}{{"b", xdpDrop}, {"e", xdpPass}, {"c", xdpPass}} {
		gue := xGUE(under[c.from], under["a"], xGUEPort, xIdx(xNoFlow4, 4, xTag(5, 1))[14:])
		if v, _, _, _ := xRun(t, objs, gue); v != c.want {
			t.Errorf("GUE from %s: %s, want %s", c.from, xdpVerdictName(v), xdpVerdictName(c.want))
		}
	}

	// This node's slot changes.
	if err := f.Update([]Member{m("a", 9), m("c", 0), m("e", 7)}); err != nil {
		t.Fatal(err)
	}
	expect("a now 9", map[uint8]string{9: "local", 5: "no_node", 7: "e"})
	if err := objs.objs.Config.Lookup(uint32(0), &cfg); err != nil || cfg.Self != 9 {
		t.Fatalf("config self %d (%v), want 9", cfg.Self, err)
	}
}

// TestFrontEgress: SetEgress writes the plan's steering, follows changes
// (an address moving between data centers, a data center's nodes
// changing, one going away) and removes it all again, without touching
// the members' own peers.
func TestFrontEgress(t *testing.T) {
	a, b := netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.2.1")
	fm := newXFakeMaps(t, a, map[netip.Addr]string{a: "a", b: "b"})
	f, err := newFront(fm, FrontConfig{VIP4: xVIP4, WGPort: xWGPort, GUEPort: xGUEPort, Self: "a", SelfUnderlay: a, SelfSlot: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Update([]Member{{ID: "a", Underlay: a, Active: true, Slot: 1}, {ID: "b", Underlay: b, Active: true, Slot: 2}}); err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr
	x1, x2, y1 := ip("198.51.100.1"), ip("198.51.100.2"), ip("198.51.100.9")
	fraNodes := []netip.Addr{ip("198.18.9.3"), ip("198.18.9.1"), ip("198.18.9.2")}
	tbl := EgressTable{
		Local: []netip.Addr{x1, x2}, PortLo: 1024, Slice: 2048, Slices: 31,
		Remote: map[netip.Addr]string{y1: "fra"},
		DCs:    map[string][]netip.Addr{"fra": fraNodes, "lon": {ip("198.18.8.1")}},
	}
	if err := f.SetEgress(tbl); err != nil {
		t.Fatal(err)
	}
	local := Egress4{Local: true, PortLo: 1024, Slice: 2048, Slices: 31}
	if fm.egress[x1] != local || fm.egress[x2] != local || len(fm.egress) != 3 {
		t.Fatalf("entries %v", fm.egress)
	}
	fra := fm.egress[y1].DC
	if got := fm.dcs[fra]; !slices.Equal(got, []netip.Addr{ip("198.18.9.1"), ip("198.18.9.2"), ip("198.18.9.3")}) {
		t.Fatalf("fra's nodes %v, want them sorted", got)
	}
	if !fm.cfg.Egress || len(fm.peers) != 1+4 || f.EgressEntries() != 3 {
		t.Fatalf("config egress %v, peers %v, entries %d", fm.cfg.Egress, fm.peers, f.EgressEntries())
	}

	// x2 moves to fra; lon goes away; fra loses a node.
	tbl.Local = []netip.Addr{x1}
	tbl.Remote = map[netip.Addr]string{y1: "fra", x2: "fra"}
	tbl.DCs = map[string][]netip.Addr{"fra": fraNodes[1:]}
	if err := f.SetEgress(tbl); err != nil {
		t.Fatal(err)
	}
	if e := fm.egress[x2]; e.Local || e.DC != fra {
		t.Fatalf("x2 after moving to fra: %+v, want data center %d", e, fra)
	}
	if got := fm.dcs[fra]; !slices.Equal(got, []netip.Addr{ip("198.18.9.1"), ip("198.18.9.2")}) {
		t.Fatalf("fra's nodes %v", got)
	}
	if _, ok := fm.peers[ip("198.18.8.1")]; ok {
		t.Fatal("lon's node is still a peer")
	}
	if _, ok := fm.peers[ip("198.18.9.3")]; ok {
		t.Fatal("fra's departed node is still a peer")
	}
	if _, ok := fm.peers[b]; !ok {
		t.Fatal("member b's peer went away")
	}
	for i, nodes := range fm.dcs {
		if i != fra && len(nodes) != 0 {
			t.Fatalf("data center index %d (lon's) still has nodes %v", i, nodes)
		}
	}

	// More than XDPDCTargets nodes: the first ones, all of them peers.
	var many []netip.Addr
	for i := range XDPDCTargets + 3 {
		many = append(many, netip.AddrFrom4([4]byte{198, 18, 7, byte(20 - i)}))
	}
	tbl.DCs = map[string][]netip.Addr{"fra": many}
	if err := f.SetEgress(tbl); err != nil {
		t.Fatal(err)
	}
	if got := fm.dcs[fra]; len(got) != XDPDCTargets || got[0] != ip("198.18.7.10") {
		t.Fatalf("fra's targets %v, want the %d lowest", got, XDPDCTargets)
	}
	for _, a := range many {
		if _, ok := fm.peers[a]; !ok {
			t.Fatalf("%v is not a peer", a)
		}
	}

	// Nothing: off, and everything removed but the members' peers.
	if err := f.SetEgress(EgressTable{}); err != nil {
		t.Fatal(err)
	}
	if fm.cfg.Egress || len(fm.egress) != 0 || len(fm.peers) != 1 {
		t.Fatalf("after clearing: egress %v, entries %v, peers %v", fm.cfg.Egress, fm.egress, fm.peers)
	}
	for i, nodes := range fm.dcs {
		if len(nodes) != 0 {
			t.Fatalf("data center index %d still has nodes %v", i, nodes)
		}
	}
	// A membership change keeps steering on.
	if err := f.SetEgress(EgressTable{Local: []netip.Addr{x1}, PortLo: 1024, Slice: 2048, Slices: 31}); err != nil {
		t.Fatal(err)
	}
	if err := f.Update([]Member{{ID: "a", Underlay: a, Active: true, Slot: 1}}); err != nil {
		t.Fatal(err)
	}
	if !fm.cfg.Egress {
		t.Fatal("Update turned egress steering off")
	}
	if err := f.SetEgress(EgressTable{Local: []netip.Addr{x1}, Remote: map[netip.Addr]string{x1: "fra"}}); err == nil {
		t.Fatal("an address both local and remote was accepted")
	}
}
