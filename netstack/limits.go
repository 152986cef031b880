package netstack

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Budgets per client
//
// Every cap below counts per client, not per address: Config.ClientOf tells
// which inner addresses belong to one registration (its IPv4 and its IPv6
// address), and an address it does not know is a client of its own.
//
// Open flows: at most Limits.MaxFlowsPerClient per client and MaxFlows in
// all.
//
// Pending dials (a flow whose destination has not answered yet) are shared
// fairly: besides MaxPending in all and MaxPendingPerClient each, a client
// may start a dial only while it holds fewer than 1/PendingShare of the
// slots still free (pending·share < free). The allowance shrinks as the
// pool fills, so clients that dial blackholes as fast as they may cannot
// take the last slots. Clients that grab in turn, each as much as it may,
// leave share/(share+1) of what was free each time: eight of them with the
// default share of 8 leave (8/9)^8 ≈ 39% of the pool (22 of 64 slots in
// e2e/budget_test.go). Once their dials have cycled (a blackholed dial
// ends at Config.TCPDialTimeout and must be admitted again) they settle
// where each holds h with h·share ≈ free = MaxPending − n·h, n/(n+share)
// of the pool together (eight: half). A client with no dial pending needs
// only one free slot, so its new flows are not refused for want of one; a
// client with k pending needs more than k·share free, so a client opening
// many connections at once while the pool is busy gets about free/share
// of them at a time. A SYN refused by a pending cap (pending,
// client_pending) is dropped without an answer, as a full SYN backlog
// drops it: the client's TCP sends it again (1 s, then 3 s, 7 s ...) and
// the flow opens once slots are free, where an RST would have failed the
// application's connect (a burst of 500 connections from one client lost
// 70 of them to "connection refused" in `wedge-lab bench`; the kernel
// path lost none). A pending_share refusal still answers RST: it falls on
// clients holding many dials while the pool is busy (the blackhole
// dialers of e2e/budget_test.go), and letting their SYNs come back cost
// the other clients' downloads (0.72-0.74 of alone, against ≥ 0.8). The
// other refusals answer RST at once too: waiting does not lift a cap on
// open flows, a quota or the ACL soon, and a client over its rate learns
// it promptly. A refusal only ever falls on a client that holds at least
// 1/share of what is free, so when slots run short the clients that hold
// the most are refused first. Not done: taking a slot back from the client
// holding the most (preemption), which would also serve such bursts. What
// no per-client rule can stop is many clients (many registrations) each
// holding one dial: that is the registration API's rate limits' job.
//
// New flows: a token bucket per client (Limits.FlowRate per second, bursts
// of FlowBurst) bounds how fast one client opens flows, whatever their
// fate; a refused flow does not cost a token.
//
// Buffered bytes: a client that never reads (a zero window) makes the node
// hold what the origin sends, in gVisor's send buffer and in the splice's
// copy buffer, and one whose origin never reads makes it hold what the
// client sends, in gVisor's receive buffer. Each TCP flow takes a grant
// from its client's budget (Limits.BufferPerClient) when it opens: a
// quarter of what the client has left, rounded down to a power of two,
// between minGrant (16 KiB) and maxGrant (the default send buffer, 4 MiB).
// A flow with a smaller grant than maxGrant gets send and receive buffers
// of its grant (fixed, not auto-tuned) and copy buffers of at most its
// grant; a flow with a full grant keeps the defaults (4 MiB to send, up
// to 8 MiB to receive, 256 KiB copy buffers). Either way a flow's buffers
// hold at most four times its grant, and the grants of one client sum to
// at most its budget plus minGrant per flow (grantFor), so one client
// makes the node hold at most 4·(BufferPerClient + flows·16 KiB), and a
// zero window (send queue and one copy buffer) half of that. A client's
// first flows (five with the default budget) get full buffers; once it
// has many open, new ones get small ones and are slower (a 16 KiB window
// carries ~1.3 Mbit/s at 100 ms). Grants are returned when flows end;
// open flows keep theirs.
//
// Refusals are counted by reason (Refusals) in Stats.

// Defaults for the per-client budgets' zero Limits fields.
const (
	// DefaultPendingShare: a client may hold at most 1/8 of the free dial
	// slots.
	DefaultPendingShare = 8
	// DefaultFlowRate and DefaultFlowBurst: new flows per second per
	// client, and the burst. A browser opening a heavy page opens tens.
	DefaultFlowRate  = 500
	DefaultFlowBurst = 1000
	// DefaultBufferPerClient is the buffer budget of one client's TCP
	// flows: five flows with the default buffers, then smaller ones.
	DefaultBufferPerClient = 32 << 20
)

