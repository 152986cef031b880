package lb

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func TestHeirOf(t *testing.T) {
	m := func(id string, slot uint8, draining bool) Member {
		return Member{ID: id, Slot: slot, Draining: draining}
	}
	for _, c := range []struct {
		slot    uint8
		members []Member
		want    string // "" none
	}{
		{3, []Member{m("a", 1, false), m("b", 2, false), m("d", 5, false)}, "d"},
		{5, []Member{m("a", 1, false), m("b", 2, false), m("d", 5, false)}, "a"}, // round from 255 to 1
		{255, []Member{m("a", 254, false), m("b", 2, false)}, "b"},               // 255 → 1.. first
		{1, []Member{m("a", 255, false), m("b", 254, false)}, "b"},               // 254 comes before 255
		{3, []Member{m("a", 1, false), m("d", 5, true), m("e", 9, false)}, "e"},  // draining: no heir
		{3, []Member{m("x", 3, false), m("a", 0, false)}, ""},                    // the slot's own holder, no slot
		{3, []Member{m("b", 7, false), m("a", 7, false), m("c", 8, false)}, "a"}, // one slot claimed twice
		{3, nil, ""},
		{3, []Member{m("d", 5, true)}, ""},
	} {
		h, ok := HeirOf(c.slot, c.members)
		if got := map[bool]string{true: h.ID}[ok]; got != c.want {
			t.Errorf("HeirOf(%d, %v) = %q, want %q", c.slot, c.members, got, c.want)
		}
	}
}

// xHeirFront is a Front over recorded maps (xFakeMaps, which checks every
// write) with a clock the test moves and no timer.
func xHeirFront(t *testing.T, self string, slot uint8, window time.Duration, under map[string]netip.Addr) (*Front, *xFakeMaps, *time.Time) {
	who := map[netip.Addr]string{}
	for id, a := range under {
		who[a] = id
	}
	m := newXFakeMaps(t, under[self], who)
	f, err := newFront(m, FrontConfig{VIP4: xVIP4, VIP6: xVIP6, WGPort: xWGPort, GUEPort: xGUEPort, Self: self,
		SelfUnderlay: under[self], SelfSlot: slot, IndexKey: xIndexKey, HeirWindow: window})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_000_000, 0)
	f.mu.Lock()
	f.now = func() time.Time { return now }
	f.heirTimerOff = true
	f.mu.Unlock()
	return f, m, &now
}

func xUnders(ids string) map[string]netip.Addr {
	under := map[string]netip.Addr{}
	for i, r := range ids {
		under[string(r)] = netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 1})
	}
	return under
}

