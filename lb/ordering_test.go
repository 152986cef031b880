package lb

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSessionOrderings walks every ordering of the events around one
// stamped client's session while the data center changes (issue 20), with
// a Front per node (its writes recorded and checked by xFakeMaps) and the
// program's model (xState.expect) deciding where each packet goes:
//
//   - H: the client handshakes: its initiation reaches one front (each
//     one in turn, as ECMP may pick any) and goes where that front's pin
//     or table says; that node holds the session and tags its index.
//   - M: the membership changes (join: c appears, and each front writes
//     its entry but holds it out of its table, as server/front does
//     during joinGrace).
//   - T_x: front x switches to the table of the new membership (leave:
//     c's lease ran out; c died just before the first switch).
//   - P: the session's holder publishes a pin, if the new table gives
//     the client to another node (server.pinsFor).
//
// After every event, on every live front: a data message of the session
// (stamped, the holder's tagged index) reaches the holder, or, once the
// holder is dead and this front has dropped it, the holder's heir; an
// initiation goes where the front's pin or table says (Front.Route).
// Without the index the data would have followed the initiation: the test
// also counts how often that would have missed the holder, to show that
// the orderings reach the window the issue measured.
func TestSessionOrderings(t *testing.T) {
	under := xUnders("abc")
	slot := map[string]uint8{"a": 1, "b": 2, "c": 3}
	type scenario struct {
		name          string
		before, after []string // active members (c joining counts as inactive before)
		join          bool     // c joins (else c dies)
		cid           uint32
	}
	// ClientIDs: one the change moves (to c, or collaterally between
	// survivors), one it leaves alone, one of c's.
	find := func(pred func(cid uint32) bool) uint32 {
		for cid := uint32(1); cid < 1<<20; cid++ {
			if pred(cid) {
				return cid
			}
		}
		t.Fatal("no such ClientID")
		return 0
	}
	ab, abc := []string{"a", "b"}, []string{"a", "b", "c"}
	own2 := func(cid uint32) string { o, _ := xOwner(ab, cid); return o }
	own3 := func(cid uint32) string { o, _ := xOwner(abc, cid); return o }
	toC := find(func(c uint32) bool { return own3(c) == "c" })
	stays := find(func(c uint32) bool { return own3(c) != "c" && own2(c) == own3(c) })
	moved := find(func(c uint32) bool { return own3(c) != "c" && own2(c) != own3(c) })
	scenarios := []scenario{
		{"join, moves to c", ab, abc, true, toC},
		{"join, stays", ab, abc, true, stays},
		{"c dies, its client", abc, ab, false, toC},
		{"c dies, a survivor's client Maglev moves", abc, ab, false, moved},
		{"c dies, a survivor's client that stays", abc, ab, false, stays},
	}

	total, missed, heirs := 0, 0, 0
	for _, sc := range scenarios {
		events := []string{"H", "P", "T_a", "T_b"}
		if sc.join {
			events = append(events, "M", "T_c")
		}
		for _, order := range xPermutations(events) {
			pos := map[string]int{}
			for i, e := range order {
				pos[e] = i
			}
			if pos["P"] < pos["H"] {
				continue
			}
			if sc.join && (pos["M"] > pos["P"] || pos["M"] > pos["T_a"] || pos["M"] > pos["T_b"] || pos["M"] > pos["T_c"]) {
				continue
			}
			for _, entry := range []string{"a", "b", "c"} {
				name := sc.name + ": " + strings.Join(order, " ") + ", handshake via " + entry
				n, miss, h := xWalk(t, name, sc.join, sc.before, sc.after, sc.cid, entry, order, under, slot)
				total += n
				missed += miss
				heirs += h
				if t.Failed() {
					return
				}
			}
		}
	}
	t.Logf("%d data packets checked; %d reached their holder where the pin or table would have missed it; %d went to a dead holder's heir", total, missed, heirs)
	if missed == 0 || heirs == 0 {
		t.Fatal("no ordering reached the window where the ClientID misses the session's node, or the heir: the test proves little")
	}
}

