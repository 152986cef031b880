package e2e

// The two-data-center lab (lab.NewTwoDC) checked with kernel tools only,
// before any wedged runs on it:
//
//   client1 203.0.113.2/25   ─┐                    ┌─ dc1 router ─┬─ node1
//   client2 203.0.113.130/25 ─┤                    │  (ECMP)      └─ node2
//                              ├─ inet router ──────┤
//   origin 198.18.0.2        ─┤  VIP, 198.51.100.0/24 via both DCs (ECMP)
//   etcd1  198.18.11.1       ─┘                    └─ dc2 router ─┬─ node3
//                                                     (ECMP)      └─ node4
//
// Every node holds the VIP and the whole egress pool 198.51.100.0/24
// (AnyIP). The test checks that the clients reach the origin and the VIP,
// that nodes reach each other across data centers and etcd, that UDP from
// the origin to a shared egress address lands where the routers' hashes
// say (only in DC 2 when the inet router routes the pool there; on every
// node of both data centers over many flows when it routes via both), and
// that etcd answers.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

// twoDCProbeAddr is the shared egress address UDP probes go to.
var twoDCProbeAddr = netip.AddrPortFrom(netip.MustParseAddr("198.51.100.50"), 7000)

func TestTwoDCLab(t *testing.T) {
	needLab(t, slices.Concat(lab.ToolsOrigin, lab.ToolsTwoDC, []string{"ping"})...)
	srv := originsrv(t)
	l, err := lab.New(t)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	td, err := lab.NewTwoDC(l, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lab built in %v", time.Since(start).Round(time.Millisecond))
	if _, err := td.StartOrigin(srv); err != nil {
		t.Fatal(err)
	}

	t.Run("numbering", func(t *testing.T) {
		for n, want := range map[int]int{1: 1, 2: 1, 3: 2, 4: 2} {
			if got := td.NodeDC(n); got != want {
				t.Errorf("NodeDC(%d) = %d, want %d", n, got, want)
			}
		}
		if got := td.DCNodes(2); !slices.Equal(got, []int{3, 4}) {
			t.Errorf("DCNodes(2) = %v, want [3 4]", got)
		}
		args := strings.Join(td.WedgedArgs(3, "--egress-plan", "plan.json"), " ")
		for _, want := range []string{"--dc dc2", "--underlay 198.18.3.1", "--node-id node3",
			"--xdp eth0", "--etcd " + lab.EtcdClientURL(1), "--egress-plan plan.json"} {
			if !strings.Contains(args, want) {
				t.Errorf("WedgedArgs(3) = %q, want %q in it", args, want)
			}
		}
		if strings.Contains(args, "--egress ") || strings.Contains(args, "--egress-ports") {
			t.Errorf("WedgedArgs(3) = %q: want no --egress or --egress-ports", args)
		}
	})

	t.Run("clients", func(t *testing.T) {
		if err := td.RouteClientWAN(); err != nil {
			t.Fatal(err)
		}
		for i, c := range td.Clients {
			for _, dst := range []netip.Addr{lab.Origin4.Addr(), lab.Origin6.Addr(), lab.VIP4, lab.VIP6} {
				if err := c.Ping(dst, 2); err != nil {
					t.Errorf("client%d: %v", i+1, err)
				}
			}
			// The origin sees the client's own address: nothing translates.
			body, err := lab.Probe{NS: c, Bin: srv}.Get(fmt.Sprintf("http://%s/ip", netip.AddrPortFrom(lab.Origin4.Addr(), lab.HTTPPort)))
			if err != nil {
				t.Fatalf("client%d: %v", i+1, err)
			}
			if got, err := netip.ParseAddrPort(body); err != nil || got.Addr() != lab.TwoDCClient4[i].Addr() {
				t.Errorf("client%d: the origin saw %q, want %v", i+1, body, lab.TwoDCClient4[i].Addr())
			}
		}
	})

	t.Run("underlay", func(t *testing.T) {
		for _, p := range []struct {
			from int
			dst  netip.Addr
		}{
			{1, lab.NodeUnderlay(3)}, {1, lab.NodeUnderlay6(3)}, {1, lab.NodeUnderlay(2)},
			{4, lab.NodeUnderlay(1)}, {1, lab.EtcdAddr(1)}, {3, lab.Origin4.Addr()},
		} {
			if err := td.Nodes[p.from-1].Ping(p.dst, 2); err != nil {
				t.Errorf("node%d: %v", p.from, err)
			}
		}
	})

	t.Run("egress", func(t *testing.T) {
		got := listenOnNodes(t, td, twoDCProbeAddr)
		// send sends UDP from the origin's port sport to the probe address
		// and returns the node it arrived at.
		send := func(sport uint16) int {
			t.Helper()
			src := netip.AddrPortFrom(lab.Origin4.Addr(), sport)
			msg := fmt.Sprint(sport)
			err := td.Origin.Do(func() error {
				c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(twoDCProbeAddr))
				if err != nil {
					return err
				}
				defer c.Close()
				for range 3 { // the first may wait for ARP on the way
					if _, err := c.Write([]byte(msg)); err != nil {
						return err
					}
					time.Sleep(20 * time.Millisecond)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			timeout := time.After(3 * time.Second)
			for {
				select {
				case a := <-got:
					if a.msg == msg {
						return a.node
					}
				case <-timeout:
					t.Fatalf("UDP from %v to %v arrived at no node", src, twoDCProbeAddr)
				}
			}
		}
		path := func(sport uint16) int {
			t.Helper()
			n, err := td.PathTo("udp", netip.AddrPortFrom(lab.Origin4.Addr(), sport), twoDCProbeAddr)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}

		// The pool via DC 2 only: every flow lands in DC 2, where the
		// routers say.
		if err := td.SetEgressRoute(2); err != nil {
			t.Fatal(err)
		}
		seen := map[int]bool{}
		for sport := uint16(20000); sport < 20016; sport++ {
			want := path(sport)
			n := send(sport)
			if td.NodeDC(n) != 2 || n != want {
				t.Errorf("pool via dc2: UDP from port %d arrived at node%d (dc%d), routers say node%d; want a dc2 node", sport, n, td.NodeDC(n), want)
			}
			seen[n] = true
		}
		if !seen[3] || !seen[4] {
			t.Errorf("pool via dc2: 16 flows reached nodes %v, want both 3 and 4", seen)
		}

		// Via both: a multipath route, and over many flows every node of
		// both data centers is some flow's destination (the routers'
		// hashes are independent).
		if err := td.SetEgressRoute(1, 2); err != nil {
			t.Fatal(err)
		}
		out, err := td.Inet.Run("ip", "-j", "route", "show", lab.EgressPool4.String())
		if err != nil {
			t.Fatal(err)
		}
		var rs []struct {
			Nexthops []struct {
				Gateway string `json:"gateway"`
			} `json:"nexthops"`
		}
		if err := json.Unmarshal([]byte(out), &rs); err != nil || len(rs) != 1 || len(rs[0].Nexthops) != 2 {
			t.Fatalf("inet route to %v: %v: %s; want one route with 2 nexthops", lab.EgressPool4, err, out)
		}
		count := map[int]int{}
		for sport := uint16(30000); sport < 30064; sport++ {
			count[path(sport)]++
		}
		t.Logf("pool via both: 64 flows by node: %v", count)
		for n := 1; n <= len(td.Nodes); n++ {
			if count[n] == 0 {
				t.Errorf("pool via both: no flow of 64 goes to node%d: %v", n, count)
			}
		}
		for sport := uint16(30000); sport < 30008; sport++ {
			if n, want := send(sport), path(sport); n != want {
				t.Errorf("pool via both: UDP from port %d arrived at node%d, routers say node%d", sport, n, want)
			}
		}
	})

	t.Run("etcd", func(t *testing.T) {
		if _, err := td.StartEtcd(); err != nil {
			t.Fatal(err)
		}
		if out, err := td.Etcdctl("endpoint", "health"); err != nil {
			t.Fatalf("etcdctl endpoint health: %v\n%s", err, out)
		}
		for _, n := range []int{1, 4} {
			if err := td.Nodes[n-1].WaitTCP(netip.AddrPortFrom(lab.EtcdAddr(1), lab.EtcdClientPort).String(), 5*time.Second); err != nil {
				t.Errorf("node%d: %v", n, err)
			}
		}
	})
}

// udpArrival is a datagram a node's listener read.
type udpArrival struct {
	node int
	msg  string
}

// listenOnNodes binds a UDP socket to addr on every node of td (the pool is
// local on all of them) and reports what each reads on the channel until
// the test ends.
func listenOnNodes(t *testing.T, td *lab.TwoDC, addr netip.AddrPort) <-chan udpArrival {
	t.Helper()
	got := make(chan udpArrival, 64)
	for i, ns := range td.Nodes {
		var c *net.UDPConn
		err := ns.Do(func() error {
			var err error
			c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
			return err
		})
		if err != nil {
			t.Fatalf("node%d: listen on %v: %v", i+1, addr, err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			buf := make([]byte, 1500)
			for {
				k, _, err := c.ReadFromUDP(buf)
				if err != nil {
					return
				}
				select {
				case got <- udpArrival{node: i + 1, msg: string(buf[:k])}:
				default: // nobody waits: the test is over
				}
			}
		}()
	}
	return got
}