// TestFrontHeirs follows the entries of departed members' slots through
// Front.Update and the clock: the heir's while the window lasts and nobody
// claims the slot, then cleared.
func TestFrontHeirs(t *testing.T) {
	under := xUnders("abcdefg")
	f, m, now := xHeirFront(t, "a", 1, 30*time.Second, under)
	mem := func(id string, slot uint8) Member {
		return Member{ID: id, Underlay: under[id], Active: true, Slot: slot}
	}
	// entries returns the node entries as "index:id" (valid) and
	// "index>id" (an heir's).
	entries := func() string {
		s := ""
		for i := range uint32(XDPMaxNodes) {
			n, ok := m.nodes[i]
			switch {
			case !ok || n == (Node{}):
			case n.Valid:
				s += fmt.Sprintf(" %d:%s", i, m.who[n.Underlay4])
			case n.Heir:
				s += fmt.Sprintf(" %d>%s", i, m.who[n.Underlay4])
			default:
				s += fmt.Sprintf(" %d?%v", i, n)
			}
		}
		return s
	}
	step := func(what string, ms []Member, want string, heirs int) {
		t.Helper()
		if ms != nil {
			if err := f.Update(ms); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		} else {
			f.mu.Lock()
			err := f.refreshHeirs(*now)
			f.mu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := entries(); got != want || f.Heirs() != heirs {
			t.Fatalf("%s: entries%s, %d heirs; want%s, %d", what, got, f.Heirs(), want, heirs)
		}
	}
	a, b, c, d, e := mem("a", 1), mem("b", 2), mem("c", 3), mem("d", 5), mem("e", 0)
	step("five members", []Member{a, b, c, d, e}, " 1:a 2:b 3:c 5:d 255:e", 0)
	step("b dies: c inherits 2", []Member{a, c, d, e}, " 1:a 2>c 3:c 5:d 255:e", 1)
	*now = now.Add(10 * time.Second)
	step("c dies: d inherits 2 and 3", []Member{a, d, e}, " 1:a 2>d 3>d 5:d 255:e", 2)
	d.Draining, d.Active = true, false
	step("d drains: a inherits", []Member{a, d, e}, " 1:a 2>a 3>a 5:d 255:e", 2)
	step("slotless e leaves: no heir", []Member{a, d}, " 1:a 2>a 3>a 5:d", 2)
	f2 := mem("f", 0) // slotless: must not take an heir's index
	step("slotless f joins", []Member{a, d, f2}, " 1:a 2>a 3>a 5:d 255:f", 2)
	// g claims slot 3: its own, and it now comes next after 2.
	step("g claims slot 3", []Member{a, d, f2, mem("g", 3)}, " 1:a 2>g 3:g 5:d 255:f", 1)
	*now = now.Add(19 * time.Second)
	step("b's window lasts", nil, " 1:a 2>g 3:g 5:d 255:f", 1)
	*now = now.Add(time.Second)
	step("b's window over", nil, " 1:a 3:g 5:d 255:f", 0)
	step("g dies: a inherits 3", []Member{a, d, f2}, " 1:a 3>a 5:d 255:f", 1)
	step("g comes back within the window", []Member{a, d, f2, mem("g", 3)}, " 1:a 3:g 5:d 255:f", 0)
	*now = now.Add(time.Hour)
	step("long after", nil, " 1:a 3:g 5:d 255:f", 0)
	d.Draining, d.Active = false, true
	step("g and d die at once", []Member{a, f2}, " 1:a 3>a 5>a 255:f", 2)
	step("this node missing from a view: still the heir", []Member{f2}, " 1:a 3>a 5>a 255:f", 2)
	*now = now.Add(30 * time.Second)
	step("over", nil, " 1:a 255:f", 0)

	// Off: a departed slot's entry is cleared at once.
	f, m, _ = xHeirFront(t, "a", 1, -1, under)
	step("off: three", []Member{a, b, c}, " 1:a 2:b 3:c", 0)
	step("off: b dies", []Member{a, c}, " 1:a 3:c", 0)
}

// TestFrontHeirRouting runs packets through the program as Front.Update
// and the clock move a departed node's slot to its heir and back.
func TestFrontHeirRouting(t *testing.T) {
	requireBPF(t)
	objs := xLoad(t)
	under := xUnders("abc")
	f, err := NewFront(objs, FrontConfig{VIP4: xVIP4, VIP6: xVIP6, WGPort: xWGPort, GUEPort: xGUEPort,
		Self: "a", SelfUnderlay: under["a"], SelfSlot: 5, IndexKey: xIndexKey, HeirWindow: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_000_000, 0)
	f.mu.Lock()
	f.now = func() time.Time { return now }
	f.heirTimerOff = true
	f.mu.Unlock()
	byUnder := map[netip.Addr]string{}
	for id, a := range under {
		byUnder[a] = id
	}
	// route sends a data message with b's index (slot 7), stamped with
	// cid or not, and reports where it went and the extra counter.
	route := func(cid uint32) string {
		t.Helper()
		v, out, delta, err := xRun(t, objs, xClientTo(xNoFlow4, xWGIdx(4, cid, 4, xTag(7, 0x4242))))
		if err != nil {
			t.Fatal(err)
		}
		extra := ""
		for _, x := range []string{"index_hit", "index_heir"} {
			if delta[x] == 1 {
				extra = " " + x
			}
		}
		switch {
		case v == xdpTX:
			dst, _ := netip.AddrFromSlice(out[14+16 : 14+20])
			return byUnder[dst] + extra
		case v == xdpPass && delta["local"] == 1:
			return "local" + extra
		case v == xdpPass && delta["no_node"] == 1:
			return "no_node" + extra
		}
		return fmt.Sprintf("%s %v", xdpVerdictName(v), delta)
	}
	mem := func(id string, slot uint8) Member {
		return Member{ID: id, Underlay: under[id], Active: true, Slot: slot}
	}
	if err := f.Update([]Member{mem("a", 5), mem("b", 7), mem("c", 9)}); err != nil {
		t.Fatal(err)
	}
	// A ClientID the table of a and c gives to c, one it gives to a.
	toC, toA := uint32(0), uint32(0)
	for cid := uint32(1); toC == 0 || toA == 0; cid++ {
		switch o, _ := f.Owner(cid); o {
		case "c":
			toC = cid
		case "a":
			toA = cid
		}
	}
	expect := func(what string, want map[uint32]string) {
		t.Helper()
		for cid, w := range want {
			if got := route(cid); got != w {
				t.Errorf("%s: cid %d: %s, want %s", what, cid, got, w)
			}
		}
	}
	expect("b alive", map[uint32]string{0: "b index_hit", toC: "b index_hit", toA: "b index_hit"})
	if err := f.Update([]Member{mem("a", 5), mem("c", 9)}); err != nil {
		t.Fatal(err)
	}
	// The heir of 7 is 9 (c), whatever the ClientID's owner.
	expect("b dead", map[uint32]string{0: "c index_heir", toC: "c index_heir", toA: "c index_heir"})
	if err := f.Update([]Member{mem("a", 5)}); err != nil {
		t.Fatal(err)
	}
	expect("c dead too: this node inherits", map[uint32]string{0: "local index_heir", toA: "local index_heir"})
	now = now.Add(30 * time.Second)
	f.mu.Lock()
	err = f.refreshHeirs(now)
	f.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	expect("window over", map[uint32]string{0: "no_node index_hit", toA: "local", toC: "local"})
}
