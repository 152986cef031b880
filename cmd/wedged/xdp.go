package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/wedge-edge/wedge/lb"
	"github.com/wedge-edge/wedge/server/cluster"
)

// defaultGUEPort is the UDP port nodes send each other GUE on. Any fixed
// port works; it must be the same on every node and open between them.
const defaultGUEPort = 6080

// tableOwners is the ClientID → node function of the table every front
// builds from the active nodes ids (server.Config.Owners).
func tableOwners(active []string) (func(cid uint32) string, error) {
	t, err := lb.NewTable(active, lb.XDPTableSize)
	if err != nil {
		return nil, err
	}
	return func(cid uint32) string { id, _ := t.Owner(cid); return id }, nil
}

// xdpFront is the loaded XDP program and what feeds it.
type xdpFront struct {
	objs  *lb.Objects
	front *lb.Front
	unsub func()
	// mu guards timer and closed, and applies one membership at a time.
	mu     sync.Mutex
	timer  *time.Timer // re-applies the membership when a joining node is due
	closed bool
}

func (x *xdpFront) close() {
	if x.unsub != nil {
		x.unsub()
	}
	x.mu.Lock()
	x.closed = true
	if x.timer != nil {
		x.timer.Stop()
	}
	x.mu.Unlock()
	x.front.Close()
	x.objs.Close()
}

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
}

// members returns the front's members at now and, if a node is still
// joining, how long until the next one is due (0: none).
func (v *memberView) members(ms []cluster.Member, now time.Time) ([]lb.Member, time.Duration) {
	live := map[string]bool{}
	for _, m := range ms {
		if m.DC != v.dc {
			continue
		}
		live[m.ID] = true
		if _, ok := v.first[m.ID]; !ok {
			// This node itself joins like any other: the others hold
			// it out of their tables for the same time.
			if v.primed || m.ID == v.self {
				v.first[m.ID] = now
			} else {
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
			// lose their sessions.
			lm.Active = !m.Pinned
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

// startFront loads the XDP program, attaches it to iface and, in a
// cluster, keeps its tables in step with the membership of this node's
// data center. Alone, the node owns every client and the program only
// passes packets (and would decapsulate nothing: no peers).
//
// indexKey is the cluster's index key (wgmsg.IndexKey of the service
// private key): the program routes a standard client's responses, cookie
// replies and data messages by the slot their tagged receiver index
// carries, which is the node index of the node holding that slot
// (cluster.Member.Slot, 0 alone).
func startFront(c *config, id, dc string, underlay netip.Addr, vips []netip.Addr, member *cluster.Membership, indexKey uint32, plan *egressPlan, log *slog.Logger) (*xdpFront, error) {
	fc := lb.FrontConfig{WGPort: uint16(c.listen), GUEPort: uint16(c.guePort), Self: id, SelfUnderlay: underlay,
		IndexKey: indexKey, Log: log}
	if member != nil {
		fc.SelfSlot = member.Self().Slot
	}
	for _, v := range vips {
		if v.Is4() {
			fc.VIP4 = v
		} else {
			fc.VIP6 = v
		}
	}
	objs, err := lb.Load()
	if err != nil {
		return nil, fmt.Errorf("--xdp: %w", err)
	}
	front, err := lb.NewFront(objs, fc)
	if err != nil {
		objs.Close()
		return nil, fmt.Errorf("--xdp: %w", err)
	}
	x := &xdpFront{objs: objs, front: front}
	// Egress steering follows the plan and every data center's members.
	var last []cluster.Member
	setEgress := func() {
		if plan == nil {
			return
		}
		if err := front.SetEgress(plan.table(last)); err != nil {
			log.Error("xdp: egress steering not applied", "err", err)
		}
	}
	if plan != nil {
		setEgress()
		plan.setOnReload(func() {
			x.mu.Lock()
			defer x.mu.Unlock()
			if !x.closed {
				setEgress()
			}
		})
	}
	if member != nil {
		view := &memberView{self: id, dc: dc, first: map[string]time.Time{}}
		var apply func()
		apply = func() {
			x.mu.Lock()
			defer x.mu.Unlock()
			if x.closed {
				return
			}
			lms, next := view.members(last, time.Now())
			if err := front.Update(lms); err != nil {
				log.Error("xdp: membership not applied", "err", err)
			}
			setEgress()
			if next > 0 {
				if x.timer != nil {
					x.timer.Stop()
				}
				x.timer = time.AfterFunc(next, apply)
			}
		}
		x.unsub = member.Subscribe(func(ms []cluster.Member) {
			x.mu.Lock()
			last = ms
			x.mu.Unlock()
			apply()
		})
	}
	if err := front.Attach(c.xdp); err != nil {
		x.close()
		return nil, err
	}
	log.Info("xdp front attached", "iface", c.xdp, "vip", vips, "gue_port", c.guePort, "node", id, "slot", fc.SelfSlot)
	return x, nil
}
