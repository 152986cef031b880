package egress

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/egress/geoip"
	"github.com/wedge-edge/wedge/egress/geoip/geoiptest"
)

// routerTestPlan is testdata/plan-two-dc.json, which server/front's and
// cmd/wedged's tests read too: ams and fra, one address of fra's block
// owned by ams.
var routerTestPlan = mustRead("testdata/plan-two-dc.json")

func mustRead(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// newTestRouter is the router of a node of ams in slot 3, pool trusted,
// with a GeoIP database that puts 203.0.113.0/25 in NL and the upper half
// in DE. It returns the plan file too.
func newTestRouter(t *testing.T) (*Router, string) {
	t.Helper()
	dir := t.TempDir()
	plan, geo := filepath.Join(dir, "plan.json"), filepath.Join(dir, "geo.mmdb")
	if err := os.WriteFile(plan, []byte(routerTestPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := geoiptest.Write(geo, map[netip.Prefix]string{
		netip.MustParsePrefix("203.0.113.0/25"):   "NL",
		netip.MustParsePrefix("203.0.113.128/25"): "DE",
	}); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPlan(plan)
	if err != nil {
		t.Fatal(err)
	}
	db, err := geoip.Open(geo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	r, err := NewRouter(RouterConfig{Plan: p, PlanFile: plan, GeoIP: db, GeoIPFile: geo,
		DC: "ams", Slot: 3, Pool: "trusted", Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return r, plan
}

func routerClient(key uint32, v4, v6 string) Client {
	return Client{Key: key, V4: netip.MustParseAddr(v4), V6: netip.MustParseAddr(v6)}
}

func TestRouterRoute(t *testing.T) {
	r, _ := newTestRouter(t)
	nl := routerClient(0x10, "100.64.0.2", "fd00::2")
	de := routerClient(0x11, "100.64.0.3", "fd00::3")
	r.OnHandshake(nl, netip.MustParseAddrPort("203.0.113.7:4000"))
	r.OnHandshake(de, netip.MustParseAddrPort("203.0.113.200:4000"))
	origin4, origin6 := netip.MustParseAddrPort("198.18.0.2:80"), netip.MustParseAddrPort("[2001:db8:18::2]:80")

	lo, hi := uint16(1024+2*2048), uint16(1024+3*2048-1) // slot 3
	nlPlan := []netip.Addr{netip.MustParseAddr("198.51.100.0"), netip.MustParseAddr("198.51.100.1"),
		netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("198.51.100.3")}
	s, err := r.Route(nl.V4, origin4)
	if err != nil || !slices.Contains(nlPlan, s.Addr) || s.PortLo != lo || s.PortHi != hi {
		t.Fatalf("NL client: %+v, %v; want an NL address of ams with ports %d-%d", s, err, lo, hi)
	}
	if again, _ := r.Route(nl.V4, netip.MustParseAddrPort("198.18.0.3:443")); again.Addr != s.Addr {
		t.Fatalf("the NL client's flows leave from %v and %v", s.Addr, again.Addr)
	}
	// DE: ams owns one DE address (an owners override).
	if s, err := r.Route(de.V4, origin4); err != nil || s.Addr != netip.MustParseAddr("198.51.100.6") {
		t.Fatalf("DE client: %+v, %v; want 198.51.100.6 (DE, owned by ams)", s, err)
	}
	// The same client's IPv6 flows: its own address in this node's /64.
	s6, err := r.Route(nl.V6, origin6)
	want64 := netip.MustParsePrefix("2001:db8:5100:3::/64")
	if err != nil || !want64.Contains(s6.Addr) || s6.Addr == want64.Addr() {
		t.Fatalf("NL client over IPv6: %+v, %v; want an address in %v", s6, err, want64)
	}
	if other, _ := r.Route(de.V6, origin6); other.Addr == s6.Addr {
		t.Fatal("two clients share an IPv6 source")
	}
	// No country known: the pool's default, counted.
	if s, err := r.Route(netip.MustParseAddr("100.64.0.9"), origin4); err != nil || !slices.Contains(nlPlan, s.Addr) {
		t.Fatalf("unknown client: %+v, %v", s, err)
	}
	if r.fallbackPool.Load() == 0 {
		t.Error("the pool fallback was not counted")
	}
	// A node without a slice: IPv4 fails, counted.
	r.slot = 40
	if _, err := r.Route(nl.V4, origin4); !errors.Is(err, ErrNoEgress) || r.noEgress.Load() == 0 {
		t.Fatalf("slot beyond the slices: %v, want ErrNoEgress, counted", err)
	}
}

// TestRouterReload: a changed plan file is taken, and the front is told;
// a broken one is not.
func TestRouterReload(t *testing.T) {
	r, path := newTestRouter(t)
	if n := len(r.Plan().Addrs4("ams")); n != 5 {
		t.Fatalf("ams has %d addresses, want 5", n)
	}

	// Move 198.51.100.4 to ams: the reload applies it and calls back.
	reloaded := make(chan struct{}, 1)
	r.SetOnReload(func() { reloaded <- struct{}{} })
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
	r.reload(&w)
	select {
	case <-reloaded:
	default:
		t.Fatal("the reload did not call back")
	}
	if p := r.Plan(); len(p.Addrs4("ams")) != 6 || len(p.Addrs4("fra")) != 2 {
		t.Fatalf("after the move: ams %v, fra %v", p.Addrs4("ams"), p.Addrs4("fra"))
	}
	if s := r.Stats(); s["addresses"] != 6 {
		t.Errorf("stats after the move: %v addresses, want 6", s["addresses"])
	}
	// A broken plan is not taken.
	time.Sleep(10 * time.Millisecond)
	if err := os.WriteFile(path, []byte(`{"ipv4": [`), 0o644); err != nil {
		t.Fatal(err)
	}
	r.reload(&w)
	if n := len(r.Plan().Addrs4("ams")); n != 6 {
		t.Fatalf("a broken plan changed the plan in use: ams has %d addresses", n)
	}
	select {
	case <-reloaded:
		t.Fatal("a broken plan called back")
	default:
	}
}

// TestRouterRun: Run returns when its context ends, and closes the GeoIP
// database then.
func TestRouterRun(t *testing.T) {
	r, _ := newTestRouter(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return when its context ended")
	}
	if r.Stats()["geoip"] != false {
		t.Error("the GeoIP database is still in use after Run")
	}
}

func TestNewRouterValidation(t *testing.T) {
	p, err := ParsePlan([]byte(routerTestPlan))
	if err != nil {
		t.Fatal(err)
	}
	ok := RouterConfig{Plan: p, PlanFile: "plan.json", DC: "ams", Slot: 1, Pool: "trusted", Logger: discardLogger()}
	if _, err := NewRouter(ok); err != nil {
		t.Fatalf("a valid config was refused: %v", err)
	}
	for name, change := range map[string]func(*RouterConfig){
		"a data center not in the plan": func(c *RouterConfig) { c.DC = "lon" },
		"no plan":                       func(c *RouterConfig) { c.Plan = nil },
		"no plan file":                  func(c *RouterConfig) { c.PlanFile = "" },
		"no logger":                     func(c *RouterConfig) { c.Logger = nil },
		"a GeoIP file without its DB":   func(c *RouterConfig) { c.GeoIPFile = "geo.mmdb" },
	} {
		c := ok
		change(&c)
		if _, err := NewRouter(c); err == nil {
			t.Errorf("%s was accepted", name)
		}
	}
}

func TestRouterDNSSource(t *testing.T) {
	r, _ := newTestRouter(t)
	// ams is in NL: its DNS leaves from an NL address it owns, whatever
	// the clients' countries.
	s, err := r.DNSSource(netip.MustParseAddrPort("198.18.0.2:53"))
	nl := netip.MustParsePrefix("198.51.100.0/30")
	if err != nil || !nl.Contains(s.Addr) || s.PortLo != 1024+2*2048 {
		t.Fatalf("DNS source %+v, %v; want an NL address of ams in slot 3's slice", s, err)
	}
	s6, err := r.DNSSource(netip.MustParseAddrPort("[2001:db8:18::2]:53"))
	if err != nil || !netip.MustParsePrefix("2001:db8:5100:3::/64").Contains(s6.Addr) {
		t.Fatalf("DNS source over IPv6 %+v, %v", s6, err)
	}
}

func TestRouterRegistrationTags(t *testing.T) {
	r, _ := newTestRouter(t)
	// An override beats GeoIP: NL address, DE tag.
	c := routerClient(0x20, "100.64.0.4", "fd00::4")
	c.Country = "DE"
	r.OnHandshake(c, netip.MustParseAddrPort("203.0.113.7:4000"))
	if s, err := r.Route(c.V4, netip.MustParseAddrPort("198.18.0.2:80")); err != nil || s.Addr != netip.MustParseAddr("198.51.100.6") {
		t.Fatalf("country override DE: %+v, %v; want ams's DE address 198.51.100.6", s, err)
	}
	if err := r.ValidTags("trusted", "DE"); err != nil {
		t.Errorf("served tags refused: %v", err)
	}
	if err := r.ValidTags("acme", ""); err == nil {
		t.Error("a pool the plan has no address in was accepted")
	}
	if err := r.ValidTags("", "US"); err == nil {
		t.Error("a country the plan has no address in was accepted")
	}
}

// TestRouterRetag: a tag change reaches a client seen here at once: its
// next flow leaves from an address with the new tags; clearing the country
// override falls back to the country of its handshake address; a client
// not seen yet is left to its handshake.
func TestRouterRetag(t *testing.T) {
	r, _ := newTestRouter(t)
	dst := netip.MustParseAddrPort("198.18.0.2:80")
	c := routerClient(0x21, "100.64.0.5", "fd00::5")
	r.OnHandshake(c, netip.MustParseAddrPort("203.0.113.7:4000")) // NL by GeoIP
	nl := func() netip.Addr {
		s, err := r.Route(c.V4, dst)
		if err != nil {
			t.Fatal(err)
		}
		return s.Addr
	}
	first := nl()
	if !netip.MustParsePrefix("198.51.100.0/30").Contains(first) {
		t.Fatalf("NL client leaves from %v, want ams's NL block", first)
	}
	c.Country = "DE"
	r.OnTags(c)
	if s, err := r.Route(c.V4, dst); err != nil || s.Addr != netip.MustParseAddr("198.51.100.6") {
		t.Fatalf("after the change to DE: %+v, %v; want ams's DE address 198.51.100.6", s, err)
	}
	c.Country = ""
	r.OnTags(c)
	if got := nl(); got != first {
		t.Fatalf("override cleared: leaves from %v, want the GeoIP country's %v again", got, first)
	}
	unseen := routerClient(0x22, "100.64.0.6", "fd00::6")
	unseen.Country = "DE"
	r.OnTags(unseen)
	if _, ok := r.tags.Load(unseen.V4); ok {
		t.Fatal("OnTags stored tags for a client that has not handshaken here")
	}
}

// TestRouterForcedReload: Reload (SIGHUP) takes the files as they are now,
// even a plan rewritten with its old size and modification time, which the
// polls do not notice; a broken plan is refused and the old one kept.
func TestRouterForcedReload(t *testing.T) {
	r, path := newTestRouter(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// The same plan with 198.51.100.4 moved to ams, as long as the old one.
	moved := strings.Replace(routerTestPlan, `"owners": {"198.51.100.6": "ams"}`, `"owners": {"198.51.100.4":"ams","198.51.100.6":"ams"}`, 1)
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(moved)); err != nil {
		t.Fatal(err)
	}
	moved = compact.String() + strings.Repeat(" ", max(0, len(routerTestPlan)-compact.Len()))
	if len(moved) != len(routerTestPlan) {
		t.Fatalf("test plan of %d bytes, want %d", len(moved), len(routerTestPlan))
	}
	if err := os.WriteFile(path, []byte(moved), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	r.watchMu.Lock()
	r.reload(&r.watch) // what Run does every routerPoll
	r.watchMu.Unlock()
	if n := len(r.Plan().Addrs4("ams")); n != 5 {
		t.Fatalf("the poll took a plan whose size and time did not change (ams has %d addresses); the test proves nothing", n)
	}
	reloaded, err := r.Reload()
	if err != nil || !slices.Equal(reloaded, []string{"egress-plan", "geoip"}) {
		t.Fatalf("Reload: %v, %v; want both files reloaded", reloaded, err)
	}
	if n := len(r.Plan().Addrs4("ams")); n != 6 {
		t.Fatalf("after Reload ams has %d addresses, want 6", n)
	}
	if r.Stats()["geoip"] != true {
		t.Fatal("no GeoIP database after Reload")
	}
	if err := os.WriteFile(path, []byte(`{"ipv4": [`), 0o644); err != nil {
		t.Fatal(err)
	}
	reloaded, err = r.Reload()
	if err == nil || !slices.Equal(reloaded, []string{"geoip"}) || len(r.Plan().Addrs4("ams")) != 6 {
		t.Fatalf("Reload of a broken plan: %v, %v, ams %d addresses; want an error and the old plan kept", reloaded, err, len(r.Plan().Addrs4("ams")))
	}
}

// TestRouterTags: a client's tags read back as they route (GeoIP country,
// pool, key), and a relayed flow's tags route as the client's own would:
// a DE flow from another data center leaves from ams's DE address.
func TestRouterTags(t *testing.T) {
	r, _ := newTestRouter(t)
	nl := routerClient(0x10, "100.64.0.2", "fd00::2")
	r.OnHandshake(nl, netip.MustParseAddrPort("203.0.113.7:4000"))
	got, ok := r.TagsOf(nl.V4)
	if !ok || got != (Tags{Country: "NL", Pool: "trusted", Key: 0x10}) {
		t.Fatalf("TagsOf(NL client) = %+v, %v; want NL, trusted, key 0x10", got, ok)
	}
	if _, ok := r.TagsOf(netip.MustParseAddr("100.64.0.99")); ok {
		t.Fatal("TagsOf an unseen client says it handshook here")
	}
	origin4 := netip.MustParseAddrPort("198.18.0.2:80")
	own, _ := r.Route(nl.V4, origin4)
	relayed, err := r.RouteTags(got, origin4)
	if err != nil || relayed != own {
		t.Fatalf("RouteTags(the client's tags) = %+v, %v; want the client's own route %+v", relayed, err, own)
	}
	de, err := r.RouteTags(Tags{Country: "DE", Key: 7}, origin4) // empty pool: the node's
	if err != nil || de.Addr != netip.MustParseAddr("198.51.100.6") {
		t.Fatalf("RouteTags(DE) = %+v, %v; want ams's DE address 198.51.100.6", de, err)
	}
	if _, err := r.RouteTags(Tags{Pool: "acme"}, origin4); !errors.Is(err, ErrNoEgress) {
		t.Fatalf("RouteTags(a pool the plan lacks): %v, want ErrNoEgress", err)
	}
}
