package main

import (
	"flag"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/netstack"
	"github.com/wedge-edge/wedge/server"
)

// budgetFlags are the budgets per client (README "Budgets per client";
// netstack/limits.go says how they share the node fairly).
type budgetFlags struct {
	maxPending, maxPendingPerCli int
	flowRate, flowBurst          int
	bufferMiB                    int
	silent                       time.Duration
	udpShare                     int
	usageInterval                time.Duration
	maxPeers                     int
	peerIdle                     time.Duration
}

func (b *budgetFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&b.maxPending, "max-pending", 0, "cap on dials in flight on this node (0: netstack default)")
	fs.IntVar(&b.maxPendingPerCli, "max-pending-per-client", 0, "cap on one client's dials in flight; a client may also hold at most 1/8 of the free dial slots (0: netstack default)")
	fs.IntVar(&b.flowRate, "flow-rate", netstack.DefaultFlowRate, "new flows per second one client may open, on average (0: no limit)")
	fs.IntVar(&b.flowBurst, "flow-burst", 0, "new flows one client may open at once (0: twice --flow-rate)")
	fs.IntVar(&b.bufferMiB, "buffer-per-client", netstack.DefaultBufferPerClient>>20, "buffer budget of one client's TCP flows, in `MiB`: what a client that stops reading can make the node hold (0: none, every flow gets the default buffers)")
	fs.DurationVar(&b.silent, "silent-timeout", netstack.DefaultTCPSilentTimeout, "close a TCP flow that carried no byte either way for this long")
	fs.IntVar(&b.udpShare, "udp-port-share", egress.DefaultUDPPortShare, "one client may hold at most 1/`N` of a source address's UDP ports (0: no limit)")
	fs.IntVar(&b.maxPeers, "max-peers", server.DefaultMaxPeers, "the most clients this node holds a WireGuard peer for at once (about 35 KB each), 1..65536; when full a new client's handshake evicts the peer idle the longest, or is refused if every peer carried traffic in the last 10 s")
	fs.DurationVar(&b.peerIdle, "peer-idle", server.DefaultPeerIdle, "remove a client's peer after this long without a handshake or data (it is added again at its next handshake)")
	fs.DurationVar(&b.usageInterval, "usage-interval", server.DefaultUsageInterval, "how often this node adds the bytes it counted per client to the registry (usage and quotas; at most 30s for quotas to hold within 60s)")
}

// limits are netstack's Limits from the budget flags and --max-flows*.
func (b *budgetFlags) limits(maxFlows, maxPerCli int) netstack.Limits {
	l := netstack.Limits{MaxFlows: maxFlows, MaxFlowsPerClient: maxPerCli,
		MaxPending: b.maxPending, MaxPendingPerClient: b.maxPendingPerCli,
		FlowRate: b.flowRate, FlowBurst: b.flowBurst, BufferPerClient: b.bufferMiB << 20}
	if b.flowRate <= 0 {
		l.FlowRate = -1
	}
	if b.bufferMiB <= 0 {
		l.BufferPerClient = -1
	}
	return l
}

// udpPortShare is egress.Config.UDPPortShare from --udp-port-share.
func (b *budgetFlags) udpPortShare() int {
	if b.udpShare <= 0 {
		return -1
	}
	return b.udpShare
}

// clientIndex is the budgets' ClientOf: the registration an inner address
// belongs to, from the node once it exists (no flow arrives before).
type clientIndex struct{ node atomic.Pointer[server.Node] }

func (ci *clientIndex) of(a netip.Addr) (uint64, bool) {
	n := ci.node.Load()
	if n == nil {
		return 0, false
	}
	id, ok := n.ClientOf(a)
	return uint64(id), ok
}

// plus reports whether the client at inner address a has the plus tier
// now (server.Node.Plus): its TCP flows may be relayed (relay.go).
func (ci *clientIndex) plus(a netip.Addr) bool {
	n := ci.node.Load()
	if n == nil {
		return false
	}
	id, ok := n.ClientOf(a)
	return ok && n.Plus(id)
}

// overQuota is the netstack's OverQuota: whether the client's usage
// passed its quota (server: usage.go), so its new flows are refused.
func (ci *clientIndex) overQuota(id uint64) bool {
	n := ci.node.Load()
	return n != nil && n.OverQuota(clientid.ID(id))
}
