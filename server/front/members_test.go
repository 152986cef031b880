package front

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/lb"
	"github.com/wedge-edge/wedge/server/cluster"
)

func member(id string, st cluster.State, pins ...uint32) cluster.Member {
	m := cluster.Member{ID: id, DC: "dc1", State: st, Underlay: netip.MustParseAddr("198.18.0.1")}
	if len(pins) > 0 {
		m.Pins = make([]byte, 0, 3*len(pins))
		for _, p := range pins {
			m.Pins = append(m.Pins, byte(p>>16), byte(p>>8), byte(p))
		}
	}
	return m
}

// inTable lists the members a front would build its table from.
func inTable(lms []lb.Member) []string {
	var out []string
	for _, m := range lms {
		if m.Active {
			out = append(out, m.ID)
		}
	}
	slices.Sort(out)
	return out
}

func TestMemberViewJoinGrace(t *testing.T) {
	v := &memberView{self: "b", dc: "dc1", first: map[string]time.Time{}}
	t0 := time.Unix(1000, 0)
	other := member("x", cluster.Active)
	other.DC = "dc2"
	// The first snapshot: a was there before this front; b is this node,
	// which joins like any other; x is in another data center.
	lms, next := v.members([]cluster.Member{member("a", cluster.Active), member("b", cluster.Active), other}, t0)
	if got := inTable(lms); !slices.Equal(got, []string{"a"}) || next != joinGrace {
		t.Fatalf("first snapshot: table %v, next %v; want [a] and %v", got, next, joinGrace)
	}
	if len(lms) != 2 {
		t.Errorf("members of another data center were kept: %v", lms)
	}
	// c joins a second later; b is due first.
	lms, next = v.members([]cluster.Member{member("a", cluster.Active), member("b", cluster.Active), member("c", cluster.Active)}, t0.Add(time.Second))
	if got := inTable(lms); !slices.Equal(got, []string{"a"}) || next != joinGrace-time.Second {
		t.Fatalf("c joined: table %v, next %v", got, next)
	}
	lms, next = v.members([]cluster.Member{member("a", cluster.Active), member("b", cluster.Active), member("c", cluster.Active)}, t0.Add(joinGrace))
	if got := inTable(lms); !slices.Equal(got, []string{"a", "b"}) || next != time.Second {
		t.Fatalf("b due: table %v, next %v", got, next)
	}
	lms, next = v.members([]cluster.Member{member("a", cluster.Active), member("b", cluster.Active), member("c", cluster.Active)}, t0.Add(joinGrace+time.Second))
	if got := inTable(lms); !slices.Equal(got, []string{"a", "b", "c"}) || next != 0 {
		t.Fatalf("c due: table %v, next %v", got, next)
	}
	// a dies and comes back: it joins again.
	v.members([]cluster.Member{member("b", cluster.Active), member("c", cluster.Active)}, t0.Add(10*time.Second))
	lms, next = v.members([]cluster.Member{member("a", cluster.Active), member("b", cluster.Active), member("c", cluster.Active)}, t0.Add(11*time.Second))
	if got := inTable(lms); !slices.Equal(got, []string{"b", "c"}) || next != joinGrace {
		t.Fatalf("a back: table %v, next %v", got, next)
	}
}

func TestMemberViewPinsAndDrain(t *testing.T) {
	v := &memberView{self: "a", dc: "dc1", first: map[string]time.Time{"a": {}}, primed: true}
	// An active node's pins and a draining node's are both applied; the
	// draining node stays in the table until its pins are complete.
	d := member("d", cluster.Draining, 7)
	v.first["b"], v.first["d"] = time.Time{}, time.Time{}
	lms, _ := v.members([]cluster.Member{member("a", cluster.Active), member("b", cluster.Active, 5, 6), d}, time.Unix(0, 0))
	if got := inTable(lms); !slices.Equal(got, []string{"a", "b", "d"}) {
		t.Fatalf("draining without its pins flag: table %v, want d still in", got)
	}
	if !slices.Equal(lms[1].Pins, []uint32{5, 6}) || !slices.Equal(lms[2].Pins, []uint32{7}) {
		t.Errorf("pins %v and %v, want [5 6] and [7]", lms[1].Pins, lms[2].Pins)
	}
	d.Pinned = true
	lms, _ = v.members([]cluster.Member{member("a", cluster.Active), member("b", cluster.Active), d}, time.Unix(0, 0))
	if got := inTable(lms); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("draining with its pins: table %v, want d out", got)
	}
}

