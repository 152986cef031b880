package netstack

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/internal/testutil"
)

// The budgets per client (limits.go): each test here fails without the
// mechanism it names.

// clientIDs is a Config.ClientOf for the harness's clients: every address
// of clients[i] is client i+1.
func clientIDs(clients ...[]netip.Addr) func(netip.Addr) (uint64, bool) {
	m := map[netip.Addr]uint64{}
	for i, c := range clients {
		for _, a := range c {
			m[a] = uint64(i + 1)
		}
	}
	return func(a netip.Addr) (uint64, bool) { id, ok := m[a]; return id, ok }
}

// TestFlowCapPerClientNotPerAddress: a client's IPv4 and IPv6 inner
// addresses share its flow cap once ClientOf says they are one client;
// without ClientOf each address is a client of its own (the old behaviour,
// checked too so the test cannot pass by refusing everything).
func TestFlowCapPerClientNotPerAddress(t *testing.T) {
	for _, tc := range []struct {
		name     string
		clientOf func(netip.Addr) (uint64, bool)
		want     int // flows client A gets over both families
	}{
		{"per-client", clientIDs(clientA, clientB), 2},
		{"per-address", nil, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDialer{tcpTarget: listenTCP(t, echoTCP)}
			h := newHarness(t, Config{Dialer: d, ClientOf: tc.clientOf, Limits: Limits{MaxFlowsPerClient: 2}}, clientA, clientB)
			defer h.close()
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			got := 0
			// Alternate the families: v4, v6, v4, v6.
			for i := range 4 {
				dst := netip.AddrPortFrom(remote, 7)
				if i%2 == 1 {
					dst = netip.AddrPortFrom(remoteV6, 7)
				}
				c, err := h.dialTCP(t, 0, dst, 5*time.Second)
				if err != nil {
					continue
				}
				conns = append(conns, c)
				pingPong(t, c)
				got++
			}
			if got != tc.want {
				t.Fatalf("client A opened %d flows over v4 and v6, want %d", got, tc.want)
			}
			st := h.stack.Stats()
			if want := uint64(4 - tc.want); st.TCP.Refused.ClientFlows != want || st.TCP.CapHits != want {
				t.Errorf("refused %+v, cap hits %d; want %d refusals by the client's flow cap", st.TCP.Refused, st.TCP.CapHits, want)
			}
			// Client B has its own budget.
			c, err := h.dialTCP(t, 1, netip.AddrPortFrom(remoteV6, 7), 5*time.Second)
			if err != nil {
				t.Fatalf("client B: %v", err)
			}
			conns = append(conns, c)
			pingPong(t, c)
		})
	}
}

// fakeClock is a limiter clock that moves only when told.
type fakeClock struct{ ns int64 }

func (c *fakeClock) now() int64              { return c.ns }
func (c *fakeClock) advance(d time.Duration) { c.ns += int64(d) }

func newLimiter(lim Limits) (*limiter, *fakeClock) {
	clk := &fakeClock{ns: int64(time.Hour)}
	l := &limiter{now: clk.now}
	l.init(lim)
	return l, clk
}

func key(i int) clientKey { return clientKey{id: uint64(i)} }

// TestPendingFairShare: eight clients that dial blackholes as fast as the
// limiter lets them (their per-client cap alone would let them take the
// whole pool) leave room for a ninth client, which gets slots for its
// dials; together they hold at most 8/(8+share) of the pool. With the
// share rule off (a share of 0 makes it never refuse) the hostile clients
// take every slot and the ninth is refused, so the test fails without it.
func TestPendingFairShare(t *testing.T) {
	const pool, hostile = 256, 8
	for _, tc := range []struct {
		share      int
		wantNinth  bool
		maxHostile int
	}{
		{share: DefaultPendingShare, wantNinth: true, maxHostile: pool * hostile / (hostile + DefaultPendingShare)},
		{share: 0, wantNinth: false, maxHostile: pool},
	} {
		t.Run(fmt.Sprintf("share-%d", tc.share), func(t *testing.T) {
			l, _ := newLimiter(Limits{MaxFlows: 1 << 20, MaxFlowsPerClient: 1 << 20, MaxPending: pool,
				MaxPendingPerClient: pool, PendingShare: tc.share, FlowRate: -1})
			// Round-robin until every hostile client is refused.
			held := 0
			for progress := true; progress; {
				progress = false
				for i := range hostile {
					if l.acquire(key(i)) == admitted {
						held++
						progress = true
					}
				}
			}
			if held > tc.maxHostile {
				t.Errorf("%d hostile clients hold %d of %d dial slots, want at most %d", hostile, held, pool, tc.maxHostile)
			}
			// The ninth client's dials: each one it starts stays pending.
			ninth := 0
			for range 4 {
				if l.acquire(key(100)) == admitted {
					ninth++
				}
			}
			if got := ninth > 0; got != tc.wantNinth {
				t.Fatalf("ninth client got %d of 4 dials with %d hostile ones holding %d of %d slots (share %d)", ninth, hostile, held, pool, tc.share)
			}
			if tc.wantNinth && ninth != 4 {
				t.Errorf("ninth client got %d of 4 dials; a client holding little must keep dialing", ninth)
			}
		})
	}
}

