package e2e

// The whole single-node contract of issue 2, against the real binaries:
//
//   client                          node (ip_forward OFF)                    origin
//   wg-quick up <wedge register>    wedged --egress-ports 40000-49999         originsrv :80 :53
//   eth0 203.0.113.2 ──veth── cl0 203.0.113.1      or0 198.18.0.1 ──veth── eth0 198.18.0.2
//        2001:db8:c::2             2001:db8:c::1       2001:db8:18::1          2001:db8:18::2
//   endpoint 192.0.2.1:51820       lo: VIP 192.0.2.1, 2001:db8:1::1          iperf3 -s :5201
//   or [2001:db8:1::1]:51820           egress 198.51.100.10, 2001:db8:5100::10
//
// One lab, one wedged, several clients in turn (two full-tunnel wg-quick
// interfaces cannot share a namespace): an unregistered key, the registered
// client over the IPv4 endpoint, the same config after kill -9 and restart,
// a second client over the IPv6 endpoint, then its deletion.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
	"github.com/wedge-edge/wedge/lb"
)

const sliceLo, sliceHi = 40000, 49999 // lab.WedgedArgs's --egress-ports

func TestNode(t *testing.T) {
	needLab(t, slices.Concat(lab.ToolsOrigin, lab.ToolsClient)...)
	bins, err := lab.Build(binDir)
	if err != nil {
		t.Fatal(err)
	}
	s, probe := newSingleNode(t)
	w, err := s.StartWedged(bins.Wedged)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := w.Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("unregistered-key-gets-no-handshake", func(t *testing.T) {
		k, err := lab.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		foreign := regexp.MustCompile(`(?m)^PrivateKey = .*$`).ReplaceAllString(conf, "PrivateKey = "+k.Private)
		wq, err := s.Client.WGQuickUp(foreign)
		if err != nil {
			t.Fatal(err)
		}
		defer wq.Down()
		if err := s.Client.Ping(lab.Origin4.Addr(), 2); err == nil {
			t.Fatal("an unregistered key reached the origin")
		}
		out, _ := wq.Show()
		if strings.Contains(out, "latest handshake") {
			t.Errorf("an unregistered key got a handshake response:\n%s", out)
		}
		if got := status(t, w).Peers; len(got) != 0 {
			t.Errorf("wedged reports sessions %v after an unregistered handshake", got)
		}
	})

	wq, err := s.Client.WGQuickUp(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("outer-v4", func(t *testing.T) {
		checkOrigin(t, s, probe, lab.Egress4, lab.Egress6)
		checkSlice(t, probe)
		checkRepliesFromVIP(t, wq, netip.AddrPortFrom(lab.VIP4, 51820))
	})

	t.Run("egress-acl", func(t *testing.T) {
		before := status(t, w).egressDenied()
		denied := []string{
			"http://192.0.2.1:8080/",         // the node's VIP
			"http://[2001:db8:1::1]/",        // the node's v6 VIP
			"http://198.18.0.1/",             // the node's underlay, inside an --allow'ed range
			"http://198.51.100.10/",          // the node's egress address
			"http://[2001:db8:18::1]/",       // the node's v6 underlay, inside an --allow'ed range
			"http://[64:ff9b::7f00:1]:8080/", // 127.0.0.1:8080 (the API) in NAT64 form
			"http://[::ffff:10.1.2.3]/",      // RFC 1918, IPv4-mapped (the client kernel sends it as v4)
			"http://10.1.2.3/",               // RFC 1918
			"http://192.168.1.1/",            // RFC 1918
			"http://100.64.0.1/",             // CGNAT
			"http://192.0.2.99/",             // documentation range, not allowed
			"http://[fd00::1]/",              // ULA
		}
		for _, url := range denied {
			start := time.Now()
			_, err := probe.NS.Run(probe.Bin, "get", "-timeout", "5s", url)
			if err == nil {
				t.Errorf("GET %s through the tunnel succeeded; the ACL must deny it", url)
				continue
			}
			if !strings.Contains(err.Error(), "connection refused") {
				t.Errorf("GET %s: %v; want a prompt connection refused (RST)", url, err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("GET %s took %v to fail; a denial must reset at once", url, d)
			}
		}
		// A refused dial also reaches the client as a reset: only egress's
		// count tells an ACL denial from a destination that refused.
		if got := status(t, w).egressDenied() - before; got != uint64(len(denied)) {
			t.Errorf("egress counted %d ACL denials for %d denied destinations", got, len(denied))
		}
		// The inner gateway (wedged's own tunnel address) serves DNS only.
		if _, err := probe.NS.Run(probe.Bin, "get", "-timeout", "5s", "http://100.96.0.1:8080/"); err == nil {
			t.Error("reached port 8080 on the node's inner address")
		}
		// --allow opened 198.18.0.0/15 (denied by default as a benchmarking
		// range): the origin itself works, as outer-v4 showed; check again
		// after the denials.
		if _, err := probe.RemoteAddr(lab.Origin4.Addr()); err != nil {
			t.Errorf("allow-listed origin: %v", err)
		}
	})

	t.Run("kill-9-and-restart", func(t *testing.T) {
		if err := syscall.Kill(w.Proc.Pid(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-w.Proc.Done()
		w2, err := s.StartWedged(bins.Wedged, "--name", w.Iface)
		if err != nil {
			t.Fatal(err)
		}
		w = w2
		// The client does not know the node restarted: it re-handshakes
		// when its packets go unanswered (wireguard-go's timers: about
		// 5 s plus jitter after an unanswered send).
		start := time.Now()
		var last error
		for time.Since(start) < 45*time.Second {
			if _, last = probe.NS.Run(probe.Bin, "get", "-timeout", "3s", fmt.Sprintf("http://%s/ip", netip.AddrPortFrom(lab.Origin4.Addr(), lab.HTTPPort))); last == nil {
				break
			}
		}
		if last != nil {
			t.Fatalf("the same config did not work again within 45 s of the restart: %v", last)
		}
		t.Logf("working again %v after restart", time.Since(start).Round(100*time.Millisecond))
		checkSlice(t, probe)
	})

	if err := wq.Down(); err != nil {
		t.Fatal(err)
	}

	t.Run("outer-v6-then-delete", func(t *testing.T) {
		conf6, err := w.Register(bins.Wedge, "--family", "6")
		if err != nil {
			t.Fatal(err)
		}
		ep := netip.AddrPortFrom(lab.VIP6, 51820)
		if got := lab.ConfigValue(conf6, "Endpoint"); got != ep.String() {
			t.Fatalf("--family 6 config has Endpoint %q, want %v", got, ep)
		}
		wq6, err := s.Client.WGQuickUp(conf6)
		if err != nil {
			t.Fatal(err)
		}
		defer wq6.Down()
		for _, origin := range []netip.Addr{lab.Origin4.Addr(), lab.Origin6.Addr()} {
			got, err := probe.RemoteAddr(origin)
			if err != nil {
				t.Fatal(err)
			}
			checkEgressSeen(t, origin, got)
		}
		if err := s.Client.Ping(lab.Origin6.Addr(), 2); err != nil {
			t.Error(err)
		}
		checkRepliesFromVIP(t, wq6, ep)

		// Delete: the session ends at once.
		id := configMeta(conf6, "Registration")
		req, _ := http.NewRequest(http.MethodDelete, w.API+"/v1/reg/"+id, nil)
		resp, err := w.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("DELETE: %s, want 204", resp.Status)
		}
		if _, err := probe.NS.Run(probe.Bin, "get", "-timeout", "3s", fmt.Sprintf("http://%s/ip", netip.AddrPortFrom(lab.Origin4.Addr(), lab.HTTPPort))); err == nil {
			t.Error("a deleted client still reaches the origin")
		}
		out, _ := w.Show()
		if strings.Count(out, "peer:") != 1 {
			t.Errorf("wg show after DELETE, want only the first client's peer:\n%s", out)
		}
	})
}

// checkEgressSeen: the origin saw the node's egress address of its family
// and a source port inside the node's slice.
func checkEgressSeen(t *testing.T, origin netip.Addr, got netip.AddrPort) {
	t.Helper()
	want := lab.Egress4
	if origin.Is6() {
		want = lab.Egress6
	}
	if got.Addr() != want || got.Port() < sliceLo || got.Port() > sliceHi {
		t.Errorf("origin %v saw %v, want %v with a port in %d-%d", origin, got, want, sliceLo, sliceHi)
	}
}

// checkSlice: the origin sees a source port inside the node's slice.
func checkSlice(t *testing.T, probe lab.Probe) {
	t.Helper()
	for _, origin := range []netip.Addr{lab.Origin4.Addr(), lab.Origin6.Addr()} {
		for range 3 {
			got, err := probe.RemoteAddr(origin)
			if err != nil {
				t.Fatal(err)
			}
			if got.Port() < sliceLo || got.Port() > sliceHi {
				t.Errorf("origin %v saw source port %d, want one in the node's slice %d-%d", origin, got.Port(), sliceLo, sliceHi)
			}
		}
	}
}

// checkRepliesFromVIP: wireguard-go roams to the source of the server's
// authenticated replies, so the client's endpoint shows where they came
// from; it must be the address the client sent to (direct server return).
func checkRepliesFromVIP(t *testing.T, wq *lab.WGQuick, want netip.AddrPort) {
	t.Helper()
	out, err := wq.Show()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "endpoint: "+want.String()) {
		t.Errorf("client's endpoint after the server's replies, want %v:\n%s", want, out)
	}
}

func configMeta(conf, key string) string {
	m := regexp.MustCompile(`(?m)^#@ ` + key + ` = (.*)$`).FindStringSubmatch(conf)
	if m == nil {
		return ""
	}
	return strings.TrimSpace(m[1])
}

type nodeStatus struct {
	Clients int              `json:"clients"`
	Peers   []map[string]any `json:"peers"`
	Bind    struct {
		Stamped    uint64 `json:"stamped"`
		Unstamped  uint64 `json:"unstamped"`
		Mismatches uint64 `json:"client_id_mismatches"`
		// HandshakesStarted: session recovery (server/recover.go).
		HandshakesStarted uint64 `json:"handshakes_started"`
		RecoveriesRefused uint64 `json:"recoveries_refused"`
		// SessionsInherited: an heir's or a restarted node's handshakes
		// (server/inherit.go).
		SessionsInherited uint64 `json:"sessions_inherited"`
		CookieReplies     uint64 `json:"cookie_replies_sent"`
	} `json:"bind"`
	Cluster *struct {
		Nodes []struct {
			ID    string `json:"id"`
			DC    string `json:"dc"`
			Slot  uint8  `json:"slot"`
			State string `json:"state"`
		} `json:"nodes"`
	} `json:"cluster"`
	Sections struct {
		Egress struct {
			TCP struct {
				Denied uint64 `json:"denied"`
			} `json:"tcp"`
		} `json:"egress"`
	} `json:"sections"`
}

func (s nodeStatus) egressDenied() uint64 { return s.Sections.Egress.TCP.Denied }

// heirOf is the heir of node id's slot among the other nodes s lists
// (lb.HeirOf, as the fronts and nodes compute it).
func (s nodeStatus) heirOf(t *testing.T, id string) string {
	t.Helper()
	if s.Cluster == nil {
		t.Fatal("status without a cluster section")
	}
	var slot uint8
	var ms []lb.Member
	for _, n := range s.Cluster.Nodes {
		if n.ID == id {
			slot = n.Slot
			continue
		}
		ms = append(ms, lb.Member{ID: n.ID, Slot: n.Slot, Draining: n.State == "draining"})
	}
	h, ok := lb.HeirOf(slot, ms)
	if slot == 0 || !ok {
		t.Fatalf("no heir for %s (slot %d) among %+v", id, slot, s.Cluster.Nodes)
	}
	return h.ID
}

func status(t *testing.T, w *lab.Wedged) nodeStatus {
	t.Helper()
	resp, err := w.HTTPClient().Get(w.API + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s nodeStatus
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}
