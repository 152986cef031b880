package server

import (
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/internal/udpbind"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/registry"
)

// The status report's types are the API's, shared with clients.
type (
	Status        = api.Status
	ClusterStatus = api.ClusterStatus
	BindStatus    = api.BindStatus
	SocketStatus  = api.SocketStatus
	PeerStatus    = api.PeerStatus
)

// Status reports the node's state.
func (n *Node) Status() Status {
	s := Status{
		Name:       n.cfg.Name,
		PublicKey:  n.PublicKey().String(),
		ListenPort: n.cfg.ListenPort,
		Endpoints:  []string{},
		Peers:      []PeerStatus{},
	}
	for _, e := range n.cfg.Endpoints {
		s.Endpoints = append(s.Endpoints, e)
	}
	s.Bind = n.bindStatus()
	if is := n.indexStatus(); is != nil {
		s.Indexes = is // a nil *IndexStatus in the interface would show as null
	}
	peers, _ := n.peers()
	n.mu.Lock()
	s.Clients = len(n.clients)
	for _, p := range peers {
		if p.LastHandshake.IsZero() {
			continue
		}
		if time.Since(p.LastHandshake) < activeWindow {
			s.Active++
		}
		ps := PeerStatus{
			PublicKey:     p.PublicKey.String(),
			LastHandshake: p.LastHandshake.UTC(),
			RxBytes:       p.RxBytes,
			TxBytes:       p.TxBytes,
		}
		if p.Endpoint.IsValid() {
			ps.Endpoint = p.Endpoint.String()
		}
		if c, ok := n.clients[p.PublicKey]; ok {
			ps.ID, ps.ClientID = c.ID, c.ClientID.String()
		}
		if id := n.seen[p.PublicKey]; id != 0 {
			ps.ClientIDSeen = id.String()
		}
		s.Peers = append(s.Peers, ps)
	}
	n.mu.Unlock()
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].LastHandshake.After(s.Peers[j].LastHandshake) })
	if m := n.cfg.Cluster; m != nil {
		s.Cluster = &ClusterStatus{Node: m.Self(), Etcd: m.Health(), Nodes: m.Members()}
	}
	if f := n.cfg.Paths; f != nil {
		p := f()
		s.Paths = &p
	}
	n.mu.Lock()
	stats := make(map[string]func() any, len(n.cfg.Stats)+len(n.extraStats))
	for name, f := range n.cfg.Stats {
		stats[name] = f
	}
	for name, f := range n.extraStats {
		stats[name] = f
	}
	n.mu.Unlock()
	s.Sections = map[string]any{"peers": n.door.status()}
	for name, f := range stats {
		s.Sections[name] = f()
	}
	return s
}

func (n *Node) bindStatus() BindStatus {
	var b BindStatus
	b.Stamped, b.Unstamped = n.bind.Counts()
	b.Mismatches = n.mismatches.Load()
	b.HandshakesStarted = n.recovered.Load()
	b.RecoveriesRefused = n.refused.Load()
	b.SessionsInherited = n.inherited.Load()
	b.CookieReplies = n.bind.CookieReplies()
	b.InitiationsSent, b.ResponsesSent = n.bind.HandshakesSent()
	if ub, ok := n.bind.Bind.(*udpbind.Bind); ok {
		st := ub.Stats()
		b.Socket = &SocketStatus{
			SrcFallbacks: st.SrcFallbacks, CacheResets: st.CacheResets, GSOOff: st.GSOOff,
			Coalesced: st.Coalesced, GRODatagrams: st.Datagrams,
		}
	}
	return b
}

// Counters are the status report's counts without its per-client list
// and sections: what the metrics endpoint reads at every scrape.
type Counters struct {
	// Clients are the registered clients, Active those with a handshake
	// in the last 3 minutes.
	Clients, Active int
	// PeersAdded and PeersRemoved count peers put into the device and
	// taken out of it since start; Peers has the details.
	PeersAdded, PeersRemoved uint64
	Peers                    PeersStatus
	Bind                     BindStatus
	// Indexes is nil while the node routes by ClientID alone.
	Indexes *IndexStatus
}

