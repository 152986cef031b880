package e2e

// The XDP front's first end-to-end check (issue 5): three nodes with
// wedged --xdp on their uplinks, the VIP routed to each node in turn, one
// stamped client (wedge connect). Whichever node the router picks, the
// client's flows must end on its owner: the origin sees the owner's egress
// address every time, and the other nodes count the packets they forwarded.
//
//   client (wedge connect, SOCKS) ── router ── node1..3 (wedged --xdp eth0 --vip ...)
//                                     │ VIP via node k, k = 1, 2, 3
//                                     └─ origin, etcd1

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

// xdpCounters reads the xdp section of a node's status.
func xdpCounters(t *testing.T, w *lab.Wedged) map[string]uint64 {
	t.Helper()
	resp, err := w.HTTPClient().Get(w.API + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct {
		Sections struct {
			XDP map[string]uint64 `json:"xdp"`
		} `json:"sections"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	if s.Sections.XDP == nil {
		t.Fatalf("%s: status has no xdp section", w.NS.Name)
	}
	return s.Sections.XDP
}

// startFrontNodes starts wedged on every node of c, with the XDP front on
// its uplink when xdp is set, readies the lab for packets XDP moves, and
// waits until every node sees all of them active.
func startFrontNodes(t *testing.T, c *lab.Cluster, bins lab.Bins, xdp bool) []*lab.Wedged {
	return startFrontNodesN(t, c, bins, xdp, len(c.Nodes))
}

// startFrontNodesN is startFrontNodes for nodes 1..n only; the others can
// join later with startFrontNode. With the front, it also waits until
// every front's table holds the n nodes (a node joins the tables a few
// seconds after it appears).
func startFrontNodesN(t *testing.T, c *lab.Cluster, bins lab.Bins, xdp bool, n int) []*lab.Wedged {
	t.Helper()
	// Frames a node sends back with XDP_TX reach the router only if its
	// veth has an XDP program; a client checksum left to offload would
	// never be finished once XDP moved the packet (DESIGN.md, the lab).
	for k := 1; k <= len(c.Nodes); k++ {
		if err := c.Router.AttachXDPPass(lab.RouterNodeIf(k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Client.TxOff(lab.ClientIf); err != nil {
		t.Fatal(err)
	}
	nodes := make([]*lab.Wedged, n)
	for i := range nodes {
		nodes[i] = startFrontNode(t, c, bins, xdp, i+1)
	}
	waitFrontNodes(t, nodes, xdp)
	return nodes
}

// startFrontNode starts wedged on node k.
func startFrontNode(t *testing.T, c *lab.Cluster, bins lab.Bins, xdp bool, k int) *lab.Wedged {
	t.Helper()
	extra := []string{"--metrics", metricsAddr}
	if xdp {
		extra = append(extra, "--xdp", lab.NodeUplinkIf, "--vip", lab.VIP4.String(), "--vip", lab.VIP6.String())
	}
	w, err := c.StartWedged(k, bins.Wedged, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// waitFrontNodes waits until every node sees all of nodes (node1..n, in
// order) active and,
// with the front, every front's table holds them all.
func waitFrontNodes(t *testing.T, nodes []*lab.Wedged, xdp bool) time.Duration {
	t.Helper()
	var want []string
	for i := range nodes {
		want = append(want, fmt.Sprintf("node%d:active", i+1))
	}
	return waitUntil(t, 15*time.Second, "every node sees every node active, in its table", func() bool {
		for _, w := range nodes {
			if liveNodes(t, w) != strings.Join(want, ",") {
				return false
			}
			if xdp && xdpCounters(t, w)["table_nodes"] != uint64(len(nodes)) {
				return false
			}
		}
		return true
	})
}

// checkXDPMetrics: node k's metrics, scraped just before its status
// report cnt, show the front's counters (no more than the report, and
// non-zero where it is) and the cluster of three.
func checkXDPMetrics(t *testing.T, k int, m map[string]float64, cnt map[string]uint64) {
	t.Helper()
	for _, v := range []string{"local", "forwarded", "decap", "not_ours", "index_hit"} {
		got, ok := m[fmt.Sprintf(`wedge_xdp_packets_total{verdict="%s"}`, v)]
		if !ok || got > float64(cnt[v]) || got == 0 && cnt[v] > 0 {
			t.Errorf("node%d: wedge_xdp_packets_total{verdict=%q} = %v (present: %v), status then said %d", k, v, got, ok, cnt[v])
		}
	}
	for name, want := range map[string]float64{
		`wedge_xdp_table_nodes`:               3,
		`wedge_cluster_nodes{state="active"}`: 3,
		`wedge_cluster_etcd_reachable`:        1,
		`wedge_cluster_draining`:              0,
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("node%d: %s = %v (present: %v), want %v", k, name, got, ok, want)
		}
	}
}

func TestClusterXDPFront(t *testing.T) {
	c, bins, srv := newCluster(t, 3, 1)
	l := c.Lab
	var err error
	nodes := startFrontNodes(t, c, bins, true)
	conf, err := nodes[0].Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(l.Dir, "connect.conf")
	if err := writeFile(path, conf); err != nil {
		t.Fatal(err)
	}
	p, err := c.Client.Start("wedge-connect", nil, bins.Wedge, "connect", "--config", path,
		"--socks", socksAddr, "--status-interval", "1s", "-v")
	if err != nil {
		t.Fatal(err)
	}
	get := func() (netip.AddrPort, error) {
		out, err := c.Client.Run(srv, "get", "-proxy", "socks5://"+socksAddr, "-timeout", "3s",
			fmt.Sprintf("http://%s/ip", netip.AddrPortFrom(lab.Origin4.Addr(), lab.HTTPPort)))
		if err != nil {
			return netip.AddrPort{}, err
		}
		return netip.ParseAddrPort(strings.TrimSpace(out))
	}

	owner := 0
	for k := 1; k <= 3; k++ {
		if err := c.SetVIPRoute(k); err != nil {
			t.Fatal(err)
		}
		var seen netip.AddrPort
		waitUntil(t, 20*time.Second, fmt.Sprintf("client reaches the origin with the VIP on node%d", k), func() bool {
			seen, err = get()
			return err == nil
		})
		n := egressNode(seen.Addr())
		if n == 0 {
			t.Fatalf("VIP on node%d: the origin saw %v, no node's egress", k, seen)
		}
		if owner == 0 {
			owner = n
			t.Logf("the client's owner is node%d", owner)
		}
		if n != owner {
			t.Fatalf("VIP on node%d: the flow ended on node%d, but the client's owner is node%d", k, n, owner)
		}
	}
	for k, w := range nodes {
		m := scrape(t, w)
		cnt := xdpCounters(t, w)
		t.Logf("node%d xdp: %v", k+1, cnt)
		checkXDPMetrics(t, k+1, m, cnt)
		if k+1 == owner {
			if cnt["local"] == 0 || cnt["decap"] == 0 {
				t.Errorf("owner node%d: local %d, decap %d; want both > 0", owner, cnt["local"], cnt["decap"])
			}
			continue
		}
		if cnt["forwarded"] == 0 {
			t.Errorf("node%d forwarded nothing while the VIP was on it", k+1)
		}
		if cnt["local"] != 0 {
			t.Errorf("node%d delivered %d of the client's packets locally", k+1, cnt["local"])
		}
	}
	p.Stop()
}
