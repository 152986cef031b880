package geoip

import (
	"net/netip"
	"testing"

	"github.com/wedge-edge/wedge/egress/geoip/geoiptest"
)

// FuzzOpenBytes feeds arbitrary bytes to the path Open takes after reading
// the file: a --geoip file is operator input and must not crash the node.
func FuzzOpenBytes(f *testing.F) {
	valid, err := geoiptest.Bytes(map[netip.Prefix]string{
		netip.MustParsePrefix("203.0.113.0/25"):   "NL",
		netip.MustParsePrefix("203.0.113.128/25"): "DE",
		netip.MustParsePrefix("2001:db8::/32"):    "FR",
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	for _, n := range []int{0, 1, 16, len(valid) / 4, len(valid) / 2, len(valid) - 64, len(valid) - 1} {
		f.Add(valid[:n])
	}
	f.Add(valid[len(valid)/2:])
	f.Add([]byte("\xAB\xCD\xEFMaxMind.com"))

	addrs := []netip.Addr{
		netip.MustParseAddr("203.0.113.1"),
		netip.MustParseAddr("::ffff:203.0.113.200"),
		netip.MustParseAddr("2001:db8::1"),
		netip.MustParseAddr("::"),
		netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		db, err := openBytes(data)
		if err != nil {
			return
		}
		_ = db.Info()
		for _, a := range addrs {
			if code, ok := db.Country(a); ok {
				if _, valid := normalize(code); !valid || code != string([]byte{code[0] &^ 0x20, code[1] &^ 0x20}) {
					t.Fatalf("Country(%s) = %q, true; want an upper-case two-letter code", a, code)
				}
			}
		}
		db.Close()
	})
}
