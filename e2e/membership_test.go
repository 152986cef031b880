package e2e

// Membership changes under the XDP front (issue 5): a node drains, and a
// node dies. Three nodes with wedged --xdp behind an ECMP route, clients
// running wedge connect in SOCKS mode, the origin rate-limited so a
// download lasts seconds.

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
	"github.com/wedge-edge/wedge/lb"
	"github.com/wedge-edge/wedge/server/clientid"
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

func newFrontLab(t *testing.T) *frontLab {
	t.Helper()
	needLab(t, "tc")
	c, bins, srv := newCluster(t, 3, 1)
	if _, err := c.Origin.Run("tc", "qdisc", "add", "dev", lab.OriginIf, "root", "tbf",
		"rate", "40mbit", "burst", "64kb", "latency", "100ms"); err != nil {
		t.Fatal(err)
	}
	f := &frontLab{c: c, bins: bins, srv: srv, next: 1080}
	f.nodes = startFrontNodes(t, c, bins, true)
	if err := c.SetVIPRoute(1, 2, 3); err != nil {
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
	for n := 1; n <= lab.MaxClusterNodes; n++ {
		if lab.NodeEgress4(n) == seen.Addr() {
			return n
		}
	}
	t.Fatalf("the origin saw %v, no node's egress", seen)
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
	var pinHits uint64
	for _, w := range f.nodes {
		pinHits += xdpCounters(t, w)["pin_hit"]
	}
	if pinHits == 0 {
		t.Error("no front counted a pin hit")
	}

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
