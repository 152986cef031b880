package e2e

// A handshake flood (issue 6): initiations with a valid MAC1 (anyone can
// compute it from the service's public key) and random keys, from 64
// source addresses, about 2,500 a second in bursts of 256 (each burst
// alone fills wireguard-go's handshake queue past its under-load mark),
// against one node that serves a standard client. The
// node's wireguard-go must go under load and answer with cookie replies,
// and the client must keep its throughput. Nothing of the flood may reach
// the node's initiation opener: it only opens initiations wireguard-go
// accepted.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

// floodSources are the flood's source addresses: client WAN addresses
// (DESIGN.md), local to the client namespace.
var floodSources = netip.MustParsePrefix("203.0.113.64/26")

// The flood test's paired downloads: how many pairs, and each download's
// length in seconds (a flood lasts two seconds longer, started a second
// before the download under it).
const (
	floodPairs  = 8
	floodSample = 4
)

// floodReplies are the flood sources whose cookie replies come back.
var floodReplies = netip.MustParsePrefix("203.0.113.64/30")

func TestHandshakeFlood(t *testing.T) {
	c, bins, srv := newClusterLab(t, 1, 1, false)
	// The claim is about throughput: measure an uninstrumented node even
	// when the suite builds with -race (.ci/run).
	plain, err := lab.BuildPlain(binDir)
	if err != nil {
		t.Fatal(err)
	}
	bins.Wedged = plain.Wedged
	nodes := startFrontNodesN(t, c, bins, true, 1)
	if err := c.SetVIPRoute(1); err != nil {
		t.Fatal(err)
	}
	node := nodes[0]
	conf, err := node.Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.WGQuickUp(conf); err != nil {
		t.Fatal(err)
	}
	probe := &socksClient{ns: c.Client, probe: srv}
	probe.waitUp(t, 20*time.Second)

	// The flood shares the client's namespace but not its tunnel:
	// wg-quick's policy routing would send it through wg0.
	for _, cmd := range [][]string{
		{"ip", "route", "add", "local", floodSources.String(), "dev", "lo"},
		{"ip", "rule", "add", "from", floodSources.String(), "lookup", "main", "pref", "10"},
	} {
		if _, err := c.Client.Run(cmd...); err != nil {
			t.Fatal(err)
		}
	}
	// The router brings the cookie replies of four source addresses back
	// to the client namespace and drops the others': the node still
	// answers every initiation (it counts them), and the flood's own
	// reply path, which shares the two cores with what is measured, stays
	// small.
	for _, cmd := range [][]string{
		{"ip", "route", "add", "blackhole", floodSources.String()},
		{"ip", "route", "add", floodReplies.String(), "via", lab.ClientWAN4.Addr().String()},
	} {
		if _, err := c.Router.Run(cmd...); err != nil {
			t.Fatal(err)
		}
	}

	download := func(what string) float64 {
		t.Helper()
		r, err := c.Client.Iperf3(lab.Origin4.Addr(), lab.IperfOpts{Seconds: floodSample, Reverse: true})
		if err != nil {
			t.Fatalf("%s: iperf3: %v", what, err)
		}
		t.Logf("%s: %v", what, r)
		return r.BitsPerSecond
	}
	before := indexCounters(t, node)
	cookiesBefore := status(t, node).Bind.CookieReplies
	metricsBefore := scrape(t, node)
	// Paired samples: a run without the flood, then one under a flood
	// started for it, eight times. Other work on the machine changes the
	// rate from minute to minute, and a pair shares its minute. Single
	// samples under the flood vary by ±40% here (how the bursts fall on
	// the download); what is judged is the throughput kept over all
	// pairs, total under the flood over total without (in local runs the
	// median of five 3 s pairs' ratios read from 0.73 to 1.16 for the same
	// code).
	type floodResult struct {
		Sources   int   `json:"sources"`
		Sent      int64 `json:"sent"`
		Cookies   int64 `json:"cookie_replies"`
		Responses int64 `json:"responses"`
		Other     int64 `json:"other"`
	}
	var total floodResult
	var ratios []float64
	var sumBase, sumUnder float64
	for k := 1; k <= floodPairs; k++ {
		base := download(fmt.Sprintf("pair %d, without the flood", k))
		flood, err := c.Client.Start("wgflood", nil, srv, "wgflood",
			"-to", netip.AddrPortFrom(lab.VIP4, 51820).String(), "-key", lab.ConfigValue(conf, "PublicKey"),
			"-from", floodSources.String(), "-burst", "256", "-every", "100ms", "-d", fmt.Sprintf("%ds", floodSample+2))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		under := download(fmt.Sprintf("pair %d, under the flood", k))
		select {
		case <-flood.Done():
		case <-time.After(20 * time.Second):
			t.Fatal("wgflood did not finish")
		}
		if err := flood.Err(); err != nil {
			t.Fatalf("wgflood: %v\n%s", err, flood.Output())
		}
		var res floodResult
		if err := json.Unmarshal([]byte(lastLine(flood.Output())), &res); err != nil {
			t.Fatalf("wgflood output: %v\n%s", err, flood.Output())
		}
		total.Sources = res.Sources
		total.Sent += res.Sent
		total.Cookies += res.Cookies
		total.Responses += res.Responses
		ratios = append(ratios, under/base)
		sumBase += base
		sumUnder += under
	}
	metricsAfter := scrape(t, node)
	after := indexCounters(t, node)
	ratio := sumUnder / sumBase
	slices.Sort(ratios)
	res := total
	t.Logf("flood: %d initiations from %d addresses, %d cookie replies, %d responses; throughput under flood / without: %.2f over all pairs (per pair %.2f, median %.2f)",
		res.Sent, res.Sources, res.Cookies, res.Responses, ratio, ratios, ratios[len(ratios)/2])
	bind := status(t, node).Bind
	t.Logf("node: xdp %v; bind %+v", xdpCounters(t, node), bind)
	if sent := bind.CookieReplies - cookiesBefore; sent < uint64(res.Sent)/2 || res.Cookies == 0 {
		t.Fatalf("the node sent %d cookie replies to %d initiations (%d arrived); want most answered", sent, res.Sent, res.Cookies)
	}
	if res.Responses != 0 {
		t.Fatalf("the node answered %d initiations with random keys", res.Responses)
	}
	if d := after["initiations_opened"] - before["initiations_opened"]; d > 2 {
		t.Errorf("the node opened %.0f initiations during the flood; only the client's (rekeys) should be", d)
	}
	// The metrics tell the same story: cookie replies for the flood,
	// responses only for the one client's rekeys.
	moved := func(name string) float64 { return metricsAfter[name] - metricsBefore[name] }
	if d := moved(`wedge_handshake_messages_sent_total{type="cookie_reply"}`); d < float64(res.Sent)/2 {
		t.Errorf("wedge_handshake_messages_sent_total{type=\"cookie_reply\"} moved by %.0f for %d initiations", d, res.Sent)
	}
	for _, name := range []string{`wedge_handshake_messages_sent_total{type="response"}`, `wedge_handshake_responses_total{outcome="opened"}`} {
		if d := moved(name); d > 2 {
			t.Errorf("%s moved by %.0f during the flood; only the client's rekeys should count", name, d)
		}
	}
	if ratio < 0.8 {
		t.Fatalf("under the flood the client kept %.2f of its throughput over %d pairs (per pair %.2f), want ≥ 0.80", ratio, floodPairs, ratios)
	}
}

// indexCounters is the node's status section on tagged indexes.
func indexCounters(t *testing.T, w *lab.Wedged) map[string]float64 {
	t.Helper()
	resp, err := w.HTTPClient().Get(w.API + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct {
		Indexes map[string]float64 `json:"indexes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	if s.Indexes == nil {
		t.Fatalf("%s: status has no indexes section (tagged indexes off?)", w.NS.Name)
	}
	return s.Indexes
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
