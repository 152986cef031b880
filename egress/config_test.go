package egress

import (
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in     string
		lo, hi uint16
		err    bool
	}{
		{"40000-40999", 40000, 40999, false},
		{" 1-65535 ", 1, 65535, false},
		{"5000", 5000, 5000, false},
		{"5000-5000", 5000, 5000, false},
		{"", 0, 0, true},
		{"-", 0, 0, true},
		{"0-10", 0, 0, true},
		{"10-5", 0, 0, true},
		{"1-65536", 0, 0, true},
		{"a-b", 0, 0, true},
		{"1-2-3", 0, 0, true},
		{"-5", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			lo, hi, err := ParsePortRange(tt.in)
			if (err != nil) != tt.err {
				t.Fatalf("got err %v, want error %v", err, tt.err)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "egress: ") {
				t.Fatalf("got error %q, want an egress: prefix", err)
			}
			if lo != tt.lo || hi != tt.hi {
				t.Fatalf("got %d-%d, want %d-%d", lo, hi, tt.lo, tt.hi)
			}
		})
	}
}

func TestParsePrefixes(t *testing.T) {
	got, err := ParsePrefixes("198.18.0.0/15", "203.0.113.7, 2001:db8::1", "10.1.2.3/8", "::ffff:10.0.0.0/104", "")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"198.18.0.0/15", "203.0.113.7/32", "2001:db8::1/128", "10.0.0.0/8", "10.0.0.0/8"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("prefix %d: got %s, want %s", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "nope", "fe80::1%eth0", "fe80::/10%eth0", "1.2.3"} {
		if _, err := ParsePrefix(bad); err == nil {
			t.Errorf("ParsePrefix(%q): got no error", bad)
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestNewValidation(t *testing.T) {
	klo, khi, err := kernelPortRange()
	if err != nil {
		t.Skip(err)
	}
	lg := discardLogger()
	a := netip.MustParseAddr
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" for success
	}{
		{"ok empty", Config{Logger: lg}, ""},
		{"ok full", Config{Logger: lg, Sources: []netip.Addr{a("127.0.0.1"), a("::1"), a("127.0.0.2")},
			PortLo: klo, PortHi: khi, Allow: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}}, ""},
		{"nil logger", Config{}, "nil Logger"},
		{"negative timeout", Config{Logger: lg, DialTimeout: -1}, "negative dial timeout"},
		{"lo above hi", Config{Logger: lg, PortLo: 5, PortHi: 4}, "low port above high port"},
		{"lo zero", Config{Logger: lg, PortHi: 4}, "at least 1"},
		{"invalid source", Config{Logger: lg, Sources: []netip.Addr{{}}}, "invalid egress source"},
		{"unspecified source", Config{Logger: lg, Sources: []netip.Addr{a("0.0.0.0")}}, "unspecified"},
		{"multicast source", Config{Logger: lg, Sources: []netip.Addr{a("ff02::1")}}, "multicast"},
		{"broadcast source", Config{Logger: lg, Sources: []netip.Addr{a("255.255.255.255")}}, "broadcast"},
		{"link-local source", Config{Logger: lg, Sources: []netip.Addr{a("fe80::1")}}, "link-local"},
		{"zoned source", Config{Logger: lg, Sources: []netip.Addr{a("2001:db8::1%eth0")}}, "zone"},
		{"source not on host", Config{Logger: lg, Sources: []netip.Addr{a("198.51.100.77")}}, "not usable"},
		{"invalid allow", Config{Logger: lg, Allow: []netip.Prefix{{}}}, "invalid prefix"},
		{"invalid own", Config{Logger: lg, Own: []netip.Addr{{}}}, "invalid own"},
	}
	if klo > 1 {
		tests = append(tests, struct {
			name string
			cfg  Config
			want string
		}{"slice below kernel range", Config{Logger: lg, PortLo: 1, PortHi: klo}, "ip_local_port_range"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := New(tt.cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "egress: ") {
				t.Fatalf("got (%v, %v), want an error containing %q", d, err, tt.want)
			}
		})
	}
}