const (
	// minGrant is the smallest buffer grant of a TCP flow: a window of a
	// few segments, enough to make progress.
	minGrant = 16 << 10
	// maxGrant is the largest: the default send buffer.
	maxGrant = tcpTXBufDef
)

// clientKey names a client for the budgets: its registration when
// Config.ClientOf knows the address, else the address itself.
type clientKey struct {
	id   uint64
	addr netip.Addr // zero when id names the client
}

// clientOf returns the key of the client that owns inner address a.
func (s *Stack) clientOf(a netip.Addr) clientKey {
	if s.cfg.ClientOf != nil {
		if id, ok := s.cfg.ClientOf(a); ok {
			return clientKey{id: id}
		}
	}
	return clientKey{addr: a}
}

// overQuota reports whether client's new flows are refused for its
// usage (Config.OverQuota); only a client ClientOf named has a quota.
func (s *Stack) overQuota(client clientKey) bool {
	return s.cfg.OverQuota != nil && client.addr == (netip.Addr{}) && s.cfg.OverQuota(client.id)
}

// refusal is why the limiter refused a flow.
type refusal int

const (
	admitted refusal = iota
	refusedFlows
	refusedClientFlows
	refusedPending
	refusedClientPending
	refusedPendingShare
	refusedRate
	refusedOverQuota
	numRefusals
)

// silent reports whether a SYN refused for why is dropped without an
// answer (the client retries it) rather than answered with RST: the
// pending caps, whose slots free up within the dial timeout (not the
// share rule: see the comment at the top).
func (why refusal) silent() bool {
	return why == refusedPending || why == refusedClientPending
}

// limiter counts open flows, pending dials and buffer grants, globally and
// per client, and keeps each client's token bucket.
type limiter struct {
	lim Limits
	now func() int64 // nanotime; tests replace it

	mu        sync.Mutex
	flows     int
	pending   int
	granted   int64
	clients   map[clientKey]*clientState
	lastSweep int64
}

type clientState struct {
	flows, pending int
	granted        int64
	tokens         float64
	refilled       int64 // nanotime of the last refill
}

// sweepEvery is how often idle clients whose bucket is full again are
// forgotten; until then a client that opens and closes flows keeps its
// bucket, so closing everything does not refill it.
const sweepEvery = int64(10 * time.Second)

func (l *limiter) init(lim Limits) {
	l.lim = lim
	l.clients = make(map[clientKey]*clientState)
	if l.now == nil {
		l.now = nanotime
	}
}

// state returns client's state, creating it with a full bucket.
func (l *limiter) state(client clientKey, now int64) *clientState {
	c := l.clients[client]
	if c == nil {
		c = &clientState{tokens: float64(l.lim.FlowBurst), refilled: now}
		l.clients[client] = c
	}
	return c
}

// refill adds the tokens earned since the last refill; it reports whether
// the bucket is full.
func (l *limiter) refill(c *clientState, now int64) bool {
	if l.lim.FlowRate < 0 {
		return true
	}
	burst := float64(l.lim.FlowBurst)
	c.tokens = min(burst, c.tokens+float64(now-c.refilled)*float64(l.lim.FlowRate)/1e9)
	c.refilled = now
	return c.tokens >= burst
}

// acquire admits a new flow of client: it checks the flow caps (reserving
// nothing: promote decides for good), takes a token and reserves a dial
// slot.
func (l *limiter) acquire(client clientKey) refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.sweep(now)
	c := l.state(client, now)
	r := l.admit(c, now)
	if r != admitted {
		l.gc(client, c, now)
		return r
	}
	c.pending++
	l.pending++
	return admitted
}

func (l *limiter) admit(c *clientState, now int64) refusal {
	switch {
	case l.flows >= l.lim.MaxFlows:
		return refusedFlows
	case c.flows >= l.lim.MaxFlowsPerClient:
		return refusedClientFlows
	case l.pending >= l.lim.MaxPending:
		return refusedPending
	case c.pending >= l.lim.MaxPendingPerClient:
		return refusedClientPending
	case c.pending*l.lim.PendingShare >= l.lim.MaxPending-l.pending:
		return refusedPendingShare
	}
	l.refill(c, now)
	if l.lim.FlowRate >= 0 {
		if c.tokens < 1 {
			return refusedRate
		}
		c.tokens--
	}
	return admitted
}

