package e2e

// The cluster control plane of issue 4, against the real binaries:
//
//   client ── router ── origin               3 etcd members (etcd1..3, static cluster)
//     wg-quick     │  VIP 192.0.2.1 via node 3      each in its own namespace behind the router
//                  ├── node1  wedged --etcd ... --node-id node1   (registers the client)
//                  ├── node2  wedged --etcd ... --node-id node2
//                  └── node3  wedged --etcd ... --node-id node3   (serves the client)
//
// One service key for all nodes (wedged genkey). A client registered
// through node 1's API connects through node 3. Then: one etcd member
// killed, all of etcd stopped and started again, drain and undrain through
// wedge drain, and a node killed with SIGKILL whose lease runs out.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

const clusterTTL = 5 * time.Second // wedged's default --lease-ttl

type clusterMember struct {
	ID      string `json:"id"`
	DC      string `json:"dc"`
	State   string `json:"state"`
	Clients int    `json:"clients"`
	Pinned  bool   `json:"pinned"`
	Pins    []byte `json:"pins"` // 3 bytes per ClientID
	Slot    uint8  `json:"slot"`
}

type clusterView struct {
	Clients int `json:"clients"`
	Cluster *struct {
		Node clusterMember `json:"node"`
		Etcd struct {
			Connected bool  `json:"connected"`
			Revision  int64 `json:"revision"`
		} `json:"etcd"`
		Nodes []clusterMember `json:"nodes"`
	} `json:"cluster"`
}

