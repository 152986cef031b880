package client

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/internal/clientid"
)

const (
	privB64 = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	pubB64  = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
)

// goodConfig is what `wedge register` writes.
const goodConfig = `# wedge client configuration. ` + "`wg-quick up`" + ` takes it as it is;
#@ Registration = r-123
#@ API = http://127.0.0.1:8080
#@ ClientID = EjRW
#@ Reserved = [18, 52, 86]
#@ Endpoint = 192.0.2.1:51820
#@ Endpoint = [2001:db8:1::1]:51820

[Interface]
PrivateKey = ` + privB64 + `
Address = 100.96.0.2/32, fd57:6564:6765::2/128
DNS = 100.96.0.1, fd57:6564:6765::1
MTU = 1420

[Peer]
PublicKey = ` + pubB64 + `
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = 192.0.2.1:51820
PersistentKeepalive = 25
`

func TestParseGood(t *testing.T) {
	c, err := Parse(strings.NewReader(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.ClientID, clientid.ID(0x123456); got != want {
		t.Errorf("ClientID = %#x, want %#x", got, want)
	}
	if got, want := c.Reserved(), [3]byte{18, 52, 86}; got != want {
		t.Errorf("Reserved = %v, want %v", got, want)
	}
	if c.PrivateKey.String() != privB64 || c.Peer.PublicKey.String() != pubB64 {
		t.Errorf("keys = %v, %v", c.PrivateKey, c.Peer.PublicKey)
	}
	wantAddrs := []netip.Prefix{netip.MustParsePrefix("100.96.0.2/32"), netip.MustParsePrefix("fd57:6564:6765::2/128")}
	if !equal(c.Addresses, wantAddrs) {
		t.Errorf("Addresses = %v, want %v", c.Addresses, wantAddrs)
	}
	if len(c.DNS) != 2 || c.MTU != 1420 || c.Peer.PersistentKeepalive != 25 || len(c.Peer.AllowedIPs) != 2 {
		t.Errorf("DNS %v MTU %d keepalive %d AllowedIPs %v", c.DNS, c.MTU, c.Peer.PersistentKeepalive, c.Peer.AllowedIPs)
	}
	if c.Registration != "r-123" || c.API != "http://127.0.0.1:8080" {
		t.Errorf("Registration %q API %q", c.Registration, c.API)
	}
	eps, ok := c.ServerEndpoints()
	want := []netip.AddrPort{netip.MustParseAddrPort("[2001:db8:1::1]:51820"), netip.MustParseAddrPort("192.0.2.1:51820")}
	if !ok || !equal(eps, want) {
		t.Errorf("ServerEndpoints = %v, %v; want %v (IPv6 first)", eps, ok, want)
	}
	u := c.UAPI(DualEndpoint)
	for _, s := range []string{"endpoint=" + DualEndpoint + "\n", "allowed_ip=0.0.0.0/0\n", "allowed_ip=::/0\n", "persistent_keepalive_interval=25\n", "replace_peers=true\n"} {
		if !strings.Contains(u, s) {
			t.Errorf("UAPI lacks %q:\n%s", s, u)
		}
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestParseRegisterOutput parses what WriteConfig (wedge register)
// renders, so the two stay in step.
func TestParseRegisterOutput(t *testing.T) {
	var r api.Registration
	r.ID, r.ClientID, r.Reserved = "abc", "AQID", [3]int{1, 2, 3}
	r.Addresses.V4, r.Addresses.V6 = "100.96.0.2/32", "fd57:6564:6765::2/128"
	r.Server.PublicKey = pubB64
	r.Server.Endpoints = []string{"192.0.2.1:51820", "[2001:db8:1::1]:51820"}
	r.MTU, r.DNS = 1420, []string{"100.96.0.1"}
	r.Token = "wedge.0123456789abcdef0123456789abcdef.c2VjcmV0"
	fp := strings.Repeat("ab", 32)
	k, _ := wgtypes.ParseKey(privB64)
	var b strings.Builder
	if err := WriteConfig(&b, k, r, WriteOptions{API: "https://x", Keepalive: 25, Fingerprint: fp}); err != nil {
		t.Fatal(err)
	}
	c, err := Parse(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if c.ClientID != 0x010203 || len(c.Endpoints) != 2 || c.Peer.Endpoint != "192.0.2.1:51820" {
		t.Errorf("ClientID %#x Endpoints %v Peer.Endpoint %q", c.ClientID, c.Endpoints, c.Peer.Endpoint)
	}
	if c.Token != r.Token || c.Fingerprint != fp || c.API != "https://x" || c.Registration != "abc" {
		t.Errorf("Token %q Fingerprint %q API %q Registration %q", c.Token, c.Fingerprint, c.API, c.Registration)
	}
	// The token is on a "#@" line, which wg-quick reads as a comment.
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.Contains(line, r.Token) && !strings.HasPrefix(line, "#@ Token = ") {
			t.Errorf("the token is on line %q", line)
		}
	}
	// A server cannot smuggle lines into the file through the token, and
	// a bad fingerprint is refused.
	for _, tok := range []string{"a\nPostUp = rm -rf /", "a b", "a\r"} {
		r.Token = tok
		if err := WriteConfig(&strings.Builder{}, k, r, WriteOptions{}); err == nil {
			t.Errorf("token %q accepted", tok)
		}
	}
	r.Token = ""
	if err := WriteConfig(&strings.Builder{}, k, r, WriteOptions{Fingerprint: "xyz"}); err == nil {
		t.Error("a bad fingerprint accepted")
	}
	for _, bad := range []string{"#@ Token = a b", "#@ Fingerprint = 1234", "#@ Token = x\n#@ Token = y"} {
		if _, err := Parse(strings.NewReader(bad + "\n" + b.String())); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestParseFingerprint(t *testing.T) {
	want := strings.Repeat("ab", 32)
	for _, in := range []string{want, strings.ToUpper(want), strings.TrimSuffix(strings.Repeat("AB:", 32), ":"), " " + want + " "} {
		if got, err := ParseFingerprint(in); err != nil || got != want {
			t.Errorf("ParseFingerprint(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", want[:62], want + "ab", strings.Repeat("zz", 32)} {
		if _, err := ParseFingerprint(in); err == nil {
			t.Errorf("ParseFingerprint(%q) accepted", in)
		}
	}
}

func TestParseVariants(t *testing.T) {
	base := func(edit func(string) string) string { return edit(goodConfig) }
	for _, c := range []struct {
		name  string
		text  string
		check func(*Config) string
	}{
		{"no ClientID: standard client", base(func(s string) string {
			s = strings.Replace(s, "#@ ClientID = EjRW\n", "", 1)
			return strings.Replace(s, "#@ Reserved = [18, 52, 86]\n", "", 1)
		}), func(c *Config) string {
			if c.ClientID != 0 {
				return "ClientID set"
			}
			return ""
		}},
		{"Reserved alone", base(func(s string) string { return strings.Replace(s, "#@ ClientID = EjRW\n", "", 1) }),
			func(c *Config) string {
				if c.ClientID != 0x123456 {
					return "ClientID not taken from Reserved"
				}
				return ""
			}},
		{"no #@ endpoints: Peer Endpoint", base(func(s string) string {
			return strings.NewReplacer("#@ Endpoint = 192.0.2.1:51820\n", "", "#@ Endpoint = [2001:db8:1::1]:51820\n", "").Replace(s)
		}), func(c *Config) string {
			eps, ok := c.ServerEndpoints()
			if !ok || len(eps) != 1 || eps[0] != netip.MustParseAddrPort("192.0.2.1:51820") {
				return "ServerEndpoints wrong"
			}
			return ""
		}},
		{"hooks ignored, comments, case", base(func(s string) string {
			return strings.Replace(s, "MTU = 1420\n", "mtu=1420 # comment\nPostUp = rm -rf /\nTable = off\n", 1)
		}), func(c *Config) string {
			if len(c.Ignored) != 2 || c.MTU != 1420 {
				return "Ignored/MTU wrong"
			}
			return ""
		}},
		{"hostname endpoint", base(func(s string) string {
			s = strings.NewReplacer("#@ Endpoint = 192.0.2.1:51820\n", "", "#@ Endpoint = [2001:db8:1::1]:51820\n", "").Replace(s)
			return strings.Replace(s, "Endpoint = 192.0.2.1:51820", "Endpoint = vpn.example.com:51820", 1)
		}), func(c *Config) string {
			if _, ok := c.ServerEndpoints(); ok {
				return "want ok=false for a name"
			}
			return ""
		}},
		{"unknown #@ key", "#@ Future = 1\n" + goodConfig, func(*Config) string { return "" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse(strings.NewReader(c.text))
			if err != nil {
				t.Fatal(err)
			}
			if msg := c.check(cfg); msg != "" {
				t.Error(msg)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		name, text, want string
	}{
		{"bad ClientID", strings.Replace(goodConfig, "ClientID = EjRW", "ClientID = AAAA", 1), "line 4: ClientID"},
		{"Reserved disagrees", strings.Replace(goodConfig, "[18, 52, 86]", "[18, 52, 87]", 1), "disagrees"},
		{"Reserved not bytes", strings.Replace(goodConfig, "[18, 52, 86]", "[18, 52, 300]", 1), "line 5: Reserved"},
		{"bad #@ Endpoint", strings.Replace(goodConfig, "#@ Endpoint = 192.0.2.1:51820", "#@ Endpoint = 192.0.2.1", 1), "line 6: Endpoint"},
		{"bad key", strings.Replace(goodConfig, "PrivateKey = "+privB64, "PrivateKey = abc", 1), "line 10: PrivateKey"},
		{"bad address", strings.Replace(goodConfig, "100.96.0.2/32", "100.96.0.2/33", 1), "line 11: Address"},
		{"unknown key", strings.Replace(goodConfig, "MTU = 1420", "Bogus = 1", 1), "line 13: unknown [Interface] key"},
		{"two peers", goodConfig + "[Peer]\n", "second [Peer]"},
		{"duplicate key", strings.Replace(goodConfig, "MTU = 1420", "MTU = 1420\nMTU = 1280", 1), "line 14: duplicate"},
		{"no private key", strings.Replace(goodConfig, "PrivateKey = "+privB64+"\n", "", 1), "no PrivateKey"},
		{"no peer", goodConfig[:strings.Index(goodConfig, "[Peer]")], "no [Peer]"},
		{"no endpoint", strings.NewReplacer("#@ Endpoint = 192.0.2.1:51820\n", "", "#@ Endpoint = [2001:db8:1::1]:51820\n", "", "Endpoint = 192.0.2.1:51820\n", "").Replace(goodConfig), "no endpoint"},
		{"key outside section", "MTU = 1\n", "line 1: MTU outside a section"},
		{"not key=value", strings.Replace(goodConfig, "MTU = 1420", "MTU 1420", 1), "line 13: want Key = value"},
		{"bad MTU", strings.Replace(goodConfig, "MTU = 1420", "MTU = 70000", 1), "line 13: MTU"},
		{"bad section", "[Interfaces]\n", "line 1: unknown section"},
		{"long line", "#" + strings.Repeat("x", maxLineBytes+10) + "\n", "longer than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(c.text))
			if err == nil {
				t.Fatalf("got no error, want one containing %q", c.want)
			}
			if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %q, want it to contain %q and wrap ErrSyntax", err, c.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(goodConfig)
	f.Add("[Interface]\nPrivateKey=" + privB64 + "\nAddress=10.0.0.1\n[Peer]\nPublicKey=" + pubB64 + "\nEndpoint=[::1]:1\n")
	f.Add("#@ Reserved = [1,2,3]\n#@ Endpoint = [::ffff:1.2.3.4]:5\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(strings.NewReader(s))
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v does not wrap ErrSyntax", err)
			}
			return
		}
		if c.ClientID > clientid.Max {
			t.Fatalf("ClientID %#x out of range", c.ClientID)
		}
		if len(c.Addresses) == 0 || c.Peer.PublicKey == (wgtypes.Key{}) {
			t.Fatal("accepted a config without Address or PublicKey")
		}
		eps, ok := c.ServerEndpoints()
		for _, e := range eps {
			if !e.IsValid() || e.Port() == 0 || e.Addr().Is4In6() {
				t.Fatalf("bad server endpoint %v", e)
			}
		}
		if !ok && c.Peer.Endpoint == "" {
			t.Fatal("no endpoint at all")
		}
		if u := c.UAPI(DualEndpoint); strings.Count(u, "public_key=") != 1 {
			t.Fatalf("UAPI has not one peer:\n%s", u)
		}
		if _, err := NewBind(nopBind{}, Options{ClientID: c.ClientID, Endpoints: eps}); err != nil {
			t.Fatalf("NewBind rejects a parsed config: %v", err)
		}
	})
}
