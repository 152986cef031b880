package e2e

// The problem wedge exists to solve, and its solution (issue 5): a client
// behind a home NAT, three nodes behind a router that spreads the VIP over
// them by 4-tuple hash (ECMP), a long download through the tunnel, and
// mid-download the home router's SNAT address and port change, so the
// client's packets hash to another node.
//
//   client (wedge connect, SOCKS) ── home (SNAT) ── router ══ node1..3 ── origin
//                                                    ECMP, L4 hash
//
// With the XDP front the new node forwards the stamped packets to the
// client's owner and the download does not notice. Without it the packets
// land on a node that has no session for them and the download breaks.
//
// A standard client (wg-quick, issue 6) stamps nothing: the new node
// routes its data by the owner's slot in the session index the owner
// handed out, and forwards its initiations (the owner is found by opening
// them). After the rebinding it is made to handshake again, twice, from
// the new address: the first initiation is forwarded by the new node's
// userspace, the second by the flow entry that installed.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

func TestECMPRebinding(t *testing.T) {
	t.Run("xdp", func(t *testing.T) { testRebinding(t, true, false) })
	t.Run("no-xdp", func(t *testing.T) { testRebinding(t, false, false) })
	t.Run("standard", func(t *testing.T) { testRebinding(t, true, true) })
}

// rebindDownload is the download's size: about 8 s at the origin's 40 Mbit/s.
const rebindDownload = 40 << 20

