package main

import (
	"fmt"
	"net"
	"net/http"

	"github.com/wedge-edge/wedge/netstack"
	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/front"
	"github.com/wedge-edge/wedge/server/metrics"
)

// serveMetrics serves Prometheus metrics at /metrics on --metrics, if
// set, with the node's HTTP limits.
func serveMetrics(addr string, src metrics.Sources) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(src))
	go server.NewHTTPServer(mux, 0).Serve(ln)
	return nil
}

// metricsSources are the parts' stats functions the metrics read; x and
// eg.router may be nil (no --xdp, no --egress-plan), as may the cluster.
func metricsSources(node *server.Node, stack *netstack.Stack, eg *egressParts, st *nodeStore, x *front.Front, rl *relayParts) metrics.Sources {
	src := metrics.Sources{
		Node:   node.Counters,
		Stack:  func() metrics.Stack { return stackMetrics(stack.Stats()) },
		Egress: eg.dialer.Stats,
		Slices: eg.dialer.Slices,
	}
	if eg.router != nil {
		src.Slices = eg.router.Slices
	}
	if x != nil {
		src.Front = x.Counters
	}
	if st.member != nil {
		src.Cluster = metrics.ClusterOf(st.member)
	}
	if rl != nil {
		src.RelayClient, src.RelayServer = rl.client.Stats, rl.server.Stats
	}
	return src
}

// stackMetrics copies the netstack's numbers for the metrics (server/
// does not import netstack/).
func stackMetrics(s netstack.Stats) metrics.Stack {
	flows := func(f netstack.FlowStats) metrics.Flows {
		return metrics.Flows{
			Open: f.Open, Opened: f.Total, DialTimeouts: f.DialTimeouts, DialErrors: f.DialFailures,
			Refused: map[string]uint64{
				"acl": f.Denied, "local": f.RefusedLocal,
				"max_flows": f.Refused.Flows, "client_flows": f.Refused.ClientFlows,
				"pending": f.Refused.Pending, "client_pending": f.Refused.ClientPending,
				"pending_share": f.Refused.PendingShare, "rate": f.Refused.Rate,
				"over_quota": f.Refused.OverQuota,
			},
		}
	}
	g := s.GVisorTCP
	return metrics.Stack{
		TCP: flows(s.TCP), UDP: flows(s.UDP),
		PacketsFromClient: s.PacketsIn, PacketsToClient: s.PacketsOut,
		BytesFromClient: s.BytesIn, BytesToClient: s.BytesOut,
		DroppedFromClient: s.DroppedIn, DroppedToClient: s.DroppedOut,
		TCPEstablished: g.Established, TCPRetransmits: g.Retransmits, TCPFailedAttempts: g.FailedAttempts,
		TCPEstablishedResets: g.EstablishedResets, TCPTimeouts: g.Timeouts, TCPResetsSent: g.ResetsSent,
	}
}
