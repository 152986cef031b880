package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// Tests of what a parsed Plan answers (plan_select.go); the plan builders
// (mustParsePlan, plan4, okBlock...) are in plan_test.go.

func TestSlice(t *testing.T) {
	def := mustParsePlan(t, plan4(okBlock))
	tests := []struct {
		name   string
		p      *Plan
		slot   uint8
		lo, hi uint16
		err    bool
	}{
		{"default slot 1", def, 1, 1024, 3071, false},
		{"default slot 2", def, 2, 3072, 5119, false},
		{"default slot 31", def, 31, 62464, 64511, false}, // 64512-65535 is a partial slice
		{"default slot 32", def, 32, 0, 0, true},
		{"default slot 255", def, 255, 0, 0, true},
		{"slot 0", def, 0, 0, 0, true},
		{"custom last", mustParsePlan(t, plan4(okBlock, `"ports": "40000-40999"`, `"slice": 100`)), 10, 40900, 40999, false},
		{"custom beyond", mustParsePlan(t, plan4(okBlock, `"ports": "40000-40999"`, `"slice": 100`)), 11, 0, 0, true},
		{"partial slice unused", mustParsePlan(t, plan4(okBlock, `"ports": "40000-40249"`, `"slice": 100`)), 3, 0, 0, true},
		{"one port slices", mustParsePlan(t, plan4(okBlock, `"ports": "1-65535"`, `"slice": 1`)), 255, 255, 255, false},
		{"top port", mustParsePlan(t, plan4(okBlock, `"ports": "65535-65535"`, `"slice": 1`)), 1, 65535, 65535, false},
		{"one slice", mustParsePlan(t, plan4(okBlock, `"slice": 64512`)), 1, 1024, 65535, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lo, hi, err := tt.p.Slice(tt.slot)
			if tt.err {
				if !errors.Is(err, ErrNoSlice) {
					t.Fatalf("Slice(%d): got %d-%d, %v; want an error wrapping ErrNoSlice", tt.slot, lo, hi, err)
				}
				return
			}
			if err != nil || lo != tt.lo || hi != tt.hi {
				t.Fatalf("Slice(%d): got %d-%d, %v; want %d-%d", tt.slot, lo, hi, err, tt.lo, tt.hi)
			}
		})
	}
}

func TestOwnerDCAndAddrs4(t *testing.T) {
	p := loadTestPlan(t)
	for _, tt := range []struct {
		addr string
		dc   string
	}{
		{"198.51.100.0", "ams"},
		{"198.51.100.15", "ams"},
		{"198.51.100.16", "fra"},
		{"198.51.100.20", "ams"}, // owners override
		{"::ffff:198.51.100.20", "ams"},
		{"198.51.100.21", "fra"},
		{"198.51.100.38", "bru"},
		{"198.51.100.39", "ams"}, // owners override
		{"198.51.100.40", ""},
		{"198.51.100.127", ""},
		{"198.51.100.255", "bru"},
		{"203.0.113.1", ""},
		{"0.0.0.0", ""},
		{"2001:db8:5100::", "ams"},
		{"2001:db8:5200:ffff::1", "fra"},
		{"2001:db8:5300:ff:ffff:ffff:ffff:ffff", "bru"},
		{"2001:db8:5300:100::", ""},
		{"2001:db8::1", ""},
	} {
		dc, ok := p.OwnerDC(netip.MustParseAddr(tt.addr))
		if dc != tt.dc || ok != (tt.dc != "") {
			t.Errorf("OwnerDC(%s) = %q, %v; want %q", tt.addr, dc, ok, tt.dc)
		}
	}
	if dc, ok := p.OwnerDC(netip.Addr{}); ok {
		t.Errorf("OwnerDC(zero) = %q, true", dc)
	}

	var want []netip.Addr
	for i := 0; i <= 15; i++ {
		want = append(want, addr4(0xc6336400+uint32(i)))
	}
	for _, s := range []string{"198.51.100.20", "198.51.100.32", "198.51.100.33", "198.51.100.34", "198.51.100.35", "198.51.100.36", "198.51.100.39"} {
		want = append(want, netip.MustParseAddr(s))
	}
	if got := p.Addrs4("ams"); !slices.Equal(got, want) {
		t.Errorf("Addrs4(ams):\ngot  %v\nwant %v", got, want)
	}
	if got := p.Addrs4("lon"); got != nil {
		t.Errorf("Addrs4(lon) = %v, want nil", got)
	}
	// Every address a data center lists is owned by it.
	for _, dc := range []string{"ams", "fra", "bru"} {
		for _, a := range p.Addrs4(dc) {
			if o, _ := p.OwnerDC(a); o != dc {
				t.Errorf("Addrs4(%s) has %s owned by %q", dc, a, o)
			}
		}
	}
	if d, ok := p.DataCenter("ams"); !ok || d != (DataCenter{"ams", "NL", "NL-NH", "Amsterdam"}) {
		t.Errorf("DataCenter(ams) = %+v, %v", d, ok)
	}
	if d, ok := p.DataCenter("bru"); !ok || d != (DataCenter{Name: "bru", Country: "BE"}) {
		t.Errorf("DataCenter(bru) = %+v, %v", d, ok)
	}
	if _, ok := p.DataCenter("lon"); ok {
		t.Error("DataCenter(lon) found")
	}
}

