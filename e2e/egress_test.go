package e2e

// Soft-unicast egress (issue 7) in the two-data-center lab: two clients
// whose WAN addresses geolocate to two countries (a test GeoIP database),
// each placed in one data center (its WireGuard port picked so that the
// routers' ECMP sends it there), four nodes sharing the egress addresses of
// one egress plan by 64-port slices.
//
//	client1 (NL) ─┐                    ┌─ dc1 (NL) ─ node1, node2
//	client2 (DE) ─┼─ inet ─ origin     │
//	              └───(ECMP to both)───┴─ dc2 (BE) ─ node3, node4
//
// The plan: NL addresses .0-.7 owned by dc1; DE .8-.15, of which only .8
// is dc2's (the rest dc1's); BE .16-.19 owned by dc2, the country of dc2
// itself, which its DNS queries leave from.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
	"github.com/wedge-edge/wedge/egress/geoip/geoiptest"
)

const egressSlice = 64

// egressPlan is the lab's plan; owners8 and owners9 say which data center
// owns 198.51.100.8 and .9.
func egressPlanJSON(owners8, owners9 string) string {
	return fmt.Sprintf(`{
  "ports": "1024-65535",
  "slice": %d,
  "data_centers": {"dc1": {"country": "NL"}, "dc2": {"country": "BE"}},
  "ipv4": [
    {"prefix": "198.51.100.0/29",  "country": "NL", "pool": "trusted", "dc": "dc1"},
    {"prefix": "198.51.100.8/29",  "country": "DE", "pool": "trusted", "dc": "dc1",
     "owners": {"198.51.100.8": %q, "198.51.100.9": %q}},
    {"prefix": "198.51.100.16/30", "country": "BE", "pool": "trusted", "dc": "dc2"}
  ],
  "ipv6": [
    {"prefix": "2001:db8:5100::/56",    "country": "NL", "pool": "trusted", "dc": "dc1"},
    {"prefix": "2001:db8:5100:100::/56", "country": "DE", "pool": "trusted", "dc": "dc2"}
  ],
  "fallback": {"pools": {"trusted": "NL"}}
}
`, egressSlice, owners8, owners9)
}

var (
	nlAddrs = netip.MustParsePrefix("198.51.100.0/29")
	deAddrs = netip.MustParsePrefix("198.51.100.8/29")
	beAddrs = netip.MustParsePrefix("198.51.100.16/30")
)

type egressLab struct {
	td       *lab.TwoDC
	bins     lab.Bins
	srv      string
	plan     string
	nodes    []*lab.Wedged
	clients  []*socksClient // direct probes through each client's wg-quick
	confs    []string
	home     []int // the node each client's session is on
	dns      []string
	slots    []uint8
	origins4 []netip.Addr
}

