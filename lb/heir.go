package lb

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// DefaultHeirWindow is how long a departed node's slot keeps sending its
// sessions' packets to its heir (FrontConfig.HeirWindow).
const DefaultHeirWindow = 30 * time.Second

// HeirOf is the heir of slot in a data center whose members are members:
// the member with the next slot after it, counting upwards and round from
// 255 to 1, among those with a slot that are not draining, other than
// slot's own holder. Two members claiming one slot: the id that sorts
// first. False when there is none.
//
// Why this rule: every front must send a dead node's sessions to the same
// node, and the node itself must be able to tell, while alive, who will
// inherit it (a later step replicates each node's authenticated client
// endpoints to its heir, so that the heir can start their handshakes at
// once). The rule reads only what every front and every node sees alike
// in the membership (slots and drain marks), not a front's own view
// (which nodes it still holds out of its table after a join). Slots are
// stable for a node's life, so a node's heir changes only when a node
// joins between them or the heir leaves or drains. The successor spreads
// the heirs over the nodes: each node inherits at most its predecessor.
func HeirOf(slot uint8, members []Member) (Member, bool) {
	var best Member
	bestDist := -1
	for _, m := range members {
		if m.Slot == 0 || m.Slot == slot || m.Draining {
			continue
		}
		d := (int(m.Slot) - int(slot) + 255) % 255 // 1..254 from slot
		if bestDist < 0 || d < bestDist || d == bestDist && strings.Compare(m.ID, best.ID) < 0 {
			best, bestDist = m, d
		}
	}
	return best, bestDist >= 0
}

// departure is a departed member's slot while its heir takes its
// sessions: the entry at its index (its slot) points to the heir.
type departure struct {
	id      string    // the member that held the slot
	until   time.Time // end of the heir window
	written Node      // the entry as last written (zero: cleared)
}

// noteDepartures records, at the start of Update, the members of the maps
// that leave them and held their own slot as their index: tagged session
// indexes name them. f.mu is held.
func (f *Front) noteDepartures(want map[string]Member, now time.Time) {
	if f.heirWindow <= 0 {
		return
	}
	for id, old := range f.members {
		if _, stays := want[id]; stays || id == f.cfg.Self || old.Slot == 0 || f.index[id] != uint32(old.Slot) {
			continue
		}
		f.departed[uint32(old.Slot)] = &departure{id: id, until: now.Add(f.heirWindow)}
	}
}

// vacated is the entry index idx gets when its member leaves it and no
// member takes it: its heir's, while idx is a departed member's slot in
// its window and an heir exists among members, else not valid. f.mu is
// held.
func (f *Front) vacated(idx uint32, members map[string]Member, now time.Time) Node {
	d, ok := f.departed[idx]
	if !ok {
		return Node{}
	}
	var n Node
	if now.Before(d.until) {
		list := make([]Member, 0, len(members))
		for _, id := range sortedKeys(members) {
			list = append(list, members[id])
		}
		if h, ok := HeirOf(uint8(idx), list); ok && h.Underlay.Is4() {
			n = Node{Underlay4: h.Underlay, Heir: true}
		}
	}
	d.written = n
	return n
}

// refreshHeirs brings the departed slots' entries up to date with the
// members and the clock: a slot a member holds again is its own (the
// member's entry is in place); an heir that left or drains is replaced;
// an entry past its window is cleared and forgotten. Then the timer is set
// for the next window's end. f.mu is held.
func (f *Front) refreshHeirs(now time.Time) error {
	inUse := map[uint32]bool{}
	for _, i := range f.index {
		inUse[i] = true
	}
	for _, idx := range slices.Sorted(maps.Keys(f.departed)) {
		d := f.departed[idx]
		if inUse[idx] {
			delete(f.departed, idx)
			continue
		}
		old := d.written
		n := f.vacated(idx, f.members, now)
		if n != old {
			if err := f.maps.SetNode(idx, n); err != nil {
				d.written = old
				return err
			}
			if n.Heir {
				f.log.Info("lb: a departed node's sessions go to its heir", "slot", idx, "node", d.id,
					"heir", f.who(n.Underlay4), "until", d.until.Format(time.RFC3339))
			} else {
				f.log.Info("lb: a departed node's slot has no heir now", "slot", idx, "node", d.id)
			}
		}
		if !now.Before(d.until) {
			delete(f.departed, idx)
		}
	}
	f.scheduleHeirs(now)
	return nil
}

// scheduleHeirs sets the timer that ends the earliest heir window. f.mu
// is held.
func (f *Front) scheduleHeirs(now time.Time) {
	if f.heirTimer != nil {
		f.heirTimer.Stop()
		f.heirTimer = nil
	}
	if len(f.departed) == 0 || f.heirTimerOff || f.closed {
		return
	}
	var next time.Time
	for _, d := range f.departed {
		if next.IsZero() || d.until.Before(next) {
			next = d.until
		}
	}
	f.heirTimer = time.AfterFunc(next.Sub(now), func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.closed {
			return
		}
		if err := f.refreshHeirs(f.now()); err != nil {
			f.log.Error("lb: heir entries not updated", "err", err)
		}
	})
}

// who is the id of the member at underlay a, for logs. f.mu is held.
func (f *Front) who(a netip.Addr) string {
	for id, m := range f.members {
		if m.Underlay == a {
			return id
		}
	}
	return a.String()
}

// Heirs returns how many departed nodes' slots send their sessions to an
// heir now.
func (f *Front) Heirs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, d := range f.departed {
		if d.written.Heir {
			n++
		}
	}
	return n
}
