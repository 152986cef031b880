package egress

import (
	"net/netip"
	"os"
	"path/filepath"
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

func BenchmarkParsePlanMax(b *testing.B) {
	js := []byte(plan4(`{"prefix": "198.18.0.0/16", "country": "NL", "pool": "trusted", "dc": "ams",
		"owners": {"198.18.1.1": "fra", "198.18.200.7": "fra"}}`))
	for b.Loop() {
		if _, err := ParsePlan(js); err != nil {
			b.Fatal(err)
		}
	}
}
