package e2e

// wedged on one node, a stock wg-quick client (lab/topo.go):
//
//   client                         node (ip_forward OFF)                      origin
//   wg-quick up <register'd conf>  wedged --listen 51820 --api 127.0.0.1:8080  originsrv :80 :53
//   eth0 203.0.113.2 ──veth── cl0 203.0.113.1      or0 198.18.0.1 ──veth── eth0 198.18.0.2
//        2001:db8:c::2             2001:db8:c::1       2001:db8:18::1          2001:db8:18::2
//   endpoint: VIP 192.0.2.1:51820  lo: VIP 192.0.2.1, 2001:db8:1::1           iperf3 -s :5201
//                                      egress 198.51.100.10, 2001:db8:5100::10
//
// `wedge register` runs in the node namespace against the API on its
// loopback; the config it writes goes to wg-quick in the client namespace as
// it is. The node forwards nothing, so anything reaching the origin went
// through wedged's netstack and egress: the origin must see the egress
// addresses.

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

func TestWedgedSingleNode(t *testing.T) {
	needLab(t, slices.Concat(lab.ToolsOrigin, lab.ToolsClient)...)
	bins, err := lab.Build(binDir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s, probe := newSingleNode(t)
	w, err := s.StartWedged(bins.Wedged)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := w.Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	if ep := lab.ConfigValue(conf, "Endpoint"); ep != netip.AddrPortFrom(lab.VIP4, 51820).String() {
		t.Errorf("registered config has Endpoint %q, want the VIP %v:51820:\n%s", ep, lab.VIP4, conf)
	}
	if _, err := s.Client.WGQuickUp(conf); err != nil {
		t.Fatal(err)
	}
	t.Logf("lab + wedged + register + wg-quick up in %v", time.Since(start).Round(time.Millisecond))

	checkOrigin(t, s, probe, lab.Egress4, lab.Egress6)

	t.Run("dns-via-tunnel", func(t *testing.T) {
		// wg-quick put the config's DNS servers (wedged's, inside the
		// tunnel) in the client's resolv.conf; wedged relays to the origin's.
		if lab.ConfigValue(conf, "DNS") == "" {
			t.Skip("registered config has no DNS line")
		}
		for _, tc := range []struct{ qtype, want string }{{"A", lab.Origin4.Addr().String()}, {"AAAA", lab.Origin6.Addr().String()}} {
			got, err := probe.DNS("", lab.OriginName, tc.qtype, false)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].String() != tc.want {
				t.Errorf("%s %s via resolv.conf (DNS = %s) = %v, want %s", lab.OriginName, tc.qtype, lab.ConfigValue(conf, "DNS"), got, tc.want)
			}
		}
	})

	t.Run("wg-show", func(t *testing.T) {
		out, err := w.Show()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "latest handshake") || !strings.Contains(out, lab.ConfigValue(conf, "PublicKey")) {
			t.Errorf("wg show %s:\n%s\nwant the server key and a peer with a handshake", w.Iface, out)
		}
	})
}
