package server

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/internal/udpbind"
	"github.com/wedge-edge/wedge/server/cluster"
)

// Inheriting sessions. In a cluster with tagged indexes, every node
// publishes the sessions it holds (cluster.Membership.SetSessions: each
// client's ClientID, the address wireguard-go last authenticated it at,
// the time the session began there), about every replicateEvery and soon
// after each handshake it answers. Two nodes read them back:
//
//   - the heir of a node that leaves the data center (lb.HeirOf: the next
//     node by slot that is not draining; every front sends the departed
//     node's slot there, so the clients' data already arrives at the
//     heir): it starts a handshake with each of the departed node's
//     clients at once, at its published address, from the VIP;
//   - the node itself, restarted within its lease (Join adopted the lease,
//     so no front noticed): it does the same with its own previous
//     sessions (cluster.Membership.Previous).
//
// The client answers the initiation (it knows the service key, and the
// initiation's timestamp is newer than any it saw), the response finds the
// new holder by the slot in its tagged index wherever ECMP sends it, and
// the session is back one round trip after the node learned of the
// departure: the lease TTL after a death, at once after a clean stop.
// This serves stamped and standard clients alike: nothing in it reads a
// ClientID off the wire.
//
// It never fights a live session: a client another live node published a
// session with that began no earlier is left alone (it moved there), and
// so is one that handshook with this node after its session on the
// departed node began. A session this node holds from before that is
// stale: its keypairs are expired before the initiation, so that
// wireguard-go handshakes instead of sending on keys the client dropped.
//
// The published addresses were authenticated by a node of the cluster and
// come through etcd, which the cluster trusts with its registry; unlike
// session recovery from a packet (recover.go), no unauthenticated packet
// can make a node send anything here.
const (
	replicateEvery = time.Second
	replicateMin   = 250 * time.Millisecond
	replicateAgain = time.Second
	// inheritPace spreads a large inheritance: at most inheritBatch
	// initiations per inheritPace (about 6,400 a second).
	inheritPace  = 10 * time.Millisecond
	inheritBatch = 64
)

// replicate publishes this node's sessions to the cluster until the node
// closes: every replicateEvery, and within replicateMin of a handshake.
func (n *Node) replicate(hs *handshakes) {
	defer n.wg.Done()
	t := time.NewTicker(replicateMin)
	defer t.Stop()
	var gen uint64
	var last, again time.Time
	var prev map[uint32]cluster.Session
	for {
		select {
		case <-n.done:
			return
		case now := <-t.C:
			g := hs.opened.Load() + hs.serverInitiated.Load() + n.inherited.Load()
			switch {
			case g != gen:
				// A handshake: publish now, and once more a second
				// later, as wireguard-go marks a responder's handshake
				// complete only when the client's first data arrives.
				again = now.Add(replicateAgain)
			case !again.IsZero() && !now.Before(again):
				again = time.Time{}
			case now.Sub(last) < replicateEvery:
				continue
			}
			peers, err := n.peers()
			if err != nil {
				continue
			}
			gen, last = g, now
			prev = n.sessionRecords(peers, prev, now)
			n.cfg.Cluster.SetSessions(prev)
		}
	}
}

// sessionRecords are the sessions of peers worth publishing: registered
// clients with a handshake within activeWindow at an authenticated
// endpoint. A session in prev at the same endpoint keeps its Since.
func (n *Node) sessionRecords(peers []peerState, prev map[uint32]cluster.Session, now time.Time) map[uint32]cluster.Session {
	out := map[uint32]cluster.Session{}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range peers {
		if p.LastHandshake.IsZero() || now.Sub(p.LastHandshake) >= activeWindow || !p.Endpoint.IsValid() {
			continue
		}
		c, ok := n.clients[p.PublicKey]
		if !ok {
			continue
		}
		cid := uint32(c.ClientID)
		if old, ok := prev[cid]; ok && old.Endpoint == p.Endpoint && !old.Since.After(p.LastHandshake) && !n.returned(cid, old.Since, p.LastHandshake) {
			out[cid] = old
		} else {
			out[cid] = cluster.Session{Endpoint: p.Endpoint, Since: p.LastHandshake.Truncate(time.Second)}
		}
	}
	return out
}

// returned reports whether client cid, whose session here began at since
// and last handshook at last, went to another node in between and came
// back: that node's session began after since and before last. Its
// session here is then a new one, begun at last (else the other node's
// record would look newer than this node's live session).
func (n *Node) returned(cid uint32, since, last time.Time) bool {
	m := n.cfg.Cluster
	if m == nil {
		return false
	}
	_, o, ok := m.SessionElsewhere(cid, "")
	if !ok {
		_, o, ok = m.DepartedSession(cid)
	}
	return ok && !o.Since.Before(since) && last.After(o.Since)
}