func TestSelect4Fallback(t *testing.T) {
	p := loadTestPlan(t)
	tests := []struct {
		country, pool, dc string
		want              Fallback
		wantCountry       string
		wantIn            string // prefix the address must be in; "" for ErrNoEgress
	}{
		{"NL", "trusted", "bru", NoFallback, "NL", "198.51.100.38/32"},
		{"DE", "trusted", "ams", NoFallback, "DE", "198.51.100.20/32"},        // only through owners
		{"BE", "trusted", "ams", CountryFallback, "NL", "198.51.100.0/26"},    // BE → NL
		{"BE", "untrusted", "fra", CountryFallback, "DE", "198.51.100.24/29"}, // BE → NL (none) → DE
		{"LU", "trusted", "fra", CountryFallback, "FR", "198.51.100.37/32"},   // LU → BE (none) → FR
		{"LU", "trusted", "bru", CountryFallback, "BE", "198.51.100.128/26"},  // LU → BE
		{"US", "trusted", "ams", PoolFallback, "NL", "198.51.100.0/26"},
		{"", "untrusted", "ams", PoolFallback, "NL", "198.51.100.32/30"},
		{"FR", "untrusted", "bru", DataCenterFallback, "BE", "198.51.100.192/26"}, // FR, pool default NL: neither in bru; bru's own BE
		{"US", "trusted", "fra", DataCenterFallback, "DE", "198.51.100.16/29"},    // US, pool default NL: neither in fra
		{"", "trusted", "bru", PoolFallback, "NL", "198.51.100.38/32"},
		{"FR", "gold", "ams", 0, "", ""}, // no address in pool gold anywhere
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%s/%s/%s", tt.country, tt.pool, tt.dc)
		t.Run(name, func(t *testing.T) {
			for key := uint32(0); key < 200; key++ {
				c, err := p.Select4(tt.country, tt.pool, tt.dc, key)
				if tt.wantIn == "" {
					if !errors.Is(err, ErrNoEgress) {
						t.Fatalf("got %+v, %v; want ErrNoEgress", c, err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if c.Fallback != tt.want || c.Country != tt.wantCountry || !netip.MustParsePrefix(tt.wantIn).Contains(c.Addr) || c.Net.IsValid() {
					t.Fatalf("key %d: got %+v, want fallback %s to %s in %s", key, c, tt.want, tt.wantCountry, tt.wantIn)
				}
				if dc, _ := p.OwnerDC(c.Addr); dc != tt.dc {
					t.Fatalf("key %d: %s is owned by %s, not %s", key, c.Addr, dc, tt.dc)
				}
			}
		})
	}
	for _, tt := range []struct{ country, pool, dc, want string }{
		{"US", "gold", "fra", `egress: no egress address: data center "fra" has no ipv4 address in pool "gold" for US, DE`},
		{"BE", "gold", "ams", `data center "ams" has no ipv4 address in pool "gold" for BE, NL, DE`},
		{"", "gold", "ams", `data center "ams" has no ipv4 address in pool "gold" for NL`},
		{"NL", "trusted", "lon", `unknown data center "lon"`},
	} {
		_, err := p.Select4(tt.country, tt.pool, tt.dc, 1)
		if !errors.Is(err, ErrNoEgress) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Select4(%q, %q, %q): got %v, want ErrNoEgress containing %q", tt.country, tt.pool, tt.dc, err, tt.want)
		}
	}
	if s := Fallback(7).String(); s != "Fallback(7)" {
		t.Errorf("Fallback(7).String() = %q", s)
	}
}

// TestSelect4AgainstReference checks the per-tag lists built at parse time
// against a scan of every address of the plan.
func TestSelect4AgainstReference(t *testing.T) {
	p := loadTestPlan(t)
	for _, dc := range []string{"ams", "fra", "bru"} {
		for _, country := range []string{"NL", "DE", "FR", "BE"} {
			for _, pool := range []string{"trusted", "untrusted"} {
				var cands []netip.Addr
				for _, b := range p.v4 {
					for a := b.first; b.prefix.Contains(a); a = a.Next() {
						if o, _ := p.OwnerDC(a); o == dc && b.country == country && b.pool == pool {
							cands = append(cands, a)
						}
					}
				}
				for key := uint32(0); key < 500; key += 7 {
					c, err := p.Select4(country, pool, dc, key)
					if len(cands) == 0 {
						if err == nil && c.Fallback == NoFallback {
							t.Fatalf("%s/%s/%s: got %+v with no candidates", country, pool, dc, c)
						}
						continue
					}
					var best netip.Addr
					var bestW uint64
					for _, a := range cands {
						if w := weight4(key, u32(a)); !best.IsValid() || w > bestW {
							best, bestW = a, w
						}
					}
					if err != nil || c.Addr != best || c.Fallback != NoFallback || c.Country != country {
						t.Fatalf("%s/%s/%s key %d: got %+v, %v; want %s", country, pool, dc, key, c, err, best)
					}
				}
			}
		}
	}
}

// rendezvousPlan is a /26 of NL addresses owned by ams, with extra blocks
// and members spliced in.
func rendezvousPlan(t *testing.T, owners, extra string) *Plan {
	b := `{"prefix": "198.51.100.0/26", "country": "NL", "pool": "p", "dc": "ams"` + owners + `}` + extra
	return mustParsePlan(t, plan4(b))
}

func TestSelect4Rendezvous(t *testing.T) {
	const keys = 64 * 500
	base := rendezvousPlan(t, "", "")
	again := rendezvousPlan(t, "", "")
	counts := map[netip.Addr]int{}
	before := make([]netip.Addr, keys)
	for k := range uint32(keys) {
		c, err := base.Select4("NL", "p", "ams", k)
		if err != nil {
			t.Fatal(err)
		}
		if c2, _ := base.Select4("NL", "p", "ams", k); c2 != c {
			t.Fatalf("key %d: %v then %v", k, c.Addr, c2.Addr)
		}
		if c2, _ := again.Select4("NL", "p", "ams", k); c2 != c {
			t.Fatalf("key %d: %v, but %v after parsing again", k, c.Addr, c2.Addr)
		}
		before[k] = c.Addr
		counts[c.Addr]++
	}
	if len(counts) != 64 {
		t.Fatalf("keys used %d addresses, want all 64", len(counts))
	}
	for a, n := range counts {
		if n < 350 || n > 650 {
			t.Errorf("%s got %d keys, want about 500", a, n)
		}
	}

	// Moving one address to another data center moves only its clients.
	moved := netip.MustParseAddr("198.51.100.17")
	after := rendezvousPlan(t, `, "owners": {"198.51.100.17": "fra"}`, "")
	n := 0
	for k := range uint32(keys) {
		c, err := after.Select4("NL", "p", "ams", k)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case before[k] == moved:
			n++
			if c.Addr == moved {
				t.Fatalf("key %d still on %s after it moved to fra", k, moved)
			}
		case c.Addr != before[k]:
			t.Fatalf("key %d moved from %s to %s though only %s left", k, before[k], c.Addr, moved)
		}
	}
	if n != counts[moved] {
		t.Fatalf("%d keys moved, want %d", n, counts[moved])
	}

	// Adding one address takes clients only onto itself.
	added := netip.MustParseAddr("198.51.100.64")
	grown := rendezvousPlan(t, "", `, {"prefix": "198.51.100.64/32", "country": "NL", "pool": "p", "dc": "ams"}`)
	n = 0
	for k := range uint32(keys) {
		c, _ := grown.Select4("NL", "p", "ams", k)
		if c.Addr != before[k] {
			if c.Addr != added {
				t.Fatalf("key %d moved from %s to %s, not to the new %s", k, before[k], c.Addr, added)
			}
			n++
		}
	}
	if n < 300 || n > 700 {
		t.Errorf("%d of %d keys moved to the 65th address, want about %d", n, keys, keys/65)
	}
}

func TestNodeNet6(t *testing.T) {
	for _, tt := range []struct {
		block string
		slot  uint8
		want  string
	}{
		{"2001:db8:5100::/48", 1, "2001:db8:5100:1::/64"},
		{"2001:db8:5100::/48", 255, "2001:db8:5100:ff::/64"},
		{"2001:db8:5300::/56", 7, "2001:db8:5300:7::/64"},
		{"2001:db8::/32", 2, "2001:db8:0:2::/64"},
		{"2001:db8::/32", 0, ""},
		{"2001:db8:5300:100::/64", 1, ""},
		{"198.51.100.0/24", 1, ""},
		{"::ffff:0.0.0.0/96", 1, ""},
	} {
		got, err := NodeNet6(netip.MustParsePrefix(tt.block), tt.slot)
		if tt.want == "" {
			if err == nil {
				t.Errorf("NodeNet6(%s, %d) = %s, want an error", tt.block, tt.slot, got)
			}
			continue
		}
		if err != nil || got != netip.MustParsePrefix(tt.want) {
			t.Errorf("NodeNet6(%s, %d) = %s, %v; want %s", tt.block, tt.slot, got, err, tt.want)
		}
	}
	if _, err := NodeNet6(netip.Prefix{}, 1); err == nil {
		t.Error("NodeNet6(zero prefix) succeeded")
	}
}

func TestSelect6(t *testing.T) {
	p := loadTestPlan(t)
	for _, tt := range []struct {
		country, pool, dc string
		slot              uint8
		want              string
		fb                Fallback
	}{
		{"NL", "trusted", "ams", 1, "2001:db8:5100:1::/64", NoFallback},
		{"BE", "untrusted", "ams", 3, "2001:db8:5101:3::/64", CountryFallback},
		{"US", "trusted", "ams", 255, "2001:db8:5100:ff::/64", PoolFallback},
		{"BE", "trusted", "bru", 9, "2001:db8:5300:9::/64", NoFallback},
		{"FR", "trusted", "fra", 2, "2001:db8:5200:2::/64", DataCenterFallback},
		{"FR", "untrusted", "fra", 2, "", 0},
	} {
		c, err := p.Select6(tt.country, tt.pool, tt.dc, tt.slot, 42)
		if tt.want == "" {
			if !errors.Is(err, ErrNoEgress) || !strings.Contains(err.Error(), "no ipv6 address") {
				t.Errorf("Select6(%s, %s, %s): got %+v, %v; want ErrNoEgress", tt.country, tt.pool, tt.dc, c, err)
			}
			continue
		}
		if err != nil || c.Net != netip.MustParsePrefix(tt.want) || c.Fallback != tt.fb || c.Addr.IsValid() {
			t.Errorf("Select6(%s, %s, %s, %d): got %+v, %v; want %s (%s)", tt.country, tt.pool, tt.dc, tt.slot, c, err, tt.want, tt.fb)
		}
	}
	if _, err := p.Select6("NL", "trusted", "ams", 0, 1); err == nil {
		t.Error("Select6 with slot 0 succeeded")
	}

	// With several blocks, key spreads clients over all of them, stably.
	two := mustParsePlan(t, plan6(`{"prefix": "2001:db8:1::/48", "country": "NL", "pool": "p", "dc": "ams"},
		{"prefix": "2001:db8:2::/48", "country": "NL", "pool": "p", "dc": "ams"},
		{"prefix": "2001:db8:3::/48", "country": "NL", "pool": "p", "dc": "fra"}`))
	seen := map[netip.Prefix]int{}
	for k := range uint32(1000) {
		c, err := two.Select6("NL", "p", "ams", 5, k)
		if err != nil {
			t.Fatal(err)
		}
		if c2, _ := two.Select6("NL", "p", "ams", 5, k); c2 != c {
			t.Fatalf("key %d: %s then %s", k, c.Net, c2.Net)
		}
		seen[c.Net]++
	}
	if len(seen) != 2 || seen[netip.MustParsePrefix("2001:db8:1:5::/64")] < 400 || seen[netip.MustParsePrefix("2001:db8:2:5::/64")] < 400 {
		t.Errorf("1000 keys spread as %v, want about 500 on each ams block", seen)
	}
}

func BenchmarkSelect4(b *testing.B) {
	p := mustParsePlan(b, plan4(`{"prefix": "198.18.0.0/22", "country": "NL", "pool": "trusted", "dc": "ams"}`))
	var k uint32
	for b.Loop() {
		k++
		if _, err := p.Select4("NL", "trusted", "ams", k); err != nil {
			b.Fatal(err)
		}
	}
}

func TestPlanSlicingAndDataCenters(t *testing.T) {
	p, err := LoadPlan("testdata/plan.json")
	if err != nil {
		t.Fatal(err)
	}
	lo, size, n := p.Slicing()
	for slot := 1; slot <= int(n); slot++ {
		l, h, err := p.Slice(uint8(slot))
		if err != nil || l != lo+uint16(slot-1)*size || h != l+size-1 {
			t.Fatalf("slot %d: Slice %d-%d (%v), Slicing says from %d by %d", slot, l, h, err, lo, size)
		}
	}
	if _, _, err := p.Slice(uint8(n) + 1); err == nil {
		t.Fatalf("Slicing says %d slices, but slot %d has one", n, n+1)
	}
	dcs := p.DataCenters()
	if len(dcs) == 0 || !slices.IsSorted(dcs) {
		t.Fatalf("DataCenters %v", dcs)
	}
	for _, dc := range dcs {
		if _, ok := p.DataCenter(dc); !ok {
			t.Fatalf("DataCenters lists %q, DataCenter does not know it", dc)
		}
	}
}

func TestPlanServes(t *testing.T) {
	p, err := LoadPlan("testdata/plan.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		country, pool string
		c, p          bool
	}{
		{"NL", "trusted", true, true},
		{"FR", "untrusted", true, true},
		{"US", "trusted", false, true},
		{"NL", "acme", true, false},
		{"", "", true, true},
	} {
		if hc, hp := p.Serves(c.country, c.pool); hc != c.c || hp != c.p {
			t.Errorf("Serves(%q, %q) = %v, %v; want %v, %v", c.country, c.pool, hc, hp, c.c, c.p)
		}
	}
}
