package egress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// noFallbackPlan is what a new user writes first: two data centers, one
// pool, no "fallback" at all.
const noFallbackPlan = `{
  "data_centers": {"ams": {"country": "NL"}, "fra": {"country": "DE"}},
  "ipv4": [
    {"prefix": "198.51.100.0/30", "country": "NL", "pool": "trusted", "dc": "ams"},
    {"prefix": "198.51.100.4/30", "country": "DE", "pool": "trusted", "dc": "fra",
     "owners": {"198.51.100.6": "ams"}},
    {"prefix": "198.51.100.8/30", "country": "DE", "pool": "untrusted", "dc": "fra"}
  ],
  "ipv6": [{"prefix": "2001:db8:5100::/48", "country": "NL", "pool": "trusted", "dc": "ams"}]
}`

// TestSelectDataCenterCountry: a client whose country is unknown (or has
// no address here) and whose pool names no default country leaves from
// an address of its data center's own country, not nowhere.
func TestSelectDataCenterCountry(t *testing.T) {
	p, err := ParsePlan([]byte(noFallbackPlan))
	if err != nil {
		t.Fatal(err)
	}
	nl := netip.MustParsePrefix("198.51.100.0/30")
	for _, country := range []string{"", "US"} {
		for key := uint32(0); key < 50; key++ {
			c, err := p.Select4(country, "trusted", "ams", key)
			if err != nil || c.Fallback != DataCenterFallback || c.Country != "NL" || !nl.Contains(c.Addr) {
				t.Fatalf("Select4(%q, trusted, ams, %d) = %+v, %v; want an NL address of ams, fallback %s", country, key, c, err, DataCenterFallback)
			}
		}
		c, err := p.Select6(country, "trusted", "ams", 2, 7)
		if err != nil || c.Fallback != DataCenterFallback || c.Net != netip.MustParsePrefix("2001:db8:5100:2::/64") {
			t.Fatalf("Select6(%q, trusted, ams) = %+v, %v; want ams's NL /64 of slot 2", country, c, err)
		}
	}
	// fra's country is DE: its own DE addresses, not the one ams owns.
	if c, err := p.Select4("", "trusted", "fra", 1); err != nil || c.Country != "DE" || c.Addr == netip.MustParseAddr("198.51.100.6") {
		t.Fatalf("Select4(\"\", trusted, fra) = %+v, %v; want a DE address fra owns", c, err)
	}
	// The last resort stays in the pool and the data center: ams has no
	// untrusted address at all, and the owner-moved DE address is trusted.
	if c, err := p.Select4("", "untrusted", "ams", 1); !errors.Is(err, ErrNoEgress) ||
		!strings.Contains(err.Error(), `data center "ams" has no ipv4 address in pool "untrusted" for NL`) {
		t.Fatalf("Select4(\"\", untrusted, ams) = %+v, %v; want ErrNoEgress naming the data center's country", c, err)
	}
	// A plan default comes first.
	p2, err := ParsePlan([]byte(strings.Replace(noFallbackPlan, `"ipv6"`, `"fallback": {"pools": {"trusted": "DE"}}, "ipv6"`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := p2.Select4("", "trusted", "ams", 1); err != nil || c.Fallback != PoolFallback || c.Addr != netip.MustParseAddr("198.51.100.6") {
		t.Fatalf("with a pool default: %+v, %v; want the pool's DE address", c, err)
	}
	if s := DataCenterFallback.String(); s != "dc" {
		t.Errorf("DataCenterFallback.String() = %q", s)
	}
}

// logBuffer is a slog.Logger writing text lines into a buffer.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) lines(substr string) []string {
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

func newLogBuffer() (*logBuffer, *slog.Logger) {
	b := &logBuffer{}
	return b, slog.New(slog.NewTextHandler(b, nil))
}

// TestRouterNewUserDefaults is the issue as a new user meets it: a plan
// without "fallback", no GeoIP, a client registered without a country.
// Its flows leave from the data center's country (counted), and the plan's
// load warns about the pools without a default.
func TestRouterNewUserDefaults(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "plan.json")
	if err := os.WriteFile(path, []byte(noFallbackPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPlan(path)
	if err != nil {
		t.Fatal(err)
	}
	logs, lg := newLogBuffer()
	r, err := NewRouter(RouterConfig{Plan: p, PlanFile: path, DC: "ams", Slot: 1, Pool: "trusted", Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	c := routerClient(0x21, "100.64.0.2", "fd00::2")
	r.OnHandshake(c, netip.MustParseAddrPort("203.0.113.7:4000"))
	s, err := r.Route(c.V4, netip.MustParseAddrPort("198.18.0.2:80"))
	if err != nil || !netip.MustParsePrefix("198.51.100.0/30").Contains(s.Addr) {
		t.Fatalf("client of unknown country: %+v, %v; want an NL address of ams", s, err)
	}
	if _, err := r.Route(c.V6, netip.MustParseAddrPort("[2001:db8:18::2]:80")); err != nil {
		t.Fatalf("client of unknown country over IPv6: %v", err)
	}
	if st := r.Stats(); st["fallback_dc"] != uint64(2) || st["no_egress"] != uint64(0) {
		t.Errorf("stats %v: want fallback_dc 2, no_egress 0", st)
	}

	// At load: each pool without a default is named once, at WARN, with
	// what its clients get instead; untrusted has no address in ams at all.
	for pool, want := range map[string]string{
		"trusted":   `pool=trusted dc=ams dc_country=NL`,
		"untrusted": `pool=untrusted dc=ams dc_country=NL`,
	} {
		got := logs.lines("pool=" + pool + " ")
		if len(got) != 1 || !strings.Contains(got[0], "level=WARN") || !strings.Contains(got[0], want) {
			t.Errorf("log lines about pool %s: %q; want one WARN with %q", pool, got, want)
		}
	}
	if got := logs.lines("pool=untrusted "); len(got) != 1 || !strings.Contains(got[0], "no egress") {
		t.Errorf("pool untrusted (no address in ams): %q; want a warning that its clients get no egress here", got)
	}
	// A reload warns again (the plan may have changed its pools).
	before := len(logs.lines("pool=trusted "))
	if err := os.WriteFile(path, []byte(noFallbackPlan+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.reloadPlan()
	if got := len(logs.lines("pool=trusted ")); got != before+1 {
		t.Errorf("after a reload, %d lines about pool trusted, want %d", got, before+1)
	}
}

// TestRouterDefaultPoolMissing: --egress-pool names a pool the plan does
// not have: every client without a pool of its own is refused, which the
// load says.
func TestRouterDefaultPoolMissing(t *testing.T) {
	p, err := ParsePlan([]byte(noFallbackPlan))
	if err != nil {
		t.Fatal(err)
	}
	logs, lg := newLogBuffer()
	if _, err := NewRouter(RouterConfig{Plan: p, PlanFile: "plan.json", DC: "ams", Slot: 1, Pool: "default", Logger: lg}); err != nil {
		t.Fatal(err)
	}
	if got := logs.lines("pool=default "); len(got) != 1 || !strings.Contains(got[0], "level=WARN") || !strings.Contains(got[0], "no address") {
		t.Errorf("log lines about the default pool: %q; want one WARN that the plan has no address in it", got)
	}
}

// TestDialerLogsRefusals: the first flow refused for each reason is
// logged at once; later ones at most once per interval, with the number
// refused since the last line.
func TestDialerLogsRefusals(t *testing.T) {
	logs, lg := newLogBuffer()
	noEgress := func(netip.Addr, netip.AddrPort) (Source, error) {
		return Source{}, fmt.Errorf("%w: test plan has none", ErrNoEgress)
	}
	d, err := New(Config{Logger: lg, Route: noEgress, Allow: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}})
	if err != nil {
		t.Skip(err) // a kernel without IP_LOCAL_PORT_RANGE
	}
	now := time.Unix(1_000_000, 0)
	d.refusals.limit.Now = func() time.Time { return now }
	dst := netip.MustParseAddrPort("198.18.0.2:80")
	for range 5 {
		if _, err := d.DialTCP(context.Background(), clientSrc, dst); !errors.Is(err, ErrNoEgress) {
			t.Fatalf("DialTCP: %v, want ErrNoEgress", err)
		}
	}
	if _, err := d.DialTCP(context.Background(), clientSrc, netip.MustParseAddrPort("127.0.0.1:80")); !errors.Is(err, ErrDenied) {
		t.Fatalf("DialTCP to loopback: %v, want ErrDenied", err)
	}
	if st := d.Stats().TCP; st.NoEgress != 5 || st.Denied != 1 {
		t.Errorf("stats %+v: want no_egress 5, denied 1", st)
	}
	got := logs.lines("flow refused")
	if len(got) != 2 || !strings.Contains(got[0], "reason=no_egress") || !strings.Contains(got[1], "reason=acl") {
		t.Fatalf("log after 5 no_egress and 1 acl refusals:\n%s\nwant one line per reason", strings.Join(got, "\n"))
	}
	for _, want := range []string{"level=WARN", "proto=tcp", "client=100.96.0.2", "dst=198.18.0.2:80", "test plan has none", "refused_since_last=1 "} {
		if !strings.Contains(got[0], want) {
			t.Errorf("first no_egress line %q lacks %q", got[0], want)
		}
	}
	now = now.Add(refusalLogEvery - time.Second)
	d.DialUDP(context.Background(), clientSrc, dst)
	if n := len(logs.lines("reason=no_egress")); n != 1 {
		t.Fatalf("%d no_egress lines within the interval, want 1", n)
	}
	now = now.Add(time.Second)
	d.DialUDP(context.Background(), clientSrc, dst)
	got = logs.lines("reason=no_egress")
	if len(got) != 2 || !strings.Contains(got[1], "proto=udp") || !strings.Contains(got[1], "refused_since_last=6 ") {
		t.Fatalf("no_egress lines after the interval:\n%s\nwant a second one counting the 6 refused since the first", strings.Join(got, "\n"))
	}
}