// TestPendingFairShareStack: the same through the stack: clients A and B
// hold dials to a blackhole (the dialer hangs) until refused, and client C
// still connects. MaxPendingPerClient equals MaxPending, so only the share
// rule can leave C a slot.
func TestPendingFairShareStack(t *testing.T) {
	clientC := []netip.Addr{netip.MustParseAddr("100.96.0.4"), netip.MustParseAddr("fd57:6564:6765::4")}
	echo := listenTCP(t, echoTCP)
	d := &fakeDialer{hang: true}
	dialer := &splitDialer{fakeDialer: d, ok: clientC[0], okTarget: echo}
	h := newHarness(t, Config{Dialer: dialer, TCPDialTimeout: 20 * time.Second, ClientOf: clientIDs(clientA, clientB, clientC),
		Limits: Limits{MaxPending: 16, MaxPendingPerClient: 16, PendingShare: 2}}, clientA, clientB, clientC)
	defer h.close()
	for c := range 2 {
		for i := range 16 {
			go h.dialTCP(t, c, netip.AddrPortFrom(remote, uint16(1000+i)), 30*time.Second)
		}
	}
	// The hostile clients settle: every further dial of theirs is refused.
	testutil.WaitFor(t, 10*time.Second, "hostile dials settle", func() bool {
		st := h.stack.Stats()
		return uint64(st.Pending)+st.TCP.CapHits >= 32 // refused SYNs come again: ≥
	})
	st := h.stack.Stats()
	if st.Pending >= 16 || st.TCP.Refused.PendingShare == 0 {
		t.Fatalf("hostile clients hold %d of 16 dial slots, refused %+v; want the share rule to leave room", st.Pending, st.TCP.Refused)
	}
	c, err := h.dialTCP(t, 2, netip.AddrPortFrom(remote, 7), 5*time.Second)
	if err != nil {
		t.Fatalf("client C, while A and B hold %d dials: %v", st.Pending, err)
	}
	defer c.Close()
	testutil.CheckEcho(t, c, 100)
}

// splitDialer connects flows from ok to okTarget and hands the rest to
// fakeDialer.
type splitDialer struct {
	*fakeDialer
	ok       netip.Addr
	okTarget string
}

func (d *splitDialer) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	if src.Addr() == d.ok {
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", d.okTarget)
	}
	return d.fakeDialer.DialTCP(ctx, src, dst)
}

// TestFlowRate: a client's bucket holds FlowBurst tokens, refills at
// FlowRate per second, is per client (both families), and is not refilled
// by closing every flow.
func TestFlowRate(t *testing.T) {
	l, clk := newLimiter(Limits{MaxFlows: 100, MaxFlowsPerClient: 100, MaxPending: 100, MaxPendingPerClient: 100,
		PendingShare: 1, FlowRate: 10, FlowBurst: 3})
	open := func(k clientKey) refusal {
		r := l.acquire(k)
		if r == admitted {
			l.releasePending(k) // the dial failed at once: the flow is gone
		}
		return r
	}
	for i := range 3 {
		if r := open(key(1)); r != admitted {
			t.Fatalf("flow %d of the burst refused (%d)", i, r)
		}
	}
	if r := open(key(1)); r != refusedRate {
		t.Fatalf("flow 4 within the burst's instant: %d, want refused by rate", r)
	}
	if r := open(key(2)); r != admitted {
		t.Fatalf("another client refused (%d): buckets must be per client", r)
	}
	clk.advance(100 * time.Millisecond) // one token at 10/s
	if r := open(key(1)); r != admitted {
		t.Fatalf("after 100ms at 10/s: %d, want a token", r)
	}
	if r := open(key(1)); r != refusedRate {
		t.Fatalf("second flow after 100ms: %d, want refused by rate", r)
	}
	// No flow is open now; a sweep must not forget a client whose
	// bucket is not full again, which would hand it a full one early.
	clk.advance(50 * time.Millisecond)
	l.lastSweep = clk.now() - sweepEvery
	l.sweep(clk.now())
	if r := open(key(1)); r != refusedRate {
		t.Fatalf("an idle client's empty bucket was reset by a sweep (%d)", r)
	}
	// A second later it is full, and a sweep forgets the client.
	clk.advance(time.Second)
	l.lastSweep = clk.now() - sweepEvery
	l.sweep(clk.now())
	if _, ok := l.clients[key(1)]; ok {
		t.Error("an idle client with a full bucket is still remembered after a sweep")
	}
}

