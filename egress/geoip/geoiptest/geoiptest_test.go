package geoiptest

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBytesDeterministic(t *testing.T) {
	entries := map[netip.Prefix]string{}
	for i := range 64 {
		entries[netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(4 * i)}), 30)] = "NL"
		entries[netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(4 * i)}), 30)] = "DE"
	}
	entries[netip.MustParsePrefix("2001:db8::/32")] = "FR"
	first, err := Bytes(entries)
	if err != nil {
		t.Fatal(err)
	}
	// Map iteration order differs between calls, so equal output means the
	// order was fixed by sorting.
	for range 5 {
		again, err := Bytes(entries)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, again) {
			t.Fatal("Bytes gave different output for the same entries")
		}
	}
}

func TestBytesRejects(t *testing.T) {
	tests := []struct {
		name    string
		prefix  netip.Prefix
		code    string
		wantSub string
	}{
		{"zero prefix", netip.Prefix{}, "NL", "invalid prefix"},
		{"bad bits", netip.PrefixFrom(netip.MustParseAddr("203.0.113.0"), 33), "NL", "invalid prefix"},
		{"host bits", netip.MustParsePrefix("203.0.113.5/24"), "NL", "did you mean 203.0.113.0/24"},
		{"mapped", netip.MustParsePrefix("::ffff:203.0.113.0/120"), "NL", "IPv4-mapped"},
		{"alias", netip.MustParsePrefix("2002::/16"), "NL", "insert 2002::/16"},
		{"lower case", netip.MustParsePrefix("203.0.113.0/24"), "nl", `"nl" is not two upper-case`},
		{"three letters", netip.MustParsePrefix("203.0.113.0/24"), "NLD", "not two upper-case"},
		{"empty code", netip.MustParsePrefix("203.0.113.0/24"), "", "not two upper-case"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Bytes(map[netip.Prefix]string{tt.prefix: tt.code})
			if err == nil {
				t.Fatalf("Bytes(%v: %q) succeeded; want error", tt.prefix, tt.code)
			}
			if !strings.Contains(err.Error(), tt.wantSub) {
				t.Errorf("error %q does not contain %q", err, tt.wantSub)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "db.mmdb")
	entries := map[netip.Prefix]string{netip.MustParsePrefix("203.0.113.0/24"): "NL"}
	if err := Write(path, entries); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Bytes(entries)
	if !bytes.Equal(got, want) {
		t.Error("file content differs from Bytes")
	}
	names, _ := os.ReadDir(dir)
	if len(names) != 1 {
		t.Errorf("directory holds %d entries after Write; want 1 (temp file left behind?)", len(names))
	}
	if err := Write(filepath.Join(dir, "missing", "db.mmdb"), entries); err == nil || !strings.Contains(err.Error(), "missing/db.mmdb") {
		t.Errorf("Write into a missing directory: error %v; want one naming the path", err)
	}
}
