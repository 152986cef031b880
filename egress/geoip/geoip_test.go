package geoip_test

import (
	"bytes"
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"

	"github.com/wedge-edge/wedge/egress/geoip"
	"github.com/wedge-edge/wedge/egress/geoip/geoiptest"
)

// docEntries uses only documentation ranges (RFC 5737, RFC 3849).
var docEntries = map[netip.Prefix]string{
	netip.MustParsePrefix("203.0.113.0/25"):   "NL",
	netip.MustParsePrefix("203.0.113.128/25"): "DE",
	netip.MustParsePrefix("198.51.100.0/24"):  "US",
	netip.MustParsePrefix("2001:db8::/32"):    "FR",
}

func openDoc(t testing.TB) *geoip.DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "country.mmdb")
	if err := geoiptest.Write(path, docEntries); err != nil {
		t.Fatalf("geoiptest.Write: %v", err)
	}
	db, err := geoip.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestCountry(t *testing.T) {
	db := openDoc(t)
	tests := []struct {
		addr   string
		want   string
		wantOK bool
	}{
		{"203.0.113.1", "NL", true},
		{"203.0.113.127", "NL", true},
		{"203.0.113.128", "DE", true},
		{"203.0.113.255", "DE", true},
		{"198.51.100.7", "US", true},
		{"::ffff:203.0.113.1", "NL", true},   // IPv4-mapped
		{"::ffff:203.0.113.200", "DE", true}, // IPv4-mapped
		{"::ffff:198.51.100.7", "US", true},
		{"2001:db8::1", "FR", true},
		{"2001:db8:ffff:ffff::1", "FR", true},
		{"fe80::1%eth0", "", false}, // zone ignored, not in db
		{"192.0.2.1", "", false},    // TEST-NET-1, in no prefix
		{"203.0.112.255", "", false},
		{"198.51.101.0", "", false},
		{"2001:db9::1", "", false},
		{"::1", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			got, ok := db.Country(netip.MustParseAddr(tt.addr))
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("Country(%s) = %q, %v; want %q, %v", tt.addr, got, ok, tt.want, tt.wantOK)
			}
		})
	}
	if got, ok := db.Country(netip.Addr{}); ok {
		t.Errorf("Country(zero Addr) = %q, true; want false", got)
	}
}

func TestInfo(t *testing.T) {
	info := openDoc(t).Info()
	for _, want := range []string{geoiptest.DatabaseType, "2025-01-01T00:00:00Z", "IPv6", "nodes"} {
		if !strings.Contains(info, want) {
			t.Errorf("Info() = %q; want it to contain %q", info, want)
		}
	}
}

// writeRecords builds a database with arbitrary records, for shapes
// geoiptest does not produce.
func writeRecords(t *testing.T, ipVersion int, records map[string]mmdbtype.DataType) string {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            "test-shape",
		IPVersion:               ipVersion,
		IncludeReservedNetworks: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, rec := range records {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := tree.Insert(n, rec); err != nil {
			t.Fatalf("insert %s: %v", cidr, err)
		}
	}
	var buf bytes.Buffer
	if _, err := tree.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "shape.mmdb")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func iso(code string) mmdbtype.Map { return mmdbtype.Map{"iso_code": mmdbtype.String(code)} }

