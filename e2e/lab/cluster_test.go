package lab

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestClusterAddresses(t *testing.T) {
	for _, tc := range []struct {
		got  any
		want string
	}{
		{NodeUnderlay(2), "198.18.2.1"},
		{NodeUnderlay6(2), "2001:db8:18:2::1"},
		{RouterNode4(3), "198.18.3.254"},
		{RouterNode6(3), "2001:db8:18:3::fe"},
		{NodeEgress4(1), "198.51.100.11"},
		{NodeEgress6(1), "2001:db8:5100::11"},
		{NodeEgress6(9), "2001:db8:5100::19"},
		{EtcdAddr(3), "198.18.13.1"},
		{routerEtcd4(3), "198.18.13.254"},
		{EtcdClientURL(1), "http://198.18.11.1:2379"},
		{EtcdPeerURL(2), "http://198.18.12.1:2380"},
		{RouterNodeIf(2), "n2"},
		{RouterEtcdIf(1), "e1"},
	} {
		if got := fmt.Sprint(tc.got); got != tc.want {
			t.Errorf("got %s, want %s", got, tc.want)
		}
	}
	c := &Cluster{Lab: &Lab{ID: "abcdef"}, Etcd: make([]*NS, 3)}
	if got, want := c.EtcdEndpoints(), "http://198.18.11.1:2379,http://198.18.12.1:2379,http://198.18.13.1:2379"; got != want {
		t.Errorf("EtcdEndpoints() = %s, want %s", got, want)
	}
	// Node, etcd, origin and egress addresses never collide.
	seen := map[netip.Addr]string{Origin4.Addr(): "origin", Origin6.Addr(): "origin6"}
	add := func(a netip.Addr, what string) {
		if prev, ok := seen[a]; ok {
			t.Errorf("%s: %v already used by %s", what, a, prev)
		}
		seen[a] = what
	}
	for n := 1; n <= MaxClusterNodes; n++ {
		add(NodeUnderlay(n), fmt.Sprint("node", n))
		add(NodeUnderlay6(n), fmt.Sprint("node6 ", n))
		add(NodeEgress4(n), fmt.Sprint("egress", n))
		add(NodeEgress6(n), fmt.Sprint("egress6 ", n))
		if !Origins4.Contains(NodeUnderlay(n)) || !ClusterOrigins6.Contains(NodeUnderlay6(n)) ||
			!EgressPool4.Contains(NodeEgress4(n)) || !EgressPool6.Contains(NodeEgress6(n)) {
			t.Errorf("node %d: addresses outside the ranges the origin routes", n)
		}
	}
	for m := 1; m <= MaxEtcdMembers; m++ {
		add(EtcdAddr(m), fmt.Sprint("etcd", m))
	}
}

func TestVIPRouteArgs(t *testing.T) {
	for _, tc := range []struct {
		dst  netip.Addr
		gws  []netip.Addr
		want string
	}{
		{VIP4, []netip.Addr{NodeUnderlay(1)}, "ip route replace 192.0.2.1/32 via 198.18.1.1"},
		{VIP4, []netip.Addr{NodeUnderlay(1), NodeUnderlay(3)},
			"ip route replace 192.0.2.1/32 nexthop via 198.18.1.1 nexthop via 198.18.3.1"},
		{VIP6, []netip.Addr{NodeUnderlay6(2)}, "ip -6 route replace 2001:db8:1::1/128 via 2001:db8:18:2::1"},
		{VIP6, []netip.Addr{NodeUnderlay6(1), NodeUnderlay6(2)},
			"ip -6 route replace 2001:db8:1::1/128 nexthop via 2001:db8:18:1::1 nexthop via 2001:db8:18:2::1"},
	} {
		if got := strings.Join(vipRouteArgs(tc.dst, tc.gws), " "); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}

// flagValues returns every value of flag in args ("--flag value").
func flagValues(args []string, flag string) []string {
	var vs []string
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			vs = append(vs, args[i+1])
		}
	}
	return vs
}

func TestEtcdArgs(t *testing.T) {
	args := etcdArgs("/lab/etcd-2", "wedge-lab-abcdef", 2, 3)
	if args[0] != "etcd" {
		t.Fatalf("argv %q", args)
	}
	for flag, want := range map[string]string{
		"--name":                        "e2",
		"--data-dir":                    "/lab/etcd-2",
		"--listen-client-urls":          "http://198.18.12.1:2379",
		"--advertise-client-urls":       "http://198.18.12.1:2379",
		"--listen-peer-urls":            "http://198.18.12.1:2380",
		"--initial-advertise-peer-urls": "http://198.18.12.1:2380",
		"--initial-cluster":             "e1=http://198.18.11.1:2380,e2=http://198.18.12.1:2380,e3=http://198.18.13.1:2380",
		"--initial-cluster-state":       "new",
		"--initial-cluster-token":       "wedge-lab-abcdef",
	} {
		if got := flagValues(args, flag); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", flag, got, want)
		}
	}
}

