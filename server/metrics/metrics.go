// Package metrics serves a node's numbers in Prometheus's text format
// (wedged --metrics). Its collector holds no counters of its own: each
// scrape reads the functions in Sources (the node's, the XDP front's, the
// egress dialer's, the netstack's, the cluster membership's and the
// relay's own counters) and reports what they say then.
//
// Cardinality is bounded whatever the number of clients: no metric has a
// per-client or per-key label. Every label takes its values from a fixed
// set (direction, protocol, reason, the XDP program's counter names) or
// from the operator's configuration (the egress addresses).
package metrics

import (
	"net/http"
	"net/netip"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/front"
	"github.com/wedge-edge/wedge/server/relay"
)

// Sources are what a scrape reads. A nil function leaves its metrics out
// (a node without the XDP front has no wedge_xdp_ series).
type Sources struct {
	Node  func() server.Counters
	Front func() (front.Counters, error)
	// Egress are the dialer's counters; Slices the egress addresses and
	// this node's port range on each, whose use is read from the kernel.
	Egress func() egress.Stats
	Slices func() []egress.Slice
	// Stack is the netstack's numbers (server/ may not import netstack/:
	// the caller copies them).
	Stack   func() Stack
	Cluster func() Cluster
	// RelayClient and RelayServer are the WARP+ relay's counters: the
	// flows this node relayed to exits, and those it served as an exit.
	RelayClient func() relay.Stats
	RelayServer func() relay.ServerStats
}

// Stack is what the metrics report of the netstack.
type Stack struct {
	TCP, UDP Flows
	// From the client (written by wireguard-go into the stack) and to it.
	PacketsFromClient, PacketsToClient uint64
	BytesFromClient, BytesToClient     uint64
	DroppedFromClient, DroppedToClient uint64
	// gVisor's TCP counters.
	TCPEstablished, TCPRetransmits, TCPFailedAttempts uint64
	TCPEstablishedResets, TCPTimeouts, TCPResetsSent  uint64
}

// Flows are one protocol's inner flows.
type Flows struct {
	Open   int64
	Opened uint64
	// Refused by reason: the keys of RefusalReasons.
	Refused map[string]uint64
	// DialTimeouts and DialErrors are dials that failed other than by
	// the ACL (counted in Refused["acl"]).
	DialTimeouts, DialErrors uint64
}

// RefusalReasons are the reasons a flow is refused, the values of
// wedge_flows_refused_total's reason label.
var RefusalReasons = []string{"acl", "local", "max_flows", "client_flows", "pending", "client_pending", "pending_share", "rate", "over_quota"}

// Cluster is this node's view of its cluster.
type Cluster struct {
	EtcdReachable         bool
	ActiveNodes, Draining int
	SelfDraining          bool
	// Revision is what the membership view is complete up to; WatchLag
	// how many revisions the newest change under its prefix is ahead.
	Revision, WatchLag int64
}

// ClusterOf reads m.
func ClusterOf(m *cluster.Membership) func() Cluster {
	return func() Cluster {
		h := m.Health()
		c := Cluster{EtcdReachable: h.Connected, Revision: h.Revision, SelfDraining: m.Self().State == cluster.Draining,
			WatchLag: max(0, h.MembersRevision-h.Revision)}
		for _, n := range m.Members() {
			if n.State == cluster.Draining {
				c.Draining++
			} else {
				c.ActiveNodes++
			}
		}
		return c
	}
}

