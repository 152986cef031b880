package lb

import (
	"net/netip"
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