func TestParseEtcdLeader(t *testing.T) {
	// etcdctl 3.4 `endpoint status -w json`, trimmed.
	out := `[{"Endpoint":"http://198.18.11.1:2379","Status":{"header":{"cluster_id":17237436991929493444,"member_id":9372538179322589801,"revision":1,"raft_term":2},"version":"3.4.23","leader":10501334649042878790}},` +
		`{"Endpoint":"http://198.18.12.1:2379","Status":{"header":{"cluster_id":17237436991929493444,"member_id":10501334649042878790,"revision":1,"raft_term":2},"version":"3.4.23","leader":10501334649042878790}}]`
	m, err := parseEtcdLeader(out)
	if err != nil || m != 2 {
		t.Errorf("parseEtcdLeader = %d, %v; want 2", m, err)
	}
	if _, err := parseEtcdLeader(`[{"Endpoint":"http://198.18.11.1:2379","Status":{"header":{"member_id":1},"leader":0}}]`); err == nil {
		t.Error("parseEtcdLeader found a leader where none is")
	}
}

func TestClusterWedgedArgs(t *testing.T) {
	c := &Cluster{Lab: &Lab{ID: "abcdef", Dir: "/lab"}, Nodes: make([]*NS, 3), Etcd: make([]*NS, 3)}
	args := c.WedgedArgs(2, "--dc", "other")
	for flag, want := range map[string][]string{
		"--state":        {"/lab/wedged-2"},
		"--listen":       {"51820"},
		"--api":          {DefaultAPI},
		"--endpoint":     {"192.0.2.1:51820", "[2001:db8:1::1]:51820"},
		"--egress":       {"198.51.100.12", "2001:db8:5100::12"},
		"--egress-ports": {"40000-49999"},
		"--dns-upstream": {"198.18.0.53:53"},
		"--allow":        {"198.18.0.0/15", "2001:db8:18::/48"},
		"--name":         {"wlabcdefn2"},
		"--etcd":         {c.EtcdEndpoints()},
		"--node-id":      {"node2"},
		"--dc":           {"lab", "other"}, // extra comes last
		"--underlay":     {"198.18.2.1"},
		"--service-key":  {"/lab/service.key"},
	} {
		if got := flagValues(args, flag); !slices.Equal(got, want) {
			t.Errorf("%s = %q, want %q", flag, got, want)
		}
	}
	for n := 1; n <= MaxClusterNodes; n++ {
		if name := c.NodeIface(n); len(name) > 15 || !validIface.MatchString(name) {
			t.Errorf("NodeIface(%d) = %q: not a valid interface name", n, name)
		}
	}
}

