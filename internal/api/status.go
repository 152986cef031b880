package api

import (
	"net/netip"
	"time"
)

// Status is the node's report for GET /v1/status and `wedge status`.
type Status struct {
	Name       string   `json:"name"`
	PublicKey  string   `json:"public_key"`
	ListenPort uint16   `json:"listen_port"`
	Endpoints  []string `json:"endpoints"`
	Clients    int      `json:"clients"`
	// Active counts clients with a handshake in the last 3 minutes.
	Active  int            `json:"active"`
	Cluster *ClusterStatus `json:"cluster,omitempty"`
	Bind    BindStatus     `json:"bind"`
	// Indexes is the report of the node's session-index routing (the
	// server's IndexStatus), absent when the node routes by ClientID alone.
	Indexes any `json:"indexes,omitempty"`
	// Paths is the node's path table (WARP+ smart routing), absent when
	// the node keeps none (not in a cluster).
	Paths    *PathsStatus   `json:"paths,omitempty"`
	Peers    []PeerStatus   `json:"peers"`
	Sections map[string]any `json:"sections,omitempty"`
}

// ClusterStatus is the node's view of its cluster: itself, its etcd
// connection and every live node.
type ClusterStatus struct {
	Node  Member   `json:"node"`
	Etcd  Health   `json:"etcd"`
	Nodes []Member `json:"nodes"`
}

// BindStatus counts what the Bind saw.
type BindStatus struct {
	Stamped    uint64 `json:"stamped"`
	Unstamped  uint64 `json:"unstamped"`
	Mismatches uint64 `json:"client_id_mismatches"`
	// HandshakesStarted counts handshakes the node initiated for stamped
	// clients that sent data without a session here (recover.go).
	HandshakesStarted uint64 `json:"handshakes_started"`
	// RecoveriesRefused counts clients that sent data without a session
	// here that recovery left alone: data from an address other than the
	// one last authenticated, or a client another live node holds.
	RecoveriesRefused uint64 `json:"recoveries_refused"`
	// SessionsInherited counts handshakes the node started for sessions it
	// took over: a departed node's as its heir, or its own previous run's
	// after a restart within the lease (server/inherit.go).
	SessionsInherited uint64 `json:"sessions_inherited"`
	// CookieReplies are the cookie replies wireguard-go sent while under
	// load (a handshake flood).
	CookieReplies uint64 `json:"cookie_replies_sent"`
	// InitiationsSent and ResponsesSent are the handshake messages the
	// node sent; each response is a handshake it completed (those whose
	// initiation went to the client's owner node are not sent).
	InitiationsSent uint64 `json:"initiations_sent"`
	ResponsesSent   uint64 `json:"responses_sent"`
	// Socket is the node's UDP socket layer (wedge's own Bind): absent
	// with another Bind.
	Socket *SocketStatus `json:"socket,omitempty"`
}

// SocketStatus counts what the node's UDP sockets did.
type SocketStatus struct {
	// SrcFallbacks: sends refused from the address the client targeted
	// (no longer local) and sent from the kernel's choice instead.
	SrcFallbacks uint64 `json:"src_fallbacks"`
	// CacheResets: times the endpoint cache filled up and was emptied.
	CacheResets uint64 `json:"endpoint_cache_resets"`
	// GSOOff: sockets that turned UDP GSO off after the kernel refused it.
	GSOOff uint64 `json:"gso_off"`
	// Coalesced: received messages that held several datagrams (UDP GRO),
	// GRODatagrams the datagrams cut from them.
	Coalesced    uint64 `json:"gro_messages"`
	GRODatagrams uint64 `json:"gro_datagrams"`
}

// PeerStatus is one client with a session (it has handshaken since the
// device came up).
type PeerStatus struct {
	ID            string    `json:"id"`
	PublicKey     string    `json:"public_key"`
	ClientID      string    `json:"client_id"`
	ClientIDSeen  string    `json:"client_id_seen,omitempty"`
	Endpoint      string    `json:"endpoint"`
	LastHandshake time.Time `json:"last_handshake"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
}

// State is a node's membership state.
type State string

const (
	// Active nodes take new clients.
	Active State = "active"
	// Draining nodes keep the clients they have and take no new ones.
	Draining State = "draining"
)

// Member is one live node as the cluster sees it.
type Member struct {
	ID       string     `json:"id"`
	DC       string     `json:"dc"`
	Underlay netip.Addr `json:"underlay"`
	// State is Draining while a drain mark exists for ID (wedge drain),
	// whether or not the node is up; the mark outlives restarts.
	State State `json:"state"`
	// Clients is how many clients had a handshake with the node in the
	// last 3 minutes, as it last reported.
	Clients int       `json:"clients"`
	Started time.Time `json:"started"`
	// Slot is the node's number in its data center, 1..255, unique among
	// its live nodes (claimed on the node's lease under members/slots/):
	// the session indexes the node hands out carry it, so fronts can
	// route a standard client's transport messages to the node that holds
	// the session (see the server's wgmsg package).
	Slot uint8 `json:"slot,omitempty"`
	// Pinned is set by a draining node once Pins lists the clients it
	// keeps (SetPins): until then fronts keep it in their Maglev tables,
	// so its clients never go elsewhere before their pins exist.
	Pinned bool `json:"pinned,omitempty"`
	// Pins are the ClientIDs the node keeps although the table gives them
	// to another node: all its clients while it drains, and otherwise the
	// ones a membership change moved away from it while they held a
	// session here. 3 bytes each, big-endian, ascending (PinnedClientIDs
	// decodes them).
	Pins []byte `json:"pins,omitempty"`
}

// PinnedClientIDs decodes Pins; nil when they are malformed.
func (mem Member) PinnedClientIDs() []uint32 {
	if len(mem.Pins)%3 != 0 {
		return nil
	}
	out := make([]uint32, 0, len(mem.Pins)/3)
	for i := 0; i < len(mem.Pins); i += 3 {
		id := uint32(mem.Pins[i])<<16 | uint32(mem.Pins[i+1])<<8 | uint32(mem.Pins[i+2])
		if id == 0 {
			return nil
		}
		out = append(out, id)
	}
	return out
}

// Health is this node's view of its etcd connection.
type Health struct {
	Endpoints []string `json:"endpoints"`
	// Connected: the last probe (a quorum read, once a second) succeeded
	// within the last 3 s, so registrations can be made.
	Connected bool `json:"connected"`
	// Since is when Connected last changed.
	Since time.Time `json:"since"`
	// Lease is the node's lease id (hex), "" while it has none.
	Lease string `json:"lease,omitempty"`
	// Revision is the etcd revision the membership view is complete up to.
	Revision int64 `json:"revision"`
	// MembersRevision is the revision of the newest change under the
	// membership's prefix at the last probe: while it is above Revision,
	// the view's watch lags behind etcd (deletions are not seen here).
	MembersRevision int64     `json:"members_revision,omitempty"`
	LastError       string    `json:"last_error,omitempty"`
	ErrorAt         time.Time `json:"error_at,omitzero"`
}