func newEgressLab(t *testing.T, wedgedArgs ...string) *egressLab {
	t.Helper()
	needLab(t, append(append(append([]string{}, lab.ToolsOrigin...), lab.ToolsClient...), append(lab.ToolsTwoDC, "ss")...)...)
	bins, err := lab.Build(binDir)
	if err != nil {
		t.Fatal(err)
	}
	srv := originsrv(t)
	l, err := lab.New(t)
	if err != nil {
		t.Fatal(err)
	}
	td, err := lab.NewTwoDC(l, 2)
	if err != nil {
		t.Fatal(err)
	}
	e := &egressLab{td: td, bins: bins, srv: srv}
	if _, err := td.StartOrigin(srv); err != nil {
		t.Fatal(err)
	}
	// More origin addresses, for flows to several destinations.
	e.origins4 = []netip.Addr{lab.Origin4.Addr()}
	for i := 3; i <= 5; i++ {
		a := netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})
		if err := td.Origin.AddrAdd(lab.OriginIf, netip.PrefixFrom(a, 24)); err != nil {
			t.Fatal(err)
		}
		e.origins4 = append(e.origins4, a)
	}
	if _, err := td.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	if out, err := td.Inet.Run(bins.Wedged, "genkey", td.ServiceKey()); err != nil {
		t.Fatalf("wedged genkey: %v\n%s", err, out)
	}
	geo := filepath.Join(l.Dir, "geo.mmdb")
	if err := geoiptest.Write(geo, map[netip.Prefix]string{
		netip.MustParsePrefix("203.0.113.0/25"):   "NL",
		netip.MustParsePrefix("203.0.113.128/25"): "DE",
	}); err != nil {
		t.Fatal(err)
	}
	e.plan = filepath.Join(l.Dir, "egress-plan.json")
	if err := os.WriteFile(e.plan, []byte(egressPlanJSON("dc2", "dc1")), 0o644); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= len(td.Nodes); n++ {
		w, err := td.StartWedged(n, bins.Wedged, append([]string{"--egress-plan", e.plan, "--geoip", geo}, wedgedArgs...)...)
		if err != nil {
			t.Fatal(err)
		}
		e.nodes = append(e.nodes, w)
	}
	waitUntil(t, 30*time.Second, "every front holds its data center's two nodes", func() bool {
		for _, w := range e.nodes {
			if xdpCounters(t, w)["table_nodes"] != 2 {
				return false
			}
		}
		return true
	})
	for n, w := range e.nodes {
		cs := clusterStatus(t, w)
		e.slots = append(e.slots, cs.Cluster.Node.Slot)
		// IPv6 is not sliced: the node's own /64 of its data center's
		// block is routed to it and local there.
		p := e.net6(n + 1)
		if _, err := td.Nodes[n].Run("ip", "-6", "route", "add", "local", p.String(), "dev", "lo"); err != nil {
			t.Fatal(err)
		}
		if err := td.RouteToNode(p, n+1); err != nil {
			t.Fatal(err)
		}
	}
	// client1 in dc1, client2 in dc2: a WireGuard port the routers send
	// there.
	for i, want := range []int{1, 2} {
		conf, err := e.nodes[0].Register(bins.Wedge)
		if err != nil {
			t.Fatal(err)
		}
		wan := lab.TwoDCClient4[i].Addr()
		port := 0
		for p := 51000; p < 51200; p++ {
			n, err := td.PathTo("udp", netip.AddrPortFrom(wan, uint16(p)), netip.AddrPortFrom(lab.VIP4, 51820))
			if err != nil {
				t.Fatal(err)
			}
			if td.NodeDC(n) == want {
				port = p
				break
			}
		}
		if port == 0 {
			t.Fatalf("no port of client%d reaches dc%d", i+1, want)
		}
		// IPv4 only: the plan has no IPv6 blocks.
		conf = strings.Replace(conf, "[Interface]\n", fmt.Sprintf("[Interface]\nListenPort = %d\n", port), 1)
		if _, err := td.Clients[i].WGQuickUp(conf); err != nil {
			t.Fatal(err)
		}
		sc := &socksClient{ns: td.Clients[i], probe: srv}
		sc.waitUp(t, 20*time.Second)
		e.clients = append(e.clients, sc)
		e.confs = append(e.confs, conf)
		e.dns = append(e.dns, strings.TrimSpace(strings.Split(lab.ConfigValue(conf, "DNS"), ",")[0]))
		cid := configMeta(conf, "ClientID")
		home := 0
		for n, w := range e.nodes {
			if peerStatus(t, w, cid) != nil {
				home = n + 1
			}
		}
		if td.NodeDC(home) != want {
			t.Fatalf("client%d's session is on node%d, not in dc%d", i+1, home, want)
		}
		e.home = append(e.home, home)
	}
	return e
}

// net6 is node n's /64 of its data center's IPv6 block: bits 56..63 are
// its slot (egress.NodeNet6).
func (e *egressLab) net6(n int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("2001:db8:5100:%x%02x::/64", e.td.NodeDC(n)-1, e.slots[n-1]))
}

// sliceOf is the node (1-based) of data center dc whose slice holds port.
func (e *egressLab) sliceOf(dc int, port uint16) int {
	slot := uint8((int(port)-1024)/egressSlice + 1)
	for _, n := range e.td.DCNodes(dc) {
		if e.slots[n-1] == slot {
			return n
		}
	}
	return 0
}