// xWalk runs one ordering (see TestSessionOrderings) and returns how many
// data packets it checked, how many of them the pin or table would have
// sent elsewhere, and how many went to an heir.
func xWalk(t *testing.T, name string, join bool, before, after []string, cid uint32, entry string,
	order []string, under map[string]netip.Addr, slot map[string]uint8) (total, missed, heirs int) {
	t.Helper()
	alive := map[string]bool{"a": true, "b": true, "c": !join}
	switched := map[string]bool{}
	holder, pinned := "", false
	fronts := map[string]*Front{}
	fm := map[string]*xFakeMaps{}
	byUnder := map[netip.Addr]string{}
	for id, a := range under {
		byUnder[a] = id
	}
	// view is front x's membership: its table's members active, c
	// joining (inactive) once it is known, the holder's pin.
	membershipKnown := !join
	view := func(x string) []Member {
		active := before
		if switched[x] {
			active = after
		}
		var ms []Member
		for _, id := range []string{"a", "b", "c"} {
			isActive := slices.Contains(active, id)
			known := isActive || id == "c" && join && membershipKnown
			if !known {
				continue
			}
			m := Member{ID: id, Underlay: under[id], Slot: slot[id], Active: isActive}
			if pinned && id == holder {
				m.Pins = []uint32{cid}
			}
			ms = append(ms, m)
		}
		return ms
	}
	start := func(x string) {
		f, m, _ := xHeirFront(t, x, slot[x], 30*time.Second, under)
		fronts[x], fm[x] = f, m
	}
	applied := map[string]string{} // front → the view it last applied
	update := func() {
		for x, f := range fronts {
			v := view(x)
			key := fmt.Sprint(v)
			if !alive[x] || applied[x] == key {
				continue
			}
			if err := f.Update(v); err != nil {
				t.Fatalf("%s: front %s: %v", name, x, err)
			}
			applied[x] = key
		}
	}
	for x := range alive {
		if alive[x] {
			start(x)
		}
	}
	update()
	// where runs frame f through front x's state, by the model.
	where := func(x string, f []byte) (string, xWant) {
		st := fm[x].state()
		w := st.expect(f)
		switch {
		case w.verdict == xdpTX:
			return byUnder[w.to], w
		case w.verdict == xdpPass && w.counts["local"] == 1:
			return x, w
		}
		return "here", w
	}
	check := func(after string) {
		t.Helper()
		for x, f := range fronts {
			if !alive[x] {
				continue
			}
			// Initiations follow the pin or the table (Route).
			init := xClient(xClient4, cid, 1)
			got, _ := where(x, init)
			r, ok := f.Route(cid)
			if !ok || got != r.ID {
				t.Fatalf("%s, after %s: front %s sends the initiation to %s, its Route says %+v", name, after, x, got, r)
			}
			if holder == "" {
				continue
			}
			data := xClientTo(xClient4, xWGIdx(4, cid, 4, xTag(slot[holder], 0x1234)))
			got, w := where(x, data)
			want := holder
			if !alive[holder] && switched[x] {
				h, _ := HeirOf(slot[holder], view(x))
				want = h.ID
				if w.counts["index_heir"] != 1 {
					t.Fatalf("%s, after %s: front %s: data of dead %s counted %v, want index_heir", name, after, x, holder, w.counts)
				}
				heirs++
			}
			if got != want {
				t.Fatalf("%s, after %s: front %s sends the session's data (held by %s) to %s, want %s (%v)", name, after, x, holder, got, want, w.counts)
			}
			total++
			if alive[holder] && r.ID != holder {
				missed++
			}
		}
	}
	for _, e := range order {
		switch e {
		case "H":
			if !alive[entry] {
				continue // ECMP cannot pick a front that is not there
			}
			to, _ := where(entry, xClient(xClient4, cid, 1))
			if !alive[to] {
				continue // an initiation to a dead node makes no session
			}
			holder = to
		case "M":
			membershipKnown = true
			alive["c"] = true
			start("c")
		case "P":
			// The holder pins the client if the new membership's table
			// gives it to another node (server.pinsFor).
			if holder != "" && alive[holder] {
				if o, _ := xOwner(after, cid); o != holder {
					pinned = true
				}
			}
		default: // T_x
			x := strings.TrimPrefix(e, "T_")
			if !join && alive["c"] {
				alive["c"] = false // c died; its lease runs out now
			}
			switched[x] = true
		}
		update()
		check(e)
	}
	return total, missed, heirs
}

// xOwner is the owner of cid in the table of active.
func xOwner(active []string, cid uint32) (string, bool) {
	key := strings.Join(active, ",")
	tb, ok := xTables[key]
	if !ok {
		var err error
		if tb, err = NewTable(active, XDPTableSize); err != nil {
			return "", false
		}
		xTables[key] = tb
	}
	return tb.Owner(cid)
}

var xTables = map[string]*Table{}

// state is what the program would see in the recorded maps, for the model.
func (m *xFakeMaps) state() *xState {
	table := m.table // SetTable stores a new slice each time
	return &xState{self: m.cfg.Self, enabled: m.cfg.Enabled, indexKey: m.cfg.IndexKey, hasTable: table != nil,
		table: func(s uint32) uint32 { return table[s] }, nodes: maps.Clone(m.nodes), peers: maps.Clone(m.peers),
		pins: maps.Clone(m.pins)}
}

// xPermutations is every ordering of events.
func xPermutations(events []string) [][]string {
	if len(events) <= 1 {
		return [][]string{slices.Clone(events)}
	}
	var out [][]string
	for i, e := range events {
		rest := slices.Concat(events[:i], events[i+1:])
		for _, p := range xPermutations(rest) {
			out = append(out, append([]string{e}, p...))
		}
	}
	return out
}
