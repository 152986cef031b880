package main

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/egress/geoip/geoiptest"
	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/registry"
)

const testPlan = `{
  "slice": 2048,
  "data_centers": {"ams": {"country": "NL"}, "fra": {"country": "DE"}},
  "ipv4": [
    {"prefix": "198.51.100.0/30", "country": "NL", "pool": "trusted", "dc": "ams"},
    {"prefix": "198.51.100.4/30", "country": "DE", "pool": "trusted", "dc": "fra",
     "owners": {"198.51.100.6": "ams"}}
  ],
  "ipv6": [{"prefix": "2001:db8:5100::/48", "country": "NL", "pool": "trusted", "dc": "ams"}],
  "fallback": {"pools": {"trusted": "NL"}}
}`

func newTestEgressPlan(t *testing.T) (*egressPlan, string) {
	t.Helper()
	dir := t.TempDir()
	plan, geo := filepath.Join(dir, "plan.json"), filepath.Join(dir, "geo.mmdb")
	if err := os.WriteFile(plan, []byte(testPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := geoiptest.Write(geo, map[netip.Prefix]string{
		netip.MustParsePrefix("203.0.113.0/25"):   "NL",
		netip.MustParsePrefix("203.0.113.128/25"): "DE",
	}); err != nil {
		t.Fatal(err)
	}
	e, err := newEgressPlan(plan, geo, "ams", 3, "trusted", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return e, plan
}

func testClient(cid clientid.ID, v4, v6 string) registry.Client {
	return registry.Client{ClientID: cid, V4: netip.MustParseAddr(v4), V6: netip.MustParseAddr(v6)}
}

func TestEgressPlanRoute(t *testing.T) {
	e, _ := newTestEgressPlan(t)
	nl := testClient(0x10, "100.64.0.2", "fd00::2")
	de := testClient(0x11, "100.64.0.3", "fd00::3")
	e.onHandshake(nl, netip.MustParseAddrPort("203.0.113.7:4000"))
	e.onHandshake(de, netip.MustParseAddrPort("203.0.113.200:4000"))
	origin4, origin6 := netip.MustParseAddrPort("198.18.0.2:80"), netip.MustParseAddrPort("[2001:db8:18::2]:80")

	lo, hi := uint16(1024+2*2048), uint16(1024+3*2048-1) // slot 3
	nlPlan := []netip.Addr{netip.MustParseAddr("198.51.100.0"), netip.MustParseAddr("198.51.100.1"),
		netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("198.51.100.3")}
	s, err := e.route(nl.V4, origin4)
	if err != nil || !containsAddr(nlPlan, s.Addr) || s.PortLo != lo || s.PortHi != hi {
		t.Fatalf("NL client: %+v, %v; want an NL address of ams with ports %d-%d", s, err, lo, hi)
	}
	if again, _ := e.route(nl.V4, netip.MustParseAddrPort("198.18.0.3:443")); again.Addr != s.Addr {
		t.Fatalf("the NL client's flows leave from %v and %v", s.Addr, again.Addr)
	}
	// DE: ams owns one DE address (an owners override).
	if s, err := e.route(de.V4, origin4); err != nil || s.Addr != netip.MustParseAddr("198.51.100.6") {
		t.Fatalf("DE client: %+v, %v; want 198.51.100.6 (DE, owned by ams)", s, err)
	}
	// The same client's IPv6 flows: its own address in this node's /64.
	s6, err := e.route(nl.V6, origin6)
	want64 := netip.MustParsePrefix("2001:db8:5100:3::/64")
	if err != nil || !want64.Contains(s6.Addr) || s6.Addr == want64.Addr() {
		t.Fatalf("NL client over IPv6: %+v, %v; want an address in %v", s6, err, want64)
	}
	if other, _ := e.route(de.V6, origin6); other.Addr == s6.Addr {
		t.Fatal("two clients share an IPv6 source")
	}
	// No country known: the pool's default, counted.
	if s, err := e.route(netip.MustParseAddr("100.64.0.9"), origin4); err != nil || !containsAddr(nlPlan, s.Addr) {
		t.Fatalf("unknown client: %+v, %v", s, err)
	}
	if e.fallbackPool.Load() == 0 {
		t.Error("the pool fallback was not counted")
	}
	// A node without a slice: IPv4 fails, counted.
	e.slot = 40
	if _, err := e.route(nl.V4, origin4); !errors.Is(err, egress.ErrNoEgress) || e.noEgress.Load() == 0 {
		t.Fatalf("slot beyond the slices: %v, want ErrNoEgress, counted", err)
	}
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

func TestEgressPlanTableAndReload(t *testing.T) {
	e, path := newTestEgressPlan(t)
	members := []cluster.Member{
		{ID: "a1", DC: "ams", Underlay: netip.MustParseAddr("198.18.1.1")},
		{ID: "f1", DC: "fra", Underlay: netip.MustParseAddr("198.18.5.1")},
		{ID: "f2", DC: "fra", Underlay: netip.MustParseAddr("198.18.5.2")},
	}
	tb := e.table(members)
	if len(tb.Local) != 5 || tb.PortLo != 1024 || tb.Slice != 2048 || tb.Slices != 31 {
		t.Fatalf("local %v, slicing %d/%d/%d", tb.Local, tb.PortLo, tb.Slice, tb.Slices)
	}
	if len(tb.Remote) != 3 || tb.Remote[netip.MustParseAddr("198.51.100.4")] != "fra" {
		t.Fatalf("remote %v", tb.Remote)
	}
	if len(tb.DCs["fra"]) != 2 || len(tb.DCs) != 1 {
		t.Fatalf("data centers %v", tb.DCs)
	}

	// Move 198.51.100.4 to ams: the reload applies it and calls back.
	reloaded := make(chan struct{}, 1)
	e.setOnReload(func() { reloaded <- struct{}{} })
	var w fileWatch
	w.plan, _ = os.Stat(path)
	moved := []byte(`{
  "slice": 2048,
  "data_centers": {"ams": {"country": "NL"}, "fra": {"country": "DE"}},
  "ipv4": [
    {"prefix": "198.51.100.0/30", "country": "NL", "pool": "trusted", "dc": "ams"},
    {"prefix": "198.51.100.4/30", "country": "DE", "pool": "trusted", "dc": "fra",
     "owners": {"198.51.100.6": "ams", "198.51.100.4": "ams"}}
  ],
  "fallback": {"pools": {"trusted": "NL"}}
}`)
	time.Sleep(10 * time.Millisecond) // a new mtime
	if err := os.WriteFile(path, moved, 0o644); err != nil {
		t.Fatal(err)
	}
	e.reload(&w)
	select {
	case <-reloaded:
	default:
		t.Fatal("the reload did not call back")
	}
	if tb := e.table(members); len(tb.Local) != 6 || len(tb.Remote) != 2 {
		t.Fatalf("after the move: local %v, remote %v", tb.Local, tb.Remote)
	}
	// A broken plan is not taken.
	time.Sleep(10 * time.Millisecond)
	if err := os.WriteFile(path, []byte(`{"ipv4": [`), 0o644); err != nil {
		t.Fatal(err)
	}
	e.reload(&w)
	if tb := e.table(members); len(tb.Local) != 6 {
		t.Fatalf("a broken plan changed the table: local %v", tb.Local)
	}
	select {
	case <-reloaded:
		t.Fatal("a broken plan called back")
	default:
	}
}

func TestEgressPlanErrors(t *testing.T) {
	dir := t.TempDir()
	plan := filepath.Join(dir, "plan.json")
	if err := os.WriteFile(plan, []byte(testPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := newEgressPlan(plan, "", "lon", 1, "trusted", log); err == nil {
		t.Error("a data center not in the plan was accepted")
	}
	if _, err := newEgressPlan(filepath.Join(dir, "missing.json"), "", "ams", 1, "trusted", log); err == nil {
		t.Error("a missing plan was accepted")
	}
	if _, err := newEgressPlan(plan, filepath.Join(dir, "missing.mmdb"), "ams", 1, "trusted", log); err == nil {
		t.Error("a missing GeoIP database was accepted")
	}
}

func TestEgressPlanDNSSource(t *testing.T) {
	e, _ := newTestEgressPlan(t)
	// ams is in NL: its DNS leaves from an NL address it owns, whatever
	// the clients' countries.
	s, err := e.dnsSource(netip.MustParseAddrPort("198.18.0.2:53"))
	nl := netip.MustParsePrefix("198.51.100.0/30")
	if err != nil || !nl.Contains(s.Addr) || s.PortLo != 1024+2*2048 {
		t.Fatalf("DNS source %+v, %v; want an NL address of ams in slot 3's slice", s, err)
	}
	s6, err := e.dnsSource(netip.MustParseAddrPort("[2001:db8:18::2]:53"))
	if err != nil || !netip.MustParsePrefix("2001:db8:5100:3::/64").Contains(s6.Addr) {
		t.Fatalf("DNS source over IPv6 %+v, %v", s6, err)
	}
}

func TestEgressPlanRegistrationTags(t *testing.T) {
	e, _ := newTestEgressPlan(t)
	// An override beats GeoIP: NL address, DE tag.
	c := testClient(0x20, "100.64.0.4", "fd00::4")
	c.Tags = registry.Tags{Country: "DE"}
	e.onHandshake(c, netip.MustParseAddrPort("203.0.113.7:4000"))
	if s, err := e.route(c.V4, netip.MustParseAddrPort("198.18.0.2:80")); err != nil || s.Addr != netip.MustParseAddr("198.51.100.6") {
		t.Fatalf("country override DE: %+v, %v; want ams's DE address 198.51.100.6", s, err)
	}
	if err := e.validTags(registry.Tags{Pool: "trusted", Country: "DE"}); err != nil {
		t.Errorf("served tags refused: %v", err)
	}
	if err := e.validTags(registry.Tags{Pool: "acme"}); err == nil {
		t.Error("a pool the plan has no address in was accepted")
	}
	if err := e.validTags(registry.Tags{Country: "US"}); err == nil {
		t.Error("a country the plan has no address in was accepted")
	}
}

// TestEgressPlanRetag: a tag change reaches a client seen here at once: its
// next flow leaves from an address with the new tags; clearing the country
// override falls back to the country of its handshake address; a client
// not seen yet is left to its handshake.
func TestEgressPlanRetag(t *testing.T) {
	e, _ := newTestEgressPlan(t)
	dst := netip.MustParseAddrPort("198.18.0.2:80")
	c := testClient(0x21, "100.64.0.5", "fd00::5")
	e.onHandshake(c, netip.MustParseAddrPort("203.0.113.7:4000")) // NL by GeoIP
	nl := func() netip.Addr {
		s, err := e.route(c.V4, dst)
		if err != nil {
			t.Fatal(err)
		}
		return s.Addr
	}
	first := nl()
	if !netip.MustParsePrefix("198.51.100.0/30").Contains(first) {
		t.Fatalf("NL client leaves from %v, want ams's NL block", first)
	}
	c.Tags = registry.Tags{Country: "DE"}
	e.onTags(c)
	if s, err := e.route(c.V4, dst); err != nil || s.Addr != netip.MustParseAddr("198.51.100.6") {
		t.Fatalf("after the change to DE: %+v, %v; want ams's DE address 198.51.100.6", s, err)
	}
	c.Tags = registry.Tags{}
	e.onTags(c)
	if got := nl(); got != first {
		t.Fatalf("override cleared: leaves from %v, want the GeoIP country's %v again", got, first)
	}
	unseen := testClient(0x22, "100.64.0.6", "fd00::6")
	unseen.Tags = registry.Tags{Country: "DE"}
	e.onTags(unseen)
	if _, ok := e.tags.Load(unseen.V4); ok {
		t.Fatal("onTags stored tags for a client that has not handshaken here")
	}
}
