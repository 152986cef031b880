package egress

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var (
	testAllow = []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("198.18.0.0/15"),
		netip.MustParsePrefix("127.0.0.0/8"), // cannot open loopback
		netip.MustParsePrefix("1.2.3.0/24"),  // cannot open own 1.2.3.4
		netip.MustParsePrefix("2001:db8:1::/48"),
		netip.MustParsePrefix("fd00::/8"),
		netip.MustParsePrefix("::1/128"), // cannot open loopback
	}
	testOwnFixed = []netip.Addr{netip.MustParseAddr("1.2.3.4")}
	testOwnIface = []netip.Addr{
		netip.MustParseAddr("127.0.0.1"),
		netip.MustParseAddr("::1"),
		netip.MustParseAddr("2606:4700::1111"),
		netip.MustParseAddr("fe80::fc:ff:fe00:1"),
	}
)

// fakeClock is a settable time source.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestACL(t testing.TB, allow []netip.Prefix) *ACL {
	t.Helper()
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	a, err := newACL(allow, testOwnFixed, func() ([]netip.Addr, error) { return testOwnIface, nil }, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestACLTable(t *testing.T) {
	a := newTestACL(t, testAllow)
	tests := []struct {
		addr  string
		allow bool
	}{
		// IPv4 global and default-denied ranges.
		{"8.8.8.8", true},
		{"1.1.1.1", true},
		{"1.2.3.4", false}, // own, even though 1.2.3.0/24 is allowed
		{"1.2.3.5", true},
		{"10.0.0.1", false},
		{"10.1.2.3", true}, // Allow 10.1.0.0/16
		{"10.2.0.1", false},
		{"127.0.0.1", false}, // loopback, even though allowed
		{"127.255.255.254", false},
		{"0.0.0.0", false},
		{"0.1.2.3", false},
		{"169.254.169.254", false},
		{"172.16.0.1", false},
		{"172.31.255.255", false},
		{"172.32.0.1", true},
		{"172.15.255.255", true},
		{"192.168.1.1", false},
		{"100.64.0.1", false},
		{"100.127.255.255", false},
		{"100.128.0.0", true},
		{"100.63.255.255", true},
		{"192.0.0.1", false},
		{"192.0.0.9", true},
		{"192.0.0.10", true},
		{"192.0.2.1", false},
		{"192.88.99.1", false},
		{"192.31.196.1", true},
		{"198.51.100.1", false},
		{"203.0.113.1", false},
		{"198.18.0.1", true}, // Allow 198.18.0.0/15
		{"198.19.255.255", true},
		{"224.0.0.1", false},
		{"239.255.255.250", false},
		{"240.0.0.1", false},
		{"255.255.255.255", false},
		{"223.255.255.255", true},
		// IPv6.
		{"2606:4700:4700::1111", true},
		{"2001:4860:4860::8888", true},
		{"2606:4700::1111", false}, // own (interface)
		{"::1", false},
		{"::", false},
		{"fe80::1", false},
		{"fe80::1%eth0", false},
		{"fe80::fc:ff:fe00:1", false},
		{"fc00::1", false},
		{"fd00::1", true}, // Allow fd00::/8
		{"fdff:ffff::1", true},
		{"fec0::1", false},
		{"ff02::1", false},
		{"2001:db8::1", false},
		{"2001:db8:1::1", true}, // Allow 2001:db8:1::/48
		{"100::1", false},
		{"2001:2::1", false},
		{"2001:10::1", false},
		{"2001:1::1", true},
		{"2001:1::4", false},
		{"2001:3::1", true},
		{"2001:4:112::1", true},
		{"3fff::1", false},
		{"5f00::1", false},
		{"1::1", false},
		{"4000::1", false},
		{"3fff:ffff::1", true},
		// IPv4-mapped.
		{"::ffff:8.8.8.8", true},
		{"::ffff:10.0.0.1", false},
		{"::ffff:10.1.0.1", true},
		{"::ffff:127.0.0.1", false},
		{"::ffff:1.2.3.4", false},
		{"::ffff:0.0.0.0", false},
		// IPv4-compatible.
		{"::8.8.8.8", true},
		{"::10.0.0.1", false},
		{"::127.0.0.1", false},
		{"::0.0.0.2", false},
		// NAT64.
		{"64:ff9b::8.8.8.8", true},
		{"64:ff9b::192.168.0.1", false},
		{"64:ff9b::127.0.0.1", false},
		{"64:ff9b::1.2.3.4", false},
		{"64:ff9b:1::808:808", false}, // local-use NAT64 not global
		// 6to4.
		{"2002:808:808::1", true},
		{"2002:c0a8:101::1", false}, // 192.168.1.1
		{"2002:7f00:1::1", false},   // 127.0.0.1
		{"2002:102:304::1", false},  // own 1.2.3.4
		// Teredo: server 8.8.8.8, client 1.1.1.1 (XOR ff).
		{"2001:0:808:808::fefe:fefe", true},
		{"2001:0:808:808::f5ff:fffe", false}, // client 10.0.0.1
		{"2001:0:a00:1::fefe:fefe", false},   // server 10.0.0.1
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", false},
		{"2001::1", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			err := a.Check(netip.MustParseAddr(tt.addr))
			if got := err == nil; got != tt.allow {
				t.Fatalf("Check(%s): got allowed=%v (err %v), want %v", tt.addr, got, err, tt.allow)
			}
			if err != nil {
				if !errors.Is(err, ErrDenied) {
					t.Fatalf("Check(%s): got %v, want an error wrapping ErrDenied", tt.addr, err)
				}
				if !strings.HasPrefix(err.Error(), "egress: destination denied by ACL: ") {
					t.Fatalf("Check(%s): got message %q", tt.addr, err)
				}
			}
			if ref := refAllowed(netip.MustParseAddr(tt.addr), testAllow, testOwn()); ref != tt.allow {
				t.Fatalf("reference(%s): got %v, want %v", tt.addr, ref, tt.allow)
			}
		})
	}
}