// egressOf fetches /ip from origin a through client i's tunnel.
func (e *egressLab) egressOf(t *testing.T, i int, a netip.Addr) netip.AddrPort {
	t.Helper()
	got, err := e.clients[i].remoteAddr(a, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestSoftUnicast(t *testing.T) {
	e := newEgressLab(t)

	t.Run("country", func(t *testing.T) {
		for i, c := range []struct {
			country string
			addrs   netip.Prefix
			dc      int
		}{{"NL", nlAddrs, 1}, {"DE", deAddrs, 2}} {
			for _, o := range e.origins4 {
				got := e.egressOf(t, i, o)
				if !c.addrs.Contains(got.Addr()) {
					t.Fatalf("client%d (%s) reached %v from %v, not one of the %s addresses %v", i+1, c.country, o, got, c.country, c.addrs)
				}
				if n := e.sliceOf(c.dc, got.Port()); n != e.home[i] {
					t.Fatalf("client%d reached %v from port %d: node%d's slice, but its session is on node%d", i+1, o, got.Port(), n, e.home[i])
				}
			}
			t.Logf("client%d (%s, node%d) leaves from %v", i+1, c.country, e.home[i], e.egressOf(t, i, e.origins4[0]))
		}
		if got := e.egressOf(t, 1, e.origins4[0]); got.Addr() != netip.MustParseAddr("198.51.100.8") {
			t.Fatalf("client2 leaves from %v, want 198.51.100.8, dc2's only DE address", got)
		}
	})

	t.Run("retag", func(t *testing.T) {
		// A PATCH of client1's country reaches its next flows at once,
		// without a handshake: DE (dc1 owns DE addresses too), then the
		// override cleared, back to its GeoIP country, NL. The PATCH goes
		// to the node that does not hold the session: the change travels
		// through etcd.
		id := configMeta(e.confs[0], "Registration")
		other := e.nodes[0]
		if e.home[0] == 1 {
			other = e.nodes[1]
		}
		for _, c := range []struct {
			body  string
			addrs netip.Prefix
		}{{`{"country":"DE"}`, deAddrs}, {`{"country":""}`, nlAddrs}} {
			req, err := http.NewRequest(http.MethodPatch, other.API+"/v1/reg/"+id, strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := other.HTTPClient().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("PATCH %s: %s", c.body, resp.Status)
			}
			var got netip.AddrPort
			took := waitUntil(t, 5*time.Second, "client1's new flows leave from "+c.addrs.String(), func() bool {
				got = e.egressOf(t, 0, e.origins4[0])
				return c.addrs.Contains(got.Addr())
			})
			if n := e.sliceOf(1, got.Port()); n != e.home[0] {
				t.Fatalf("after PATCH %s client1 leaves from port %d: node%d's slice, its session is on node%d", c.body, got.Port(), n, e.home[0])
			}
			t.Logf("PATCH %s: client1's flows left from %v %v later", c.body, got, took)
		}
	})

	t.Run("ipv6", func(t *testing.T) {
		// A client's IPv6 flows leave from its own address in the /64 of
		// the node holding its session.
		for i := range e.clients {
			got := e.egressOf(t, i, lab.Origin6.Addr())
			if p := e.net6(e.home[i]); !p.Contains(got.Addr()) {
				t.Fatalf("client%d reached the origin over IPv6 from %v, want an address in node%d's %v", i+1, got, e.home[i], p)
			}
			t.Logf("client%d leaves over IPv6 from %v", i+1, got)
		}
	})

	t.Run("dns", func(t *testing.T) {
		// A data center's queries leave from its own country's address:
		// dc2 is in BE, client2 in DE.
		for i, want := range []netip.Prefix{nlAddrs, beAddrs} {
			probe := lab.Probe{NS: e.td.Clients[i], Bin: e.srv}
			got, err := probe.DNS(netip.AddrPortFrom(netip.MustParseAddr(e.dns[i]), 53).String(), lab.WhoamiName, "A", false)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || !want.Contains(got[0]) {
				t.Fatalf("client%d's resolver queried the origin from %v, want an address of %v", i+1, got, want)
			}
			t.Logf("client%d's DNS reaches the origin from %v", i+1, got[0])
		}
	})

	t.Run("return-via-other-dc", func(t *testing.T) {
		// client1's flows leave from dc1's addresses; the internet now
		// brings their return traffic to dc2 only.
		if err := e.td.SetEgressRoute(2); err != nil {
			t.Fatal(err)
		}
		defer e.td.SetEgressRoute(1, 2)
		before := make([]map[string]uint64, len(e.nodes))
		for n, w := range e.nodes {
			before[n] = xdpCounters(t, w)
		}
		const size = 16 << 20
		r, err := e.clients[0].bytes(e.origins4[0], size, 30*time.Second)
		if err != nil || r.N != size || !r.OK {
			t.Fatalf("download through dc2: %+v, %v", r, err)
		}
		// dc2 sends each packet to a node of dc1 (by flow); that node
		// unwraps it if the port is in its slice, else sends it on.
		var viaDC2, unwrapped, retargeted uint64
		for n, w := range e.nodes {
			c := xdpCounters(t, w)
			if e.td.NodeDC(n+1) == 2 {
				viaDC2 += c["egress_dc"] - before[n]["egress_dc"]
			} else {
				unwrapped += c["decap"] - before[n]["decap"]
				retargeted += c["retarget"] - before[n]["retarget"]
			}
		}
		if viaDC2 < size/1500 || unwrapped < viaDC2*9/10 {
			t.Fatalf("dc2 sent %d return packets to dc1, dc1 unwrapped %d (retargeted %d): want about %d each", viaDC2, unwrapped, retargeted, size/1448)
		}
		t.Logf("download complete (worst stall %d ms): dc2 sent %d return packets to dc1, which unwrapped %d and retargeted %d", r.MaxGapMS, viaDC2, unwrapped, retargeted)

		// dc2 picks one of dc1's two nodes per flow; over 20 flows some
		// land on the node that does not hold the slice (all on the
		// right one: 2^-20), which sends them on.
		var urls []string
		for _, o := range e.origins4 {
			urls = append(urls, fmt.Sprintf("http://%s/hold", netip.AddrPortFrom(o, lab.HTTPPort)))
		}
		retargetBefore := uint64(0)
		for n, w := range e.nodes {
			if e.td.NodeDC(n+1) == 1 {
				retargetBefore += xdpCounters(t, w)["retarget"]
			}
		}
		res, _ := e.hold(t, 0, 20, urls, e.nodes[e.home[0]-1])
		if res.OK != 20 {
			t.Fatalf("20 connections with their return traffic through dc2: %+v", res)
		}
		retargeted = 0
		for n, w := range e.nodes {
			if e.td.NodeDC(n+1) == 1 {
				retargeted += xdpCounters(t, w)["retarget"]
			}
		}
		if retargeted == retargetBefore {
			t.Fatal("no return packet was sent on inside dc1 (retarget) over 20 flows")
		}
		t.Logf("20 connections through dc2: %d return packets sent on inside dc1", retargeted-retargetBefore)
	})

	t.Run("move", func(t *testing.T) {
		// Swap: .9 moves from dc1 to dc2, .8 back to dc1. client2 (in
		// dc2) leaves from .9 from now on.
		if err := os.WriteFile(e.plan+".new", []byte(egressPlanJSON("dc1", "dc2")), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(e.plan+".new", e.plan); err != nil {
			t.Fatal(err)
		}
		want := netip.MustParseAddr("198.51.100.9")
		var got netip.AddrPort
		// Each node re-reads the plan within 2 s; until all have, a flow
		// may fail (its return traffic steered by an old table).
		took := waitUntil(t, 15*time.Second, "client2's new flows leave from 198.51.100.9", func() bool {
			var err error
			got, err = e.clients[1].remoteAddr(e.origins4[0], 2*time.Second)
			return err == nil && got.Addr() == want
		})
		if n := e.sliceOf(2, got.Port()); n != e.home[1] {
			t.Fatalf("after the move client2 leaves from port %d: node%d's slice, its session is on node%d", got.Port(), n, e.home[1])
		}
		t.Logf("198.51.100.9 moved to dc2: client2's flows left from it %v after the plan changed", took)
	})

	t.Run("port-slices", func(t *testing.T) {
		node := e.nodes[e.home[0]-1]
		// 100 connections at once from a 64-port slice, over four origin
		// addresses: ports are reused towards different destinations.
		var urls []string
		for _, o := range e.origins4 {
			urls = append(urls, fmt.Sprintf("http://%s/hold", netip.AddrPortFrom(o, lab.HTTPPort)))
		}
		res, outside := e.hold(t, 0, 100, urls, node)
		if res.OK != 100 || res.Failed != 0 {
			t.Fatalf("100 connections over 4 origins: %+v", res)
		}
		if outside != "" {
			t.Fatalf("sockets outside node%d's slice: %s", e.home[0], outside)
		}
		// 100 to one origin: 64 fit, the rest fail at once.
		before := egressTCP(t, node)
		res, _ = e.hold(t, 0, 100, urls[:1], node)
		after := egressTCP(t, node)
		if res.OK > egressSlice || res.OK < egressSlice-8 || res.OK+res.Failed != 100 {
			t.Fatalf("100 connections to one origin through a %d-port slice: %+v", egressSlice, res)
		}
		if res.SlowestFailureMS > 2000 {
			t.Fatalf("the connections beyond the slice took up to %d ms to fail", res.SlowestFailureMS)
		}
		if d := after["slice_exhausted"] - before["slice_exhausted"]; d == 0 {
			t.Fatalf("node%d counted no exhausted slice: %v", e.home[0], after)
		}
		t.Logf("one origin: %d connections, %d failed in at most %d ms", res.OK, res.Failed, res.SlowestFailureMS)
	})

	t.Run("geofeed", func(t *testing.T) {
		out, err := e.td.Inet.Run(e.bins.Wedge, "geofeed", "--egress-plan", e.plan)
		if err != nil {
			t.Fatal(err)
		}
		golden, err := os.ReadFile("testdata/egress-geofeed.golden")
		if err != nil {
			t.Fatal(err)
		}
		if out != string(golden) {
			t.Fatalf("wedge geofeed:\n%s\nwant (testdata/egress-geofeed.golden):\n%s", out, golden)
		}
	})
}

type holdResult struct {
	OK               int    `json:"ok"`
	Failed           int    `json:"failed"`
	SlowestFailureMS int64  `json:"slowest_failure_ms"`
	FirstError       string `json:"first_error"`
}

// hold opens n connections at once through client i (originsrv hold) and,
// while they are open, lists node's TCP sockets on egress addresses: it
// returns those whose port is outside the node's slice.
func (e *egressLab) hold(t *testing.T, i, n int, urls []string, node *lab.Wedged) (holdResult, string) {
	t.Helper()
	p, err := e.td.Clients[i].Start("hold", nil, append([]string{e.srv, "hold", "-n", strconv.Itoa(n), "-ms", "3000", "-timeout", "20s"}, urls...)...)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	ss, err := node.NS.Run("ss", "-Htn", "state", "established", "src", "198.51.100.0/24")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("originsrv hold did not finish")
	}
	var res holdResult
	if err := json.Unmarshal([]byte(lastLine(p.Output())), &res); err != nil {
		t.Fatalf("originsrv hold: %v\n%s", err, p.Output())
	}
	slot := e.slots[e.home[i]-1]
	lo := 1024 + (int(slot)-1)*egressSlice
	var outside []string
	sockets := 0
	for _, line := range strings.Split(strings.TrimSpace(ss), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		ap, err := netip.ParseAddrPort(f[2])
		if err != nil {
			continue
		}
		sockets++
		if p := int(ap.Port()); p < lo || p >= lo+egressSlice {
			outside = append(outside, f[2])
		}
	}
	if sockets == 0 {
		t.Fatalf("ss showed no egress socket on the node while the connections were open:\n%s", ss)
	}
	t.Logf("%d connections: %d ok, %d failed; %d egress sockets on the node", n, res.OK, res.Failed, sockets)
	return res, strings.Join(outside, " ")
}

// egressTCP is the node's egress TCP counters.
func egressTCP(t *testing.T, w *lab.Wedged) map[string]uint64 {
	t.Helper()
	resp, err := w.HTTPClient().Get(w.API + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct {
		Sections struct {
			Egress struct {
				TCP map[string]uint64 `json:"tcp"`
			} `json:"egress"`
		} `json:"sections"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s.Sections.Egress.TCP
}
