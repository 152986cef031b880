// Package geoiptest builds small MaxMind-format (.mmdb) country databases for
// unit tests and the e2e lab, so nothing has to ship or download a real
// GeoLite2 file.
//
// The databases have the GeoLite2-Country record shape that package geoip
// reads: {"country": {"iso_code": CC}, "registered_country": {"iso_code": CC}}.
// They are IPv6 trees with the IPv4 space at ::/96 and the usual aliases
// (::ffff:0:0/96, 2001::/32, 2002::/16), so both families resolve. Reserved
// ranges are allowed, because tests and the lab use the documentation ranges
// (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), which
// MaxMind's writer refuses by default.
//
// It is a test helper and must not import any room of the tree.
package geoiptest

import (
	"bytes"
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// DatabaseType is the database_type written into the metadata. Names starting
// with "GeoIP" or "GeoLite" belong to MaxMind, so the test databases say what
// they are instead.
const DatabaseType = "Wedge-Test-Country"

// BuildEpoch is the fixed build time (2025-01-01T00:00:00Z) written into every
// database, so the same entries always give byte-identical output.
const BuildEpoch = 1735689600

// Bytes returns a database mapping each prefix in entries to its ISO 3166-1
// alpha-2 country code (two upper-case letters A-Z). Prefixes may be IPv4 or
// IPv6 and may nest: the more specific prefix wins. The output is
// deterministic.
//
// It rejects invalid prefixes, prefixes with host bits set (a likely typo),
// IPv4-mapped IPv6 prefixes (write the IPv4 form), prefixes inside the aliased
// IPv6 ranges ::ffff:0:0/96, 2001::/32 and 2002::/16, and codes that are not
// two upper-case letters.
func Bytes(entries map[netip.Prefix]string) ([]byte, error) {
	prefixes := make([]netip.Prefix, 0, len(entries))
	for p, code := range entries {
		if !p.IsValid() {
			return nil, fmt.Errorf("geoiptest: invalid prefix %v", p)
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("geoiptest: prefix %v is IPv4-mapped IPv6; use the IPv4 form", p)
		}
		if p.Addr().Zone() != "" {
			return nil, fmt.Errorf("geoiptest: prefix %v has a zone", p)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("geoiptest: prefix %v has host bits set; did you mean %v?", p, p.Masked())
		}
		if !validCode(code) {
			return nil, fmt.Errorf("geoiptest: prefix %v: country code %q is not two upper-case letters A-Z", p, code)
		}
		prefixes = append(prefixes, p)
	}
	// Shorter prefixes first so that a nested, more specific prefix replaces
	// the part of its parent it covers; then by address for a stable order.
	slices.SortFunc(prefixes, func(a, b netip.Prefix) int {
		if c := cmp.Compare(a.Bits(), b.Bits()); c != 0 {
			return c
		}
		return a.Addr().Compare(b.Addr())
	})

	tree, err := mmdbwriter.New(mmdbwriter.Options{
		BuildEpoch:              BuildEpoch,
		DatabaseType:            DatabaseType,
		Description:             map[string]string{"en": "wedge test country database (geoiptest)"},
		Languages:               []string{"en"},
		IPVersion:               6,
		RecordSize:              24,
		IncludeReservedNetworks: true,
	})
	if err != nil {
		return nil, fmt.Errorf("geoiptest: new tree: %w", err)
	}
	for _, p := range prefixes {
		code := mmdbtype.String(entries[p])
		record := mmdbtype.Map{
			"country":            mmdbtype.Map{"iso_code": code},
			"registered_country": mmdbtype.Map{"iso_code": code},
		}
		if err := tree.Insert(ipNet(p), record); err != nil {
			return nil, fmt.Errorf("geoiptest: insert %v: %w", p, err)
		}
	}
	var buf bytes.Buffer
	if _, err := tree.WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("geoiptest: write database: %w", err)
	}
	return buf.Bytes(), nil
}

// Write writes the database Bytes(entries) builds to path. It writes a
// temporary file in the same directory and renames it over path, so a
// process polling path (a reloading node in the e2e lab) never reads a
// half-written database.
func Write(path string, entries map[netip.Prefix]string) error {
	data, err := Bytes(entries)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("geoiptest: write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// CreateTemp makes the file 0600; a database is not secret and the
		// lab may read it as another user.
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("geoiptest: write %s: %w", path, err)
	}
	return nil
}

func validCode(code string) bool {
	return len(code) == 2 &&
		'A' <= code[0] && code[0] <= 'Z' &&
		'A' <= code[1] && code[1] <= 'Z'
}

// ipNet converts p for mmdbwriter, which predates net/netip. An IPv4 prefix
// keeps its 4-byte form so the writer places it in the ::/96 IPv4 subtree.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}