func TestMemberViewSlots(t *testing.T) {
	v := &memberView{self: "a", dc: "dc1", first: map[string]time.Time{}}
	a, b := member("a", cluster.Active), member("b", cluster.Draining)
	a.Slot, b.Slot = 3, 200
	lms, _ := v.members([]cluster.Member{a, b}, time.Unix(0, 0))
	if len(lms) != 2 || lms[0].Slot != 3 || lms[1].Slot != 200 {
		t.Fatalf("front members %+v, want slots 3 and 200", lms)
	}
	// The drain mark, not the front's own view (a is still joining
	// here), decides who may be an heir.
	if lms[0].Draining || !lms[1].Draining || lms[0].Active {
		t.Fatalf("front members %+v: want a joining (not active) and not draining, b draining", lms)
	}
	if h, ok := lb.HeirOf(200, lms); !ok || h.ID != "a" {
		t.Fatalf("heir of b's slot: %+v, %v; want a", h, ok)
	}
	if _, ok := lb.HeirOf(3, lms); ok {
		t.Fatal("draining b is the heir of a's slot")
	}
}

// TestHeir: the heir the nodes compute is lb.HeirOf over the data
// center's members, draining ones excluded, other data centers ignored.
func TestHeir(t *testing.T) {
	slotted := func(id string, st cluster.State, slot uint8) cluster.Member {
		m := member(id, st)
		m.Slot = slot
		return m
	}
	ms := []cluster.Member{slotted("a", cluster.Active, 1), slotted("b", cluster.Draining, 2),
		slotted("c", cluster.Active, 3)}
	other := slotted("x", cluster.Active, 2)
	other.DC = "dc9"
	ms = append(ms, other)
	heir := Heir("dc1")
	if h, ok := heir(1, ms); !ok || h != "c" {
		t.Errorf("heir of slot 1 = %q %v, want c (b drains, x is elsewhere)", h, ok)
	}
	if h, ok := heir(3, ms); !ok || h != "a" {
		t.Errorf("heir of slot 3 = %q %v, want a (round from 255)", h, ok)
	}
	if _, ok := heir(3, ms[2:3]); ok {
		t.Error("a slot's only holder has no heir")
	}
}

// TestMemberViewSelfJoined: a node's own grace counts from when the other
// nodes first saw it (Membership.Joined), not from its front's start, so
// every front takes it into its table at the same moment; a node that took
// its previous run's lease over is in its own table at once, as it is in
// the others'.
func TestMemberViewSelfJoined(t *testing.T) {
	t0 := time.Unix(1000, 0)
	joined := t0.Add(-2 * time.Second) // the record appeared 2 s before this front started
	v := &memberView{self: "b", dc: "dc1", first: map[string]time.Time{}, joined: func() time.Time { return joined }}
	ms := []cluster.Member{member("a", cluster.Active), member("b", cluster.Active)}
	lms, next := v.members(ms, t0)
	if got := inTable(lms); !slices.Equal(got, []string{"a"}) || next != time.Second {
		t.Fatalf("at the front's start: table %v, next %v; want [a] and 1s (the others take b in 1 s from now)", got, next)
	}
	if got := inTable(mustMembers(v, ms, t0.Add(time.Second))); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("a second later: table %v, want [a b]", got)
	}

	adopted := &memberView{self: "b", dc: "dc1", first: map[string]time.Time{}, joined: func() time.Time { return time.Time{} }}
	if got := inTable(mustMembers(adopted, ms, t0)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("restarted within the lease: table %v, want [a b] at once", got)
	}
}

func mustMembers(v *memberView, ms []cluster.Member, now time.Time) []lb.Member {
	lms, _ := v.members(ms, now)
	return lms
}
