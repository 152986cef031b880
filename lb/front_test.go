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

	all := []Member{{"a", under["a"], true}, {"b", under["b"], true}, {"c", under["c"], true}}
	if err := f.Update(all); err != nil {
		t.Fatal(err)
	}
	check("a, b, c", []string{"a", "b", "c"})
	bIdx, _ := f.Index("b")

	// b drains: out of the table, but its entry and GUE peer stay, and a
	// pinned client of b still reaches it.
	if err := f.Update([]Member{all[0], {"b", under["b"], false}, all[2]}); err != nil {
		t.Fatal(err)
	}
	check("b draining", []string{"a", "c"})
	if i, _ := f.Index("b"); i != bIdx {
		t.Fatalf("b's index changed from %d to %d while it stayed a member", bIdx, i)
	}
	if err := objs.SetPin(77, bIdx); err != nil {
		t.Fatal(err)
	}
	verdict, out, _, _ := xRun(t, objs, xClient(src, 77, 4))
	if dst, _ := netip.AddrFromSlice(out[14+16 : 14+20]); verdict != uint32(xdpTX) || dst != under["b"] {
		t.Fatalf("pinned client of draining b: %s to %v", xdpVerdictName(verdict), dst)
	}
	gueFromB := xGUE(under["b"], under["a"], xGUEPort, xClient(src, 5, 4)[14:])
	if v, _, _, _ := xRun(t, objs, gueFromB); v != uint32(xdpPass) {
		t.Fatalf("GUE from draining b: %s, want PASS (decapsulated)", xdpVerdictName(v))
	}

	// b dies: its entry and peer go (its pins go with its lease, later).
	if err := objs.DeletePin(77); err != nil {
		t.Fatal(err)
	}
	if err := f.Update([]Member{all[0], all[2]}); err != nil {
		t.Fatal(err)
	}
	check("b gone", []string{"a", "c"})
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