// inheritLoop takes over a previous run's sessions once, then the
// sessions of every node this node is the heir of when it leaves.
func (n *Node) inheritLoop(heir func(slot uint8, ms []cluster.Member) (string, bool)) {
	defer n.wg.Done()
	m := n.cfg.Cluster
	self := m.Self()
	if prev := m.Previous(); len(prev) > 0 {
		n.resume("restarted within the lease: its own previous sessions", "", prev)
	}
	// The callback (calls are serialized) compares each member list with
	// the one before and queues the departures, so that a node leaving and
	// coming back between two wake-ups is not missed.
	type departure struct {
		id string
		ms []cluster.Member // the members just after it left
		m  cluster.Member   // its last record
	}
	var mu sync.Mutex
	var queue []departure
	var last map[string]cluster.Member
	kick := make(chan struct{}, 1)
	unsub := m.Subscribe(func(ms []cluster.Member) {
		cur := map[string]cluster.Member{}
		for _, mem := range ms {
			if mem.DC == self.DC && mem.Slot != 0 {
				cur[mem.ID] = mem
			}
		}
		var gone []departure
		for id, old := range last {
			if _, stays := cur[id]; !stays && id != self.ID {
				gone = append(gone, departure{id, ms, old})
			}
		}
		last = cur
		if len(gone) == 0 {
			return
		}
		mu.Lock()
		queue = append(queue, gone...)
		mu.Unlock()
		select {
		case kick <- struct{}{}:
		default:
		}
	})
	defer unsub()
	for {
		select {
		case <-n.done:
			return
		case <-kick:
		}
		mu.Lock()
		todo := queue
		queue = nil
		mu.Unlock()
		for _, d := range todo {
			if h, ok := heir(d.m.Slot, d.ms); ok && h == self.ID {
				n.resume(fmt.Sprintf("heir of %s (slot %d), which left", d.id, d.m.Slot), d.id, m.SessionsOf(d.id))
			}
		}
	}
}

// resume starts a handshake with each client of recs whose session is
// still live and is not held elsewhere (see the comment at the top). from
// is the node the sessions were inherited from ("" for this node's own).
func (n *Node) resume(why, from string, recs map[uint32]cluster.Session) {
	if len(recs) == 0 {
		return
	}
	peers, err := n.peers()
	if err != nil {
		n.log.Warn("inheriting sessions: no device state", "err", err)
		return
	}
	ours := make(map[wgtypes.Key]time.Time, len(peers))
	for _, p := range peers {
		ours[p.PublicKey] = p.LastHandshake
	}
	byCID := map[clientid.ID]wgtypes.Key{}
	n.mu.Lock()
	for k, c := range n.clients {
		if _, ok := recs[uint32(c.ClientID)]; ok {
			byCID[c.ClientID] = k
		}
	}
	n.mu.Unlock()
	var started, skipped int
	for cid, s := range recs {
		key, ok := byCID[clientid.ID(cid)]
		if !ok {
			skipped++ // unregistered since
			continue
		}
		if ours[key].After(s.Since.Add(time.Second)) {
			skipped++ // it handshook with this node since
			continue
		}
		if _, o, ok := n.cfg.Cluster.SessionElsewhere(cid, from); ok && !o.Since.Before(s.Since) {
			skipped++ // a live node holds it
			continue
		}
		if err := n.handshakeAt(key, s.Endpoint, true); err != nil {
			n.log.Warn("inheriting sessions: handshake not started", "client_id", clientid.ID(cid).String(), "err", err)
			continue
		}
		started++
		if started%inheritBatch == 0 {
			select {
			case <-n.done:
				return
			case <-time.After(inheritPace):
			}
		}
	}
	n.inherited.Add(uint64(started))
	n.kickCount()
	n.log.Info("inheriting sessions: handshakes started", "why", why, "started", started, "skipped", skipped)
}

// handshakeAt makes wireguard-go start a handshake with registered client
// key now (adding its peer if it has none),
// dropping the keypairs it holds (a stale session the client no longer
// has would otherwise be used instead). With at set, the peer's endpoint
// becomes ep, reached from the VIP of its family (IndexConfig.VIPs);
// otherwise the initiation goes to the endpoint the peer has.
func (n *Node) handshakeAt(key wgtypes.Key, ep netip.AddrPort, at bool) error {
	// An inherited client has no peer here yet: add it (ondemand.go).
	p, err := n.ensurePeer(key)
	if err != nil {
		return fmt.Errorf("server: no peer %s: %w", key, err)
	}
	if at {
		var e conn.Endpoint
		if _, ok := n.bind.Bind.(*udpbind.Bind); ok {
			e = udpbind.NewEndpoint(ep, n.vipFor(ep.Addr()))
		} else {
			var err error
			if e, err = n.bind.ParseEndpoint(ep.String()); err != nil {
				return err
			}
		}
		if hs := n.bind.hs.Load(); hs != nil {
			hs.expect(ep, key)
		}
		p.SetEndpointFromPacket(e)
	}
	p.ExpireCurrentKeypairs()
	return p.SendHandshakeInitiation(false)
}

// vipFor is the VIP of a's family, or the zero Addr.
func (n *Node) vipFor(a netip.Addr) netip.Addr {
	for _, v := range n.vips {
		if v.Is4() == a.Unmap().Is4() {
			return v
		}
	}
	return netip.Addr{}
}