// promote turns a pending dial into an open flow; on a refusal the pending
// slot is released.
func (l *limiter) promote(client clientKey) refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	c.pending--
	l.pending--
	switch {
	case l.flows >= l.lim.MaxFlows:
		l.gc(client, c, l.now())
		return refusedFlows
	case c.flows >= l.lim.MaxFlowsPerClient:
		l.gc(client, c, l.now())
		return refusedClientFlows
	}
	c.flows++
	l.flows++
	return admitted
}

func (l *limiter) releasePending(client clientKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	c.pending--
	l.pending--
	l.gc(client, c, l.now())
}

func (l *limiter) releaseFlow(client clientKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	c.flows--
	l.flows--
	l.gc(client, c, l.now())
}

// grant takes a TCP flow's buffer grant from client's budget (see
// grantFor); the flow must be open (promoted).
func (l *limiter) grant(client clientKey) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	free := int64(l.lim.BufferPerClient) - c.granted
	if l.lim.BufferPerClient < 0 {
		free = 4 * maxGrant
	}
	g := grantFor(free)
	c.granted += int64(g)
	l.granted += int64(g)
	return g
}

// ungrant returns a grant; call it before releaseFlow.
func (l *limiter) ungrant(client clientKey, g int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	c.granted -= int64(g)
	l.granted -= int64(g)
}

// grantFor is the grant of a flow whose client has free bytes of its
// budget left: a quarter of them, rounded down to a power of two, between
// minGrant and maxGrant. Grants over a budget B sum to at most about B
// until they reach minGrant: each takes at most a quarter of what is left.
func grantFor(free int64) int {
	g := int64(minGrant)
	for g*2 <= free/4 && g*2 <= maxGrant {
		g *= 2
	}
	return int(g)
}

// gc forgets an idle client once its bucket is full again (a client with
// flows keeps its state in any case); otherwise sweep does it later.
func (l *limiter) gc(client clientKey, c *clientState, now int64) {
	if c.flows != 0 || c.pending != 0 {
		return
	}
	if c.granted == 0 && l.refill(c, now) {
		delete(l.clients, client)
	}
}

// sweep forgets, at most once per sweepEvery, idle clients whose buckets
// are full again.
func (l *limiter) sweep(now int64) {
	if now-l.lastSweep < sweepEvery {
		return
	}
	l.lastSweep = now
	for k, c := range l.clients {
		l.gc(k, c, now)
	}
}

// activeClients counts clients with a flow or a dial now.
func (l *limiter) activeClients() int {
	n := 0
	for _, c := range l.clients {
		if c.flows > 0 || c.pending > 0 {
			n++
		}
	}
	return n
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
	// BufferGranted is the sum of the open TCP flows' buffer grants: the
	// most their buffers may hold (see Limits.BufferPerClient).
	BufferGranted int64 `json:"buffer_granted"`
	// PacketsIn and PacketsOut count IP packets written by and read by
	// wireguard-go.
	PacketsIn  uint64 `json:"packets_in"`
	PacketsOut uint64 `json:"packets_out"`
	// BytesIn and BytesOut are those packets' sizes (IP headers included).
	BytesIn  uint64 `json:"bytes_in"`
	BytesOut uint64 `json:"bytes_out"`
	// DroppedIn counts packets from wireguard-go that were not IP;
	// DroppedOut packets the stack emitted that did not fit the queue to
	// Read or the buffer Read was given.
	DroppedIn  uint64 `json:"dropped_in"`
	DroppedOut uint64 `json:"dropped_out"`
	// TCPReopened counts client SYNs that took over a 4-tuple the node's
	// side still held in TIME-WAIT (a client reusing its port at once).
	TCPReopened uint64 `json:"tcp_reopened"`
	// GVisorTCP is what gVisor's own TCP statistics say.
	GVisorTCP GVisorTCPStats `json:"gvisor_tcp"`
}

