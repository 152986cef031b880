package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func loadTestPlan(t testing.TB) *Plan {
	t.Helper()
	p, err := LoadPlan(filepath.Join("testdata", "plan.json"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustParsePlan(t testing.TB, js string) *Plan {
	t.Helper()
	p, err := ParsePlan([]byte(js))
	if err != nil {
		t.Fatalf("ParsePlan: %v\n%s", err, js)
	}
	return p
}

const testDCs = `"data_centers": {"ams": {"country": "NL"}, "fra": {"country": "DE"}}`

// plan4 wraps IPv4 blocks and extra top-level members into a plan with the
// data centers ams and fra.
func plan4(blocks string, extra ...string) string {
	s := "{" + testDCs + `, "ipv4": [` + blocks + "]"
	for _, e := range extra {
		s += ", " + e
	}
	return s + "}"
}

func plan6(blocks string) string {
	return "{" + testDCs + `, "ipv6": [` + blocks + "]}"
}

const okBlock = `{"prefix": "198.51.100.0/28", "country": "NL", "pool": "trusted", "dc": "ams"}`

func TestParsePlanErrors(t *testing.T) {
	tests := []struct {
		name, js, want string
	}{
		{"empty file", "", "egress plan: empty file"},
		{"syntax", `{"ipv4": [}`, "egress plan: line 1, column 11: invalid character"},
		{"type", "{\n  \"slice\": \"2048\"}", "egress plan: line 2, column 17: json: cannot unmarshal string"},
		{"top-level array", `[]`, "cannot unmarshal array"},
		{"unknown field", plan4(okBlock, `"bogus": 1`), `unknown field "bogus"`},
		{"unknown block field", plan4(`{"prefix": "198.51.100.0/28", "contry": "NL"}`), `unknown field "contry"`},
		{"trailing data", plan4(okBlock) + "\n{}", "egress plan: line 2, column 1: data after the plan object"},
		{"trailing garbage", plan4(okBlock) + " x", "egress plan: line 1, column 162: data after the plan object"},
		{"too large", plan4(okBlock) + strings.Repeat(" ", MaxPlanSize), "egress plan: larger than 4 MiB"},
		{"null", "null", "egress plan: no egress prefixes"},
		{"no prefixes", "{" + testDCs + `, "ipv4": [], "ipv6": []}`, "egress plan: no egress prefixes"},

		{"ports form", plan4(okBlock, `"ports": "1024"`), `egress plan: ports: "1024" is not a port range`},
		{"ports empty", plan4(okBlock, `"ports": ""`), `egress plan: ports: "" is not a port range`},
		{"ports zero", plan4(okBlock, `"ports": "0-100"`), `ports: "0-100" is not`},
		{"ports reversed", plan4(okBlock, `"ports": "2000-1000"`), `ports: "2000-1000" is not`},
		{"ports too high", plan4(okBlock, `"ports": "1024-65536"`), `ports: "1024-65536" is not`},
		{"ports spaces", plan4(okBlock, `"ports": "1024 - 2047"`), `ports: "1024 - 2047" is not`},
		{"slice zero", plan4(okBlock, `"slice": 0`), "egress plan: slice: 0 ports per node does not fit ports 1024-65535 (want 1 to 64512)"},
		{"slice negative", plan4(okBlock, `"slice": -5`), "slice: -5 ports"},
		{"slice too big", plan4(okBlock, `"ports": "1024-2047"`, `"slice": 2048`), "slice: 2048 ports per node does not fit ports 1024-2047 (want 1 to 1024)"},

		{"dc name", `{"data_centers": {"AMS": {"country": "NL"}}, "ipv4": [` + okBlock + `]}`, `egress plan: data_centers["AMS"]: not a valid name`},
		{"dc country missing", `{"data_centers": {"ams": {}}, "ipv4": [` + okBlock + `]}`, `egress plan: data_centers["ams"].country: missing`},
		{"dc country form", `{"data_centers": {"ams": {"country": "NLD"}}, "ipv4": [` + okBlock + `]}`, `data_centers["ams"].country: "NLD" is not an ISO 3166-1 alpha-2 code`},
		{"dc region country", `{"data_centers": {"ams": {"country": "NL", "region": "DE-HE"}}, "ipv4": [` + okBlock + `]}`, `data_centers["ams"].region: "DE-HE" is not an ISO 3166-2 code of NL`},
		{"dc region form", `{"data_centers": {"ams": {"country": "NL", "region": "NL-"}}, "ipv4": [` + okBlock + `]}`, `data_centers["ams"].region: "NL-"`},
		{"dc city", `{"data_centers": {"ams": {"country": "NL", "city": "Ams\tterdam"}}, "ipv4": [` + okBlock + `]}`, `data_centers["ams"].city: "Ams\tterdam" has control characters`},

		{"prefix missing", plan4(`{"country": "NL", "pool": "trusted", "dc": "ams"}`), "egress plan: ipv4[0].prefix: missing"},
		{"prefix form", plan4(`{"prefix": "198.51.100.0", "country": "NL", "pool": "trusted", "dc": "ams"}`), `ipv4[0].prefix: "198.51.100.0" is not a prefix`},
		{"prefix zone", plan6(`{"prefix": "fe80::%eth0/64", "country": "NL", "pool": "trusted", "dc": "ams"}`), `ipv6[0].prefix: "fe80::%eth0/64" is not a prefix`},
		{"host bits", plan4(okBlock + `, {"prefix": "198.51.100.17/29", "country": "NL", "pool": "trusted", "dc": "ams"}`),
			"egress plan: ipv4[1].prefix: 198.51.100.17/29 has host bits set; the canonical form is 198.51.100.16/29"},
		{"host bits v6", plan6(`{"prefix": "2001:db8:5100::1/48", "country": "NL", "pool": "trusted", "dc": "ams"}`),
			"ipv6[0].prefix: 2001:db8:5100::1/48 has host bits set; the canonical form is 2001:db8:5100::/48"},
		{"mapped in ipv4", plan4(`{"prefix": "::ffff:198.51.100.0/124", "country": "NL", "pool": "trusted", "dc": "ams"}`),
			"ipv4[0].prefix: ::ffff:198.51.100.0/124 is IPv4-mapped; list it under ipv4 as 198.51.100.0/28"},
		{"mapped in ipv6", plan6(`{"prefix": "::ffff:0.0.0.0/96", "country": "NL", "pool": "trusted", "dc": "ams"}`),
			"ipv6[0].prefix: ::ffff:0.0.0.0/96 is IPv4-mapped; list it under ipv4 as 0.0.0.0/0"},
		{"v6 in ipv4", plan4(`{"prefix": "2001:db8::/32", "country": "NL", "pool": "trusted", "dc": "ams"}`),
			"ipv4[0].prefix: 2001:db8::/32 is not an IPv4 prefix"},
		{"v4 in ipv6", plan6(`{"prefix": "198.51.100.0/28", "country": "NL", "pool": "trusted", "dc": "ams"}`),
			"ipv6[0].prefix: 198.51.100.0/28 is not an IPv6 prefix"},
		{"v6 too long", plan6(`{"prefix": "2001:db8:5100:100::/64", "country": "NL", "pool": "trusted", "dc": "ams"}`),
			"ipv6[0].prefix: 2001:db8:5100:100::/64 is longer than /56"},
		{"too many v4", plan4(`{"prefix": "198.18.0.0/15", "country": "NL", "pool": "trusted", "dc": "ams"}`),
			"ipv4[0].prefix: 198.18.0.0/15 brings the plan to 131072 IPv4 addresses, more than 65536"},
		{"overlap", plan4(okBlock + `, {"prefix": "198.51.100.8/29", "country": "DE", "pool": "trusted", "dc": "fra"}`),
			"egress plan: ipv4[1].prefix: 198.51.100.8/29 overlaps ipv4[0] 198.51.100.0/28"},
		{"overlap later bigger", plan4(`{"prefix": "198.51.100.8/29", "country": "DE", "pool": "trusted", "dc": "fra"}, ` + okBlock),
			"ipv4[1].prefix: 198.51.100.0/28 overlaps ipv4[0] 198.51.100.8/29"},
		{"duplicate", plan4(okBlock + ", " + okBlock), "ipv4[1].prefix: 198.51.100.0/28 overlaps ipv4[0] 198.51.100.0/28"},
		{"overlap v6", plan6(`{"prefix": "2001:db8::/32", "country": "NL", "pool": "a", "dc": "ams"}, {"prefix": "2001:db8:ff00::/40", "country": "DE", "pool": "a", "dc": "ams"}`),
			"ipv6[1].prefix: 2001:db8:ff00::/40 overlaps ipv6[0] 2001:db8::/32"},

		{"country lower", plan4(`{"prefix": "198.51.100.0/28", "country": "nl", "pool": "trusted", "dc": "ams"}`), `ipv4[0].country: "nl" is not an ISO 3166-1 alpha-2 code`},
		{"country missing", plan4(`{"prefix": "198.51.100.0/28", "pool": "trusted", "dc": "ams"}`), `ipv4[0].country: "" is not`},
		{"pool upper", plan4(`{"prefix": "198.51.100.0/28", "country": "NL", "pool": "Trusted", "dc": "ams"}`), `ipv4[0].pool: "Trusted": not a valid name`},
		{"pool hyphen", plan4(`{"prefix": "198.51.100.0/28", "country": "NL", "pool": "-x", "dc": "ams"}`), `ipv4[0].pool: "-x"`},
		{"pool long", plan4(`{"prefix": "198.51.100.0/28", "country": "NL", "pool": "` + strings.Repeat("p", 33) + `", "dc": "ams"}`), `ipv4[0].pool: "ppp`},
		{"pool missing", plan4(`{"prefix": "198.51.100.0/28", "country": "NL", "dc": "ams"}`), `ipv4[0].pool: ""`},
		{"dc unknown", plan4(`{"prefix": "198.51.100.0/28", "country": "NL", "pool": "trusted", "dc": "lon"}`), `ipv4[0].dc: unknown data center "lon"`},
		{"dc missing", plan6(`{"prefix": "2001:db8::/32", "country": "NL", "pool": "trusted"}`), `ipv6[0].dc: missing data center`},

		{"owner outside", plan4(okBlock + `, {"prefix": "198.51.100.16/29", "country": "DE", "pool": "trusted", "dc": "fra", "owners": {"198.51.100.20": "ams", "198.51.100.40": "ams"}}`),
			`egress plan: ipv4[1].owners["198.51.100.40"]: not inside 198.51.100.16/29`},
		{"owner not addr", plan4(`{"prefix": "198.51.100.16/29", "country": "DE", "pool": "trusted", "dc": "fra", "owners": {"198.51.100.20/32": "ams"}}`),
			`ipv4[0].owners["198.51.100.20/32"]: not an IPv4 address`},
		{"owner mapped", plan4(`{"prefix": "198.51.100.16/29", "country": "DE", "pool": "trusted", "dc": "fra", "owners": {"::ffff:198.51.100.20": "ams"}}`),
			`ipv4[0].owners["::ffff:198.51.100.20"]: IPv4-mapped; write 198.51.100.20`},
		{"owner v6", plan4(`{"prefix": "198.51.100.16/29", "country": "DE", "pool": "trusted", "dc": "fra", "owners": {"2001:db8::1": "ams"}}`),
			`ipv4[0].owners["2001:db8::1"]: not inside 198.51.100.16/29`},
		{"owner dc unknown", plan4(`{"prefix": "198.51.100.16/29", "country": "DE", "pool": "trusted", "dc": "fra", "owners": {"198.51.100.20": "lon"}}`),
			`ipv4[0].owners["198.51.100.20"]: unknown data center "lon"`},
		{"owners on v6", plan6(`{"prefix": "2001:db8::/32", "country": "NL", "pool": "trusted", "dc": "ams", "owners": {"2001:db8::1": "fra"}}`),
			"ipv6[0].owners: only IPv4 addresses move between data centers"},

		{"fallback country key", plan4(okBlock, `"fallback": {"countries": {"be": ["NL"]}}`), `egress plan: fallback.countries["be"]: "be" is not an ISO 3166-1 alpha-2 code`},
		{"fallback country value", plan4(okBlock, `"fallback": {"countries": {"BE": ["NL", "de"]}}`), `fallback.countries["BE"][1]: "de" is not`},
		{"fallback self", plan4(okBlock, `"fallback": {"countries": {"BE": ["NL", "BE"]}}`), `fallback.countries["BE"][1]: BE falls back to itself`},
		{"fallback twice", plan4(okBlock, `"fallback": {"countries": {"BE": ["NL", "DE", "NL"]}}`), `fallback.countries["BE"][2]: NL is listed twice`},
		{"fallback pool key", plan4(okBlock, `"fallback": {"pools": {"Trusted": "NL"}}`), `fallback.pools["Trusted"]: not a valid name`},
		{"fallback pool value", plan4(okBlock, `"fallback": {"pools": {"trusted": "Netherlands"}}`), `fallback.pools["trusted"]: "Netherlands" is not`},
		{"fallback unknown field", plan4(okBlock, `"fallback": {"regions": {}}`), `unknown field "regions"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePlan([]byte(tt.js))
			if err == nil {
				t.Fatalf("got a plan %v, want an error containing %q", p, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "egress plan: ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got error %q, want one starting with \"egress plan: \" and containing %q", err, tt.want)
			}
		})
	}
}

func TestParsePlanAccepts(t *testing.T) {
	for name, js := range map[string]string{
		"adjacent blocks": plan4(okBlock + `, {"prefix": "198.51.100.16/28", "country": "NL", "pool": "trusted", "dc": "ams"}`),
		"ipv6 only /56":   plan6(`{"prefix": "2001:db8::/56", "country": "NL", "pool": "trusted", "dc": "ams"}`),
		"max addresses":   plan4(`{"prefix": "198.18.0.0/16", "country": "NL", "pool": "trusted", "dc": "ams"}`),
		"owner same dc":   plan4(`{"prefix": "198.51.100.16/29", "country": "DE", "pool": "trusted", "dc": "fra", "owners": {"198.51.100.20": "fra"}}`),
		"whole space":     plan4(okBlock, `"ports": "1-65535"`, `"slice": 65535`),
		"null members":    plan4(okBlock, `"ports": null`, `"slice": null`, `"fallback": {"countries": null, "pools": null}`),
	} {
		t.Run(name, func(t *testing.T) { mustParsePlan(t, js) })
	}
}

// TestPlanDocExample keeps the format example in Plan's doc comment valid.
func TestPlanDocExample(t *testing.T) {
	src, err := os.ReadFile("plan.go")
	if err != nil {
		t.Fatal(err)
	}
	var js strings.Builder
	in := false
	for _, line := range strings.Split(string(src), "\n") {
		if line == "//\t{" {
			in = true
		}
		if in {
			js.WriteString(strings.TrimPrefix(line, "//\t") + "\n")
		}
		if in && line == "//\t}" {
			break
		}
	}
	if js.Len() == 0 {
		t.Fatal("no example found in plan.go")
	}
	p := mustParsePlan(t, js.String())
	if dc, ok := p.OwnerDC(netip.MustParseAddr("198.51.100.20")); !ok || dc != "ams" {
		t.Errorf("OwnerDC(198.51.100.20) = %q, %v; want ams, true", dc, ok)
	}
}

func TestLoadPlanErrorsNamePath(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"ipv4": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.json")
	if err := os.WriteFile(big, []byte(plan4(okBlock)+strings.Repeat("\n", MaxPlanSize)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, want string }{
		{bad, "egress plan " + bad + ": no egress prefixes"},
		{big, "egress plan " + big + ": larger than 4 MiB"},
		{filepath.Join(dir, "missing.json"), "egress plan: open " + filepath.Join(dir, "missing.json") + ": no such file"},
	} {
		_, err := LoadPlan(tt.path)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LoadPlan(%s): got %v, want an error containing %q", tt.path, err, tt.want)
		}
	}
}

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
		{"FR", "untrusted", "bru", 0, "", ""}, // FR, then pool default NL: neither in bru
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
		{"US", "trusted", "fra", `egress: no egress address: data center "fra" has no ipv4 address in pool "trusted" for US, NL`},
		{"BE", "gold", "ams", `data center "ams" has no ipv4 address in pool "gold" for BE, NL, DE`},
		{"", "gold", "ams", `client country unknown and pool "gold" has no default country`},
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
		{"FR", "trusted", "fra", 2, "", 0},
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

func BenchmarkParsePlanMax(b *testing.B) {
	js := []byte(plan4(`{"prefix": "198.18.0.0/16", "country": "NL", "pool": "trusted", "dc": "ams",
		"owners": {"198.18.1.1": "fra", "198.18.200.7": "fra"}}`))
	for b.Loop() {
		if _, err := ParsePlan(js); err != nil {
			b.Fatal(err)
		}
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
