package front

import (
	"time"

	"github.com/wedge-edge/wedge/lb"
	"github.com/wedge-edge/wedge/server/cluster"
)

// joinGrace is how long a node that joins the data center stays out of
// the fronts' tables after they first see it. The nodes holding sessions
// of the ClientIDs the new table gives it pin them as soon as they see it
// (server.Node countActive, well under a second); entering the table at
// once would send those clients to a node without their sessions first.
const joinGrace = 3 * time.Second

// memberView turns membership snapshots into the front's members: the
// nodes of its data center, each with its pins, in the table while active
// (a draining node until its pins are published) and past its joinGrace.
type memberView struct {
	self, dc string
	// first is when each live node was first seen; zero for the nodes
	// already there when this front started, which are not joining.
	first  map[string]time.Time
	primed bool
	// joined, if set, says when the other nodes first saw this node
	// (cluster.Membership.Joined; zero: never left their tables): the
	// node's own grace counts from it, not from when this front, which
	// starts later than the node's record appears, first saw it. Else
	// every front would hold the node out of its table for a different
	// time, and between the two a front that already routes its clients
	// to it would meet one that forwards them back (a stamped initiation
	// sent to and fro until wireguard-go drops it as a replay, costing
	// the client 5 s).
	joined func() time.Time
}

// members returns the front's members at now and, if a node is still
// joining, how long until the next one is due (0: none).
func (v *memberView) members(ms []cluster.Member, now time.Time) ([]lb.Member, time.Duration) {
	v.see(ms, now)
	var out []lb.Member
	var next time.Duration
	for _, m := range ms {
		if m.DC != v.dc {
			continue
		}
		lm := lb.Member{ID: m.ID, Underlay: m.Underlay, Pins: m.PinnedClientIDs(), Slot: m.Slot}
		switch m.State {
		case cluster.Active:
			lm.Active = true
		case cluster.Draining:
			// A draining node leaves the table only once its pins are
			// published: until then its clients would go elsewhere and
			// lose their sessions. It is nobody's heir (lb.HeirOf).
			lm.Active = !m.Pinned
			lm.Draining = true
		}
		if f := v.first[m.ID]; !f.IsZero() {
			if wait := f.Add(joinGrace).Sub(now); wait > 0 {
				lm.Active = false
				if next == 0 || wait < next {
					next = wait
				}
			}
		}
		out = append(out, lm)
	}
	return out, next
}

// see records when each live node of the data center was first seen, and
// forgets the nodes that are gone.
func (v *memberView) see(ms []cluster.Member, now time.Time) {
	live := map[string]bool{}
	for _, m := range ms {
		if m.DC != v.dc {
			continue
		}
		live[m.ID] = true
		if _, ok := v.first[m.ID]; !ok {
			// This node itself joins like any other: the others hold
			// it out of their tables for the same time.
			switch {
			case m.ID == v.self && v.joined != nil:
				v.first[m.ID] = v.joined()
			case v.primed || m.ID == v.self:
				v.first[m.ID] = now
			default:
				v.first[m.ID] = time.Time{}
			}
		}
	}
	v.primed = true
	for id := range v.first {
		if !live[id] {
			delete(v.first, id) // one that comes back joins again
		}
	}
}

// Heir returns the function that names the heir of a departed node's slot
// among the members of data center dc (lb.HeirOf over their slots and
// drain marks, as every front computes it): server.IndexConfig.Heir.
func Heir(dc string) func(slot uint8, ms []cluster.Member) (string, bool) {
	return func(slot uint8, ms []cluster.Member) (string, bool) {
		var lms []lb.Member
		for _, m := range ms {
			if m.DC == dc {
				lms = append(lms, lb.Member{ID: m.ID, Slot: m.Slot, Draining: m.State == cluster.Draining})
			}
		}
		h, ok := lb.HeirOf(slot, lms)
		return h.ID, ok
	}
}