// TestClusterLab builds the cluster lab with three nodes and three etcd
// members (no wedged) and checks its routing and etcd control: the real
// thing, so it needs root and etcd.
func TestClusterLab(t *testing.T) {
	ci := os.Getenv("CI") == "true"
	if testing.Short() && !ci {
		t.Skip("lab: skipped in -short mode")
	}
	if err := Check(append([]string{"ping"}, ToolsEtcd...)...); err != nil {
		if ci {
			t.Fatalf("lab prerequisites missing (CI=true: failing, not skipping): %v", err)
		}
		t.Skipf("lab: skipping: %v", err)
	}
	start := time.Now()
	l, err := New(t)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCluster(l, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("topology built in %v", time.Since(start).Round(time.Millisecond))

	t0 := time.Now()
	if err := c.StartEtcdCluster(); err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd cluster healthy %v after start", time.Since(t0).Round(time.Millisecond))

	// Routing: client ↔ nodes, origin ↔ egress, nodes ↔ etcd, VIP.
	for n := 1; n <= 3; n++ {
		for _, dst := range []netip.Addr{NodeUnderlay(n), NodeUnderlay6(n)} {
			if err := c.Client.Ping(dst, 1); err != nil {
				t.Errorf("client → node %d: %v", n, err)
			}
		}
		for _, dst := range []netip.Addr{NodeEgress4(n), NodeEgress6(n)} {
			if err := c.Origin.Ping(dst, 1); err != nil {
				t.Errorf("origin → egress of node %d: %v", n, err)
			}
		}
		for m := 1; m <= 3; m++ {
			addr := netip.AddrPortFrom(EtcdAddr(m), EtcdClientPort).String()
			if err := c.Nodes[n-1].WaitTCP(addr, 5*time.Second); err != nil {
				t.Errorf("node %d → etcd %d: %v", n, m, err)
			}
		}
	}
	// The origin is reachable only through a node: no way back to the client.
	for _, dst := range []netip.Addr{Origin4.Addr(), Origin6.Addr()} {
		if _, err := c.Client.Run("ping", "-n", "-q", "-c", "1", "-W", "1", dst.String()); err == nil {
			t.Errorf("client → origin %v answered directly; want no route back", dst)
		}
	}
	if out, err := c.Origin.Run("ip", "route", "get", ClientWAN4.Addr().String()); err == nil {
		t.Errorf("origin has a route to the client: %s", out)
	}

	// The VIP follows SetVIPRoute: count echo requests each node received.
	inEchos := func(n int) int {
		out, err := c.Nodes[n-1].Run("cat", "/proc/net/snmp")
		if err != nil {
			t.Fatal(err)
		}
		return snmpValue(t, out, "Icmp", "InEchos")
	}
	for _, target := range []int{1, 2} {
		if err := c.SetVIPRoute(target); err != nil {
			t.Fatal(err)
		}
		before := []int{inEchos(1), inEchos(2), inEchos(3)}
		if err := c.Client.Ping(VIP4, 3); err != nil {
			t.Errorf("client → VIP via node %d: %v", target, err)
		}
		for n := 1; n <= 3; n++ {
			want := 0
			if n == target {
				want = 3
			}
			if got := inEchos(n) - before[n-1]; got != want {
				t.Errorf("VIP via node %d: node %d got %d echo requests, want %d", target, n, got, want)
			}
		}
		if err := c.Client.Ping(VIP6, 1); err != nil {
			t.Errorf("client → VIP6 via node %d: %v", target, err)
		}
	}
	if err := c.SetVIPRoute(1, 2, 3); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{{"ip", "route", "show", VIP4.String()}, {"ip", "-6", "route", "show", VIP6.String()}} {
		out, err := c.Router.Run(argv...)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Count(out, "nexthop via"); got != 3 {
			t.Errorf("%s: %d nexthops, want 3:\n%s", strings.Join(argv, " "), got, out)
		}
	}
	for _, key := range []string{"net.ipv4.fib_multipath_hash_policy", "net.ipv6.fib_multipath_hash_policy"} {
		if out, err := c.Router.Run("sysctl", "-n", key); err != nil || strings.TrimSpace(out) != "1" {
			t.Errorf("router %s = %q (%v), want 1", key, out, err)
		}
	}
	if err := c.Client.Ping(VIP4, 1); err != nil {
		t.Errorf("client → VIP over ECMP: %v", err)
	}

	// etcd: kill the leader, the other two go on; restart it, it rejoins.
	get := func(members []int) string {
		t.Helper()
		out, err := c.Etcdctl(members, "get", "lab-key", "--print-value-only")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	if _, err := c.Etcdctl(nil, "put", "lab-key", "v1"); err != nil {
		t.Fatal(err)
	}
	leader, err := c.EtcdLeader()
	if err != nil {
		t.Fatal(err)
	}
	var rest []int
	for m := 1; m <= 3; m++ {
		if m != leader {
			rest = append(rest, m)
		}
	}
	t1 := time.Now()
	c.KillEtcd(leader)
	if c.EtcdProc(leader) != nil {
		t.Errorf("EtcdProc(%d) after KillEtcd: want nil", leader)
	}
	if err := c.WaitEtcdHealthy(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Etcdctl(rest, "put", "lab-key", "v2"); err != nil {
		t.Fatal(err)
	}
	t.Logf("leader e%d killed: members %v healthy and written to %v later", leader, rest, time.Since(t1).Round(time.Millisecond))
	if got := get(rest); got != "v2" {
		t.Errorf("get through %v = %q, want v2", rest, got)
	}
	if newLeader, err := c.EtcdLeader(); err != nil || newLeader == leader {
		t.Errorf("leader after killing e%d: %d, %v", leader, newLeader, err)
	}

	t2 := time.Now()
	if _, err := c.StartEtcd(leader); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartEtcd(leader); err == nil {
		t.Errorf("StartEtcd(%d) twice: want an error", leader)
	}
	if err := c.WaitEtcdHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := get([]int{leader}); got != "v2" {
		t.Errorf("get through the restarted e%d = %q, want v2", leader, got)
	}
	t.Logf("e%d restarted and healthy with its data in %v", leader, time.Since(t2).Round(time.Millisecond))

	// A graceful stop ends on SIGTERM, well before StopTimeout.
	p := c.EtcdProc(rest[0])
	t3 := time.Now()
	c.StopEtcd(rest[0])
	stopTook := time.Since(t3)
	if !p.Exited() {
		t.Errorf("StopEtcd(%d) returned before etcd exited", rest[0])
	}
	if stopTook >= StopTimeout {
		t.Errorf("StopEtcd(%d) took %v: SIGTERM ignored?", rest[0], stopTook)
	}
	c.StopEtcd(rest[0]) // no-op
	if _, err := c.StartEtcd(rest[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitEtcdHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("e%d stopped in %v; whole test %v", rest[0], stopTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// snmpValue reads one counter of /proc/net/snmp: a header line and a value
// line per protocol.
func snmpValue(t *testing.T, snmp, proto, field string) int {
	t.Helper()
	lines := strings.Split(snmp, "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], proto+":") || !strings.HasPrefix(lines[i+1], proto+":") {
			continue
		}
		names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j, name := range names {
			if name == field && j < len(vals) {
				v, err := strconv.Atoi(vals[j])
				if err != nil {
					t.Fatalf("snmp %s %s: %v", proto, field, err)
				}
				return v
			}
		}
	}
	t.Fatalf("snmp: no %s %s in\n%s", proto, field, snmp)
	return 0
}
