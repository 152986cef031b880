package e2e

// Membership changes under the XDP front (issue 5): a node drains, and a
// node dies. Three nodes with wedged --xdp behind an ECMP route, clients
// running wedge connect in SOCKS mode, the origin rate-limited so a
// download lasts seconds.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/lb"
)

// frontLab is the cluster lab with the front on every node and the VIP
// spread over all of them.
type frontLab struct {
	c     *lab.Cluster
	bins  lab.Bins
	srv   string
	nodes []*lab.Wedged
	next  int // next SOCKS port
}

func newFrontLab(t *testing.T) *frontLab { return newFrontLabN(t, 3) }

// newFrontLabN is the lab of three nodes with only nodes 1..n running and
// the VIP spread over them.
func newFrontLabN(t *testing.T, n int) *frontLab {
	t.Helper()
	needLab(t, "tc")
	c, bins, srv := newCluster(t, 3, 1)
	if _, err := c.Origin.Run("tc", "qdisc", "add", "dev", lab.OriginIf, "root", "tbf",
		"rate", "40mbit", "burst", "64kb", "latency", "100ms"); err != nil {
		t.Fatal(err)
	}
	f := &frontLab{c: c, bins: bins, srv: srv, next: 1080}
	f.nodes = startFrontNodesN(t, c, bins, true, n)
	var up []int
	for k := 1; k <= n; k++ {
		up = append(up, k)
	}
	if err := c.SetVIPRoute(up...); err != nil {
		t.Fatal(err)
	}
	return f
}

