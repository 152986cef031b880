package egress

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestGeofeedGolden(t *testing.T) {
	p := loadTestPlan(t)
	var b bytes.Buffer
	if err := p.Geofeed(&b); err != nil {
		t.Fatal(err)
	}
	if err := checkGeofeed(p, b.String()); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "geofeed.golden")
	if *update {
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("geofeed differs from %s (run go test ./egress/ -run Geofeed -update):\ngot:\n%s\nwant:\n%s", golden, b.Bytes(), want)
	}
}

// TestGeofeedMerge covers the address sets where merging goes wrong.
func TestGeofeedMerge(t *testing.T) {
	blk := func(prefix, country string) string {
		return fmt.Sprintf(`{"prefix": %q, "country": %q, "pool": "p", "dc": "ams"}`, prefix, country)
	}
	tests := []struct {
		name   string
		blocks []string
		want   []string
	}{
		{"whole /24 from halves", []string{blk("198.51.100.0/25", "NL"), blk("198.51.100.128/25", "NL")},
			[]string{"198.51.100.0/24,NL"}},
		{"whole /24 from singles and quarters", []string{blk("198.51.100.0/32", "NL"), blk("198.51.100.1/32", "NL"),
			blk("198.51.100.2/31", "NL"), blk("198.51.100.4/30", "NL"), blk("198.51.100.8/29", "NL"), blk("198.51.100.16/28", "NL"),
			blk("198.51.100.32/27", "NL"), blk("198.51.100.64/26", "NL"), blk("198.51.100.128/25", "NL")},
			[]string{"198.51.100.0/24,NL"}},
		{"hole in the middle", []string{blk("198.51.100.0/30", "NL"), blk("198.51.100.8/30", "NL")},
			[]string{"198.51.100.0/30,NL", "198.51.100.8/30,NL"}},
		{"other country in the middle", []string{blk("198.51.100.0/30", "NL"), blk("198.51.100.4/32", "DE"), blk("198.51.100.5/32", "NL"), blk("198.51.100.6/31", "NL")},
			[]string{"198.51.100.0/30,NL", "198.51.100.4/32,DE", "198.51.100.5/32,NL", "198.51.100.6/31,NL"}},
		{"non-aligned run", []string{blk("198.51.100.3/32", "NL"), blk("198.51.100.4/30", "NL"), blk("198.51.100.8/29", "NL"), blk("198.51.100.16/32", "NL")},
			[]string{"198.51.100.3/32,NL", "198.51.100.4/30,NL", "198.51.100.8/29,NL", "198.51.100.16/32,NL"}},
		{"adjacent but not aligned", []string{blk("198.51.100.2/31", "NL"), blk("198.51.100.4/31", "NL")},
			[]string{"198.51.100.2/31,NL", "198.51.100.4/31,NL"}},
		{"singles", []string{blk("198.51.100.1/32", "NL"), blk("198.51.100.3/32", "NL"), blk("198.51.100.255/32", "NL")},
			[]string{"198.51.100.1/32,NL", "198.51.100.3/32,NL", "198.51.100.255/32,NL"}},
		{"across a /24 boundary", []string{blk("198.51.100.128/25", "NL"), blk("198.51.101.0/25", "NL")},
			[]string{"198.51.100.128/25,NL", "198.51.101.0/25,NL"}},
		{"ends of the space", []string{blk("0.0.0.0/32", "NL"), blk("255.255.255.254/31", "NL"), blk("255.255.255.252/31", "NL")},
			[]string{"0.0.0.0/32,NL", "255.255.255.252/30,NL"}},
		{"ipv6 merge", []string{`{"prefix": "2001:db8:1::/48", "country": "NL", "pool": "a", "dc": "ams"}`,
			`{"prefix": "2001:db8::/48", "country": "NL", "pool": "b", "dc": "fra"}`,
			`{"prefix": "2001:db8:2::/48", "country": "NL", "pool": "a", "dc": "ams"}`,
			`{"prefix": "2001:db8:3::/56", "country": "DE", "pool": "a", "dc": "ams"}`,
			`{"prefix": "ffff:ffff:ffff:ff00::/56", "country": "DE", "pool": "a", "dc": "ams"}`},
			[]string{"2001:db8::/47,NL", "2001:db8:2::/48,NL", "2001:db8:3::/56,DE", "ffff:ffff:ffff:ff00::/56,DE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v4, v6 []string
			for _, b := range tt.blocks {
				if strings.Contains(b, "::") {
					v6 = append(v6, b)
				} else {
					v4 = append(v4, b)
				}
			}
			p := mustParsePlan(t, "{"+testDCs+`, "ipv4": [`+strings.Join(v4, ",")+`], "ipv6": [`+strings.Join(v6, ",")+"]}")
			var b bytes.Buffer
			if err := p.Geofeed(&b); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, line := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")[1:] {
				got = append(got, strings.TrimSuffix(line, ",,,"))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if err := checkGeofeed(p, b.String()); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestRangePrefixesRandom checks rangePrefixes against a recursive
// decomposition on random ranges: it must cover exactly the range with as
// few prefixes as the reference.
func TestRangePrefixesRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	base := netip.MustParseAddr("198.51.100.0")
	for range 2000 {
		i, j := rng.IntN(512), rng.IntN(512)
		if i > j {
			i, j = j, i
		}
		first, last := addr4(u32(base)+uint32(i)), addr4(u32(base)+uint32(j))
		got := rangePrefixes(first, last)
		want := refCover(netip.MustParsePrefix("0.0.0.0/0"), first, last, nil)
		if !slices.Equal(got, want) {
			t.Fatalf("rangePrefixes(%s, %s) = %v, want %v", first, last, got, want)
		}
	}
	first, last := netip.MustParseAddr("2001:db8::3"), netip.MustParseAddr("2001:db8:ffff:ffff:ffff:ffff:ffff:fff0")
	if got, want := rangePrefixes(first, last), refCover(netip.MustParsePrefix("::/0"), first, last, nil); !slices.Equal(got, want) {
		t.Fatalf("rangePrefixes(%s, %s) = %v, want %v", first, last, got, want)
	}
	all := netip.MustParseAddr("255.255.255.255")
	if got := rangePrefixes(netip.MustParseAddr("0.0.0.0"), all); len(got) != 1 || got[0].Bits() != 0 {
		t.Fatalf("whole IPv4 space: got %v", got)
	}
}

// refCover appends the prefixes inside p that cover [first, last], splitting
// p in halves until each piece is inside or outside the range: the
// textbook minimal CIDR cover, in address order.
func refCover(p netip.Prefix, first, last netip.Addr, out []netip.Prefix) []netip.Prefix {
	lo, hi := p.Addr(), refLast(p)
	switch {
	case hi.Less(first) || last.Less(lo):
		return out
	case first.Compare(lo) <= 0 && hi.Compare(last) <= 0:
		return append(out, p)
	}
	b := lo.AsSlice()
	left := netip.PrefixFrom(lo, p.Bits()+1)
	b[p.Bits()/8] |= 0x80 >> (p.Bits() % 8)
	ra, _ := netip.AddrFromSlice(b)
	out = refCover(left, first, last, out)
	return refCover(netip.PrefixFrom(ra, p.Bits()+1), first, last, out)
}

// refLast is lastAddr written the slow way, so that the checks do not lean
// on the code they check.
func refLast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

type geoRange struct {
	first, last netip.Addr
	country     string
}

// checkGeofeed checks the property the geofeed promises: after the header,
// canonical "prefix,CC,,," lines, sorted and disjoint, whose union is
// exactly the plan's addresses with each address under a line of its own
// block's country, using as few lines as a minimal cover allows.
func checkGeofeed(p *Plan, feed string) error {
	body, ok := strings.CutPrefix(feed, geofeedHeader)
	if !ok {
		return fmt.Errorf("geofeed does not start with %q", geofeedHeader)
	}
	var lines []geoRange
	for _, line := range strings.Split(body, "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) != 5 || f[2] != "" || f[3] != "" || f[4] != "" || checkCountry(f[1]) != nil {
			return fmt.Errorf("bad geofeed line %q", line)
		}
		pfx, err := netip.ParsePrefix(f[0])
		if err != nil || pfx != pfx.Masked() || pfx.String() != f[0] {
			return fmt.Errorf("bad prefix in geofeed line %q", line)
		}
		if n := len(lines); n > 0 && lines[n-1].first.Is4() == pfx.Addr().Is4() && pfx.Addr().Compare(lines[n-1].last) <= 0 {
			return fmt.Errorf("geofeed line %q overlaps or precedes %s", line, lines[n-1].first)
		}
		if n := len(lines); n > 0 && lines[n-1].first.Is6() && pfx.Addr().Is4() {
			return fmt.Errorf("geofeed line %q: IPv4 after IPv6", line)
		}
		lines = append(lines, geoRange{pfx.Addr(), refLast(pfx), f[1]})
	}
	var blocks []geoRange
	for _, b := range append(slices.Clone(p.v4), p.v6...) {
		blocks = append(blocks, geoRange{b.prefix.Addr(), refLast(b.prefix), b.country})
	}
	merge := func(rs []geoRange) []geoRange {
		var out []geoRange
		for _, r := range rs {
			if n := len(out); n > 0 && out[n-1].country == r.country && out[n-1].last.Next() == r.first {
				out[n-1].last = r.last
				continue
			}
			out = append(out, r)
		}
		return out
	}
	got, want := merge(lines), merge(blocks)
	if !slices.Equal(got, want) {
		return fmt.Errorf("geofeed covers\n%v\nplan has\n%v", got, want)
	}
	n := 0
	for _, r := range want {
		zero := netip.IPv6Unspecified()
		if r.first.Is4() {
			zero = netip.IPv4Unspecified()
		}
		n += len(refCover(netip.PrefixFrom(zero, 0), r.first, r.last, nil))
	}
	if n != len(lines) {
		return fmt.Errorf("geofeed has %d lines, a minimal cover %d", len(lines), n)
	}
	return nil
}

func FuzzParsePlan(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "plan*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed plans in testdata: %v", err)
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(plan4(`{"prefix": "0.0.0.0/32", "country": "NL", "pool": "p", "dc": "ams"}, {"prefix": "0.0.0.1/32", "country": "NL", "pool": "p", "dc": "fra"}`)))
	f.Add([]byte(plan6(`{"prefix": "::/1", "country": "NL", "pool": "p", "dc": "ams"}, {"prefix": "8000::/1", "country": "NL", "pool": "p", "dc": "ams"}`)))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePlan(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "egress plan: ") {
				t.Fatalf("error without the egress plan prefix: %v", err)
			}
			return
		}
		var b bytes.Buffer
		if err := p.Geofeed(&b); err != nil {
			t.Fatalf("Geofeed of an accepted plan: %v", err)
		}
		if err := checkGeofeed(p, b.String()); err != nil {
			t.Fatal(err)
		}
		// Every IPv4 address has exactly one owner, and Addrs4 agrees.
		n := 0
		for name := range p.dcs {
			for _, a := range p.Addrs4(name) {
				if dc, _ := p.OwnerDC(a); dc != name {
					t.Fatalf("Addrs4(%s) has %s, owned by %q", name, a, dc)
				}
				n++
			}
		}
		total := 0
		for _, b := range p.v4 {
			total += 1 << (32 - b.prefix.Bits())
		}
		if n != total {
			t.Fatalf("data centers own %d IPv4 addresses, the blocks hold %d", n, total)
		}
	})
}