func testRebinding(t *testing.T, xdp, standard bool) {
	needLab(t, "tc")
	c, bins, srv := newClusterLab(t, 3, 1, true)
	// The download must outlast the rebinding by seconds: a rate limit
	// on the origin makes it take about 8 s.
	if _, err := c.Origin.Run("tc", "qdisc", "add", "dev", lab.OriginIf, "root", "tbf",
		"rate", "40mbit", "burst", "64kb", "latency", "100ms"); err != nil {
		t.Fatal(err)
	}
	for _, dev := range []string{lab.HomeLANIf, lab.HomeWANIf} {
		if err := c.Home.TxOff(dev); err != nil {
			t.Fatal(err)
		}
	}
	nodes := startFrontNodes(t, c, bins, xdp)
	if err := c.SetVIPRoute(1, 2, 3); err != nil {
		t.Fatal(err)
	}
	before := netip.AddrPortFrom(lab.HomeWAN[0].Addr(), 40001)
	if err := c.SetHomeNAT(before); err != nil {
		t.Fatal(err)
	}
	first, err := c.ECMPNode(before)
	if err != nil {
		t.Fatal(err)
	}

	conf, err := nodes[0].Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	// The home network has IPv4 only: keep wedge connect to the IPv4
	// endpoint, so nothing but the SNAT change moves its packets.
	conf = regexp.MustCompile(`(?m)^#@ Endpoint = \[.*\n`).ReplaceAllString(conf, "")
	// The home router translates only the client's port.
	conf = strings.Replace(conf, "[Interface]\n", fmt.Sprintf("[Interface]\nListenPort = %d\n", lab.HomeClientPort), 1)
	cid := configMeta(conf, "ClientID")
	var sc *socksClient
	var wq *lab.WGQuick
	if standard {
		// wg-quick routes everything through the tunnel: the probe
		// reaches the origin directly.
		if wq, err = c.Client.WGQuickUp(conf); err != nil {
			t.Fatal(err)
		}
		sc = &socksClient{ns: c.Client, probe: srv}
	} else {
		path := filepath.Join(c.Lab.Dir, "connect.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		sc = startSocksClient(t, c.Client, bins.Wedge, srv, path)
	}
	sc.waitUp(t, 20*time.Second)
	owner := servedBy(t, sc)
	if !xdp && owner != first {
		t.Fatalf("without the front the client's flows ended on node%d, but ECMP sends %v to node%d", owner, before, first)
	}
	if ep := peerEndpoint(t, nodes[owner-1], cid); ep != before {
		t.Fatalf("owner node%d has the client at %v, want %v (the home router's SNAT)", owner, ep, before)
	}

	// The new translation: the home router's other address, on a port
	// the router hashes to a node that is neither the one used so far
	// nor the owner, so that node must forward.
	var after netip.AddrPort
	var next int
	for p := uint16(40001); p < 40200; p++ {
		ap := netip.AddrPortFrom(lab.HomeWAN[1].Addr(), p)
		n, err := c.ECMPNode(ap)
		if err != nil {
			t.Fatal(err)
		}
		if n != first && n != owner {
			after, next = ap, n
			break
		}
	}
	if next == 0 {
		t.Fatal("no port of the home router's second address hashes to a third node")
	}
	t.Logf("owner node%d; ECMP sends %v to node%d, and %v to node%d", owner, before, first, after, next)

	start := time.Now()
	done := startBytes(sc, rebindDownload, 25*time.Second)
	// Let the download get going, then rebind.
	time.Sleep(2 * time.Second)
	var cntBefore map[string]uint64
	if xdp {
		cntBefore = xdpCounters(t, nodes[next-1])
	}
	select {
	case res := <-done:
		t.Fatalf("the download ended before the rebinding: %+v, %v", res.r, res.err)
	default:
	}
	if err := c.SetHomeNAT(after); err != nil {
		t.Fatal(err)
	}
	t.Logf("rebound to %v %v after the download began", after, time.Since(start).Round(time.Millisecond))
	res := <-done
	t.Logf("download: %+v, err %v, %v in all", res.r, res.err, time.Since(start).Round(time.Millisecond))

	if !xdp {
		// The problem wedge solves: the client's acknowledgements now
		// reach a node without its session, which drops them; the node
		// with the session keeps retransmitting through the old mapping,
		// so the client never even re-handshakes, and the download stalls
		// until it times out (observed; a reset is the other way to die).
		if res.err == nil && res.r.OK && res.r.MaxGapMS < 2000 {
			t.Fatalf("without the front the download survived the rebinding (worst stall %d ms)", res.r.MaxGapMS)
		}
		return
	}
	checkUndisturbed(t, "across the rebinding", res, rebindDownload)
	cnt := xdpCounters(t, nodes[next-1])
	if cnt["forwarded"] <= cntBefore["forwarded"] {
		t.Fatalf("node%d forwarded nothing after the rebinding: %v", next, cnt)
	}
	t.Logf("node%d forwarded %d packets after the rebinding", next, cnt["forwarded"]-cntBefore["forwarded"])
	if standard {
		if d := cnt["index_hit"] - cntBefore["index_hit"]; d == 0 || cnt["pin_hit"] != 0 {
			t.Fatalf("node%d: %d packets routed by their session index (want > 0), %d by a pin: %v", next, d, cnt["pin_hit"], cnt)
		}
		checkRekeys(t, c, nodes, wq, sc, owner, next, cid)
	}
	if ep := peerEndpoint(t, nodes[owner-1], cid); ep != after {
		t.Errorf("owner node%d has the client at %v after the rebinding, want %v", owner, ep, after)
	}
	for n, w := range nodes {
		if n+1 != owner && peerStatus(t, w, cid) != nil {
			t.Errorf("node%d has a session with the client; only its owner node%d should", n+1, owner)
		}
	}
	if after, err := sc.remoteAddr(lab.Origin4.Addr(), 5*time.Second); err != nil || after.Addr() != lab.NodeEgress4(owner) {
		t.Errorf("after the rebinding the origin sees %v (%v), want node%d's egress", after, err, owner)
	}
}

// checkRekeys makes the standard client handshake again twice from its new
// address (wg set peer remove, then add it back: wg-quick's wireguard-go
// initiates on its next packet), each time during a download, and checks
// that the sessions stay on the owner: the first initiation forwarded by
// node next's userspace, the second by the flow entry that installed.
func checkRekeys(t *testing.T, c *lab.Cluster, nodes []*lab.Wedged, wq *lab.WGQuick, sc *socksClient, owner, next int, cid string) {
	t.Helper()
	peer := lab.ConfigValue(mustRead(t, wq.Conf), "PublicKey")
	endpoint := lab.ConfigValue(mustRead(t, wq.Conf), "Endpoint")
	for round := 1; round <= 2; round++ {
		before := xdpCounters(t, nodes[next-1])
		hsBefore := peerStatus(t, nodes[owner-1], cid)["last_handshake"]
		done := startBytes(sc, rebindDownload/4, 25*time.Second)
		time.Sleep(time.Second)
		// Removing the peer drops the client's keypair, so the
		// download's data is undecryptable until it handshakes again, and
		// a receiver has nothing to send that would start the handshake:
		// a ping every 100 ms does, as any traffic would.
		pinger, err := c.Client.Start("ping", nil, "ping", "-q", "-i", "0.1", lab.Origin4.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Client.Run("wg", "set", wq.Iface, "peer", peer, "remove"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Client.Run("wg", "set", wq.Iface, "peer", peer, "endpoint", endpoint, "allowed-ips", "0.0.0.0/0,::/0"); err != nil {
			t.Fatal(err)
		}
		res := <-done
		pinger.Stop()
		if res.err != nil || res.r.MaxGapMS >= 2000 {
			logIndexes(t, nodes)
		}
		checkUndisturbed(t, fmt.Sprintf("rekey %d from the new address", round), res, rebindDownload/4)
		after := xdpCounters(t, nodes[next-1])
		if hs := peerStatus(t, nodes[owner-1], cid)["last_handshake"]; hs == hsBefore {
			t.Fatalf("rekey %d: the owner node%d has no new handshake (still %v)", round, owner, hs)
		}
		for n, w := range nodes {
			if n+1 != owner && peerStatus(t, w, cid) != nil {
				t.Fatalf("rekey %d: node%d has a session with the client; only its owner node%d should", round, n+1, owner)
			}
		}
		fwd := after["initiations_forwarded"] - before["initiations_forwarded"]
		flow := after["flow_hit"] - before["flow_hit"]
		t.Logf("rekey %d: node%d forwarded %d initiations from userspace, %d packets by flow entry", round, next, fwd, flow)
		if round == 1 && fwd == 0 {
			t.Fatalf("rekey 1: node%d's userspace forwarded no initiation: %v", next, after)
		}
		if round == 2 && (fwd != 0 || flow == 0) {
			t.Fatalf("rekey 2: node%d forwarded %d initiations from userspace and %d packets by flow entry; want 0 and > 0", next, fwd, flow)
		}
		if got, err := sc.remoteAddr(lab.Origin4.Addr(), 5*time.Second); err != nil || got.Addr() != lab.NodeEgress4(owner) {
			t.Fatalf("rekey %d: the origin sees %v (%v), want node%d's egress", round, got, err, owner)
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// logIndexes logs each node's XDP counters and tagged-index status.
func logIndexes(t *testing.T, nodes []*lab.Wedged) {
	t.Helper()
	for n, w := range nodes {
		resp, err := w.HTTPClient().Get(w.API + "/v1/status")
		if err != nil {
			t.Logf("node%d: %v", n+1, err)
			continue
		}
		var s struct {
			Indexes  map[string]any   `json:"indexes"`
			Peers    []map[string]any `json:"peers"`
			Sections struct {
				XDP map[string]uint64 `json:"xdp"`
			} `json:"sections"`
		}
		err = json.NewDecoder(resp.Body).Decode(&s)
		resp.Body.Close()
		t.Logf("node%d: xdp %v\n  indexes %v\n  peers %v (%v)", n+1, s.Sections.XDP, s.Indexes, s.Peers, err)
	}
}