// register registers a client through node 1 and returns its config's
// path and its ClientID.
func (f *frontLab) register(t *testing.T) (string, clientid.ID) {
	t.Helper()
	conf, err := f.nodes[0].Register(f.bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	cid, err := clientid.Parse(configMeta(conf, "ClientID"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(f.c.Lab.Dir, fmt.Sprintf("client-%06x.conf", uint32(cid)))
	if err := writeFile(path, conf); err != nil {
		t.Fatal(err)
	}
	return path, cid
}

// connect starts wedge connect for the config at path on the next SOCKS
// port and waits until it reaches the origin.
func (f *frontLab) connect(t *testing.T, path string) *socksClient {
	t.Helper()
	sc := startSocksClientAt(t, f.c.Client, f.bins.Wedge, f.srv, path, fmt.Sprintf("127.0.0.1:%d", f.next))
	f.next++
	sc.waitUp(t, 20*time.Second)
	return sc
}

// servedBy is the node whose egress the origin sees for sc's requests.
func servedBy(t *testing.T, sc *socksClient) int {
	t.Helper()
	seen, err := sc.remoteAddr(lab.Origin4.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	n := egressNode(seen.Addr())
	if n == 0 {
		t.Fatalf("the origin saw %v, no node's egress", seen)
	}
	return n
}

// egressNode is the cluster node whose egress address a is, 0 if none.
func egressNode(a netip.Addr) int {
	for n := 1; n <= lab.MaxClusterNodes; n++ {
		if lab.NodeEgress4(n) == a {
			return n
		}
	}
	return 0
}

// startBytes starts a download of n bytes through sc; the result arrives
// on the channel.
func startBytes(sc *socksClient, n int64, timeout time.Duration) <-chan downloadResult {
	ch := make(chan downloadResult, 1)
	go func() {
		r, err := sc.bytes(lab.Origin4.Addr(), n, timeout)
		ch <- downloadResult{r, err, time.Now()}
	}()
	return ch
}

// checkUndisturbed fails unless the download got every byte without a
// stall of 2 s or more.
func checkUndisturbed(t *testing.T, what string, res downloadResult, n int64) {
	t.Helper()
	if res.err != nil {
		t.Fatalf("%s: the download failed: %v", what, res.err)
	}
	if res.r.N != n || !res.r.OK {
		t.Fatalf("%s: the download got %d bytes (pattern ok: %v), want %d", what, res.r.N, res.r.OK, n)
	}
	if res.r.MaxGapMS >= 2000 {
		t.Fatalf("%s: the download stalled for %d ms", what, res.r.MaxGapMS)
	}
	t.Logf("%s: download complete, worst stall %d ms", what, res.r.MaxGapMS)
}

// nodeNum is n for the lab's node id "nodeN".
func nodeNum(id string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(id, "node"))
	return n
}

func nodeIDs(ns ...int) []string {
	var ids []string
	for _, n := range ns {
		ids = append(ids, fmt.Sprintf("node%d", n))
	}
	return ids
}

func TestClusterDrain(t *testing.T) {
	f := newFrontLab(t)
	path, cid := f.register(t)
	sc := f.connect(t, path)
	x := servedBy(t, sc)
	t.Logf("client %s is served by node%d", cid, x)

	const size = 40 << 20 // about 8 s at 40 Mbit/s
	done := startBytes(sc, size, 25*time.Second)
	time.Sleep(2 * time.Second)
	drainID := fmt.Sprintf("node%d", x)
	if out, err := f.c.Nodes[0].Run(f.bins.Wedge, "drain", "--api", f.nodes[0].API, drainID); err != nil {
		t.Fatalf("wedge drain: %v\n%s", err, out)
	}
	took := waitUntil(t, 10*time.Second, drainID+" draining with its pins on every node", func() bool {
		for _, w := range f.nodes {
			ok := false
			for _, m := range clusterStatus(t, w).Cluster.Nodes {
				ok = ok || m.ID == drainID && m.State == "draining" && m.Pinned && len(m.Pins) == 3
			}
			if !ok {
				return false
			}
		}
		return true
	})
	t.Logf("%s published its one pin %v after the drain", drainID, took.Round(time.Millisecond))
	checkUndisturbed(t, "across the drain", <-done, size)
	if n := servedBy(t, sc); n != x {
		t.Fatalf("after the drain the client is served by node%d, want node%d (pinned)", n, x)
	}
	// The session's data follows its session index (the pin is for its
	// next initiation, which a download of a few seconds does not make):
	// some front must have steered it by one or the other.
	var indexHits, pinHits uint64
	for _, w := range f.nodes {
		c := xdpCounters(t, w)
		indexHits, pinHits = indexHits+c["index_hit"], pinHits+c["pin_hit"]
	}
	if indexHits+pinHits == 0 {
		t.Error("no front counted a session-index or pin hit")
	}
	t.Logf("fronts steered by the session index %d times, by the pin %d times", indexHits, pinHits)

	// New clients: those the full table would give to the draining node
	// land on their owner among the others.
	all, err := lb.NewTable(nodeIDs(1, 2, 3), lb.XDPTableSize)
	if err != nil {
		t.Fatal(err)
	}
	var rest []int
	for n := 1; n <= 3; n++ {
		if n != x {
			rest = append(rest, n)
		}
	}
	left, err := lb.NewTable(nodeIDs(rest...), lb.XDPTableSize)
	if err != nil {
		t.Fatal(err)
	}
	tried := 0
	for found := 0; found < 2; {
		tried++
		if tried > 40 {
			t.Fatalf("40 registrations and fewer than 2 ClientIDs the full table gives to %s", drainID)
		}
		path, cid := f.register(t)
		if o, _ := all.Owner(uint32(cid)); o != drainID {
			continue
		}
		found++
		want, _ := left.Owner(uint32(cid))
		nc := f.connect(t, path)
		if n := servedBy(t, nc); fmt.Sprintf("node%d", n) != want {
			t.Errorf("new client %s (%s's without the drain) is served by node%d, want %s", cid, drainID, n, want)
		}
		nc.proc.Stop()
	}

	// Undo: the node is active again and withdraws its pins.
	if out, err := f.c.Nodes[0].Run(f.bins.Wedge, "drain", "--undo", "--api", f.nodes[0].API, drainID); err != nil {
		t.Fatalf("wedge drain --undo: %v\n%s", err, out)
	}
	waitUntil(t, 10*time.Second, drainID+" active without pins", func() bool {
		for _, m := range clusterStatus(t, f.nodes[0]).Cluster.Nodes {
			if m.ID == drainID {
				return m.State == "active" && !m.Pinned && len(m.Pins) == 0
			}
		}
		return false
	})
	if n := servedBy(t, sc); n != x {
		t.Errorf("after the drain was undone the client is served by node%d, want node%d", n, x)
	}
}

func TestClusterNodeDeath(t *testing.T) {
	f := newFrontLab(t)
	all, err := lb.NewTable(nodeIDs(1, 2, 3), lb.XDPTableSize)
	if err != nil {
		t.Fatal(err)
	}
	// Client a belongs to node x, which dies; client b to another node y,
	// and keeps it when x leaves the table (Maglev moves a few of the
	// survivors' ClientIDs too, under 1%: b is not one of them).
	pathA, cidA := f.register(t)
	ownerA, _ := all.Owner(uint32(cidA))
	x := nodeNum(ownerA)
	var rest []int
	for n := 1; n <= 3; n++ {
		if n != x {
			rest = append(rest, n)
		}
	}
	left, err := lb.NewTable(nodeIDs(rest...), lb.XDPTableSize)
	if err != nil {
		t.Fatal(err)
	}
	var pathB string
	var cidB clientid.ID
	for i := 0; ; i++ {
		if i == 40 {
			t.Fatal("40 registrations and no client of another node that stays there")
		}
		pathB, cidB = f.register(t)
		before, _ := all.Owner(uint32(cidB))
		after, _ := left.Owner(uint32(cidB))
		if before != ownerA && before == after {
			break
		}
	}
	a, b := f.connect(t, pathA), f.connect(t, pathB)
	if n := servedBy(t, a); n != x {
		t.Fatalf("client a (%s) is served by node%d, want its owner node%d", cidA, n, x)
	}
	y := servedBy(t, b)
	t.Logf("client a %s on node%d (dies), client b %s on node%d", cidA, x, cidB, y)

	const size = 40 << 20 // about 8 s at 40 Mbit/s
	done := startBytes(b, size, 25*time.Second)
	time.Sleep(2 * time.Second)

	// The dead node's heir (the next node by slot) takes its sessions
	// over: the slot's packets go there, and it starts a handshake with
	// each of its clients as soon as the lease is gone
	// (server/inherit.go).
	survivor := f.nodes[rest[0]-1]
	wantA := status(t, survivor).heirOf(t, ownerA)

	// kill -9, and the router withdraws the node's route at once (as BFD
	// or a BGP session going down would; the lab has no routing daemon).
	f.nodes[x-1].Proc.Kill()
	killAt := time.Now()
	if err := f.c.SetVIPRoute(rest...); err != nil {
		t.Fatal(err)
	}
	// When the survivors see the lease gone, measured on its own.
	gone := make(chan time.Time, 1)
	go func() {
		for deadline := killAt.Add(40 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if out, err := survivor.NS.Run(f.bins.Wedge, "status", "--api", survivor.API); err == nil && !strings.Contains(out, fmt.Sprintf("node%d ", x)) {
				gone <- time.Now()
				return
			}
		}
		gone <- time.Time{}
	}()
	var backAt time.Time
	for deadline := killAt.Add(40 * time.Second); time.Now().Before(deadline) && backAt.IsZero(); {
		if seen, err := a.remoteAddr(lab.Origin4.Addr(), time.Second); err == nil {
			if seen.Addr() != lab.NodeEgress4(nodeNum(wantA)) {
				t.Fatalf("after node%d died client a is served from %v, want its heir %s", x, seen, wantA)
			}
			backAt = time.Now()
		}
	}
	goneAt := <-gone
	if goneAt.IsZero() || backAt.IsZero() {
		t.Fatalf("node%d's lease gone after %v, client a back after %v (zero: never)", x, goneAt.Sub(killAt), backAt.Sub(killAt))
	}
	t.Logf("node%d killed: its lease gone after %v; client a works on %s %v after the kill, %v after the lease",
		x, goneAt.Sub(killAt).Round(time.Millisecond), wantA, backAt.Sub(killAt).Round(time.Millisecond), backAt.Sub(goneAt).Round(time.Millisecond))
	// The bound: back within the lease TTL (5 s) + 2 s of the
	// kill. A probe is a new TCP connection; one whose SYN fell into the
	// gap is retried after 1 s, which the 2 s leave room for.
	if d := backAt.Sub(killAt); d > clusterTTL+2*time.Second {
		t.Errorf("client a took %v after node%d was killed to work again, want ≤ lease TTL + 2 s (%v)", d, x, clusterTTL+2*time.Second)
	}
	heir := status(t, f.nodes[nodeNum(wantA)-1])
	if heir.Bind.SessionsInherited == 0 {
		t.Errorf("%s started no handshake for inherited sessions", wantA)
	}
	t.Logf("%s started %d handshakes for inherited sessions, %d for clients that sent data without a session",
		wantA, heir.Bind.SessionsInherited, heir.Bind.HandshakesStarted)
	checkUndisturbed(t, fmt.Sprintf("client b on node%d while node%d died", y, x), <-done, size)
	if n := servedBy(t, b); n != y {
		t.Errorf("client b moved from node%d to node%d", y, n)
	}
}

// echo keeps an interactive session (512 B every 20 ms, originsrv echo)
// through sc for d and returns it.
func (sc *socksClient) echo(d time.Duration) <-chan echoOutcome {
	ch := make(chan echoOutcome, 1)
	go func() {
		to := netip.AddrPortFrom(lab.Origin4.Addr(), lab.EchoPort).String()
		out, err := sc.ns.Run(sc.probe, "echo", "-to", to, "-proxy", sc.proxy, "-d", d.String(), "-dial-timeout", "20s")
		var r echoResult
		if err == nil {
			err = json.Unmarshal([]byte(lastLine(out)), &r)
		}
		if err != nil {
			err = fmt.Errorf("%w: %s", err, out)
		}
		ch <- echoOutcome{r, err}
	}()
	return ch
}

type echoOutcome struct {
	r   echoResult
	err error
}

// TestClusterNodeRestart: a node killed -9 and started again at once is
// back within its lease: it adopts the lease (no front sees it leave, no
// heir steps in) and re-handshakes its clients from the sessions it
// published, so client a keeps its node with one handshake and works
// again about as soon as the node is up; client b of another node never
// notices. (The inner TCP flows client a had open died with the process
// that terminated them: a restart keeps sessions, not flows.)
func TestClusterNodeRestart(t *testing.T) {
	f := newFrontLab(t)
	pathA, cidA := f.register(t)
	a := f.connect(t, pathA)
	x := servedBy(t, a)
	onX := 1 // clients with a session on node x
	var b *socksClient
	for i := 0; b == nil; i++ {
		if i == 20 {
			t.Fatalf("20 registrations and no client of a node other than node%d", x)
		}
		p, _ := f.register(t)
		if sc := f.connect(t, p); servedBy(t, sc) != x {
			b = sc
		} else {
			onX++
		}
	}
	y := servedBy(t, b)
	t.Logf("client a %s on node%d (restarted) with %d clients in all, client b on node%d", cidA, x, onX, y)
	var rest []int
	for n := 1; n <= 3; n++ {
		if n != x {
			rest = append(rest, n)
		}
	}
	survivor := f.nodes[rest[0]-1]
	// Does any survivor ever see node x leave?
	var left atomic.Bool
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if out, err := survivor.NS.Run(f.bins.Wedge, "status", "--api", survivor.API); err == nil && !strings.Contains(out, fmt.Sprintf("node%d ", x)) {
				left.Store(true)
			}
		}
	}()

	const size = 40 << 20
	done := startBytes(b, size, 30*time.Second)
	time.Sleep(2 * time.Second)

	f.nodes[x-1].Proc.Kill()
	killAt := time.Now()
	if err := f.c.SetVIPRoute(rest...); err != nil {
		t.Fatal(err)
	}
	w := startFrontNode(t, f.c, f.bins, true, x)
	f.nodes[x-1] = w
	upAt := time.Now()
	if err := f.c.SetVIPRoute(1, 2, 3); err != nil {
		t.Fatal(err)
	}
	var backAt time.Time
	for deadline := upAt.Add(20 * time.Second); time.Now().Before(deadline) && backAt.IsZero(); {
		if seen, err := a.remoteAddr(lab.Origin4.Addr(), time.Second); err == nil {
			if n := egressNode(seen.Addr()); n != x {
				t.Fatalf("after node%d's restart client a is served by node%d", x, n)
			}
			backAt = time.Now()
		}
	}
	close(stop)
	<-watched
	if backAt.IsZero() {
		t.Fatalf("client a not back within 20 s of node%d's restart", x)
	}
	t.Logf("node%d away %v (kill -9 to its API answering); client a works again %v after the kill, %v after the restart",
		x, upAt.Sub(killAt).Round(time.Millisecond), backAt.Sub(killAt).Round(time.Millisecond), backAt.Sub(upAt).Round(time.Millisecond))
	// One handshake from the node, one round trip; a probe whose SYN
	// fell into the gap is retried after 1 s, which the bound leaves
	// room for.
	if d := backAt.Sub(upAt); d > 2*time.Second {
		t.Errorf("client a took %v after node%d was up again to work, want ≤ 2 s", d, x)
	}
	if left.Load() {
		t.Errorf("a survivor saw node%d leave: the restart did not take its lease over", x)
	}
	st := status(t, w)
	if st.Bind.SessionsInherited != uint64(onX) {
		t.Errorf("restarted node%d started %d handshakes for its previous sessions, want %d (one per client it held)", x, st.Bind.SessionsInherited, onX)
	}
	checkUndisturbed(t, fmt.Sprintf("client b on node%d while node%d restarted", y, x), <-done, size)
}

// TestClusterJoin: a third node joins two. Maglev gives it a third of
// every node's ClientIDs; the nodes pin the ones they hold a session
// with before the fronts' tables take the new node in, so a download in
// progress for a client the new table gives to the new node stays where
// it is, and a new client of the new node lands there.
func TestClusterJoin(t *testing.T) {
	f := newFrontLabN(t, 2)
	three, err := lb.NewTable(nodeIDs(1, 2, 3), lb.XDPTableSize)
	if err != nil {
		t.Fatal(err)
	}
	// registerFor registers clients until one belongs to node3 once it
	// has joined (a third of them do).
	registerFor := func() (string, clientid.ID) {
		for range 30 {
			path, cid := f.register(t)
			if o, _ := three.Owner(uint32(cid)); o == "node3" {
				return path, cid
			}
		}
		t.Fatal("30 registrations and none for node3")
		return "", 0
	}
	path, cid := registerFor()
	sc := f.connect(t, path)
	y := servedBy(t, sc)
	t.Logf("client %s on node%d; node3 will own it once it joins", cid, y)

	const size = 60 << 20 // about 12 s at 40 Mbit/s
	done := startBytes(sc, size, 40*time.Second)
	time.Sleep(2 * time.Second)
	joinAt := time.Now()
	f.nodes = append(f.nodes, startFrontNode(t, f.c, f.bins, true, 3))
	if err := f.c.SetVIPRoute(1, 2, 3); err != nil {
		t.Fatal(err)
	}
	waitFrontNodes(t, f.nodes, true)
	t.Logf("node3 in every front's table %v after it started", time.Since(joinAt).Round(time.Millisecond))
	// From now on every packet reaches node3 first, whose table says
	// the client is its own: the session index (which names node y)
	// sends its data on, the pin its next initiation.
	if err := f.c.SetVIPRoute(3); err != nil {
		t.Fatal(err)
	}
	pinned := false
	for _, m := range clusterStatus(t, f.nodes[0]).Cluster.Nodes {
		if m.ID == fmt.Sprintf("node%d", y) {
			for i := 0; i+3 <= len(m.Pins); i += 3 {
				pinned = pinned || clientid.ID(uint32(m.Pins[i])<<16|uint32(m.Pins[i+1])<<8|uint32(m.Pins[i+2])) == cid
			}
			if m.Pinned {
				t.Errorf("node%d is active but its record says pinned (the drain flag)", y)
			}
		}
	}
	if !pinned {
		t.Errorf("node%d does not pin client %s, which the new table gives to node3", y, cid)
	}
	checkUndisturbed(t, fmt.Sprintf("client on node%d while node3 joined", y), <-done, size)
	if n := servedBy(t, sc); n != y {
		t.Errorf("the client moved from node%d to node%d", y, n)
	}
	if c := xdpCounters(t, f.nodes[2]); c["forwarded"] == 0 || c["index_hit"]+c["pin_hit"] == 0 {
		t.Errorf("node3 xdp: %v; want packets forwarded by the session index or a pin", c)
	} else {
		t.Logf("node3 forwarded %d packets, %d by the session index, %d on a pin", c["forwarded"], c["index_hit"], c["pin_hit"])
	}

	// A new client of node3 lands there.
	path2, cid2 := registerFor()
	nc := f.connect(t, path2)
	if n := servedBy(t, nc); n != 3 {
		t.Errorf("new client %s, node3's in the new table, is served by node%d", cid2, n)
	}
}