func TestACLAllowAll(t *testing.T) {
	a := newTestACL(t, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")})
	for _, tt := range []struct {
		addr  string
		allow bool
	}{
		{"10.0.0.1", true},
		{"fd00::1", true},
		{"64:ff9b::10.0.0.1", true},
		{"127.0.0.1", false},
		{"0.0.0.0", false},
		{"::", false},
		{"::1", false},
		{"1.2.3.4", false},
		{"::ffff:127.0.0.1", false},
		{"64:ff9b::127.0.0.1", false},
		{"2002:7f00:1::1", false},
		{"2606:4700::1111", false},
	} {
		if got := a.Check(netip.MustParseAddr(tt.addr)) == nil; got != tt.allow {
			t.Errorf("Check(%s): got allowed=%v, want %v", tt.addr, got, tt.allow)
		}
	}
	if err := a.Check(netip.Addr{}); !errors.Is(err, ErrDenied) {
		t.Errorf("Check(zero Addr): got %v, want ErrDenied", err)
	}
}

func TestACLMappedAllowPrefix(t *testing.T) {
	a := newTestACL(t, []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")})
	if err := a.Check(netip.MustParseAddr("10.9.9.9")); err != nil {
		t.Errorf("mapped allow prefix not applied to IPv4: %v", err)
	}
}

func TestACLOwnRefresh(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	cur := []netip.Addr{netip.MustParseAddr("9.9.9.9")}
	reads := 0
	a, err := newACL(nil, nil, func() ([]netip.Addr, error) {
		reads++
		return cur, nil
	}, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	if a.Check(netip.MustParseAddr("9.9.9.9")) == nil {
		t.Fatal("own 9.9.9.9 allowed")
	}
	cur = []netip.Addr{netip.MustParseAddr("9.9.9.10")}
	clk.t = clk.t.Add(time.Second)
	if a.Check(netip.MustParseAddr("9.9.9.10")) != nil {
		t.Fatal("re-read before the refresh interval")
	}
	clk.t = clk.t.Add(ownRefreshInterval)
	if a.Check(netip.MustParseAddr("9.9.9.10")) == nil {
		t.Fatal("new own address 9.9.9.10 allowed after the refresh interval")
	}
	if a.Check(netip.MustParseAddr("9.9.9.9")) != nil {
		t.Fatal("removed address 9.9.9.9 still denied")
	}
	if reads != 2 {
		t.Fatalf("got %d reads, want 2", reads)
	}
	// A failing read keeps the previous set.
	clk.t = clk.t.Add(ownRefreshInterval)
	a.listAddrs = func() ([]netip.Addr, error) { return nil, errors.New("boom") }
	if a.Check(netip.MustParseAddr("9.9.9.10")) == nil {
		t.Fatal("own set lost after a failed read")
	}
}

func TestACLHostAddrs(t *testing.T) {
	a, err := NewACL(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := hostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range addrs {
		if err := a.Check(h); !errors.Is(err, ErrDenied) {
			t.Errorf("host address %s: got %v, want ErrDenied", h, err)
		}
	}
}

func testOwn() []netip.Addr {
	return append(append([]netip.Addr(nil), testOwnFixed...), testOwnIface...)
}

// refAllowed is a naive restatement of the ACL, written with byte
// comparisons instead of the rule tables, to check ACL.Check against.
func refAllowed(a netip.Addr, allow []netip.Prefix, own []netip.Addr) bool {
	a = a.WithZone("")
	if a.Is4() || a.Is4In6() {
		return refV4(a.Unmap().As4(), allow, own)
	}
	b := a.As16()
	if !refV6(b, allow, own) {
		return false
	}
	for _, v4 := range refEmbedded(b) {
		if !refV4(v4, allow, own) {
			return false
		}
	}
	return true
}

func refContains(p netip.Prefix, b []byte) bool {
	pb := p.Addr().AsSlice()
	if len(pb) != len(b) {
		return false
	}
	for i := 0; i < p.Bits(); i++ {
		if (pb[i/8]>>(7-i%8))&1 != (b[i/8]>>(7-i%8))&1 {
			return false
		}
	}
	return true
}

func refIsOwn(b []byte, own []netip.Addr) bool {
	for _, o := range own {
		if string(o.AsSlice()) == string(b) {
			return true
		}
	}
	return false
}

func refAllowListed(b []byte, allow []netip.Prefix) bool {
	for _, p := range allow {
		if refContains(p, b) {
			return true
		}
	}
	return false
}

func refV4(b [4]byte, allow []netip.Prefix, own []netip.Addr) bool {
	if b[0] == 0 || b[0] == 127 || refIsOwn(b[:], own) {
		return false
	}
	if refAllowListed(b[:], allow) {
		return true
	}
	switch {
	case b[0] == 10,
		b[0] == 100 && b[1]&0xc0 == 64,
		b[0] == 169 && b[1] == 254,
		b[0] == 172 && b[1]&0xf0 == 16,
		b[0] == 192 && b[1] == 0 && b[2] == 0 && b[3] != 9 && b[3] != 10,
		b[0] == 192 && b[1] == 0 && b[2] == 2,
		b[0] == 192 && b[1] == 88 && b[2] == 99,
		b[0] == 192 && b[1] == 168,
		b[0] == 198 && b[1]&0xfe == 18,
		b[0] == 198 && b[1] == 51 && b[2] == 100,
		b[0] == 203 && b[1] == 0 && b[2] == 113,
		b[0] >= 224:
		return false
	}
	return true
}

func zero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func refV6(b [16]byte, allow []netip.Prefix, own []netip.Addr) bool {
	if zero(b[:15]) && b[15] <= 1 { // :: and ::1
		return false
	}
	if refIsOwn(b[:], own) {
		return false
	}
	if refAllowListed(b[:], allow) {
		return true
	}
	if b[0]&0xe0 != 0x20 { // outside 2000::/3
		switch {
		case zero(b[:12]): // ::/96
			return true
		case b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && zero(b[4:12]):
			return true
		}
		return false
	}
	switch {
	case b[0] == 0x20 && b[1] == 0x01 && b[2]&0xfe == 0: // 2001::/23
		switch {
		case b[2] == 0 && b[3] == 0: // Teredo
			return true
		case b[2] == 0 && b[3] == 1 && zero(b[4:15]) && b[15] >= 1 && b[15] <= 3:
			return true
		case b[2] == 0 && b[3] == 3:
			return true
		case b[2] == 0 && b[3] == 4 && b[4] == 1 && b[5] == 0x12:
			return true
		}
		return false
	case b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8:
		return false
	case b[0] == 0x3f && b[1] == 0xff && b[2]&0xf0 == 0:
		return false
	}
	return true
}

func refEmbedded(b [16]byte) [][4]byte {
	switch {
	case zero(b[:12]):
		return [][4]byte{{b[12], b[13], b[14], b[15]}}
	case b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && zero(b[4:12]):
		return [][4]byte{{b[12], b[13], b[14], b[15]}}
	case b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0 && b[5] == 1:
		return [][4]byte{
			{b[6], b[7], b[9], b[10]},
			{b[7], b[9], b[10], b[11]},
			{b[9], b[10], b[11], b[12]},
			{b[12], b[13], b[14], b[15]},
		}
	case b[0] == 0x20 && b[1] == 0x02:
		return [][4]byte{{b[2], b[3], b[4], b[5]}}
	case b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0:
		return [][4]byte{{b[4], b[5], b[6], b[7]}, {^b[12], ^b[13], ^b[14], ^b[15]}}
	}
	return nil
}

// randAddr returns addresses biased towards the edges of every range the
// ACL knows about, plus uniformly random ones.
func randAddr(rng *rand.Rand, seeds []netip.Prefix, v4seeds []netip.Prefix) netip.Addr {
	fill := func(p netip.Prefix) []byte {
		b := p.Addr().AsSlice()
		bits := max(0, min(p.Bits()+rng.IntN(5)-2, len(b)*8))
		for i := bits; i < len(b)*8; i++ {
			if rng.IntN(2) == 1 {
				b[i/8] ^= 1 << (7 - i%8)
			}
		}
		// Sometimes flip one bit inside the prefix, to hit neighbours.
		if bits > 0 && rng.IntN(8) == 0 {
			i := rng.IntN(bits)
			b[i/8] ^= 1 << (7 - i%8)
		}
		return b
	}
	v4 := func() [4]byte {
		if rng.IntN(4) == 0 {
			return [4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}
		}
		return [4]byte(fill(v4seeds[rng.IntN(len(v4seeds))]))
	}
	switch rng.IntN(10) {
	case 0:
		return netip.AddrFrom4(v4())
	case 1:
		var b [16]byte
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return netip.AddrFrom16(b)
	case 2, 3, 4, 5:
		b := fill(seeds[rng.IntN(len(seeds))])
		a, _ := netip.AddrFromSlice(b)
		return a
	default:
		x := v4()
		var b [16]byte
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		switch rng.IntN(7) {
		case 0:
			return netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: x[0], 13: x[1], 14: x[2], 15: x[3]})
		case 1:
			return netip.AddrFrom16([16]byte{12: x[0], 13: x[1], 14: x[2], 15: x[3]})
		case 2:
			return netip.AddrFrom16([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 12: x[0], 13: x[1], 14: x[2], 15: x[3]})
		case 3:
			b[0], b[1], b[2], b[3], b[4], b[5] = 0, 0x64, 0xff, 0x9b, 0, 1
			copy(b[6+rng.IntN(7):], x[:])
			return netip.AddrFrom16(b)
		case 4:
			b[0], b[1] = 0x20, 0x02
			copy(b[2:], x[:])
			return netip.AddrFrom16(b)
		default:
			b[0], b[1], b[2], b[3] = 0x20, 0x01, 0, 0
			if rng.IntN(2) == 0 {
				copy(b[4:], x[:])
			} else {
				b[12], b[13], b[14], b[15] = ^x[0], ^x[1], ^x[2], ^x[3]
			}
			return netip.AddrFrom16(b)
		}
	}
}

func aclSeeds(allow []netip.Prefix, own []netip.Addr) (all, v4 []netip.Prefix) {
	for _, t := range [][]rule{v4Rules, v6Rules} {
		for _, ru := range t {
			all = append(all, ru.prefix)
		}
	}
	all = append(all, allow...)
	for _, o := range own {
		all = append(all, netip.PrefixFrom(o, o.BitLen()))
	}
	for _, p := range all {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		}
	}
	return all, v4
}

// testAllowEmbed opens the IPv6 ranges that embed IPv4 addresses but are
// denied by default, so that their embedded addresses decide.
var testAllowEmbed = append([]netip.Prefix{
	netip.MustParsePrefix("64:ff9b:1::/48"),
	netip.MustParsePrefix("2001::/23"),
	netip.MustParsePrefix("192.168.0.0/17"),
}, testAllow...)

func TestACLRandomAgainstReference(t *testing.T) {
	for _, tc := range []struct {
		name  string
		allow []netip.Prefix
	}{{"none", nil}, {"some", testAllow}, {"embedded", testAllowEmbed}} {
		t.Run(tc.name, func(t *testing.T) {
			a := newTestACL(t, tc.allow)
			own := testOwn()
			seeds, v4seeds := aclSeeds(tc.allow, own)
			seed := uint64(time.Now().UnixNano())
			rng := rand.New(rand.NewPCG(1, seed))
			n := 30000
			if testing.Short() {
				n = 3000
			}
			allowed := 0
			for range n {
				addr := randAddr(rng, seeds, v4seeds)
				got := a.Check(addr) == nil
				if want := refAllowed(addr, tc.allow, own); got != want {
					t.Fatalf("seed %d: Check(%s): got allowed=%v, reference says %v", seed, addr, got, want)
				}
				if got {
					allowed++
				}
			}
			// The generator must exercise both outcomes.
			if allowed < n/20 || allowed > n-n/20 {
				t.Fatalf("generator is lopsided: %d of %d allowed", allowed, n)
			}
		})
	}
}

func FuzzACL(f *testing.F) {
	for _, s := range []string{"::1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:c0a8:101::1",
		"2001:0:808:808::fefe:fefe", "64:ff9b:1:a00:1::", "2606:4700::1111", "fe80::1", "2001:1::3"} {
		b := netip.MustParseAddr(s).As16()
		f.Add(b[:])
	}
	allows := [][]netip.Prefix{testAllow, testAllowEmbed}
	acls := []*ACL{newTestACL(f, allows[0]), newTestACL(f, allows[1])}
	own := testOwn()
	f.Fuzz(func(t *testing.T, raw []byte) {
		var b [16]byte
		copy(b[:], raw)
		for i, a := range acls {
			for _, addr := range []netip.Addr{netip.AddrFrom16(b), netip.AddrFrom4([4]byte(b[:4]))} {
				got := a.Check(addr) == nil
				if want := refAllowed(addr, allows[i], own); got != want {
					t.Fatalf("Check(%s): got allowed=%v, reference says %v", addr, got, want)
				}
			}
		}
	})
}

// TestACLInfra: the cluster's infrastructure is denied whatever Allow
// opens, in every IPv6 form that embeds it, and follows SetInfra (a
// membership change); the DNS upstream only at its port, the GUE port on
// every address.
func TestACLInfra(t *testing.T) {
	a := newTestACL(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	member, member2 := netip.MustParseAddr("10.9.0.2"), netip.MustParseAddr("10.9.0.3")
	etcd := netip.MustParseAddr("10.9.1.1")
	dns := netip.MustParseAddrPort("9.9.9.9:53")
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	type row struct {
		dst  netip.AddrPort
		deny string // "": allowed; else a substring of the error
	}
	check := func(step string, rows []row) {
		t.Helper()
		for _, r := range rows {
			err := a.CheckAddrPort(r.dst)
			switch {
			case r.deny == "" && err != nil:
				t.Errorf("%s: %v denied: %v", step, r.dst, err)
			case r.deny != "" && (!errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), r.deny)):
				t.Errorf("%s: %v: %v, want denied for %q", step, r.dst, err, r.deny)
			}
		}
	}
	check("before SetInfra", []row{{ap("10.9.0.2:22"), ""}, {ap("10.9.1.1:2379"), ""}, {ap("9.9.9.9:53"), ""}, {ap("8.8.8.8:6080"), ""}})

	a.SetInfra(Infra{Members: []netip.Addr{member}, Etcd: []netip.Addr{etcd}, DNS: []netip.AddrPort{dns}, Ports: []uint16{6080}})
	check("with infrastructure", []row{
		{ap("10.9.0.2:22"), "member's underlay"},
		{ap("10.9.0.2:51820"), "member's underlay"},
		{ap("[::ffff:10.9.0.2]:80"), "member's underlay"},
		{ap("[64:ff9b::a09:2]:80"), "member's underlay"}, // NAT64 form
		{ap("10.9.0.3:22"), ""},
		{ap("10.9.1.1:2379"), "etcd endpoint"},
		{ap("10.9.1.1:2380"), "etcd endpoint"},
		{ap("9.9.9.9:53"), "DNS upstream"},
		{ap("[64:ff9b::909:909]:53"), "DNS upstream"},
		{ap("9.9.9.9:443"), ""},
		{ap("8.8.8.8:6080"), "GUE port"},
		{ap("[2606:4700:4700::1111]:6080"), "GUE port"},
		{ap("8.8.8.8:443"), ""},
		{ap("10.2.3.4:80"), ""},
	})
	if err := a.Check(member); !errors.Is(err, ErrDenied) {
		t.Errorf("ping to a member: %v, want denied", err)
	}
	if err := a.Check(dns.Addr()); err != nil {
		t.Errorf("ping to the DNS upstream: %v, want allowed (only its port is infrastructure)", err)
	}

	// A membership change: the departed member's address opens, the new
	// one's closes.
	a.SetInfra(Infra{Members: []netip.Addr{member2}, Etcd: []netip.Addr{etcd}, DNS: []netip.AddrPort{dns}, Ports: []uint16{6080}})
	check("after a membership change", []row{{ap("10.9.0.2:22"), ""}, {ap("10.9.0.3:22"), "member's underlay"}, {ap("10.9.1.1:2379"), "etcd endpoint"}})
}

