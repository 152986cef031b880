package e2e

// A cluster started cold, a client connected at once (issue 20): three
// nodes with the XDP front start one after another, and as soon as the
// first answers, a stamped third-party client (Xray-core's WireGuard
// outbound with `reserved`) and wedge connect register and keep an
// interactive echo session busy (512 B every 20 ms) while the nodes are
// still joining each other's tables. No session may stall for more than
// 0.5 s: before session indexes routed stamped clients, the fronts moved
// such a client when the joining nodes entered their tables and the
// session stalled 6.4 s.
//
//                                  ┌── node1 (wedged --xdp) ─┐
//   client ns                      ├── node2 (wedged --xdp) ─┤
//   xray (SOCKS :1090) ──┐         └── node3 (wedged --xdp) ─┘
//   wedge connect (:1080)┴─ router (ECMP over the VIP) ──┴── origin (echo :7)
//                              └── etcd

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
	"github.com/wedge-edge/wedge/internal/clientid"
)

// coldStartRuns is how many cold starts TestClusterColdStart makes; the
// issue asks for 10 of 10 within coldStartBound. WEDGE_COLDSTART_RUNS
// overrides it (for a longer local run).
const (
	coldStartRuns  = 10
	coldStartBound = 500 * time.Millisecond
	coldStartEcho  = 12 * time.Second
)

func TestClusterColdStart(t *testing.T) {
	runs := coldStartRuns
	if s := os.Getenv("WEDGE_COLDSTART_RUNS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("WEDGE_COLDSTART_RUNS=%q: want a positive number", s)
		}
		runs = n
	}
	needLab(t, lab.ToolsXray...)
	var worst []string
	for i := 1; i <= runs; i++ {
		t.Run(fmt.Sprintf("run%d", i), func(t *testing.T) {
			res := coldStart(t)
			for name, r := range res {
				worst = append(worst, fmt.Sprintf("run%d %s %d ms", i, name, r.MaxGapMS))
				if r.Broken || r.Echoed == 0 {
					t.Errorf("%s: session broken or never answered: %+v", name, r)
				} else if time.Duration(r.MaxGapMS)*time.Millisecond > coldStartBound {
					t.Errorf("%s: stalled %d ms (from %d ms into the session), want ≤ %v", name, r.MaxGapMS, r.GapAtMS, coldStartBound)
				}
			}
		})
	}
	t.Logf("worst stalls: %s", strings.Join(worst, ", "))
}

// echoResult is originsrv's EchoResult.
type echoResult struct {
	Sent     int    `json:"sent"`
	Echoed   int    `json:"echoed"`
	MaxGapMS int64  `json:"max_gap_ms"`
	GapAtMS  int64  `json:"gap_at_ms"`
	Broken   bool   `json:"broken"`
	Err      string `json:"err"`
}

// coldStart builds a fresh cluster, starts its nodes and two clients at
// once, and returns each client's echo session.
func coldStart(t *testing.T) map[string]echoResult {
	c, bins, srv := newCluster(t, 3, 1)
	for k := 1; k <= len(c.Nodes); k++ {
		if err := c.Router.AttachXDPPass(lab.RouterNodeIf(k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Client.TxOff(lab.ClientIf); err != nil {
		t.Fatal(err)
	}
	if err := c.SetVIPRoute(1, 2, 3); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	nodes := []*lab.Wedged{startFrontNode(t, c, bins, true, 1)}
	// Register both clients through node1 as soon as it answers, then
	// start the others: the clients' first handshakes and sessions fall
	// into the nodes' joining.
	xconf, err := nodes[0].Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	wconf, err := nodes[0].Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	for k := 2; k <= 3; k++ {
		nodes = append(nodes, startFrontNode(t, c, bins, true, k))
	}
	xc := xrayConfig(t, xconf, "127.0.0.1:1090")
	if _, err := c.Client.StartXray("xray", xc); err != nil {
		t.Fatal(err)
	}
	wpath := c.Lab.Dir + "/wedge-connect.conf"
	if err := writeFile(wpath, wconf); err != nil {
		t.Fatal(err)
	}
	startSocksClientAt(t, c.Client, bins.Wedge, srv, wpath, "127.0.0.1:1080")
	t.Logf("nodes and clients up %v after the first node's start", time.Since(start).Round(time.Millisecond))

	echo := netip.AddrPortFrom(lab.Origin4.Addr(), lab.EchoPort).String()
	type named struct {
		name string
		r    echoResult
		err  error
	}
	ch := make(chan named, 2)
	for name, socks := range map[string]string{"xray": "socks5://127.0.0.1:1090", "wedge-connect": "socks5://127.0.0.1:1080"} {
		go func() {
			out, err := c.Client.Run(srv, "echo", "-to", echo, "-proxy", socks, "-d", coldStartEcho.String(), "-dial-timeout", "20s")
			var r echoResult
			if err == nil {
				err = json.Unmarshal([]byte(lastLine(out)), &r)
			}
			if err != nil {
				err = fmt.Errorf("%w: %s", err, out)
			}
			ch <- named{name, r, err}
		}()
	}
	res := map[string]echoResult{}
	for range 2 {
		n := <-ch
		if n.err != nil {
			t.Errorf("%s: echo session: %v", n.name, n.err)
			continue
		}
		t.Logf("%s: %d sent, %d echoed, worst stall %d ms at %d ms", n.name, n.r.Sent, n.r.Echoed, n.r.MaxGapMS, n.r.GapAtMS)
		res[n.name] = n.r
	}
	for _, r := range res {
		if r.Broken || time.Duration(r.MaxGapMS)*time.Millisecond > coldStartBound {
			// What each node did, for whoever reads a failed run: the
			// front's verdicts, the tagged indexes, the peers it added.
			for k, w := range nodes {
				t.Logf("node%d: %s", k+1, statusDigest(w))
			}
			break
		}
	}
	return res
}

// statusDigest is the parts of w's status that say where a client's
// packets went: the XDP counters, the session indexes, the bind's and the
// peers' counters, the cluster as w sees it.
func statusDigest(w *lab.Wedged) string {
	resp, err := w.HTTPClient().Get(w.API + "/v1/status")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var v map[string]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return err.Error()
	}
	var secs map[string]json.RawMessage
	json.Unmarshal(v["sections"], &secs)
	return fmt.Sprintf("xdp %s indexes %s bind %s peers %s cluster %s",
		secs["xdp"], v["indexes"], v["bind"], secs["peers"], v["cluster"])
}

// xrayConfig is the Xray client for the wg-quick configuration conf
// (what wedge register wrote), with its SOCKS5 inbound on socks.
func xrayConfig(t *testing.T, conf, socks string) lab.XrayConfig {
	t.Helper()
	cid, err := clientid.Parse(configMeta(conf, "ClientID"))
	if err != nil {
		t.Fatal(err)
	}
	ep, err := netip.ParseAddrPort(lab.ConfigValue(conf, "Endpoint"))
	if err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Prefix
	for _, a := range strings.Split(lab.ConfigValue(conf, "Address"), ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(a))
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, p)
	}
	if m := regexp.MustCompile(`(?m)^#@ Reserved = \[(\d+), (\d+), (\d+)\]$`).FindStringSubmatch(conf); m == nil {
		t.Fatalf("no Reserved line in\n%s", conf)
	}
	return lab.XrayConfig{
		PrivateKey: lab.ConfigValue(conf, "PrivateKey"),
		ServerKey:  lab.ConfigValue(conf, "PublicKey"),
		Endpoint:   ep,
		Addresses:  addrs,
		Reserved:   cid.Bytes(),
		SOCKS:      socks,
	}
}