// Handler serves src's metrics, with Go's runtime and the process's, at
// any path it is mounted on. A source that fails (the BPF map cannot be
// read) leaves its metrics out and the rest is served.
func Handler(src Sources) http.Handler {
	return promhttp.HandlerFor(Registry(src), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Registry holds src's collector with Go's and the process's.
func Registry(src Sources) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(New(src), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// New returns the collector of src's metrics.
func New(src Sources) prometheus.Collector { return &collector{src: src} }

type collector struct{ src Sources }

var all []*prometheus.Desc

func desc(name, help string, labels ...string) *prometheus.Desc {
	d := prometheus.NewDesc("wedge_"+name, help, labels, nil)
	all = append(all, d)
	return d
}

var (
	clients    = desc("clients_registered", "Clients registered (in the node's view of the registry).")
	peersAct   = desc("peers_active", "Clients with a handshake on this node in the last 3 minutes.")
	peersAdd   = desc("peers_added_total", "Peers put into the WireGuard device: a registered client's initiation arrived without one, or the node started a handshake (inheritance).")
	peersDel   = desc("peers_removed_total", "Peers taken out of the WireGuard device: registrations deleted or expired, and the evictions counted by wedge_peers_evicted_total.")
	peersHeld  = desc("peers_held", "Peers in the WireGuard device now.")
	peersMax   = desc("peers_max", "The most peers the device holds (--max-peers).")
	peersEvict = desc("peers_evicted_total", "Peers removed while their registration stays, by reason: idle (--peer-idle), unfinished (handshake never completed), full (for a new client while the node was full).", "reason")
	peersRef   = desc("peers_refused_total", "Handshakes of registered clients without a peer that were refused, by reason: full (every peer busy), replay (not newer than the client's evicted peer's).", "reason")
	peerOpens  = desc("peer_opens_total", "Initiations the Bind opened with the service key (one X25519) to find a client without a peer.")
	peerDoor   = desc("peer_door_total", "What the Bind did with initiations before wireguard-go, by outcome: known (a client with a peer: passed on), unregistered (dropped, miss remembered), miss_remembered, rate_limited and cookie_sent (dropped unopened), passed_under_load (a client with a peer, unopened), open_failed, add_slow (dropped: adding the peer took over a second).", "outcome")
	messages   = desc("messages_received_total", "WireGuard messages received, by whether they carried a ClientID.", "kind")
	mismatches = desc("client_id_mismatches_total", "Messages whose ClientID differed from the one the session's client registered.")
	responses  = desc("handshake_responses_total", "Handshake responses wireguard-go made, by what the node did with the initiation they answer: opened (then sent, or forwarded to the owner), rate_limited (dropped), open_failed and unrecorded (sent as they were).", "outcome")
	forwarded  = desc("handshakes_forwarded_total", "Opened initiations handed to the client's owner node instead of answered here.")
	sent       = desc("handshake_messages_sent_total", "Handshake messages sent, by type: response (a handshake this node completed), initiation (the node initiating), cookie_reply (under load).", "type")
	initiated  = desc("handshakes_initiated_total", "Handshakes the node initiated itself: to recover a client that sent data without a session, or to take over a departed node's (or its previous run's) sessions.", "reason")
	refusedRec = desc("session_recoveries_refused_total", "Clients that sent data without a session that recovery left alone.")

	tunPackets = desc("tunnel_packets_total", "IP packets through the tunnel, by direction.", "direction")
	tunBytes   = desc("tunnel_bytes_total", "Bytes of IP packets (headers included) through the tunnel, by direction.", "direction")
	tunDropped = desc("tunnel_dropped_packets_total", "Packets dropped between wireguard-go and the netstack, by direction.", "direction")

	flowsOpen    = desc("flows_open", "Inner flows open, by protocol.", "protocol")
	flowsOpened  = desc("flows_opened_total", "Inner flows opened (their dial succeeded), by protocol.", "protocol")
	flowsRefused = desc("flows_refused_total", "Inner flows refused, by protocol and reason: acl, local (a node address), or the cap that refused them.", "protocol", "reason")
	flowsFailed  = desc("flows_dial_failures_total", "Inner flows whose dial failed, by protocol and reason (timeout, error).", "protocol", "reason")

	tcpEst     = desc("netstack_tcp_established", "TCP connections in ESTABLISHED in the netstack (gVisor).")
	tcpRetrans = desc("netstack_tcp_retransmitted_segments_total", "TCP segments the netstack retransmitted (gVisor).")
	tcpFailed  = desc("netstack_tcp_failed_connection_attempts_total", "TCP openings in the netstack that ended in an error (gVisor).")
	tcpResets  = desc("netstack_tcp_established_resets_total", "TCP connections reset from ESTABLISHED or CLOSE-WAIT (gVisor).")
	tcpRTO     = desc("netstack_tcp_retransmission_timeouts_total", "TCP retransmission timeouts in the netstack (gVisor).")
	tcpRSTs    = desc("netstack_tcp_resets_sent_total", "TCP RST segments the netstack sent (gVisor).")

	egDials     = desc("egress_dials_total", "Dials to destinations on the internet, by protocol (icmp: pings).", "protocol")
	egErrors    = desc("egress_dial_errors_total", "Egress dials that failed, by protocol and reason: acl, no_egress (no usable source), slice_exhausted, port_share (the client's share of UDP ports), other.", "protocol", "reason")
	egPortsUsed = desc("egress_ports_in_use", "Ports of this node's slice held by sockets on the egress address now.", "address")
	egPorts     = desc("egress_ports", "Ports in this node's slice on the egress address.", "address")

	xdpPackets   = desc("xdp_packets_total", "Packets the XDP front counted, by verdict (the program's counter names).", "verdict")
	xdpNodes     = desc("xdp_table_nodes", "Nodes in the XDP front's Maglev table.")
	xdpPins      = desc("xdp_pins", "ClientIDs pinned to a node in the XDP front.")
	xdpHeirs     = desc("xdp_heirs", "Departed nodes' slots the XDP front sends to an heir.")
	xdpEgress    = desc("xdp_egress_addresses", "Egress addresses the XDP front steers replies for.")
	xdpFwdErrors = desc("xdp_forward_errors_total", "Failures to forward an initiation to its owner: send (the GUE packet) or flow_entry (the XDP flow entry).", "kind")

	etcdUp   = desc("cluster_etcd_reachable", "1 if etcd answered a quorum read in the last 3 s.")
	nodes    = desc("cluster_nodes", "Live nodes of the cluster, by state (active, draining).", "state")
	draining = desc("cluster_draining", "1 while this node drains.")
	revision = desc("cluster_revision", "The etcd revision this node's membership view is complete up to.")
	watchLag = desc("cluster_watch_lag_revisions", "How many etcd revisions the newest change to the membership (at the last once-a-second probe) is ahead of this node's view.")

	relayFlows     = desc("relay_flows_total", "Flows that could be relayed (the path table named an exit, or none), by the route they took: relayed or direct.", "route")
	relayFallbacks = desc("relay_fallbacks_total", "Of the direct flows, those whose exit was tried and failed, refused or was too slow.")
	relaySkipped   = desc("relay_skipped_total", "Of the direct flows, those whose exit was in backoff after a failure, not tried.")
	relayRefused   = desc("relay_refused_total", "Relay attempts an exit answered other than 200.")
	relayFailures  = desc("relay_failures_total", "Relay attempts that got no answer (the connection to the exit failed or timed out).")
	relayDown      = desc("relay_exits_down", "Exits in backoff after a failure.")
	relayServed    = desc("relay_served_total", "CONNECT requests this node served as an exit, by outcome: relayed, bad_request, hop_limit, denied (its ACL), dial_failed (the origin).", "outcome")
	relayStreams   = desc("relay_streams_open", "Flows relayed through this node as an exit, open now.")
	relayConns     = desc("relay_connections_open", "Connections from other nodes to this node's relay listener, open now.")
	relayTLS       = desc("relay_tls_refused_total", "Connections to the relay listener refused in the TLS handshake (no certificate of this cluster).")
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range all {
		ch <- d
	}
}

// PeerEvictionReasons are wedge_peers_evicted_total's reasons (the
// status's peers.removed, without deleted).
var PeerEvictionReasons = []string{"idle", "unfinished", "full"}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v uint64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	if c.src.Node != nil {
		c.node(ch, c.src.Node())
	}
	if c.src.Stack != nil {
		c.stack(ch, c.src.Stack())
	}
	if c.src.Egress != nil {
		st := c.src.Egress()
		for _, p := range []struct {
			name string
			c    egress.Counts
		}{{"tcp", st.TCP}, {"udp", st.UDP}, {"icmp", st.Ping}} {
			counter(ch, egDials, p.c.OK+p.c.Failed+p.c.Denied, p.name)
			counter(ch, egErrors, p.c.Denied, p.name, "acl")
			counter(ch, egErrors, p.c.NoEgress, p.name, "no_egress")
			counter(ch, egErrors, p.c.SliceExhausted, p.name, "slice_exhausted")
			counter(ch, egErrors, p.c.PortShare, p.name, "port_share")
			counter(ch, egErrors, p.c.Failed-min(p.c.Failed, p.c.NoEgress+p.c.SliceExhausted+p.c.PortShare), p.name, "other")
		}
	}
	if c.src.Slices != nil {
		c.ports(ch, c.src.Slices())
	}
	if c.src.Front != nil {
		c.front(ch)
	}
	if c.src.RelayClient != nil {
		r := c.src.RelayClient()
		counter(ch, relayFlows, r.Relayed, "relayed")
		counter(ch, relayFlows, r.Direct, "direct")
		counter(ch, relayFallbacks, r.Fallbacks)
		counter(ch, relaySkipped, r.Skipped)
		counter(ch, relayRefused, r.Refused)
		counter(ch, relayFailures, r.Failed)
		gauge(ch, relayDown, float64(r.ExitsDown))
	}
	if c.src.RelayServer != nil {
		r := c.src.RelayServer()
		counter(ch, relayServed, r.Streams, "relayed")
		counter(ch, relayServed, r.BadRequests, "bad_request")
		counter(ch, relayServed, r.HopLimit, "hop_limit")
		counter(ch, relayServed, r.Denied, "denied")
		counter(ch, relayServed, r.DialFailures, "dial_failed")
		gauge(ch, relayStreams, float64(r.StreamsOpen))
		gauge(ch, relayConns, float64(r.ConnsOpen))
		counter(ch, relayTLS, r.TLSRefused)
	}
	if c.src.Cluster != nil {
		cl := c.src.Cluster()
		gauge(ch, etcdUp, bit(cl.EtcdReachable))
		gauge(ch, nodes, float64(cl.ActiveNodes), "active")
		gauge(ch, nodes, float64(cl.Draining), "draining")
		gauge(ch, draining, bit(cl.SelfDraining))
		gauge(ch, revision, float64(cl.Revision))
		gauge(ch, watchLag, float64(cl.WatchLag))
	}
}

func (c *collector) node(ch chan<- prometheus.Metric, n server.Counters) {
	gauge(ch, clients, float64(n.Clients))
	gauge(ch, peersAct, float64(n.Active))
	counter(ch, peersAdd, n.PeersAdded)
	counter(ch, peersDel, n.PeersRemoved)
	p := n.Peers
	gauge(ch, peersHeld, float64(p.Held))
	gauge(ch, peersMax, float64(p.Max))
	for _, r := range PeerEvictionReasons {
		counter(ch, peersEvict, p.Removed[r], r)
	}
	counter(ch, peersRef, p.RefusedFull, "full")
	counter(ch, peersRef, p.RefusedReplay, "replay")
	counter(ch, peerOpens, p.Opens)
	for _, o := range []struct {
		name string
		v    uint64
	}{{"known", p.Known}, {"unregistered", p.Unregistered}, {"miss_remembered", p.MissRemembered},
		{"rate_limited", p.RateLimited}, {"cookie_sent", p.CookiesSent}, {"passed_under_load", p.PassedLoaded},
		{"open_failed", p.OpenFailed}, {"add_slow", p.AddSlow}} {
		counter(ch, peerDoor, o.v, o.name)
	}
	counter(ch, messages, n.Bind.Stamped, "stamped")
	counter(ch, messages, n.Bind.Unstamped, "unstamped")
	counter(ch, mismatches, n.Bind.Mismatches)
	var ix server.IndexStatus
	if n.Indexes != nil {
		ix = *n.Indexes
	}
	counter(ch, responses, ix.Opened, "opened")
	counter(ch, responses, ix.OpenLimited, "rate_limited")
	counter(ch, responses, ix.OpenFailed, "open_failed")
	counter(ch, responses, ix.NotRecorded, "unrecorded")
	counter(ch, forwarded, ix.Forwarded)
	counter(ch, sent, n.Bind.ResponsesSent, "response")
	counter(ch, sent, n.Bind.InitiationsSent, "initiation")
	counter(ch, sent, n.Bind.CookieReplies, "cookie_reply")
	counter(ch, initiated, n.Bind.HandshakesStarted, "recovery")
	counter(ch, initiated, n.Bind.SessionsInherited, "inheritance")
	counter(ch, refusedRec, n.Bind.RecoveriesRefused)
}

func (c *collector) stack(ch chan<- prometheus.Metric, s Stack) {
	counter(ch, tunPackets, s.PacketsFromClient, "from_client")
	counter(ch, tunPackets, s.PacketsToClient, "to_client")
	counter(ch, tunBytes, s.BytesFromClient, "from_client")
	counter(ch, tunBytes, s.BytesToClient, "to_client")
	counter(ch, tunDropped, s.DroppedFromClient, "from_client")
	counter(ch, tunDropped, s.DroppedToClient, "to_client")
	for _, p := range []struct {
		name string
		f    Flows
	}{{"tcp", s.TCP}, {"udp", s.UDP}} {
		gauge(ch, flowsOpen, float64(p.f.Open), p.name)
		counter(ch, flowsOpened, p.f.Opened, p.name)
		for _, r := range RefusalReasons {
			counter(ch, flowsRefused, p.f.Refused[r], p.name, r)
		}
		counter(ch, flowsFailed, p.f.DialTimeouts, p.name, "timeout")
		counter(ch, flowsFailed, p.f.DialErrors, p.name, "error")
	}
	gauge(ch, tcpEst, float64(s.TCPEstablished))
	counter(ch, tcpRetrans, s.TCPRetransmits)
	counter(ch, tcpFailed, s.TCPFailedAttempts)
	counter(ch, tcpResets, s.TCPEstablishedResets)
	counter(ch, tcpRTO, s.TCPTimeouts)
	counter(ch, tcpRSTs, s.TCPResetsSent)
}

func (c *collector) ports(ch chan<- prometheus.Metric, sl []egress.Slice) {
	used, err := egress.PortsInUse(sl)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(egPortsUsed, err)
		return
	}
	seen := map[netip.Addr]bool{}
	for _, s := range sl {
		a := s.Addr.Unmap()
		if seen[a] {
			continue
		}
		seen[a] = true
		size := 0
		if s.PortLo != 0 || s.PortHi != 0 {
			size = int(s.PortHi) - int(s.PortLo) + 1
			gauge(ch, egPorts, float64(size), a.String())
		}
		gauge(ch, egPortsUsed, float64(used[a]), a.String())
	}
}

func (c *collector) front(ch chan<- prometheus.Metric) {
	f, err := c.src.Front()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(xdpPackets, err)
		return
	}
	names := make([]string, 0, len(f.Verdicts))
	for k := range f.Verdicts {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		counter(ch, xdpPackets, f.Verdicts[k], k)
	}
	gauge(ch, xdpNodes, float64(f.TableNodes))
	gauge(ch, xdpPins, float64(f.Pins))
	gauge(ch, xdpHeirs, float64(f.Heirs))
	gauge(ch, xdpEgress, float64(f.EgressAddresses))
	counter(ch, xdpFwdErrors, f.ForwardErrors, "send")
	counter(ch, xdpFwdErrors, f.FlowErrors, "flow_entry")
}