// TestDialerInfra: the Dialer refuses a client's flow to the cluster's
// infrastructure before dialing, and the node's own DialNode (the DNS
// forwarder's path) still reaches the DNS upstream.
func TestDialerInfra(t *testing.T) {
	d, err := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	upstream := ln.Addr().(*net.TCPAddr).AddrPort()
	d.ACL().SetInfra(Infra{Members: []netip.Addr{netip.MustParseAddr("8.8.4.4")}, DNS: []netip.AddrPort{upstream}, Ports: []uint16{6080}})
	ctx := context.Background()
	client := netip.MustParseAddrPort("100.96.0.2:40000")
	for _, dst := range []netip.AddrPort{netip.MustParseAddrPort("8.8.4.4:443"), netip.MustParseAddrPort("8.8.8.8:6080")} {
		if c, err := d.DialTCP(ctx, client, dst); !errors.Is(err, ErrDenied) {
			if c != nil {
				c.Close()
			}
			t.Errorf("DialTCP %v: %v, want ErrDenied", dst, err)
		}
		if c, err := d.DialUDP(ctx, client, dst); !errors.Is(err, ErrDenied) {
			if c != nil {
				c.Close()
			}
			t.Errorf("DialUDP %v: %v, want ErrDenied", dst, err)
		}
	}
	if st := d.Stats(); st.TCP.Denied != 2 || st.UDP.Denied != 2 {
		t.Errorf("denied counts %+v, want 2 TCP and 2 UDP", st)
	}
	c, err := d.DialNode(ctx, "tcp", Source{}, upstream)
	if err != nil {
		t.Fatalf("DialNode to the DNS upstream: %v", err)
	}
	c.Close()
}