func clusterStatus(t *testing.T, w *lab.Wedged) clusterView {
	t.Helper()
	resp, err := w.HTTPClient().Get(w.API + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v clusterView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	if v.Cluster == nil {
		t.Fatal("status has no cluster section")
	}
	return v
}

// liveNodes is "node1:active,node2:active,..." as w sees the cluster.
func liveNodes(t *testing.T, w *lab.Wedged) string {
	var s []string
	for _, m := range clusterStatus(t, w).Cluster.Nodes {
		s = append(s, m.ID+":"+m.State)
	}
	return strings.Join(s, ",")
}

// waitUntil polls cond every 20 ms until it holds, failing after limit,
// and returns how long it took.
func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not after %v", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// hasPeer reports whether w's device holds the peer pub (wg show).
func hasPeer(t *testing.T, w *lab.Wedged, pub string) bool {
	t.Helper()
	out, err := w.NS.Run("wg", "show", w.Iface, "peers")
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(strings.Fields(out), pub)
}

// pubOf derives a config's public key with wg pubkey.
func pubOf(t *testing.T, ns *lab.NS, conf string) string {
	t.Helper()
	priv := lab.ConfigValue(conf, "PrivateKey")
	out, err := ns.Command(t.Context(), "sh", "-c", "printf '%s' \"$1\" | wg pubkey", "sh", priv).Output()
	if err != nil {
		t.Fatalf("wg pubkey: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// reachesAll waits until every node's view of the registry holds the
// registration just made (of pub) and returns the slowest node's time. A
// node adds a client's peer only when the client handshakes (peers on
// demand), so this reads the views' counts: every node counts as many
// registered clients as the one that made it, which counted it at once.
func reachesAll(t *testing.T, nodes []*lab.Wedged, pub string, limit time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	want := 0
	for _, w := range nodes {
		if w != nil {
			want = max(want, status(t, w).Clients)
		}
	}
	for _, w := range nodes {
		if w == nil {
			continue
		}
		waitUntil(t, limit-time.Since(start), fmt.Sprintf("%s (%s…): %d registrations on %s", what, pub[:8], want, w.NS.Name),
			func() bool { return status(t, w).Clients >= want })
	}
	return time.Since(start)
}

// newCluster builds the cluster lab with nodes namespaces and an etcd of
// members, starts the origin and etcd, and writes the shared service key;
// it returns the lab, the binaries and originsrv.
func newCluster(t *testing.T, nodes, members int) (*lab.Cluster, lab.Bins, string) {
	t.Helper()
	return newClusterLab(t, nodes, members, false)
}

// newClusterLab is newCluster, with the client behind the home router when
// home is set (lab.NewHomeCluster).
func newClusterLab(t *testing.T, nodes, members int, home bool) (*lab.Cluster, lab.Bins, string) {
	t.Helper()
	tools := slices.Concat(lab.ToolsOrigin, lab.ToolsClient, lab.ToolsEtcd)
	if home {
		tools = append(tools, lab.ToolsHome...)
	}
	needLab(t, tools...)
	bins, err := lab.Build(binDir)
	if err != nil {
		t.Fatal(err)
	}
	srv := originsrv(t)
	l, err := lab.New(t)
	if err != nil {
		t.Fatal(err)
	}
	newc := lab.NewCluster
	if home {
		newc = lab.NewHomeCluster
	}
	c, err := newc(l, nodes, members)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartOrigin(srv); err != nil {
		t.Fatal(err)
	}
	if err := c.StartEtcdCluster(); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Router.Run(bins.Wedged, "genkey", filepath.Join(l.Dir, "service.key")); err != nil {
		t.Fatalf("wedged genkey: %v\n%s", err, out)
	}
	return c, bins, srv
}

func TestCluster(t *testing.T) {
	c, bins, srv := newCluster(t, 3, 3)
	l := c.Lab
	var err error
	nodes := make([]*lab.Wedged, 3)
	for i := range nodes {
		if nodes[i], err = c.StartWedged(i+1, bins.Wedged); err != nil {
			t.Fatal(err)
		}
	}
	w1, w2, w3 := nodes[0], nodes[1], nodes[2]
	waitUntil(t, 10*time.Second, "every node sees three active nodes", func() bool {
		for _, w := range nodes {
			if liveNodes(t, w) != "node1:active,node2:active,node3:active" {
				return false
			}
		}
		return true
	})

	// A client registered through node 1 reaches every device within a
	// second and connects through node 3.
	conf, err := w1.Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	pub := pubOf(t, c.Client, conf)
	took := reachesAll(t, nodes, pub, time.Second, "registration on node1")
	t.Logf("registration on node1 was in all three devices %v after the API answered", took)
	if err := c.SetVIPRoute(3); err != nil {
		t.Fatal(err)
	}
	wq, err := c.Client.WGQuickUp(conf)
	if err != nil {
		t.Fatal(err)
	}
	defer wq.Down()
	probe := lab.Probe{NS: c.Client, Bin: srv}
	viaNode3 := func(what string) {
		t.Helper()
		for _, origin := range []netip.Addr{lab.Origin4.Addr(), lab.Origin6.Addr()} {
			got, err := probe.RemoteAddr(origin)
			if err != nil {
				t.Fatalf("%s: client to origin %v: %v", what, origin, err)
			}
			want := lab.NodeEgress4(3)
			if origin.Is6() {
				want = lab.NodeEgress6(3)
			}
			if got.Addr() != want {
				t.Fatalf("%s: origin saw %v, want node 3's egress %v", what, got, want)
			}
		}
	}
	viaNode3("registered on node1, connected through node3")
	// Every node's status shows where the client is: node3 publishes its
	// active clients (every 6 s).
	waitUntil(t, 15*time.Second, "node1 sees node3 with one active client", func() bool {
		for _, m := range clusterStatus(t, w1).Cluster.Nodes {
			if m.ID == "node3" {
				return m.Clients == 1
			}
		}
		return false
	})

	t.Run("one-etcd-member-killed", func(t *testing.T) {
		leader, err := c.EtcdLeader()
		if err != nil {
			t.Fatal(err)
		}
		c.KillEtcd(leader)
		t.Logf("killed etcd member %d (the leader)", leader)
		viaNode3("one etcd member down")
		conf2, err := w2.Register(bins.Wedge)
		if err != nil {
			t.Fatalf("registration with one etcd member down: %v", err)
		}
		reachesAll(t, nodes, pubOf(t, c.Client, conf2), 5*time.Second, "registration with one member down")
		if _, err := c.StartEtcd(leader); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitEtcdHealthy(30 * time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("all-etcd-stopped", func(t *testing.T) {
		for m := 1; m <= 3; m++ {
			c.StopEtcd(m)
		}
		took := waitUntil(t, 10*time.Second, "nodes notice etcd is gone", func() bool {
			for _, w := range nodes {
				if clusterStatus(t, w).Cluster.Etcd.Connected {
					return false
				}
			}
			return true
		})
		t.Logf("all nodes reported etcd unreachable %v after it stopped", took)
		viaNode3("etcd stopped")
		out, err := w1.NS.Run(bins.Wedge, "register", "--api", w1.API, "--out", filepath.Join(l.Dir, "refused.conf"))
		if err == nil || !strings.Contains(out, "503") || !strings.Contains(out, "etcd") {
			t.Fatalf("registration with etcd stopped: err %v, output %q; want a 503 naming etcd", err, out)
		}
		if v := clusterStatus(t, w3); v.Clients < 2 {
			t.Errorf("node3 holds %d clients during the outage, want the 2 it knew", v.Clients)
		}

		if err := c.StartEtcdCluster(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var conf3 string
		waitUntil(t, 30*time.Second, "registration on node2 after etcd returned", func() bool {
			conf3, err = w2.Register(bins.Wedge)
			return err == nil
		})
		took = reachesAll(t, nodes, pubOf(t, c.Client, conf3), 10*time.Second, "registration after the outage")
		t.Logf("after etcd returned: registration accepted in %v; in all devices %v later", time.Since(start)-took, took)
		viaNode3("etcd back")
	})

	t.Run("drain", func(t *testing.T) {
		if out, err := w1.NS.Run(bins.Wedge, "drain", "--api", w1.API, "node2"); err != nil {
			t.Fatalf("wedge drain node2: %v\n%s", err, out)
		}
		waitUntil(t, 5*time.Second, "node3 sees node2 draining", func() bool {
			return liveNodes(t, w3) == "node1:active,node2:draining,node3:active"
		})
		out, err := w3.NS.Run(bins.Wedge, "status", "--api", w3.API)
		if err != nil {
			t.Fatal(err)
		}
		if !regexpMatch(`(?m)^node2\s+lab\s+draining\s+198\.18\.2\.1`, out) || !strings.Contains(out, "etcd ") {
			t.Errorf("wedge status on node3 does not show node2 draining:\n%s", out)
		}
		if out, err := w1.NS.Run(bins.Wedge, "drain", "--api", w1.API, "nosuch"); err == nil {
			t.Errorf("wedge drain of an unknown node succeeded: %s", out)
		}
		if out, err := w1.NS.Run(bins.Wedge, "drain", "--api", w1.API, "--undo", "node2"); err != nil {
			t.Fatalf("wedge drain --undo node2: %v\n%s", err, out)
		}
		waitUntil(t, 5*time.Second, "node2 active again", func() bool {
			return liveNodes(t, w3) == "node1:active,node2:active,node3:active"
		})
	})

	t.Run("node-killed", func(t *testing.T) {
		w2.Proc.Kill()
		took := waitUntil(t, clusterTTL+5*time.Second, "node2 gone from node1's view", func() bool {
			return liveNodes(t, w1) == "node1:active,node3:active"
		})
		t.Logf("a node killed with SIGKILL left the others' view %v later (lease TTL %v)", took, clusterTTL)
		if took > clusterTTL+time.Second {
			t.Errorf("node2 dropped out %v after its death, want within the TTL %v (+1 s)", took, clusterTTL)
		}
		viaNode3("node2 dead")
	})
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }
