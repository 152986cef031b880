package main

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/registry"
)

// testPlan is egress's test plan of two data centers, ams and fra.
var testPlan = func() string {
	b, err := os.ReadFile("../../egress/testdata/plan-two-dc.json")
	if err != nil {
		panic(err)
	}
	return string(b)
}()

// TestOpenRouterErrors: --egress-plan and --geoip fail the start with
// errors that name the flag.
func TestOpenRouterErrors(t *testing.T) {
	dir := t.TempDir()
	plan := filepath.Join(dir, "plan.json")
	if err := os.WriteFile(plan, []byte(testPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := func(plan, geo, dc string) *config {
		return &config{egressPlan: plan, geoip: geo, dc: dc, egressPool: "trusted"}
	}
	if _, err := openRouter(cfg(plan, "", "lon"), 1, log); err == nil || !strings.HasPrefix(err.Error(), "--egress-plan "+plan+`: this node's data center "lon" (--dc) is not in it`) {
		t.Errorf("a data center not in the plan: %v", err)
	}
	if _, err := openRouter(cfg(filepath.Join(dir, "missing.json"), "", "ams"), 1, log); err == nil {
		t.Error("a missing plan was accepted")
	}
	if _, err := openRouter(cfg(plan, filepath.Join(dir, "missing.mmdb"), "ams"), 1, log); err == nil || !strings.HasPrefix(err.Error(), "--geoip: ") {
		t.Errorf("a missing GeoIP database: %v", err)
	}
	r, err := openRouter(cfg(plan, "", "ams"), 1, log)
	if err != nil {
		t.Fatal(err)
	}
	if s := r.Stats(); s["dc"] != "ams" || s["addresses"] != 5 || s["geoip"] != false {
		t.Errorf("router stats %v", s)
	}
}

// TestEgressHooks: with a plan, the device tells the router a client's
// handshake and tags, and vets tags against the plan; without, it has no
// hooks.
func TestEgressHooks(t *testing.T) {
	var none server.Config
	(&egressParts{}).hook(&none)
	if none.OnHandshake != nil || none.OnTags != nil || none.ValidTags != nil || (&egressParts{}).dnsDial() != nil {
		t.Fatal("hooks without an egress plan")
	}
	p, err := egress.ParsePlan([]byte(testPlan))
	if err != nil {
		t.Fatal(err)
	}
	r, err := egress.NewRouter(egress.RouterConfig{Plan: p, PlanFile: "plan.json", DC: "ams", Slot: 1, Pool: "trusted",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var cfg server.Config
	(&egressParts{router: r}).hook(&cfg)
	c := registry.Client{ClientID: 0x20, V4: netip.MustParseAddr("100.64.0.4"), V6: netip.MustParseAddr("fd00::4")}
	c.Tags.Country = "DE"
	cfg.OnHandshake(c, netip.MustParseAddrPort("203.0.113.7:4000"))
	if s, err := r.Route(c.V4, netip.MustParseAddrPort("198.18.0.2:80")); err != nil || s.Addr != netip.MustParseAddr("198.51.100.6") {
		t.Fatalf("country override DE: %+v, %v; want ams's DE address 198.51.100.6", s, err)
	}
	c.Tags.Country = ""
	cfg.OnTags(c)
	if s, err := r.Route(c.V4, netip.MustParseAddrPort("198.18.0.2:80")); err != nil || !netip.MustParsePrefix("198.51.100.0/30").Contains(s.Addr) {
		t.Fatalf("override cleared: %+v, %v; want ams's NL block", s, err)
	}
	var tags registry.Tags
	tags.Pool = "acme"
	if err := cfg.ValidTags(tags); err == nil {
		t.Error("a pool the plan has no address in was accepted")
	}
}