// pingPong checks c echoes one byte, leaving it open.
func pingPong(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("write: %v", err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("echo: %v", err)
	}
}

// TestFlowRateStack: the stack answers RST to a client over its rate and
// counts it.
func TestFlowRateStack(t *testing.T) {
	d := &fakeDialer{refuse: true}
	h := newHarness(t, Config{Dialer: d, ClientOf: clientIDs(clientA), Limits: Limits{FlowRate: 1, FlowBurst: 3}}, clientA)
	defer h.close()
	for i := range 5 {
		dst := netip.AddrPortFrom(remote, 80)
		if i%2 == 1 {
			dst = netip.AddrPortFrom(remoteV6, 80)
		}
		if _, err := h.dialTCP(t, 0, dst, 5*time.Second); err == nil {
			t.Fatal("connected through a refusing dialer")
		}
	}
	st := h.stack.Stats()
	if st.TCP.Refused.Rate != 2 || st.TCP.DialFailures != 3 {
		t.Fatalf("rate refusals %d, dial failures %d; want 2 and 3 (burst of 3 over both families)", st.TCP.Refused.Rate, st.TCP.DialFailures)
	}
}

func TestGrantFor(t *testing.T) {
	for _, tc := range []struct {
		free int64
		want int
	}{
		{64 << 20, maxGrant},
		{16 << 20, maxGrant},
		{16<<20 - 1, 2 << 20},
		{1 << 20, 256 << 10},
		{64 << 10, minGrant},
		{0, minGrant},
		{-5, minGrant},
	} {
		if got := grantFor(tc.free); got != tc.want {
			t.Errorf("grantFor(%d) = %d, want %d", tc.free, got, tc.want)
		}
	}
	// Grants over one budget: the sum stays within it until they reach
	// minGrant.
	const budget = 64 << 20
	var sum int64
	for range 1000 {
		g := grantFor(budget - sum)
		if g > minGrant && sum+int64(g) > budget {
			t.Fatalf("grant %d takes the sum %d over the budget %d", g, sum+int64(g), budget)
		}
		sum += int64(g)
	}
	if sum > budget+1000*minGrant {
		t.Fatalf("1000 grants sum to %d, over budget+1000·minGrant", sum)
	}
}