// GVisorTCPStats are a few of the TCP counters gVisor keeps for the stack.
type GVisorTCPStats struct {
	// Established is the number of connections in ESTABLISHED now.
	Established uint64 `json:"established"`
	// Retransmits counts retransmitted segments.
	Retransmits uint64 `json:"retransmits"`
	// FailedAttempts counts active and passive openings that ended in
	// an error.
	FailedAttempts uint64 `json:"failed_connection_attempts"`
	// EstablishedResets counts connections reset from ESTABLISHED or
	// CLOSE-WAIT (gVisor's EstablishedResets).
	EstablishedResets uint64 `json:"established_resets"`
	// Timeouts counts retransmission timeouts (RTOs).
	Timeouts uint64 `json:"timeouts"`
	// ResetsSent counts RST segments sent.
	ResetsSent uint64 `json:"resets_sent"`
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
	// CapHits counts flows refused by a Limits cap, any of Refused's
	// reasons.
	CapHits uint64 `json:"cap_hits"`
	// Refused splits CapHits by reason.
	Refused Refusals `json:"refused"`
	// RefusedLocal counts flows to a Local address other than DNS.
	RefusedLocal uint64 `json:"refused_local"`
	// DNS counts flows forwarded to the DNS upstream.
	DNS uint64 `json:"dns"`
	// IdleClosed counts flows closed by the idle timeout; SilentClosed
	// those closed by the shorter one for flows that never carried a
	// byte (Config.TCPSilentTimeout).
	IdleClosed   uint64 `json:"idle_closed"`
	SilentClosed uint64 `json:"silent_closed"`
	// SmallBuffers counts TCP flows opened with less than the default
	// buffers because their client's buffer budget was running low.
	SmallBuffers uint64 `json:"small_buffers"`
}

// Refusals counts refused flows by the cap that refused them.
type Refusals struct {
	Flows         uint64 `json:"flows"`          // Limits.MaxFlows
	ClientFlows   uint64 `json:"client_flows"`   // Limits.MaxFlowsPerClient
	Pending       uint64 `json:"pending"`        // Limits.MaxPending
	ClientPending uint64 `json:"client_pending"` // Limits.MaxPendingPerClient
	PendingShare  uint64 `json:"pending_share"`  // the fair share of the free dial slots
	Rate          uint64 `json:"rate"`           // Limits.FlowRate
	OverQuota     uint64 `json:"over_quota"`     // Config.OverQuota: the client's usage passed its quota
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
	silent, smallBuffers                 atomic.Uint64
	refused                              [numRefusals]atomic.Uint64
}

// refuse counts a flow refused for r.
func (c *flowCounters) refuse(r refusal) {
	c.capHits.Add(1)
	c.refused[r].Add(1)
}

func (c *flowCounters) snapshot() FlowStats {
	return FlowStats{
		Open: c.open.Load(), Total: c.total.Load(),
		DialFailures: c.dialFail.Load(), Denied: c.denied.Load(), DialTimeouts: c.dialTimeout.Load(),
		CapHits: c.capHits.Load(),
		Refused: Refusals{
			Flows: c.refused[refusedFlows].Load(), ClientFlows: c.refused[refusedClientFlows].Load(),
			Pending: c.refused[refusedPending].Load(), ClientPending: c.refused[refusedClientPending].Load(),
			PendingShare: c.refused[refusedPendingShare].Load(), Rate: c.refused[refusedRate].Load(),
			OverQuota: c.refused[refusedOverQuota].Load(),
		},
		RefusedLocal: c.refusedLocal.Load(), DNS: c.dns.Load(),
		IdleClosed: c.idle.Load(), SilentClosed: c.silent.Load(), SmallBuffers: c.smallBuffers.Load(),
	}
}

type counters struct {
	tcp, udp                                     flowCounters
	pingReq, pingRep, pingLocal, pingFail        atomic.Uint64
	pingDenied, pingDrop                         atomic.Uint64
	packetsIn, packetsOut, droppedIn, droppedOut atomic.Uint64
	bytesIn, bytesOut                            atomic.Uint64
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
		BytesIn: s.stats.bytesIn.Load(), BytesOut: s.stats.bytesOut.Load(),
		DroppedIn: s.stats.droppedIn.Load(), DroppedOut: s.stats.droppedOut.Load(),
		TCPReopened: s.stats.tcpReopened.Load(),
	}
	if s.stack != nil {
		t := s.stack.Stats().TCP
		st.GVisorTCP = GVisorTCPStats{
			Established: t.CurrentEstablished.Value(), Retransmits: t.Retransmits.Value(),
			FailedAttempts: t.FailedConnectionAttempts.Value(), EstablishedResets: t.EstablishedResets.Value(),
			Timeouts: t.Timeouts.Value(), ResetsSent: t.ResetsSent.Value(),
		}
	}
	s.limits.mu.Lock()
	st.Pending = s.limits.pending
	st.Clients = s.limits.activeClients()
	st.BufferGranted = s.limits.granted
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
