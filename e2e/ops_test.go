package e2e

// wedged run as an operator would (README "Operating wedge"), in the
// single-node lab (lab/topo.go) with an egress plan a new user writes: no
// "fallback", no --geoip, a client registered without a country.
//
//   client ── wg-quick ── node: wedged --egress-plan plan.json --log-format json ── origin
//                               lo 198.51.100.10 (the plan's), 198.51.100.11 (spare)
//
// TestOpsDefaultsAndSIGHUP: the client's flows leave from the data center's
// country (they were all refused before), the log is one JSON object a
// line, warns about the pool without a default and tells of the first
// refused flow (IPv6: the plan has none); then the plan is
// rewritten to .11 with its old size and modification time, which the
// node's polls cannot see, and a SIGHUP alone makes the client's new flows
// leave from .11 while an interactive TCP session opened before goes on
// without a stall.

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

const opsPlan = `{
  "ports": "40000-49999",
  "slice": 5000,
  "data_centers": {"default": {"country": "NL"}},
  "ipv4": [{"prefix": "198.51.100.10/32", "country": "NL", "pool": "trusted", "dc": "default"}]
}
`

func TestOpsDefaultsAndSIGHUP(t *testing.T) {
	needLab(t, append(lab.ToolsOrigin, lab.ToolsClient...)...)
	bins, err := lab.Build(binDir)
	if err != nil {
		t.Fatal(err)
	}
	s, probe := newSingleNode(t)
	spare := netip.MustParseAddr("198.51.100.11")
	if err := s.Node.AddrAdd("lo", netip.PrefixFrom(spare, 32)); err != nil {
		t.Fatal(err)
	}
	plan := filepath.Join(s.Lab.Dir, "ops-plan.json")
	if err := os.WriteFile(plan, []byte(opsPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := s.StartWedged(bins.Wedged, "--egress-plan", plan, "--log-format", "json")
	if err != nil {
		t.Fatal(err)
	}
	conf, err := w.Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.WGQuickUp(conf); err != nil {
		t.Fatal(err)
	}
	origin := lab.Origin4.Addr()
	egressOf := func() netip.AddrPort {
		t.Helper()
		got, err := probe.RemoteAddr(origin)
		if err != nil {
			t.Fatalf("a flow of the client of unknown country: %v\nwedged's log:\n%s", err, w.Proc.Output())
		}
		return got
	}

	// Defaults: the data center's country, in slot 1's slice.
	if got := egressOf(); got.Addr() != lab.Egress4 || got.Port() < 40000 || got.Port() > 44999 {
		t.Fatalf("the client left from %v, want %v with a port in 40000-44999", got, lab.Egress4)
	}
	// The plan has no IPv6: the client's IPv6 flows are refused, and the
	// first one is logged.
	if got, err := probe.RemoteAddr(lab.Origin6.Addr()); err == nil {
		t.Fatalf("an IPv6 flow left from %v; the plan has no IPv6 block", got)
	}
	// The log: JSON lines only, the pool without a default named, the
	// refused flow told.
	warned, refused := false, false
	for _, l := range strings.Split(strings.TrimSpace(w.Proc.Output()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("wedged --log-format json wrote a line that is not JSON: %q", l)
		}
		if m["level"] == "WARN" && m["pool"] == "trusted" && strings.Contains(m["msg"].(string), "no default country") {
			warned = true
		}
		if m["msg"] == "flow refused" && m["reason"] == "no_egress" && m["proto"] == "tcp" && m["component"] == "egress" {
			refused = true
		}
	}
	if !warned {
		t.Errorf("no warning about pool trusted having no default country:\n%s", w.Proc.Output())
	}
	if !refused {
		t.Errorf("no line about the refused IPv6 flow:\n%s", w.Proc.Output())
	}

	// An interactive session across the reload.
	type echoResult struct {
		Sent, Echoed int
		MaxGapMS     int64 `json:"max_gap_ms"`
		Broken       bool
		Err          string
	}
	echoDone := make(chan echoResult, 1)
	go func() {
		out, err := probe.NS.Run(probe.Bin, "echo", "-to", netip.AddrPortFrom(origin, lab.EchoPort).String(), "-d", "7s")
		var r echoResult
		if err == nil {
			err = json.Unmarshal([]byte(out), &r)
		}
		if err != nil {
			r = echoResult{Broken: true, Err: err.Error() + ": " + out}
		}
		echoDone <- r
	}()

	// The plan moves the client to .11, with the file's size and time
	// unchanged: only a forced reload sees it.
	fi, err := os.Stat(plan)
	if err != nil {
		t.Fatal(err)
	}
	moved := strings.Replace(opsPlan, lab.Egress4.String()+"/32", spare.String()+"/32", 1)
	if err := os.WriteFile(plan, []byte(moved), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(plan, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // over one poll (2 s)
	if got := egressOf(); got.Addr() != lab.Egress4 {
		t.Fatalf("the node took the rewritten plan without a SIGHUP (the client left from %v): the test proves nothing", got)
	}
	if err := syscall.Kill(w.Proc.Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	took := waitUntil(t, 5*time.Second, "the client's new flows leave from "+spare.String(), func() bool {
		return egressOf().Addr() == spare
	})
	t.Logf("after SIGHUP, the client's new flows left from %v within %v", spare, took.Round(time.Millisecond))

	r := <-echoDone
	if r.Broken || r.Sent == 0 || r.Echoed != r.Sent || r.MaxGapMS > 1000 {
		t.Errorf("the session across the SIGHUP: %+v; want every message echoed, no stall over 1 s", r)
	} else {
		t.Logf("the session across the SIGHUP: %d messages echoed, longest gap %d ms", r.Echoed, r.MaxGapMS)
	}
	if w.Proc.Exited() {
		t.Fatalf("wedged exited: %v", w.Proc.Err())
	}
	var done map[string]any
	for _, l := range strings.Split(w.Proc.Output(), "\n") {
		if strings.Contains(l, `"SIGHUP: reload done"`) {
			json.Unmarshal([]byte(l), &done)
		}
	}
	if rl, _ := done["reloaded"].([]any); len(rl) != 1 || rl[0] != "egress-plan" {
		t.Errorf("the reload's line %v: want reloaded [egress-plan]", done)
	}
}