// TestBufferBudget: a client's flows get buffers (gVisor's send and
// receive buffers, the splice's copy buffers) from its budget, so the
// bytes its flows can make the node hold stay within it, while another
// client's first flow still gets the full defaults.
func TestBufferBudget(t *testing.T) {
	const budget = 1 << 20
	// The origin sends without end; the clients never read (a zero window).
	origin := listenTCP(t, func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	h := newHarness(t, Config{Dialer: &fakeDialer{tcpTarget: origin}, ClientOf: clientIDs(clientA, clientB),
		Limits: Limits{BufferPerClient: budget}}, clientA, clientB)
	defer h.close()
	const n = 16
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		c, err := h.dialTCP(t, 0, netip.AddrPortFrom(remote, uint16(1000+i)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	cb, err := h.dialTCP(t, 1, netip.AddrPortFrom(remote, 2000), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conns = append(conns, cb)
	testutil.WaitFor(t, 5*time.Second, "flows open", func() bool { return h.stack.Stats().TCP.Open == n+1 })

	var heldA, sndB int64
	for _, f := range h.tcpFlows() {
		snd := f.ep.SocketOptions().GetSendBufferSize()
		rcv := f.ep.SocketOptions().GetReceiveBufferSize()
		copyBuf := int64(minGrant << f.buf)
		if f.in.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap() == clientB[0] {
			sndB = snd
			continue
		}
		// What one flow can hold: its send queue (the client's zero
		// window), its receive queue when the buffer is fixed, and a
		// copy buffer each way.
		heldA += snd + 2*copyBuf
		if rcv <= tcpRXBufDef {
			heldA += rcv
		}
	}
	// Each flow's buffers hold at most four times its grant, and the
	// grants sum to at most the budget plus minGrant per flow.
	if limit := int64(4 * (budget + n*minGrant)); heldA > limit {
		t.Errorf("client A's %d flows may hold %d bytes, want at most %d (budget %d)", n, heldA, limit, budget)
	}
	// Client B's budget is its own: its first flow gets what client A's
	// first did, not what A's seventeenth would.
	if want := int64(grantFor(budget)); sndB != want {
		t.Errorf("client B's first flow has a %d-byte send buffer, want %d", sndB, want)
	}
	st := h.stack.Stats()
	if st.TCP.SmallBuffers == 0 || st.BufferGranted > budget+n*minGrant+tcpTXBufDef {
		t.Errorf("small-buffer flows %d, granted %d; want small buffers counted and grants within the budgets", st.TCP.SmallBuffers, st.BufferGranted)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	testutil.WaitFor(t, 10*time.Second, "grants returned", func() bool { return h.stack.Stats().BufferGranted == 0 })
}

// tcpFlows returns the stack's open TCP flows.
func (h *harness) tcpFlows() []*tcpFlow {
	h.stack.flowsMu.Lock()
	defer h.stack.flowsMu.Unlock()
	var fs []*tcpFlow
	for f := range h.stack.flows {
		if tf, ok := f.(*tcpFlow); ok {
			fs = append(fs, tf)
		}
	}
	return fs
}

// TestTCPSilentTimeout: a flow that never carried a byte is closed after
// TCPSilentTimeout, well before TCPIdleTimeout; one that did stays.
func TestTCPSilentTimeout(t *testing.T) {
	addr := listenTCP(t, echoTCP)
	h := newHarness(t, Config{Dialer: &fakeDialer{tcpTarget: addr}, TCPIdleTimeout: time.Hour, TCPSilentTimeout: 300 * time.Millisecond}, clientA)
	defer h.close()
	silent, err := h.dialTCP(t, 0, netip.AddrPortFrom(remote, 80), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	used, err := h.dialTCP(t, 0, netip.AddrPortFrom(remote, 81), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer used.Close()
	pingPong(t, used)

	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("silent flow: read got %v, want it closed by the silent timeout", err)
	}
	testutil.WaitFor(t, 2*time.Second, "silent counter", func() bool { return h.stack.Stats().TCP.SilentClosed == 1 })
	// The flow that carried data outlives the silent timeout by far.
	time.Sleep(600 * time.Millisecond)
	pingPong(t, used)
	if st := h.stack.Stats(); st.TCP.Open != 1 || st.TCP.IdleClosed != 0 {
		t.Fatalf("open %d, idle-closed %d; want the used flow open", st.TCP.Open, st.TCP.IdleClosed)
	}
}

// TestOverQuota: a client Config.OverQuota names over its quota gets no
// new flow (counted by reason); its open flows go on, other clients are
// untouched, and it opens flows again once it is no longer over.
func TestOverQuota(t *testing.T) {
	var over atomic.Bool
	d := &fakeDialer{tcpTarget: listenTCP(t, echoTCP)}
	h := newHarness(t, Config{Dialer: d, ClientOf: clientIDs(clientA, clientB),
		OverQuota: func(id uint64) bool { return id == 1 && over.Load() }}, clientA, clientB)
	defer h.close()
	dst := netip.AddrPortFrom(remote, 7)
	open, err := h.dialTCP(t, 0, dst, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	pingPong(t, open)
	over.Store(true)
	if c, err := h.dialTCP(t, 0, dst, 5*time.Second); err == nil {
		c.Close()
		t.Fatal("a client over quota opened a new flow")
	}
	pingPong(t, open) // the flow it had goes on
	c, err := h.dialTCP(t, 1, dst, 5*time.Second)
	if err != nil {
		t.Fatalf("another client: %v", err)
	}
	pingPong(t, c)
	c.Close()
	if st := h.stack.Stats(); st.TCP.Refused.OverQuota != 1 || st.TCP.CapHits != 1 {
		t.Errorf("refused %+v, cap hits %d; want 1 over quota", st.TCP.Refused, st.TCP.CapHits)
	}
	over.Store(false)
	c, err = h.dialTCP(t, 0, dst, 5*time.Second)
	if err != nil {
		t.Fatalf("after the quota lifted: %v", err)
	}
	pingPong(t, c)
	c.Close()
}
