package client

import (
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
)

func reg() api.Registration {
	var r api.Registration
	r.ID, r.ClientID, r.Reserved = "abc", "EjRW", [3]int{18, 52, 86}
	r.Addresses.V4, r.Addresses.V6 = "100.96.0.2/32", "fd57:6564:6765::2/128"
	sk, _ := wgtypes.GeneratePrivateKey()
	r.Server.PublicKey = sk.PublicKey().String()
	r.Server.Endpoints = []string{"192.0.2.1:51820", "[2001:db8:1::1]:51820"}
	r.MTU, r.DNS = 1420, []string{"100.96.0.1", "fd57:6564:6765::1"}
	return r
}

func TestWrite(t *testing.T) {
	k, _ := wgtypes.GeneratePrivateKey()
	r0 := reg()
	for _, c := range []struct {
		family int
		want   string
	}{{0, "Endpoint = 192.0.2.1:51820\n"}, {4, "Endpoint = 192.0.2.1:51820\n"}, {6, "Endpoint = [2001:db8:1::1]:51820\n"}} {
		var b strings.Builder
		if err := WriteConfig(&b, k, r0, WriteOptions{Family: c.family, Keepalive: 25}); err != nil {
			t.Fatal(err)
		}
		s := b.String()
		for _, want := range []string{
			"[Interface]\nPrivateKey = " + k.String() + "\n",
			"Address = 100.96.0.2/32, fd57:6564:6765::2/128\n",
			"DNS = 100.96.0.1, fd57:6564:6765::1\n", "MTU = 1420\n",
			"[Peer]\nPublicKey = " + r0.Server.PublicKey + "\nAllowedIPs = 0.0.0.0/0, ::/0\n",
			"\n" + c.want, "#@ Reserved = [18, 52, 86]\n", "#@ ClientID = EjRW\n",
			"PersistentKeepalive = 25\n",
		} {
			if !strings.Contains(s, want) {
				t.Errorf("family %d: missing %q in\n%s", c.family, want, s)
			}
		}
		// Everything outside [Interface]/[Peer] sections is a comment, so
		// wg-quick accepts the file.
		for _, line := range strings.Split(s, "\n") {
			if line != "" && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "[") && !strings.Contains(line, " = ") {
				t.Errorf("line %q is neither comment, section nor key = value", line)
			}
		}
	}
}

func TestNoEndpointOfFamily(t *testing.T) {
	r := reg()
	r.Server.Endpoints = r.Server.Endpoints[:1]
	k, _ := wgtypes.GeneratePrivateKey()
	if err := WriteConfig(&strings.Builder{}, k, r, WriteOptions{Family: 6}); err == nil {
		t.Fatal("want an error for a missing IPv6 endpoint")
	}
	r.Server.Endpoints = nil
	if err := WriteConfig(&strings.Builder{}, k, r, WriteOptions{}); err == nil {
		t.Fatal("want an error for no endpoint")
	}
}

func TestValidateRejectsInjection(t *testing.T) {
	k, _ := wgtypes.GeneratePrivateKey()
	sk, _ := wgtypes.GeneratePrivateKey()
	mut := []func(r *api.Registration){
		func(r *api.Registration) { r.ID = "x\nPostUp = touch /tmp/pwned" },
		func(r *api.Registration) { r.ClientID = "a b" },
		func(r *api.Registration) { r.Server.PublicKey = "srvkey\nPostUp = id" },
		func(r *api.Registration) { r.Server.Endpoints = []string{"192.0.2.1:51820\nPostUp = id"} },
		func(r *api.Registration) { r.Server.Endpoints = []string{"192.0.2.1:0"} },
		func(r *api.Registration) { r.Addresses.V4 = "100.96.0.2/32\nPostUp = id" },
		func(r *api.Registration) { r.DNS = []string{"1.1.1.1, 2.2.2.2"} },
		func(r *api.Registration) { r.Reserved[1] = 256 },
		func(r *api.Registration) { r.MTU = 70000 },
	}
	for i, m := range mut {
		r := reg()
		r.Server.PublicKey = sk.PublicKey().String()
		if err := WriteConfig(&strings.Builder{}, k, r, WriteOptions{}); err != nil {
			t.Fatalf("baseline registration rejected: %v", err)
		}
		m(&r)
		if err := WriteConfig(&strings.Builder{}, k, r, WriteOptions{}); err == nil {
			t.Errorf("mutation %d accepted", i)
		}
	}
}