func TestShapes(t *testing.T) {
	path := writeRecords(t, 6, map[string]mmdbtype.DataType{
		// GeoIP2-City-like record: lots of data around the code.
		"192.0.2.0/28": mmdbtype.Map{
			"city":      mmdbtype.Map{"names": mmdbtype.Map{"en": mmdbtype.String("Amsterdam")}},
			"continent": mmdbtype.Map{"code": mmdbtype.String("EU")},
			"country": mmdbtype.Map{
				"iso_code": mmdbtype.String("NL"),
				"names":    mmdbtype.Map{"en": mmdbtype.String("Netherlands"), "de": mmdbtype.String("Niederlande")},
			},
			"location": mmdbtype.Map{"latitude": mmdbtype.Float64(52.37)},
		},
		"192.0.2.16/28":  mmdbtype.Map{"registered_country": iso("SE")},                        // anycast: registered only
		"192.0.2.32/28":  mmdbtype.Map{"country": iso("EUR"), "registered_country": iso("IT")}, // bad code falls through
		"192.0.2.48/28":  mmdbtype.Map{"country_code": mmdbtype.String("JP")},                  // ip-location-db
		"192.0.2.64/28":  mmdbtype.Map{"country_code": mmdbtype.String("ch")},                  // lower case
		"192.0.2.80/28":  mmdbtype.Map{"country_code": mmdbtype.String("1A")},
		"192.0.2.96/28":  mmdbtype.Map{"continent": mmdbtype.Map{"code": mmdbtype.String("EU")}},
		"192.0.2.112/28": mmdbtype.Map{"country": mmdbtype.String("PL")}, // wrong type
	})
	db, err := geoip.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	tests := []struct {
		addr, want string
		wantOK     bool
	}{
		{"192.0.2.1", "NL", true},
		{"192.0.2.17", "SE", true},
		{"192.0.2.33", "IT", true},
		{"192.0.2.49", "JP", true},
		{"192.0.2.65", "CH", true},
		{"192.0.2.81", "", false},
		{"192.0.2.97", "", false},
		{"192.0.2.113", "", false},
	}
	for _, tt := range tests {
		got, ok := db.Country(netip.MustParseAddr(tt.addr))
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("Country(%s) = %q, %v; want %q, %v", tt.addr, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestIPv4OnlyDatabase(t *testing.T) {
	path := writeRecords(t, 4, map[string]mmdbtype.DataType{
		"203.0.113.0/24": mmdbtype.Map{"country_code": mmdbtype.String("NL")},
	})
	db, err := geoip.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	for addr, want := range map[string]string{"203.0.113.9": "NL", "::ffff:203.0.113.9": "NL", "2001:db8::1": ""} {
		if got, _ := db.Country(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Country(%s) = %q; want %q", addr, got, want)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	valid, err := geoiptest.Bytes(docEntries)
	if err != nil {
		t.Fatal(err)
	}
	asn := writeRecords(t, 6, map[string]mmdbtype.DataType{
		"198.51.100.0/24": mmdbtype.Map{
			"autonomous_system_number":       mmdbtype.Uint32(64496),
			"autonomous_system_organization": mmdbtype.String("Example"),
		},
	})
	tests := []struct {
		name    string
		path    string
		wantIs  error
		wantSub string
	}{
		{"missing", filepath.Join(dir, "nope.mmdb"), fs.ErrNotExist, "no such file"},
		{"directory", dir, nil, "not a regular file"},
		{"empty", write("empty.mmdb", nil), nil, "file is empty"},
		{"garbage", write("garbage.mmdb", []byte("this is not a MaxMind database\n")), nil, "not a MaxMind DB"},
		{"truncated", write("trunc.mmdb", valid[:len(valid)/2]), nil, "not a MaxMind DB"},
		{"asn", asn, geoip.ErrNoCountryData, "no country data"},
		{"no networks", writeRecords(t, 6, nil), geoip.ErrNoCountryData, "no networks with data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, err := geoip.Open(tt.path)
			if err == nil {
				db.Close()
				t.Fatalf("Open(%s) succeeded; want error", tt.path)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.path) {
				t.Errorf("error %q does not name the path %s", msg, tt.path)
			}
			if !strings.Contains(msg, tt.wantSub) {
				t.Errorf("error %q does not contain %q", msg, tt.wantSub)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.wantIs)
			}
		})
	}
}

func TestOpenIfChanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "country.mmdb")
	p := netip.MustParsePrefix("203.0.113.0/24")
	addr := netip.MustParseAddr("203.0.113.1")
	if err := geoiptest.Write(path, map[netip.Prefix]string{p: "NL"}); err != nil {
		t.Fatal(err)
	}
	db, fi, err := geoip.OpenIfChanged(path, nil)
	if err != nil || db == nil || fi == nil {
		t.Fatalf("OpenIfChanged(nil prev) = %v, %v, %v; want a database", db, fi, err)
	}
	defer db.Close()

	again, fi2, err := geoip.OpenIfChanged(path, fi)
	if err != nil || again != nil || fi2 != fi {
		t.Fatalf("OpenIfChanged(unchanged) = %v, %v, %v; want nil, prev, nil", again, fi2, err)
	}

	// geoiptest.Write renames a new file over the old one, as geoipupdate
	// does: a new inode, noticed even if size and mtime match.
	if err := geoiptest.Write(path, map[netip.Prefix]string{p: "DE"}); err != nil {
		t.Fatal(err)
	}
	db2, fi3, err := geoip.OpenIfChanged(path, fi)
	if err != nil || db2 == nil {
		t.Fatalf("OpenIfChanged(replaced) = %v, %v, %v; want a new database", db2, fi3, err)
	}
	defer db2.Close()
	if got, _ := db2.Country(addr); got != "DE" {
		t.Errorf("new Country(%s) = %q; want DE", addr, got)
	}
	if got, _ := db.Country(addr); got != "NL" {
		t.Errorf("old Country(%s) = %q; want NL", addr, got)
	}

	// A broken replacement is an error; the caller keeps the old database.
	if err := os.WriteFile(path, []byte("oops"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := geoip.OpenIfChanged(path, fi3); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("OpenIfChanged(garbage) error = %v; want one naming %s", err, path)
	}
}

// TestConcurrent runs lookups from several goroutines while the database is
// closed under them; run with -race.
func TestConcurrent(t *testing.T) {
	db := openDoc(t)
	addrs := []netip.Addr{
		netip.MustParseAddr("203.0.113.1"),
		netip.MustParseAddr("203.0.113.200"),
		netip.MustParseAddr("::ffff:198.51.100.1"),
		netip.MustParseAddr("2001:db8::1"),
		netip.MustParseAddr("192.0.2.1"),
	}
	want := []string{"NL", "DE", "US", "FR", ""}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			<-start
			for i := range 2000 {
				k := (g + i) % len(addrs)
				got, ok := db.Country(addrs[k])
				if ok && got != want[k] {
					t.Errorf("Country(%s) = %q; want %q", addrs[k], got, want[k])
					return
				}
			}
		})
	}
	close(start)
	wg.Go(func() {
		for range 1000 {
			db.Country(addrs[0])
		}
		db.Close()
	})
	wg.Wait()
	if got, ok := db.Country(addrs[0]); ok {
		t.Errorf("Country after Close = %q, true; want false", got)
	}
	if err := db.Close(); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
}

func BenchmarkCountry(b *testing.B) {
	db := openDoc(b)
	for _, bc := range []struct{ name, addr string }{
		{"v4", "203.0.113.77"},
		{"v4mapped", "::ffff:203.0.113.200"},
		{"v6", "2001:db8:1::1"},
		{"miss", "192.0.2.1"},
	} {
		a := netip.MustParseAddr(bc.addr)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				db.Country(a)
			}
		})
	}
}

// TestNested checks that geoiptest lets a more specific prefix carve out
// part of a broader one, whatever the map order.
func TestNested(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nested.mmdb")
	err := geoiptest.Write(path, map[netip.Prefix]string{
		netip.MustParsePrefix("203.0.113.0/24"):  "NL",
		netip.MustParsePrefix("203.0.113.64/26"): "BE",
		netip.MustParsePrefix("203.0.113.70/32"): "LU",
	})
	if err != nil {
		t.Fatal(err)
	}
	db, err := geoip.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for addr, want := range map[string]string{"203.0.113.1": "NL", "203.0.113.65": "BE", "203.0.113.70": "LU", "203.0.113.128": "NL"} {
		if got, _ := db.Country(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Country(%s) = %q; want %q", addr, got, want)
		}
	}
}
