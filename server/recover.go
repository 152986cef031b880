package server

import (
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
)

// Session recovery: a stamped client whose owner changed (the table moved
// it back to a node it was served by before) keeps sending transport
// messages under a session this node no longer has. wireguard-go drops
// them, and the client only notices after 15 s without an answer
// (keepalive + rekey timeout), when it handshakes again. The node knows
// better at once: a registered client is sending it data and it holds no
// session for that client. So it sends the client a handshake initiation
// itself; the client answers, and the session is back about one round
// trip after its first packet reached the node.
//
// A transport message can be forged by anyone (32 bytes naming a
// registered ClientID, whose MAC nobody can check without the session),
// so recovery never believes its source address. It answers only when the
// data came from the endpoint wireguard-go last authenticated for that
// client (a handshake it answered, or data it decrypted), and sends the
// initiation there without touching the peer's endpoint. A client this
// node never authenticated, or whose address changed since, is not
// recovered: its own next initiation (within 15 s of its first
// unanswered packet) brings it back, and that initiation is
// authenticated. (A client whose node died is not this path's: the dead
// node's heir knows where it was authenticated, inherit.go.) Refusals are
// counted (recoveries_refused in the status).
//
// The node expires the keypairs it holds for the client before it
// initiates (handshakeAt): a session here that a departed node's newer
// one superseded (staleHere) is one the client dropped, and wireguard-go
// would otherwise keep sending on it instead of handshaking.
//
// Budgets: at most one recovery per client per recoverEvery, recoverBurst
// per tick in all, and recoverPerAddr a second (burst recoverAddrBurst)
// towards any one address, however many clients share it (a CGNAT
// address), so a forger who can spoof a client's own address and port
// buys at most a trickle of initiations towards that client.
//
// A membership change moves some ClientIDs to a new owner in the fronts'
// tables before the nodes that hold their sessions have pinned them
// (countActive): for that moment their data reaches a node without their
// session. Recovery waits pinSettle after every change and then leaves
// alone a client another node pins or publishes a session with at least
// as new as this node's (heldElsewhere), or it would steal a session that
// is about to flow back to its holder: recovery never fights a live
// session.
const (
	recoverEvery     = 5 * time.Second
	recoverBurst     = 100
	recoverTick      = 250 * time.Millisecond
	pinSettle        = 500 * time.Millisecond
	recoverPerAddr   = 4
	recoverAddrBurst = 16
	// recoverAddrsMax bounds the per-address budgets; they are cleared
	// when full (a flood of addresses only resets them).
	recoverAddrsMax = 4096
)

// sessionCandidate is a registered client that sent data with no session
// on this node, from ep, the endpoint wireguard-go last authenticated.
type sessionCandidate struct {
	key       wgtypes.Key
	id        clientid.ID
	ep        netip.AddrPort
	handshake time.Time // this node's last with it (zero: none)
}

// addrBudget is the per-destination-address budget of recovery
// initiations. Only the recovery goroutine uses it.
type addrBudget struct {
	rate, burst float64
	max         int
	buckets     map[netip.Addr]*tokenBucket
}

func newAddrBudget(rate, burst float64, max int) *addrBudget {
	return &addrBudget{rate: rate, burst: burst, max: max, buckets: map[netip.Addr]*tokenBucket{}}
}

// take spends one initiation towards a, if its budget allows.
func (b *addrBudget) take(a netip.Addr, now time.Time) bool {
	tb, ok := b.buckets[a]
	if !ok {
		if len(b.buckets) >= b.max {
			clear(b.buckets)
		}
		tb = &tokenBucket{rate: b.rate, burst: b.burst, tokens: b.burst}
		b.buckets[a] = tb
	}
	return tb.take(now)
}