// Counters returns the node's counts now. It walks the device's peers
// once (to count the active ones), like Status, but builds no list.
func (n *Node) Counters() Counters {
	c := Counters{Bind: n.bindStatus(), Indexes: n.indexStatus(),
		PeersAdded: n.peersAdded.Load(), PeersRemoved: n.peersRemoved.Load(), Peers: n.door.status()}
	peers, _ := n.peers()
	now := time.Now()
	for _, p := range peers {
		if !p.LastHandshake.IsZero() && now.Sub(p.LastHandshake) < activeWindow {
			c.Active++
		}
	}
	n.mu.Lock()
	c.Clients = len(n.clients)
	n.mu.Unlock()
	return c
}

// activeWindow: a client with no handshake for this long has no session
// (wireguard-go rejects a session after 180 s without rekeying).
const activeWindow = 3 * time.Minute

// countActive publishes how many clients have a session on this node to
// the cluster, for wedge status on every node, and the ClientIDs it pins:
// while it drains, every client with a session; otherwise those the table
// of the active nodes gives to another node (one joined, or the table
// moved when one left: Maglev moves a few of the survivors' ClientIDs
// too). The fronts send a pinned ClientID here whatever the table says,
// so a live session never moves; a client whose session lapses loses its
// pin and lands on its owner when it comes back.
func (n *Node) countActive() {
	m := n.cfg.Cluster
	peers, err := n.peers()
	if err != nil {
		return
	}
	self := m.Self()
	draining := self.State == cluster.Draining
	var owner func(uint32) string
	if !draining && n.cfg.Owners != nil {
		owner = n.owners.get(n.cfg.Owners, activeIDs(m.Members(), self.DC), n.log)
	}
	n.mu.Lock()
	active, pins := pinsFor(peers, n.clients, time.Now(), draining, owner, self.ID)
	n.mu.Unlock()
	m.SetClients(active)
	m.SetPins(draining, pins)
}

// pinsFor counts the clients with a session and picks the ones to pin:
// all of them when draining, else those owner gives to another node.
func pinsFor(peers []peerState, clients map[wgtypes.Key]registry.Client, now time.Time, draining bool, owner func(uint32) string, self string) (active int, pins []uint32) {
	for _, p := range peers {
		if p.LastHandshake.IsZero() || now.Sub(p.LastHandshake) >= activeWindow {
			continue
		}
		active++
		c, ok := clients[p.PublicKey]
		if !ok {
			continue
		}
		if draining || owner != nil && owner(uint32(c.ClientID)) != self {
			pins = append(pins, uint32(c.ClientID))
		}
	}
	return active, pins
}

// activeIDs are the ids of the active (not draining) nodes of data center
// dc, sorted: the membership the fronts build their tables from.
func activeIDs(ms []cluster.Member, dc string) []string {
	var ids []string
	for _, m := range ms {
		if m.DC == dc && m.State == cluster.Active {
			ids = append(ids, m.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// ownerCache keeps the owner function of the last membership: building a
// table costs milliseconds, and the membership rarely changes.
type ownerCache struct {
	key   string
	owner func(uint32) string
}

func (c *ownerCache) get(build func([]string) (func(uint32) string, error), active []string, log *slog.Logger) func(uint32) string {
	if len(active) == 0 {
		return nil
	}
	key := strings.Join(active, ",")
	if key == c.key {
		return c.owner
	}
	owner, err := build(active)
	if err != nil {
		log.Error("cluster: no owner table, so no pins for moved clients", "err", err)
		owner = nil
	}
	c.key, c.owner = key, owner
	return owner
}

// AddStats adds a section to the status report after the node started
// (for parts started after it, like the XDP front).
func (n *Node) AddStats(name string, f func() any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.extraStats == nil {
		n.extraStats = map[string]func() any{}
	}
	n.extraStats[name] = f
}
