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

import (
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
	t.Run("xdp", func(t *testing.T) { testRebinding(t, true) })
	t.Run("no-xdp", func(t *testing.T) { testRebinding(t, false) })
}

// rebindDownload is the download's size: about 8 s at the origin's 40 Mbit/s.
const rebindDownload = 40 << 20

func testRebinding(t *testing.T, xdp bool) {
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
	path := filepath.Join(c.Lab.Dir, "connect.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cid := configMeta(conf, "ClientID")
	sc := startSocksClient(t, c.Client, bins.Wedge, srv, path)
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
