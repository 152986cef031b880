package server

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
)

// Session recovery: a stamped client whose owner changed (its node died,
// or the table moved it) keeps sending transport messages under a session
// the new owner never had. wireguard-go drops them, and the client only
// notices after 15 s without an answer (keepalive + rekey timeout), when
// it handshakes again. The new owner knows better at once: a registered
// client is sending it data and it holds no session for that client. So
// it sends the client a handshake initiation itself, to the address the
// data came from; the client answers, and the session is back about one
// round trip after its first packet reached the new owner.
//
// wireguard-go has no call to start a handshake; turning persistent
// keepalive on for a peer without a session sends one (it queues a
// keepalive, which needs a handshake first), so the node sets the
// endpoint and turns keepalive on and off again.
//
// The endpoint comes from a packet nobody authenticated, so the node only
// ever sends an initiation (148 bytes) to it, at most once per client per
// recoverEvery and recoverBurst a second in all: a forged flood buys the
// forger little traffic towards anyone.
//
// A membership change moves some ClientIDs to a new owner in the fronts'
// tables before the nodes that hold their sessions have pinned them
// (countActive): for that moment their data reaches a node without their
// session. Recovery waits pinSettle after every change and then leaves
// alone a client another node pins, or it would steal a session that
// is about to flow back to its holder.
const (
	recoverEvery = 5 * time.Second
	recoverBurst = 100
	recoverTick  = 250 * time.Millisecond
	pinSettle    = 500 * time.Millisecond
)

// sessionCandidate is a registered client that sent data with no session
// on this node.
type sessionCandidate struct {
	key wgtypes.Key
	id  clientid.ID
	ep  netip.AddrPort
}

// recoverSessions runs every recoverTick: it takes what the Bind saw and
// starts a handshake with every registered client that sent data here
// without holding a live session.
func (n *Node) recoverSessions() {
	defer n.wg.Done()
	t := time.NewTicker(recoverTick)
	defer t.Stop()
	last := map[clientid.ID]time.Time{}
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
				if pinned[c.id] {
					continue
				}
				if len(last) >= recoverBurst*10 {
					clear(last) // bounded: a flood of ids only resets the per-id pacing
				}
				last[c.id] = now
				if err := n.startHandshake(c.key, c.ep); err != nil {
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

// sessionless picks, from what the Bind saw, the registered clients whose
// ClientID matches and whose peer has no handshake within
// device.RejectAfterTime (so no session wireguard-go would accept data
// for), at most recoverBurst of them.
func (n *Node) sessionless(seen []DataSeen, peers []peerState, now time.Time) []sessionCandidate {
	hs := make(map[wgtypes.Key]time.Time, len(peers))
	for _, p := range peers {
		hs[p.PublicKey] = p.LastHandshake
	}
	want := make(map[clientid.ID]DataSeen, len(seen))
	for _, s := range seen {
		want[s.ClientID] = s
	}
	var out []sessionCandidate
	n.mu.Lock()
	defer n.mu.Unlock()
	for key, c := range n.clients {
		s, ok := want[c.ClientID]
		if !ok {
			continue
		}
		if h, ok := hs[key]; !ok || (!h.IsZero() && now.Sub(h) < device.RejectAfterTime) {
			continue // not in the device, or a live session
		}
		out = append(out, sessionCandidate{key: key, id: c.ClientID, ep: s.Endpoint})
		if len(out) == recoverBurst {
			break
		}
	}
	return out
}

// startHandshake points the peer at ep and makes wireguard-go initiate a
// handshake with it (see the comment at the top).
func (n *Node) startHandshake(key wgtypes.Key, ep netip.AddrPort) error {
	pk := hex.EncodeToString(key[:])
	on := fmt.Sprintf("public_key=%s\nupdate_only=true\nendpoint=%s\npersistent_keepalive_interval=1\n", pk, ep)
	if err := n.dev.IpcSet(on); err != nil {
		return err
	}
	return n.dev.IpcSet(fmt.Sprintf("public_key=%s\nupdate_only=true\npersistent_keepalive_interval=0\n", pk))
}