// recoverSessions runs every recoverTick: it takes what the Bind saw and
// starts a handshake with every registered client that sent data here
// without holding a live session.
func (n *Node) recoverSessions() {
	defer n.wg.Done()
	t := time.NewTicker(recoverTick)
	defer t.Stop()
	last := map[clientid.ID]time.Time{}
	budget := newAddrBudget(recoverPerAddr, recoverAddrBurst, recoverAddrsMax)
	// live caches the last handshake of clients with a session, so the
	// steady state (every sender has one) costs no device dump.
	live := map[clientid.ID]time.Time{}
	for {
		select {
		case <-n.done:
			return
		case now := <-t.C:
			if now.Sub(time.Unix(0, n.membershipChanged.Load())) < pinSettle {
				continue // what the Bind saw waits for the next tick
			}
			seen := n.bind.TakeData()
			seen = slices.DeleteFunc(seen, func(s DataSeen) bool {
				h, ok := live[s.ClientID]
				return ok && now.Sub(h) < device.RejectAfterTime
			})
			if len(seen) == 0 {
				continue
			}
			peers, err := n.peers()
			if err != nil {
				continue
			}
			clear(live)
			n.mu.Lock()
			for _, p := range peers {
				if c, ok := n.clients[p.PublicKey]; ok && !p.LastHandshake.IsZero() {
					live[c.ClientID] = p.LastHandshake
				}
			}
			n.mu.Unlock()
			var pinned map[clientid.ID]bool
			for _, c := range n.sessionless(seen, peers, now) {
				if now.Sub(last[c.id]) < recoverEvery {
					continue
				}
				if pinned == nil {
					pinned = n.pinnedElsewhere()
				}
				if pinned[c.id] || n.heldElsewhere(c) {
					n.refused.Add(1)
					continue
				}
				if !budget.take(c.ep.Addr(), now) {
					continue // the client's data comes again next tick
				}
				if len(last) >= recoverBurst*10 {
					clear(last) // bounded: a flood of ids only resets the per-id pacing
				}
				last[c.id] = now
				if err := n.handshakeAt(c.key, c.ep, false); err != nil {
					n.log.Warn("session recovery: handshake not started", "client_id", c.id.String(), "endpoint", c.ep, "err", err)
					continue
				}
				n.recovered.Add(1)
				n.log.Info("session recovery: handshake started for a client sending data without a session",
					"client_id", c.id.String(), "endpoint", c.ep)
			}
		}
	}
}

// heldElsewhere reports whether another live node of the data center
// published a session with c at least as new as this node's (inherit.go):
// the client moved there, and its data reached this node only for a
// moment (a table switching).
func (n *Node) heldElsewhere(c sessionCandidate) bool {
	m := n.cfg.Cluster
	if m == nil {
		return false
	}
	_, s, ok := m.SessionElsewhere(uint32(c.id), "")
	return ok && !s.Since.Before(c.handshake.Truncate(time.Second))
}

// pinnedElsewhere are the ClientIDs other nodes of this data center pin.
func (n *Node) pinnedElsewhere() map[clientid.ID]bool {
	out := map[clientid.ID]bool{}
	m := n.cfg.Cluster
	if m == nil {
		return out
	}
	self := m.Self()
	for _, mem := range m.Members() {
		if mem.ID == self.ID || mem.DC != self.DC {
			continue
		}
		for _, id := range mem.PinnedClientIDs() {
			out[clientid.ID(id)] = true
		}
	}
	return out
}

// staleHere reports whether this node's session with client id, last
// handshaken at last, is older than the one a node that has since left
// held: the client dropped this node's keys when it moved there, so the
// session here is stale although wireguard-go would still use it.
func (n *Node) staleHere(id clientid.ID, last time.Time) bool {
	m := n.cfg.Cluster
	if m == nil {
		return false
	}
	_, s, ok := m.DepartedSession(uint32(id))
	return ok && s.Since.After(last)
}

// sessionless picks, from what the Bind saw, the registered clients whose
// ClientID matches, whose peer has no handshake within
// device.RejectAfterTime (so no session wireguard-go would accept data
// for) and whose data came from the peer's endpoint, the one wireguard-go
// last authenticated: at most recoverBurst of them. Data from any other
// address proves nothing (see the comment at the top).
func (n *Node) sessionless(seen []DataSeen, peers []peerState, now time.Time) []sessionCandidate {
	want := make(map[clientid.ID]DataSeen, len(seen))
	for _, s := range seen {
		want[s.ClientID] = s
	}
	var out []sessionCandidate
	n.mu.Lock()
	defer n.mu.Unlock()
	// Only clients with a peer: the others have no authenticated endpoint
	// here (and the registry may be much larger than the device).
	for _, p := range peers {
		key := p.PublicKey
		c, ok := n.clients[key]
		if !ok {
			continue
		}
		s, ok := want[c.ClientID]
		if !ok {
			continue
		}
		if !p.LastHandshake.IsZero() && now.Sub(p.LastHandshake) < device.RejectAfterTime && !n.staleHere(c.ClientID, p.LastHandshake) {
			continue // a live session
		}
		if !p.Endpoint.IsValid() || p.Endpoint != s.Endpoint {
			n.refused.Add(1)
			continue // never authenticated here, or not from where it was
		}
		out = append(out, sessionCandidate{key: key, id: c.ClientID, ep: p.Endpoint, handshake: p.LastHandshake})
		if len(out) == recoverBurst {
			break
		}
	}
	return out
}
