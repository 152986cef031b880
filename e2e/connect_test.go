package e2e

// wedge connect, the WARP-style client, against wedged in the single-node lab:
//
//   client                               node (ip_forward OFF)            origin
//   wedge connect --config conf          wedged                           originsrv :80
//     TUN mode: wedge0-ish TUN, routes     sees the ClientID in bytes 1..3
//     SOCKS mode: 127.0.0.1:1080           of every message (status:
//   eth0 203.0.113.2 ──veth── cl0 203.0.113.1   client_id_seen)  or0 ──veth── eth0 198.18.0.2
//
// The origin must see the egress addresses, and wedged must attribute the
// traffic to the registered ClientID.

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

func TestConnect(t *testing.T) {
	needLab(t, slices.Concat(lab.ToolsOrigin, lab.ToolsClient)...)
	for _, mode := range []string{"socks", "tun"} {
		t.Run(mode, func(t *testing.T) {
			l := newConnectLab(t)
			s, probe, w, conf := l.s, l.probe, l.w, l.conf
			args := []string{l.bins.Wedge, "connect", "--config", l.path, "--status-interval", "1s"}
			var proxy string
			if mode == "socks" {
				proxy = "socks5://127.0.0.1:1080"
				args = append(args, "--socks", "127.0.0.1:1080")
			} else {
				args = append(args, "--name", s.Lab.IfName())
			}
			p, err := s.Client.Start("wedge-connect", nil, args...)
			if err != nil {
				t.Fatal(err)
			}
			get := func(origin netip.Addr) (netip.AddrPort, error) {
				a := []string{probe.Bin, "get", "-timeout", "3s"}
				if proxy != "" {
					a = append(a, "-proxy", proxy)
				}
				out, err := s.Client.Run(append(a, fmt.Sprintf("http://%s/ip", netip.AddrPortFrom(origin, lab.HTTPPort)))...)
				if err != nil {
					return netip.AddrPort{}, err
				}
				return netip.ParseAddrPort(strings.TrimSpace(out))
			}
			// Wait for the tunnel (handshake, routes or proxy listener).
			var last error
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				if p.Exited() {
					t.Fatalf("wedge connect exited:\n%s", p.Output())
				}
				if _, last = get(lab.Origin4.Addr()); last == nil {
					break
				}
			}
			if last != nil {
				t.Fatalf("no path to the origin through wedge connect (%s): %v", mode, last)
			}
			for _, origin := range []netip.Addr{lab.Origin4.Addr(), lab.Origin6.Addr()} {
				got, err := get(origin)
				if err != nil {
					t.Fatal(err)
				}
				checkEgressSeen(t, origin, got)
			}
			// The node read the ClientID from the stamped messages and
			// matched it to the registration (the join runs every 2 s).
			cid := configMeta(conf, "ClientID")
			var seen string
			for deadline := time.Now().Add(6 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
				st := status(t, w)
				for _, peer := range st.Peers {
					if peer["client_id"] == cid {
						seen, _ = peer["client_id_seen"].(string)
					}
				}
				if seen == cid {
					break
				}
			}
			if seen != cid {
				t.Errorf("wedged saw ClientID %q for the peer registered with %q", seen, cid)
			}
			if st := status(t, w).Bind; st.Stamped == 0 || st.Unstamped != 0 || st.Mismatches != 0 {
				t.Errorf("bind counters %+v: want only stamped messages and no mismatch", st)
			}
			p.Stop()
			if mode == "tun" {
				out, _ := s.Client.Run("ip", "rule")
				if strings.Contains(out, "51820") {
					t.Errorf("wedge connect left its rules after SIGTERM:\n%s", out)
				}
			}
		})
	}
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }
