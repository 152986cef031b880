package e2e

// Usage and quotas (issue 16), against the real binaries in the cluster
// lab of cluster_test.go with two nodes and one etcd member:
//
//   client ── router ── origin
//     wg-quick     │  VIP 192.0.2.1 via node 1, then node 2, then node 1
//                  ├── node1  wedged --etcd ...   (default --usage-interval 30s)
//                  └── node2  wedged --etcd ...
//
// The client downloads through node 1, then (wg-quick down, up: a new
// session) through node 2; its usage in the registry is the sum of what
// both nodes' devices counted. A quota below its next download: the
// download finishes (open flows go on), new flows are refused within 60 s
// on both nodes while the session stays; usage_reset lets it go on.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
	"github.com/wedge-edge/wedge/internal/api"
)

// adminCall sends an admin API request to w and decodes the answer into
// out (if not nil); it fails the test on anything but 200.
func adminCall(t *testing.T, w *lab.Wedged, method, path, body string, out any) {
	t.Helper()
	req, err := http.NewRequest(method, w.API+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := w.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

func regUsage(t *testing.T, w *lab.Wedged, id string) api.Usage {
	t.Helper()
	var r api.Registration
	adminCall(t, w, "GET", "/v1/reg/"+id, "", &r)
	if r.Usage == nil {
		t.Fatalf("GET /v1/reg/%s on %s has no usage", id, w.NS.Name)
	}
	return *r.Usage
}

// wgTransfer is what w's device counted for peer pub: received, sent.
func wgTransfer(t *testing.T, w *lab.Wedged, pub string) (uint64, uint64) {
	t.Helper()
	out, err := w.NS.Run("wg", "show", w.Iface, "transfer")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == pub {
			rx, _ := strconv.ParseUint(f[1], 10, 64)
			tx, _ := strconv.ParseUint(f[2], 10, 64)
			return rx, tx
		}
	}
	return 0, 0
}

// overQuotaRefused is netstack.tcp.refused.over_quota in w's status.
func overQuotaRefused(t *testing.T, w *lab.Wedged) uint64 {
	t.Helper()
	var s struct {
		Sections struct {
			Netstack struct {
				TCP struct {
					Refused struct {
						OverQuota uint64 `json:"over_quota"`
					} `json:"refused"`
				} `json:"tcp"`
			} `json:"netstack"`
		} `json:"sections"`
	}
	adminCall(t, w, "GET", "/v1/status", "", &s)
	return s.Sections.Netstack.TCP.Refused.OverQuota
}

func TestUsageQuota(t *testing.T) {
	c, bins, srv := newCluster(t, 2, 1)
	w1, err := c.StartWedged(1, bins.Wedged)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := c.StartWedged(2, bins.Wedged)
	if err != nil {
		t.Fatal(err)
	}
	nodes := []*lab.Wedged{w1, w2}
	waitUntil(t, 10*time.Second, "both nodes active", func() bool {
		return liveNodes(t, w1) == "node1:active,node2:active" && liveNodes(t, w2) == "node1:active,node2:active"
	})
	conf, err := w1.Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	id := configMeta(conf, "Registration")
	pub := pubOf(t, c.Client, conf)
	reachesAll(t, nodes, pub, 5*time.Second, "registration")
	probe := lab.Probe{NS: c.Client, Bin: srv}

	// through moves the client to node n: a new wg-quick session while
	// the VIP is routed to n alone.
	var wq *lab.WGQuick
	through := func(n int) {
		t.Helper()
		if wq != nil {
			if err := wq.Down(); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.SetVIPRoute(n); err != nil {
			t.Fatal(err)
		}
		if wq, err = c.Client.WGQuickUp(conf); err != nil {
			t.Fatal(err)
		}
	}
	download := func(n int64) error {
		r, err := probe.Bytes(lab.Origin4.Addr(), n)
		if err == nil && !r.OK {
			err = fmt.Errorf("download of %d bytes: %+v", n, r)
		}
		return err
	}
	const mb = 1 << 20

	// Served by node 1, then node 2: the registry holds the sum.
	through(1)
	if err := download(20 * mb); err != nil {
		t.Fatal(err)
	}
	through(2)
	if err := download(20 * mb); err != nil {
		t.Fatal(err)
	}
	var sumRx, sumTx uint64
	took := waitUntil(t, 45*time.Second, "usage in the registry reaches what both nodes counted", func() bool {
		sumRx, sumTx = 0, 0
		for _, w := range nodes {
			rx, tx := wgTransfer(t, w, pub)
			sumRx, sumTx = sumRx+rx, sumTx+tx
		}
		u := regUsage(t, w1, id)
		return float64(u.TxBytes) >= 0.95*float64(sumTx) && float64(u.RxBytes) >= 0.95*float64(sumRx)
	})
	u := regUsage(t, w2, id)
	t.Logf("usage after 2×20 MiB through node1 then node2: rx %d tx %d (devices: rx %d tx %d), %v after the download",
		u.RxBytes, u.TxBytes, sumRx, sumTx, took)
	if u.TxBytes < 40*mb || float64(u.TxBytes) > 1.05*float64(sumTx) || float64(u.RxBytes) > 1.05*float64(sumRx) {
		t.Fatalf("usage rx %d tx %d; want within 5%% of the nodes' rx %d tx %d, tx at least 40 MiB", u.RxBytes, u.TxBytes, sumRx, sumTx)
	}

	// A quota 10 MiB above the usage, then a 30 MiB download: it
	// finishes, and then new flows are refused on both nodes.
	quota := u.RxBytes + u.TxBytes + 10*mb
	adminCall(t, w2, "PATCH", "/v1/reg/"+id, fmt.Sprintf(`{"quota_bytes": %d}`, quota), nil)
	if err := download(30 * mb); err != nil {
		t.Fatalf("the download that crosses the quota was cut: %v", err)
	}
	crossed := time.Now()
	took = waitUntil(t, 60*time.Second, "node2 refuses the client's new flows", func() bool {
		_, err := probe.RemoteAddr(lab.Origin4.Addr())
		return err != nil
	})
	t.Logf("node2 refused new flows %v after the download crossed the quota", took)
	for _, w := range nodes {
		waitUntil(t, 60*time.Second-time.Since(crossed), "over_quota on "+w.NS.Name, func() bool { return regUsage(t, w, id).OverQuota })
	}
	if n := overQuotaRefused(t, w2); n == 0 {
		t.Error("node2 counts no flow refused over quota")
	}
	if !hasPeer(t, w2, pub) {
		t.Fatal("the client's peer is gone from node2")
	}
	through(1)
	left := 60*time.Second - time.Since(crossed)
	waitUntil(t, max(left, 5*time.Second), "node1 refuses the client's new flows", func() bool {
		_, err := probe.RemoteAddr(lab.Origin4.Addr())
		return err != nil
	})
	if n := overQuotaRefused(t, w1); n == 0 {
		t.Error("node1 counts no flow refused over quota")
	}
	// The session is up all along: the node's resolver answers through
	// it (a name error is an answer).
	if _, err := probe.DNS("", "nosuch.invalid.", "A", false); err != nil && !strings.Contains(err.Error(), "RCode") {
		t.Errorf("no DNS answer through the session while over quota: %v", err)
	}

	// A usage reset through node 2 lets the client go on through node 1.
	var r api.Registration
	adminCall(t, w2, "PATCH", "/v1/reg/"+id, `{"usage_reset": true}`, &r)
	if r.Usage == nil || r.Usage.OverQuota || r.Usage.RxBytes+r.Usage.TxBytes > 10*mb {
		t.Fatalf("after usage_reset: %+v", r.Usage)
	}
	took = waitUntil(t, 15*time.Second, "node1 admits the client's flows after the reset", func() bool {
		_, err := probe.RemoteAddr(lab.Origin4.Addr())
		return err == nil
	})
	t.Logf("flows admitted on node1 %v after the reset through node2", took)
	if err := download(5 * mb); err != nil {
		t.Fatal(err)
	}

	// The billing export lists it, run where the admin API is.
	out, err := w1.NS.Run(bins.Wedge, "usage", "--api", w1.API, "--format", "csv")
	if err != nil || !bytes.Contains([]byte(out), []byte(id)) {
		t.Fatalf("wedge usage: %v\n%s", err, out)
	}
}
