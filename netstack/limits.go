package netstack

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// limiter counts open flows and pending dials, globally and per client.
type limiter struct {
	lim Limits

	mu      sync.Mutex
	flows   int
	pending int
	clients map[netip.Addr]*clientCount
}

type clientCount struct{ flows, pending int }

func (l *limiter) init(lim Limits) {
	l.lim = lim
	l.clients = make(map[netip.Addr]*clientCount)
}

// acquirePending reserves a dial slot for client; false when a cap is hit.
func (l *limiter) acquirePending(client netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	if l.pending >= l.lim.MaxPending || (c != nil && c.pending >= l.lim.MaxPendingPerClient) {
		return false
	}
	if c == nil {
		c = new(clientCount)
		l.clients[client] = c
	}
	c.pending++
	l.pending++
	return true
}

// promote turns a pending dial into an open flow; false (and the pending
// slot released) when a flow cap is hit.
func (l *limiter) promote(client netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	c.pending--
	l.pending--
	if l.flows >= l.lim.MaxFlows || c.flows >= l.lim.MaxFlowsPerClient {
		l.gc(client, c)
		return false
	}
	c.flows++
	l.flows++
	return true
}

// checkFlow reports whether client may open one more flow now. It reserves
// nothing: promote decides for good.
func (l *limiter) checkFlow(client netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	return l.flows < l.lim.MaxFlows && (c == nil || c.flows < l.lim.MaxFlowsPerClient)
}

func (l *limiter) releasePending(client netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	c.pending--
	l.pending--
	l.gc(client, c)
}

func (l *limiter) releaseFlow(client netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	c.flows--
	l.flows--
	l.gc(client, c)
}

func (l *limiter) gc(client netip.Addr, c *clientCount) {
	if c.flows == 0 && c.pending == 0 {
		delete(l.clients, client)
	}
}

// Stats is a snapshot of a Stack's counters.
type Stats struct {
	TCP  FlowStats `json:"tcp"`
	UDP  FlowStats `json:"udp"`
	ICMP PingStats `json:"icmp"`
	// Pending is the number of dials in flight now.
	Pending int `json:"pending"`
	// Clients is the number of clients with a flow or dial now.
	Clients int `json:"clients"`
	// PacketsIn and PacketsOut count IP packets written by and read by
	// wireguard-go.
	PacketsIn  uint64 `json:"packets_in"`
	PacketsOut uint64 `json:"packets_out"`
	// DroppedIn counts packets from wireguard-go that were not IP;
	// DroppedOut packets the stack emitted that did not fit the queue to
	// Read or the buffer Read was given.
	DroppedIn  uint64 `json:"dropped_in"`
	DroppedOut uint64 `json:"dropped_out"`
	// TCPReopened counts client SYNs that took over a 4-tuple the node's
	// side still held in TIME-WAIT (a client reusing its port at once).
	TCPReopened uint64 `json:"tcp_reopened"`
}

// FlowStats counts one transport's flows and their outcomes.
type FlowStats struct {
	Open  int64  `json:"open"`  // flows open now
	Total uint64 `json:"total"` // flows ever opened (dial succeeded)
	// DialFailures counts dials that failed other than by denial or
	// timeout (refused, unreachable...). Denied counts dials the Dialer
	// refused by ACL (Config.IsDenied), DialTimeouts dials that timed out.
	DialFailures uint64 `json:"dial_failures"`
	Denied       uint64 `json:"denied"`
	DialTimeouts uint64 `json:"dial_timeouts"`
	// CapHits counts flows refused by a Limits cap.
	CapHits uint64 `json:"cap_hits"`
	// RefusedLocal counts flows to a Local address other than DNS.
	RefusedLocal uint64 `json:"refused_local"`
	// DNS counts flows forwarded to the DNS upstream.
	DNS uint64 `json:"dns"`
	// IdleClosed counts flows closed by the idle timeout.
	IdleClosed uint64 `json:"idle_closed"`
}

// PingStats counts ICMP echo handling.
type PingStats struct {
	Requests uint64 `json:"requests"` // echo requests seen
	Replies  uint64 `json:"replies"`  // echo replies sent to clients
	Local    uint64 `json:"local"`    // answered directly (to a Local address)
	Failed   uint64 `json:"failed"`   // Dialer.Ping failed or timed out
	Denied   uint64 `json:"denied"`   // Dialer.Ping denied (Config.IsDenied)
	Dropped  uint64 `json:"dropped"`  // over the concurrency bound
}

type flowCounters struct {
	open                                 atomic.Int64
	total, dialFail, denied, dialTimeout atomic.Uint64
	capHits, refusedLocal, dns, idle     atomic.Uint64
}

func (c *flowCounters) snapshot() FlowStats {
	return FlowStats{
		Open: c.open.Load(), Total: c.total.Load(),
		DialFailures: c.dialFail.Load(), Denied: c.denied.Load(), DialTimeouts: c.dialTimeout.Load(),
		CapHits: c.capHits.Load(), RefusedLocal: c.refusedLocal.Load(), DNS: c.dns.Load(),
		IdleClosed: c.idle.Load(),
	}
}

type counters struct {
	tcp, udp                                     flowCounters
	pingReq, pingRep, pingLocal, pingFail        atomic.Uint64
	pingDenied, pingDrop                         atomic.Uint64
	packetsIn, packetsOut, droppedIn, droppedOut atomic.Uint64
	tcpReopened                                  atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (s *Stack) Stats() Stats {
	st := Stats{
		TCP: s.stats.tcp.snapshot(),
		UDP: s.stats.udp.snapshot(),
		ICMP: PingStats{
			Requests: s.stats.pingReq.Load(), Replies: s.stats.pingRep.Load(), Local: s.stats.pingLocal.Load(),
			Failed: s.stats.pingFail.Load(), Denied: s.stats.pingDenied.Load(), Dropped: s.stats.pingDrop.Load(),
		},
		PacketsIn: s.stats.packetsIn.Load(), PacketsOut: s.stats.packetsOut.Load(),
		DroppedIn: s.stats.droppedIn.Load(), DroppedOut: s.stats.droppedOut.Load(),
		TCPReopened: s.stats.tcpReopened.Load(),
	}
	s.limits.mu.Lock()
	st.Pending = s.limits.pending
	st.Clients = len(s.limits.clients)
	s.limits.mu.Unlock()
	return st
}

// countDialError files a failed dial under the right counter.
func (s *Stack) countDialError(c *flowCounters, err error) {
	switch {
	case s.denied(err):
		c.denied.Add(1)
	case isTimeout(err):
		c.dialTimeout.Add(1)
	default:
		c.dialFail.Add(1)
	}
}
