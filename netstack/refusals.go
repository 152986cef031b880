package netstack

import (
	"context"
	"log/slog"
	"net/netip"
)

// refusalNames are the refusals' names in the log, those of Refusals'
// JSON keys; globalRefusal marks the node-wide caps, logged at WARN (the
// node is full), while a client's own budgets are INFO.
var (
	refusalNames = [numRefusals]string{
		refusedFlows: "flows", refusedClientFlows: "client_flows",
		refusedPending: "pending", refusedClientPending: "client_pending",
		refusedPendingShare: "pending_share", refusedRate: "rate",
	}
	globalRefusal = [numRefusals]bool{refusedFlows: true, refusedPending: true}
)

// refuse counts a proto flow from src to dst refused for why and logs
// it if it is the first of its reason, then at most once a minute per
// reason (with the number refused since the line before).
func (s *Stack) refuse(c *flowCounters, why refusal, proto string, src, dst netip.AddrPort) {
	c.refuse(why)
	n, ok := s.refusals.Allow(refusalNames[why])
	if !ok {
		return
	}
	level := slog.LevelInfo
	if globalRefusal[why] {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, "flow refused", "reason", refusalNames[why], "proto", proto,
		"client", src.Addr(), "dst", dst, "refused_since_last", n, "next_line_after", s.refusals.Interval().String())
}
