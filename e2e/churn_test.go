package e2e

// Churn (issue 20's acceptance test): a data center that keeps changing
// under a dozen busy clients. Three nodes with the XDP front (a fourth
// joins), a 3-member etcd, and 12 clients of three kinds: wedge connect
// (stamped, SOCKS), standard wg-quick (each in a namespace of its own) and
// Xray-core's WireGuard outbound with `reserved` (a third-party stamped
// client). Each keeps an interactive echo session (512 B every 20 ms) for
// the whole run, two also download. Over the run, scheduled in proportion
// to its length: node4 joins, node3 is drained and undrained, node2 is
// killed with SIGKILL and restarted, the etcd leader is killed and
// restarted, clients connect late and rebind (a new source port) again and
// again. The test reports each client's worst stall.
//
//   client ns: wedge connect ×6 (SOCKS :1080+i), xray ×2 (SOCKS :1180+i),
//   │          echo sessions and downloads run in the test process
//   │          (through the SOCKS proxies, or in the wg-quick namespaces)
//   c1..c4 ns: wg-quick (userspace WireGuard), one each
//   │
//   router (ECMP over the VIP, L4 hash) ── node1..node4 (wedged --xdp)
//     │                                      node4 joins, node2 dies
//     ├── origin (echo :7, HTTP :80; 20 Mbit/s out)
//     └── etcd1..3 (the leader dies)
//
// Targets (the issue's): no session broken; clients of nodes that stayed
// up: worst stall ≤ 0.5 s; clients of the killed node: back within the
// lease TTL + 2 s. A session's stall is the longest wait between two
// echoes or for one echo (its round trip: a session falling behind,
// echoes late but regular, stalls too).
//
// The echo sessions are kept by the test process itself rather than by
// `originsrv echo`, because a client of the killed node loses its inner
// TCP connections: wedged terminates every inner flow on the owner node,
// and that state died with it. What can come back within the bound is
// the client, not that connection (which no node can continue, and whose
// TCP is deep in retransmission backoff by then). So each session
// behaves as an interactive application does (a game, mosh, ssh with
// keepalives): when no echo came back for churnReconnectAfter, or the
// connection failed, it opens new connections beside the old one (one
// every churnProbeEvery, each given churnProbeTimeout) and moves to the
// first that echoes. Its stall is then the time from the last echo on
// the old connection to the first on the new one, and the move counts as
// a break. A client of a node that stayed up must have no break; one of
// the killed node has one.
//
// Rebinding: wedge connect and Xray share the client namespace; their
// NAT rebinding is a stateless rewrite of their WireGuard source port on
// the router (lab.Cluster.SetClientPortMaps; wedge connect gets a fixed
// ListenPort, Xray's port is read with ss). wg-quick's is `wg set IFACE
// listen-port` in its namespace (wireguard-go rebinds its socket, as a
// roaming client's would). Each new port is one the router hashes to
// another node than the old one (lab.Cluster.ECMPNode, for IPv4; wedge
// connect may settle on the VIP's IPv6 address, where the same change
// moves it by chance). Every other client rebinds in each round.
//
// The run lasts WEDGE_CHURN_DURATION (default churnDefaultDuration, the
// short form .ci/run runs; the full run is
// WEDGE_CHURN_DURATION=3m, in which every session also rekeys). node2
// restarts WEDGE_CHURN_RESTART_AFTER after its kill (default 10 s: after
// its lease ran out, so its clients are in its heir's hands by then; 1s
// restarts it within its lease).

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"golang.org/x/net/proxy"

	"github.com/wedge-edge/wedge/e2e/lab"
	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/lb"
)

const (
	// churnDefaultDuration is the short form's length (CI); the issue's
	// full run is 3 minutes.
	churnDefaultDuration = time.Minute
	// churnRestartAfter is how long node2 stays dead by default.
	churnRestartAfter = 10 * time.Second

	// churnStayBound: the worst stall a client of a node that stayed up
	// may see (the 0.5 s).
	churnStayBound = 500 * time.Millisecond
	// churnKilledBound: the worst stall of a client of the killed node,
	// from its last echo before the kill to its first one after (the
	// issue's "back within the lease TTL + 2 s"; wedged's --lease-ttl
	// is left at its default in the lab, clusterTTL).
	churnKilledBound = clusterTTL + 2*time.Second
	// churnDownloadStallBound: the worst stall of a download of a client
	// of a node that stayed up (checkUndisturbed's bound; the issue
	// bounds only the interactive sessions).
	churnDownloadStallBound = 2 * time.Second

	churnEchoSize  = 512
	churnEchoEvery = 20 * time.Millisecond
	// churnReconnectAfter: an echo session that got no echo for this
	// long tries new connections beside its own (see above).
	churnReconnectAfter = time.Second
	churnProbeTimeout   = 3 * time.Second
	churnProbeEvery     = 250 * time.Millisecond
	churnProbesMax      = 12 // in flight at once
	// churnReportGap: stalls at least this long are listed per client.
	churnReportGap = 200 * time.Millisecond

	// churnOriginRate (Mbit/s) limits what the origin sends, so that the
	// two downloads take seconds and leave the 2-core machine to the
	// rest; churnChunk is one download's size (about 7 s at half of it).
	churnOriginRate = 20
	churnChunk      = 8 << 20

	// Ports in the client namespace: wedge connect's ListenPorts and the
	// ports the rebinding maps them to, both kept out of the kernel's
	// ephemeral range there.
	churnListenPort0 = 51100
	churnMappedPort0 = 52000
	churnReserved    = "51100-51199,52000-52999"
)

const (
	churnVictim  = 2 // killed and restarted
	churnDrained = 3 // drained and undrained
	churnJoiner  = 4 // joins
)

// Client kinds.
const (
	churnConnect = "wedge-connect"
	churnWGQuick = "wg-quick"
	churnXray    = "xray"
)

// churnSpec is one client: its kind, the node the three-node table gives
// it (for the clients there from the start: each node gets some of each
// kind, node2 at least one of each), when it connects (a fraction of the
// run; 0: before it starts) and whether it also downloads.
type churnSpec struct {
	name     string
	kind     string
	owner    int
	at       float64
	download bool
}

// churnClients are the 12 clients, in the short form as in the full run:
// with uninstrumented binaries the whole lab keeps about one of the
// machine's two cores busy.
var churnClients = []churnSpec{
	{"wc1", churnConnect, 1, 0, true},
	{"wc2", churnConnect, 2, 0, false},
	{"wc3", churnConnect, 3, 0, false},
	{"wq1", churnWGQuick, 2, 0, true},
	{"wq2", churnWGQuick, 3, 0, false},
	{"wq3", churnWGQuick, 1, 0, false},
	{"x1", churnXray, 2, 0, false},
	{"x2", churnXray, 1, 0, false},
	{"wc4", churnConnect, 0, 0.20, false}, // after node4 joined
	{"wc5", churnConnect, 0, 0.34, false}, // while node3 drains
	{"wq4", churnWGQuick, 0, 0.72, false}, // after node2 came back
	{"wc6", churnConnect, 0, 0.80, false}, // while an etcd member is down
}

// churnClient is a client of the run.
type churnClient struct {
	churnSpec
	conf  string
	cid   clientid.ID
	ns    *lab.NS // where it runs
	socks string  // its SOCKS5 proxy (host:port), "" for wg-quick
	probe *socksClient
	wq    *lab.WGQuick
	xray  *lab.Proc

	// port is its WireGuard socket's port as the client sees it, to is
	// the port it leaves with now (0: port; wedge connect and Xray).
	port, to uint16
	rebinds  int

	nodeStart, nodeKill, nodeEnd int // who served it (0: unknown)
	began                        time.Time
	echo                         *churnEcho
	dl                           *churnDownload
}

func TestClusterChurn(t *testing.T) {
	dur := churnDefaultDuration
	if s := os.Getenv("WEDGE_CHURN_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 40*time.Second {
			t.Fatalf("WEDGE_CHURN_DURATION=%q: want a duration of at least 40s", s)
		}
		dur = d
	}
	restartAfter := churnRestartAfter
	if s := os.Getenv("WEDGE_CHURN_RESTART_AFTER"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || d > dur/5 {
			t.Fatalf("WEDGE_CHURN_RESTART_AFTER=%q: want a duration from 0 to a fifth of the run (%v)", s, dur/5)
		}
		restartAfter = d
	}
	needLab(t, slices.Concat(lab.ToolsXray, lab.ToolsHome, []string{"tc", "nstat"})...)
	c, bins, srv := newCluster(t, 4, 3)
	// The bounds are about latency on a 2-core machine that runs the
	// whole data center: measure uninstrumented nodes and clients even
	// when the suite builds with -race (.ci/run), as the flood and budget
	// tests do. With -race every stall doubled or worse (0.8 to 2.9 s for
	// clients of nodes that stayed up) and a node took 6 to 8 s to start;
	// the other cluster tests run the same paths (drain, join, death,
	// restart, cold start) under -race.
	plain, err := lab.BuildPlain(binDir)
	if err != nil {
		t.Fatal(err)
	}
	bins.Wedged, bins.Wedge = plain.Wedged, plain.Wedge
	if _, err := c.Origin.Run("tc", "qdisc", "add", "dev", lab.OriginIf, "root", "tbf",
		"rate", fmt.Sprintf("%dmbit", churnOriginRate), "burst", "64kb", "latency", "100ms"); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.Sysctl("net.ipv4.ip_local_reserved_ports", churnReserved); err != nil {
		t.Fatal(err)
	}
	// Echo sessions and downloads stop with the test, whatever ends it,
	// before the lab is torn down (cleanups run last registered first).
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	t.Cleanup(func() { cancel(); running.Wait() })

	nodes := make([]*lab.Wedged, 4)
	copy(nodes, startFrontNodesN(t, c, bins, true, 3))
	live := map[int]bool{1: true, 2: true, 3: true}
	setVIP := func() {
		t.Helper()
		var up []int
		for n := 1; n <= 4; n++ {
			if live[n] {
				up = append(up, n)
			}
		}
		if err := c.SetVIPRoute(up...); err != nil {
			t.Fatal(err)
		}
	}
	setVIP()
	three, err := lb.NewTable(nodeIDs(1, 2, 3), lb.XDPTableSize)
	if err != nil {
		t.Fatal(err)
	}

	// Register every client through node1 (which never goes away), each
	// of those there from the start with the owner it is planned to have.
	regStart := time.Now()
	var cls []*churnClient
	wqNS := 0
	for i, spec := range churnClients {
		cl := &churnClient{churnSpec: spec}
		for try := 0; ; try++ {
			if try == 40 {
				t.Fatalf("%s: 40 registrations and none for node%d", cl.name, cl.owner)
			}
			conf, err := nodes[0].Register(bins.Wedge)
			if err != nil {
				t.Fatal(err)
			}
			if cl.cid, err = clientid.Parse(configMeta(conf, "ClientID")); err != nil {
				t.Fatal(err)
			}
			cl.conf = conf
			if o, _ := three.Owner(uint32(cl.cid)); cl.owner == 0 || o == fmt.Sprintf("node%d", cl.owner) {
				break
			}
		}
		switch cl.kind {
		case churnConnect:
			cl.ns, cl.port = c.Client, uint16(churnListenPort0+i)
			cl.socks = fmt.Sprintf("127.0.0.1:%d", 1080+i)
			cl.conf = strings.Replace(cl.conf, "[Interface]\n", fmt.Sprintf("[Interface]\nListenPort = %d\n", cl.port), 1)
		case churnWGQuick:
			wqNS++
			if cl.ns, err = c.AddClient(wqNS); err != nil {
				t.Fatal(err)
			}
			// Its namespace has IPv4 only.
			cl.conf = regexp.MustCompile(`(?m)^Endpoint = .*$`).ReplaceAllString(cl.conf,
				"Endpoint = "+netip.AddrPortFrom(lab.VIP4, 51820).String())
		case churnXray:
			cl.ns, cl.socks = c.Client, fmt.Sprintf("127.0.0.1:%d", 1180+i)
		}
		cls = append(cls, cl)
	}
	t.Logf("%d clients registered in %v", len(cls), time.Since(regStart).Round(time.Millisecond))

	// up starts a client's software (no WireGuard message yet for
	// wedge connect and Xray: they handshake on their first packet).
	up := func(cl *churnClient) {
		t.Helper()
		switch cl.kind {
		case churnConnect:
			path := fmt.Sprintf("%s/churn-%s.conf", c.Lab.Dir, cl.name)
			if err := writeFile(path, cl.conf); err != nil {
				t.Fatal(err)
			}
			cl.probe = startSocksClientAt(t, cl.ns, bins.Wedge, srv, path, cl.socks)
		case churnWGQuick:
			wq, err := cl.ns.WGQuickUp(cl.conf)
			if err != nil {
				t.Fatal(err)
			}
			cl.wq, cl.probe = wq, &socksClient{ns: cl.ns, probe: srv}
		case churnXray:
			p, err := cl.ns.StartXray("xray-"+cl.name, xrayConfig(t, cl.conf, cl.socks))
			if err != nil {
				t.Fatal(err)
			}
			cl.xray, cl.probe = p, &socksClient{ns: cl.ns, probe: srv, proxy: "socks5://" + cl.socks}
		}
	}
	var end time.Time
	// begin starts a client's echo session (and download) until end.
	begin := func(cl *churnClient) {
		cl.began = time.Now()
		cl.echo = &churnEcho{dial: cl.dialer()}
		running.Go(func() { cl.echo.keep(ctx, end) })
		if cl.download {
			cl.dl = &churnDownload{}
			running.Go(func() { cl.dl.run(ctx, cl.probe, end) })
		}
	}

	var initial []*churnClient
	for _, cl := range cls {
		if cl.at == 0 {
			up(cl)
			initial = append(initial, cl)
		}
	}
	for _, cl := range initial {
		cl.probe.waitUp(t, 20*time.Second)
	}
	for _, cl := range initial {
		if cl.nodeStart = servedBy(t, cl.probe); cl.nodeStart != cl.owner {
			t.Errorf("%s (%s, ClientID %s) is served by node%d, want its owner node%d", cl.name, cl.kind, cl.cid, cl.nodeStart, cl.owner)
		}
	}

	t0 := time.Now()
	end = t0.Add(dur)
	at := func(f float64) time.Duration { return time.Duration(f * float64(dur)).Round(100 * time.Millisecond) }
	for _, cl := range initial {
		begin(cl)
	}
	// The control: the same session without a tunnel (inside the
	// origin's namespace), so that a stall of the whole shared machine
	// shows as one.
	control := &churnEcho{dial: func(ctx context.Context) (net.Conn, error) {
		return churnDialer{c.Origin}.DialContext(ctx, "tcp", netip.AddrPortFrom(lab.Origin4.Addr(), lab.EchoPort).String())
	}}
	running.Go(func() { control.keep(ctx, end) })
	t.Logf("churn starts: %d clients in echo sessions for %v", len(initial), dur)

	// The events, at fractions of the run.
	type event struct {
		at   time.Duration
		name string
		do   func() string // what happened, for the log
	}
	var events []event
	var killAt, leaseGone time.Time
	leaseDone := make(chan struct{})

	// Rebinding: every round moves every other client that is up to a
	// new source port the router hashes to another node.
	nextMapped, nextWG := uint16(churnMappedPort0), uint16(53000)
	ecmpOf := func(a netip.Addr, p uint16) int {
		n, err := c.ECMPNode(netip.AddrPortFrom(a, p))
		if err != nil {
			return 0
		}
		return n
	}
	newPort := func(a netip.Addr, old uint16, next *uint16) uint16 {
		was := ecmpOf(a, old)
		for range 50 {
			p := *next
			*next++
			if was == 0 || ecmpOf(a, p) != was {
				return p
			}
		}
		p := *next
		*next++
		return p
	}
	rebind := func(round int) string {
		var moved []string
		var maps []lab.PortMap
		for i, cl := range cls {
			if cl.echo == nil || !cl.echo.connectedYet() {
				if cl.to != 0 {
					maps = append(maps, lab.PortMap{From: cl.port, To: cl.to})
				}
				continue
			}
			due := i%2 == round%2
			switch cl.kind {
			case churnConnect, churnXray:
				if cl.kind == churnXray && cl.port == 0 {
					cl.port = xrayPort(cl)
				}
				if cl.port == 0 {
					break
				}
				if due {
					old := cl.to
					if old == 0 {
						old = cl.port
					}
					cl.to = newPort(lab.ClientWAN4.Addr(), old, &nextMapped)
					cl.rebinds++
					moved = append(moved, fmt.Sprintf("%s %d→%d", cl.name, old, cl.to))
				}
				if cl.to != 0 {
					maps = append(maps, lab.PortMap{From: cl.port, To: cl.to})
				}
			case churnWGQuick:
				if !due {
					break
				}
				if cl.port == 0 {
					out, err := cl.ns.Run("wg", "show", cl.wq.Iface, "listen-port")
					if err != nil {
						t.Errorf("%s: %v", cl.name, err)
						break
					}
					p, _ := strconv.Atoi(strings.TrimSpace(out))
					cl.port = uint16(p)
				}
				a, _ := lab.ClusterClientAddr(churnClientIndex(cl.ns))
				p := newPort(a.Addr(), cl.port, &nextWG)
				if _, err := cl.ns.Run("wg", "set", cl.wq.Iface, "listen-port", fmt.Sprint(p)); err != nil {
					t.Errorf("%s: %v", cl.name, err)
					break
				}
				moved = append(moved, fmt.Sprintf("%s %d→%d", cl.name, cl.port, p))
				cl.port = p
				cl.rebinds++
			}
		}
		if err := c.SetClientPortMaps(51820, maps); err != nil {
			t.Errorf("rebinding: %v", err)
		}
		return strings.Join(moved, ", ")
	}
	for i, f := range []float64{0.08, 0.16, 0.30, 0.46, 0.58, 0.66, 0.78, 0.90} {
		events = append(events, event{at(f), fmt.Sprintf("rebind %d", i+1), func() string { return rebind(i) }})
	}
	for _, cl := range cls {
		if cl.at > 0 {
			events = append(events, event{at(cl.at), cl.name + " connects", func() string {
				up(cl)
				begin(cl)
				return cl.kind
			}})
		}
	}
	drainID := fmt.Sprintf("node%d", churnDrained)
	events = append(events,
		event{at(0.12), "node4 joins", func() string {
			start := time.Now()
			nodes[churnJoiner-1] = startFrontNode(t, c, bins, true, churnJoiner)
			live[churnJoiner] = true
			setVIP()
			return fmt.Sprintf("wedged up in %v, VIP routed to it", time.Since(start).Round(time.Millisecond))
		}},
		event{at(0.26), "drain node3", func() string {
			if out, err := nodes[0].NS.Run(bins.Wedge, "drain", "--api", nodes[0].API, drainID); err != nil {
				t.Errorf("wedge drain: %v\n%s", err, out)
				return "failed"
			}
			took := churnWait(10*time.Second, func() bool {
				m, ok := churnMember(nodes[0], drainID)
				return ok && m.State == "draining" && m.Pinned
			})
			if strings.HasPrefix(took, "NOT") {
				t.Errorf("node3 not draining with its pins published %s after wedge drain", took)
			}
			return fmt.Sprintf("draining with its pins published after %v", took)
		}},
		event{at(0.40), "undrain node3", func() string {
			if out, err := nodes[0].NS.Run(bins.Wedge, "drain", "--undo", "--api", nodes[0].API, drainID); err != nil {
				t.Errorf("wedge drain --undo: %v\n%s", err, out)
				return "failed"
			}
			took := churnWait(10*time.Second, func() bool {
				m, ok := churnMember(nodes[0], drainID)
				return ok && m.State == "active" && !m.Pinned
			})
			if strings.HasPrefix(took, "NOT") {
				t.Errorf("node3 not active again %s after wedge drain --undo", took)
			}
			return fmt.Sprintf("active again after %v", took)
		}},
		event{at(0.50), "kill -9 node2", func() string {
			// Who serves each client right before.
			var wg sync.WaitGroup
			for _, cl := range cls {
				if cl.echo != nil && cl.echo.connectedYet() {
					wg.Go(func() {
						var err error
						if cl.nodeKill, err = churnNode(cl.probe); err != nil {
							t.Logf("%s: who serves it before the kill: %v", cl.name, err)
						}
					})
				}
			}
			wg.Wait()
			nodes[churnVictim-1].Proc.Kill()
			killAt = time.Now()
			// The router withdraws the route at once, as BFD would.
			live[churnVictim] = false
			setVIP()
			go func() { // when node1 no longer lists it
				defer close(leaseDone)
				for time.Since(killAt) < restartAfter {
					if m, err := churnMembers(nodes[0]); err == nil && !strings.Contains(m, "node2:") {
						leaseGone = time.Now()
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
			}()
			var on []string
			for _, cl := range cls {
				if cl.nodeKill == churnVictim {
					on = append(on, cl.name)
				}
			}
			return "its clients: " + strings.Join(on, ", ")
		}},
		event{at(0.50) + restartAfter, "restart node2", func() string {
			start := time.Now()
			nodes[churnVictim-1] = startFrontNode(t, c, bins, true, churnVictim)
			live[churnVictim] = true
			setVIP()
			return fmt.Sprintf("wedged up in %v (same state and node id), VIP routed to it", time.Since(start).Round(time.Millisecond))
		}},
	)
	var etcdKilled int
	events = append(events,
		event{at(0.74), "kill -9 the etcd leader", func() string {
			m, err := c.EtcdLeader()
			if err != nil {
				t.Errorf("etcd leader: %v", err)
				return "failed"
			}
			c.KillEtcd(m)
			etcdKilled = m
			return fmt.Sprintf("member %d", m)
		}},
		event{at(0.86), "restart the etcd member", func() string {
			if etcdKilled == 0 {
				return "none killed"
			}
			start := time.Now()
			if _, err := c.StartEtcd(etcdKilled); err != nil {
				t.Errorf("etcd member %d: %v", etcdKilled, err)
				return "failed"
			}
			if err := c.WaitEtcdHealthy(30 * time.Second); err != nil {
				t.Errorf("etcd after member %d's restart: %v", etcdKilled, err)
				return "failed"
			}
			return fmt.Sprintf("member %d, healthy after %v", etcdKilled, time.Since(start).Round(time.Millisecond))
		}},
	)
	sort.SliceStable(events, func(i, j int) bool { return events[i].at < events[j].at })

	type done struct {
		at   time.Duration
		name string
	}
	var happened []done
	for _, ev := range events {
		time.Sleep(time.Until(t0.Add(ev.at)))
		if time.Until(end) < 5*time.Second {
			// Events that blocked (a node's start, etcd's health) ran
			// over: the machine is overloaded, and the stalls say so.
			t.Logf("t+%5.1fs %s: skipped, the run ends in %v", time.Since(t0).Seconds(), ev.name, time.Until(end).Round(time.Millisecond))
			continue
		}
		start := time.Now()
		what := ev.do()
		happened = append(happened, done{start.Sub(t0), ev.name})
		t.Logf("t+%5.1fs %s: %s", start.Sub(t0).Seconds(), ev.name, what)
	}
	time.Sleep(time.Until(end))
	running.Wait()
	if !killAt.IsZero() {
		<-leaseDone
		if leaseGone.IsZero() {
			t.Logf("node1 listed node2 until its restart %v after the kill", restartAfter)
		} else {
			t.Logf("node2's lease gone from node1's view %v after the kill", leaseGone.Sub(killAt).Round(time.Millisecond))
		}
	}

	// Who serves each client at the end (every one must work).
	var wg sync.WaitGroup
	for _, cl := range cls {
		if cl.probe == nil {
			continue
		}
		wg.Go(func() {
			var err error
			if cl.nodeEnd, err = churnNode(cl.probe); err != nil {
				t.Errorf("%s: no path through it at the end: %v", cl.name, err)
			}
		})
	}
	wg.Wait()
	for n, w := range nodes {
		if w == nil || !live[n+1] {
			continue
		}
		x := xdpCounters(t, w)
		t.Logf("node%d: xdp forwarded %d, index_hit %d, index_heir %d, pin_hit %d, flow_hit %d; handshakes started %d",
			n+1, x["forwarded"], x["index_hit"], x["index_heir"], x["pin_hit"], x["flow_hit"], status(t, w).Bind.HandshakesStarted)
	}

	// The lab's rebinding must not corrupt what it rewrites (see
	// lab.Cluster.SetClientPortMaps): a UDP checksum error on a node
	// means it did, and the stalls are the lab's.
	for n, ns := range c.Nodes {
		out, err := ns.Run("nstat", "-az", "UdpInCsumErrors", "Udp6InCsumErrors")
		if err != nil {
			t.Errorf("node%d: %v", n+1, err)
			continue
		}
		for line := range strings.SplitSeq(out, "\n") {
			if f := strings.Fields(line); len(f) >= 2 && strings.HasSuffix(f[0], "CsumErrors") && f[1] != "0" {
				t.Errorf("node%d received %s UDP datagrams with a bad checksum (%s): the lab corrupted packets", n+1, f[1], f[0])
			}
		}
	}
	// The table, and the targets.
	since := func(tm time.Time) string {
		if tm.IsZero() {
			return "-"
		}
		d := tm.Sub(t0)
		after := "start"
		for _, e := range happened {
			if e.at <= d {
				after = fmt.Sprintf("%s +%.1fs", e.name, (d - e.at).Seconds())
			}
		}
		return fmt.Sprintf("t+%.1fs (%s)", d.Seconds(), after)
	}
	node := func(n int) string {
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("n%d", n)
	}
	var tab strings.Builder
	tw := tabwriter.NewWriter(&tab, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "client\tkind\tnode start/kill/end\tup after\tworst stall\twhen\tgap\tround trip\tbreaks\tsent/echoed\trebinds\tdownload\tlongest gaps ≥ 200 ms")
	for _, cl := range cls {
		e := cl.echo
		if e == nil {
			fmt.Fprintf(tw, "%s\t%s\tnever started\n", cl.name, cl.kind)
			continue
		}
		e.mu.Lock()
		stalls := slices.Clone(e.stalls)
		sort.SliceStable(stalls, func(i, j int) bool { return stalls[i].d > stalls[j].d })
		var gaps []string
		for i, s := range stalls {
			if i == 5 {
				gaps = append(gaps, fmt.Sprintf("(%d more)", len(stalls)-i))
				break
			}
			gaps = append(gaps, fmt.Sprintf("%dms@%.1fs", s.d.Milliseconds(), s.at.Sub(t0).Seconds()))
		}
		dl := "-"
		if cl.dl != nil {
			cl.dl.mu.Lock()
			dl = fmt.Sprintf("%d MiB in %d, %d failed, worst %d ms", cl.dl.bytes>>20, cl.dl.chunks, cl.dl.failed, cl.dl.maxGap.Milliseconds())
			cl.dl.mu.Unlock()
		}
		worst, at := e.worst()
		upAfter := "never"
		if !e.first.IsZero() {
			upAfter = fmt.Sprintf("%.1fs", e.first.Sub(cl.began).Seconds())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s/%s/%s\t%s\t%d ms\t%s\t%d ms\t%d ms\t%d\t%d/%d\t%d\t%s\t%s\n",
			cl.name, cl.kind, node(cl.nodeStart), node(cl.nodeKill), node(cl.nodeEnd), upAfter,
			worst.Milliseconds(), since(at), e.maxGap.Milliseconds(), e.maxRTT.Milliseconds(),
			len(e.breaks), e.sent, e.echoed, cl.rebinds, dl, strings.Join(gaps, " "))
		e.mu.Unlock()
	}
	control.mu.Lock()
	cWorst, cAt := control.worst()
	fmt.Fprintf(tw, "control\tno tunnel\t\t\t%d ms\t%s\t%d ms\t%d ms\t%d\t%d/%d\n",
		cWorst.Milliseconds(), since(cAt), control.maxGap.Milliseconds(), control.maxRTT.Milliseconds(),
		len(control.breaks), control.sent, control.echoed)
	control.mu.Unlock()
	tw.Flush()
	t.Logf("worst stalls (bounds: %v for clients of nodes that stayed up, %v for node2's at the kill):\n%s", churnStayBound, churnKilledBound, tab.String())

	// A failure says so when the control stalled too: the machine (2
	// cores, shared with whatever else runs) did, not only wedge.
	machine := ""
	if cWorst > churnStayBound/2 {
		machine = fmt.Sprintf(" (the control, without a tunnel, stalled %v at %s: the machine was overloaded)", cWorst.Round(time.Millisecond), since(cAt))
	}
	// The bound for clients of nodes that stayed up allows what the
	// machine itself stalled (the control's worst, which on a quiet
	// machine is a few ms): a stall wedge causes still fails, a moment
	// when the shared cores stopped everything does not.
	stayBound := churnStayBound + cWorst
	if stayBound != churnStayBound {
		t.Logf("bound for clients of nodes that stayed up: %v + the control's %v = %v", churnStayBound, cWorst.Round(time.Millisecond), stayBound.Round(time.Millisecond))
	}
	victims := 0
	for _, cl := range cls {
		e := cl.echo
		if e == nil {
			continue
		}
		e.mu.Lock()
		killed := cl.nodeKill == churnVictim
		if killed {
			victims++
		}
		worst, at := e.worst()
		switch {
		case e.err != "":
			t.Errorf("%s (%s): %s", cl.name, cl.kind, e.err)
		case killed && worst > churnKilledBound:
			t.Errorf("%s (%s), a client of the killed node2: worst stall %v at %s, want ≤ %v; breaks: %v%s",
				cl.name, cl.kind, worst.Round(time.Millisecond), since(at), churnKilledBound, e.breaks, machine)
		case !killed && (len(e.breaks) > 0 || worst > stayBound):
			t.Errorf("%s (%s), on a node that stayed up: worst stall %v at %s, want ≤ %v; breaks (want none): %v%s",
				cl.name, cl.kind, worst.Round(time.Millisecond), since(at), stayBound.Round(time.Millisecond), e.breaks, machine)
		}
		if killed && len(e.breaks) > 0 {
			t.Logf("%s (node2's): %v", cl.name, e.breaks)
		}
		e.mu.Unlock()
		if d := cl.dl; d != nil && !killed {
			d.mu.Lock()
			if d.failed > 0 || d.chunks == 0 {
				t.Errorf("%s's download: %d of %d chunks failed: %v", cl.name, d.failed, d.chunks, d.errs)
			} else if d.maxGap > churnDownloadStallBound {
				t.Errorf("%s's download stalled %v, want ≤ %v", cl.name, d.maxGap, churnDownloadStallBound)
			}
			d.mu.Unlock()
		}
	}
	if victims == 0 {
		t.Errorf("no client was on node2 when it was killed")
	}
}

// dialer returns how the client's echo sessions connect to the origin's
// echo server: through its SOCKS5 proxy, or straight from its namespace
// (wg-quick routes everything into the tunnel).
func (cl *churnClient) dialer() func(context.Context) (net.Conn, error) {
	echo := netip.AddrPortFrom(lab.Origin4.Addr(), lab.EchoPort).String()
	nd := churnDialer{cl.ns}
	if cl.socks == "" {
		return func(ctx context.Context) (net.Conn, error) { return nd.DialContext(ctx, "tcp", echo) }
	}
	return func(ctx context.Context) (net.Conn, error) {
		d, err := proxy.SOCKS5("tcp", cl.socks, nil, nd)
		if err != nil {
			return nil, err
		}
		return d.(proxy.ContextDialer).DialContext(ctx, "tcp", echo)
	}
}

// churnDialer dials from inside a namespace.
type churnDialer struct{ ns *lab.NS }

func (d churnDialer) Dial(network, addr string) (net.Conn, error) {
	return d.ns.DialContext(context.Background(), network, addr)
}

func (d churnDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return d.ns.DialContext(ctx, network, addr)
}

// churnClientIndex is n for the extra client namespace "cN".
func churnClientIndex(ns *lab.NS) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(ns.Short, "c"))
	return n
}

// xrayPort is the local port of Xray's WireGuard socket (ss), 0 if not
// found.
func xrayPort(cl *churnClient) uint16 {
	out, err := cl.ns.Run("ss", "-Hunap")
	if err != nil {
		return 0
	}
	pid := fmt.Sprintf("pid=%d,", cl.xray.Pid())
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		if !strings.Contains(line, pid) || len(f) < 5 || strings.HasPrefix(f[3], "127.0.0.1:") {
			continue
		}
		i := strings.LastIndexByte(f[3], ':')
		if p, err := strconv.Atoi(f[3][i+1:]); err == nil && p != 0 {
			return uint16(p)
		}
	}
	return 0
}

// churnNode is the node whose egress the origin sees for the client's
// requests.
func churnNode(sc *socksClient) (int, error) {
	seen, err := sc.remoteAddr(lab.Origin4.Addr(), 3*time.Second)
	if err != nil {
		return 0, err
	}
	if n := egressNode(seen.Addr()); n != 0 {
		return n, nil
	}
	return 0, fmt.Errorf("the origin saw %v, no node's egress", seen)
}

// churnMembers is "node1:active,node2:..." as w sees the cluster; unlike
// liveNodes it returns errors (a node may be down).
func churnMembers(w *lab.Wedged) (string, error) {
	resp, err := w.HTTPClient().Get(w.API + "/v1/status")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var v clusterView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return "", err
	}
	if v.Cluster == nil {
		return "", fmt.Errorf("no cluster section")
	}
	var s []string
	for _, m := range v.Cluster.Nodes {
		s = append(s, m.ID+":"+m.State)
	}
	return strings.Join(s, ","), nil
}

// churnMember is node id as w sees it.
func churnMember(w *lab.Wedged, id string) (clusterMember, bool) {
	resp, err := w.HTTPClient().Get(w.API + "/v1/status")
	if err != nil {
		return clusterMember{}, false
	}
	defer resp.Body.Close()
	var v clusterView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || v.Cluster == nil {
		return clusterMember{}, false
	}
	for _, m := range v.Cluster.Nodes {
		if m.ID == id {
			return m, true
		}
	}
	return clusterMember{}, false
}

// churnWait polls cond every 50 ms for up to limit and says how long it
// took, or that it did not happen.
func churnWait(limit time.Duration, cond func() bool) string {
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			return fmt.Sprintf("NOT within %v", limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start).Round(time.Millisecond).String()
}

// churnEcho is one client's interactive session over the whole run: a
// numbered message of churnEchoSize bytes every churnEchoEvery, echoes
// read back in order, and new connections when one fails or stalls (see
// the top of the file).
type churnEcho struct {
	dial func(context.Context) (net.Conn, error)

	mu           sync.Mutex
	first, last  time.Time // first and latest echo
	sent, echoed int
	maxGap       time.Duration
	gapAt        time.Time // when the worst gap began
	maxRTT       time.Duration
	rttAt        time.Time // when the message that waited longest was sent
	stalls       []churnStall
	breaks       []string
	err          string // it never connected, or ended without one
}

type churnStall struct {
	at time.Time
	d  time.Duration
}

func (e *churnEcho) connectedYet() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.first.IsZero()
}

// gotEcho records the echo, arrived at tm, of a message sent at sent.
func (e *churnEcho) gotEcho(sent, tm time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.echoed++
	e.rtt(sent, tm)
	if e.first.IsZero() {
		e.first = tm
	} else {
		e.gap(tm)
	}
	e.last = tm
}

// gap records the wait from the last echo to tm. e.mu is held.
func (e *churnEcho) gap(tm time.Time) {
	g := tm.Sub(e.last)
	if g > e.maxGap {
		e.maxGap, e.gapAt = g, e.last
	}
	if g >= churnReportGap {
		e.stalls = append(e.stalls, churnStall{e.last, g})
	}
}

// rtt records the wait of a message sent at sent until tm. e.mu is held.
func (e *churnEcho) rtt(sent, tm time.Time) {
	if d := tm.Sub(sent); d > e.maxRTT {
		e.maxRTT, e.rttAt = d, sent
	}
}

// worst is the session's worst stall: the longest wait between two
// echoes, or for one echo.
func (e *churnEcho) worst() (time.Duration, time.Time) {
	if e.maxRTT > e.maxGap {
		return e.maxRTT, e.rttAt
	}
	return e.maxGap, e.gapAt
}

func (e *churnEcho) addBreak(tm time.Time, why string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.breaks = append(e.breaks, fmt.Sprintf("%s: %s", tm.Format("15:04:05.000"), why))
}

// probe opens a connection and waits for the echo of its message 0; it
// returns when that was sent and when it came back.
func (e *churnEcho) probe(ctx context.Context) (net.Conn, time.Time, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, churnProbeTimeout)
	defer cancel()
	var zero time.Time
	c, err := e.dial(ctx)
	if err != nil {
		return nil, zero, zero, err
	}
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	msg := make([]byte, churnEchoSize)
	e.mu.Lock()
	e.sent++
	e.mu.Unlock()
	sent := time.Now()
	if _, err := c.Write(msg); err != nil {
		c.Close()
		return nil, zero, zero, err
	}
	if _, err := io.ReadFull(c, msg); err != nil {
		c.Close()
		return nil, zero, zero, err
	}
	at := time.Now()
	if seq := binary.BigEndian.Uint64(msg); seq != 0 {
		c.Close()
		return nil, zero, zero, fmt.Errorf("echo 0 came back as %d", seq)
	}
	c.SetDeadline(time.Time{})
	return c, sent, at, nil
}

// keep runs the session until end.
func (e *churnEcho) keep(ctx context.Context, end time.Time) {
	type probed struct {
		c       net.Conn
		sent    time.Time
		at      time.Time
		started time.Time
		err     error
	}
	probes := make(chan probed, churnProbesMax)
	inflight := 0
	var nextProbe time.Time
	var lastErr error
	var cur *churnConn
	defer func() {
		if cur != nil {
			cur.close()
		}
		go func(n int) { // close what the probes still in flight open
			for range n {
				if p := <-probes; p.c != nil {
					p.c.Close()
				}
			}
		}(inflight)
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	endT := time.NewTimer(time.Until(end))
	defer endT.Stop()
	for {
		var failed <-chan struct{}
		if cur != nil {
			failed = cur.done
		}
		select {
		case <-ctx.Done():
			e.mu.Lock()
			e.err = "stopped before the end of the run"
			e.mu.Unlock()
			return
		case <-endT.C:
			e.finish(cur, lastErr)
			return
		case <-failed:
			e.addBreak(time.Now(), "connection failed: "+cur.errString())
			cur.close()
			cur = nil
		case p := <-probes:
			inflight--
			if p.err != nil {
				lastErr = p.err
				continue
			}
			e.mu.Lock()
			stalled := e.last.Before(p.started)
			e.mu.Unlock()
			if cur != nil && !stalled {
				p.c.Close()
				continue
			}
			if cur != nil {
				e.addBreak(p.at, fmt.Sprintf("abandoned after %v without an echo; a new connection echoed", p.at.Sub(e.lastEcho()).Round(time.Millisecond)))
				cur.close()
			}
			e.gotEcho(p.sent, p.at)
			cur = e.run(p.c, p.sent)
		case now := <-tick.C:
			e.mu.Lock()
			silent := !e.last.IsZero() && now.Sub(e.last) > churnReconnectAfter
			e.mu.Unlock()
			if (cur == nil || silent) && inflight < churnProbesMax && !now.Before(nextProbe) {
				inflight++
				nextProbe = now.Add(churnProbeEvery)
				go func() {
					c, sent, at, err := e.probe(ctx)
					probes <- probed{c, sent, at, now, err}
				}()
			}
		}
	}
}

func (e *churnEcho) lastEcho() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.last
}

// finish ends the session at the end of the run: the messages still out
// get one interval and 500 ms to come back (as originsrv echo's), and the
// wait for those that do not counts as a stall.
func (e *churnEcho) finish(cur *churnConn, lastErr error) {
	if cur != nil {
		cur.stopWriting()
		for wait := time.Now().Add(churnEchoEvery + 500*time.Millisecond); time.Now().Before(wait) && cur.echoed.Load() < cur.sent.Load(); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.first.IsZero():
		e.err = fmt.Sprintf("never connected: %v", lastErr)
	case cur == nil:
		e.gap(time.Now())
		e.breaks = append(e.breaks, fmt.Sprintf("no connection at the end of the run (last attempt: %v)", lastErr))
	case cur.echoed.Load() < cur.sent.Load():
		now := time.Now()
		e.gap(now)
		e.rtt(cur.sentAt(int(cur.echoed.Load())), now)
	}
}

// churnConn is one connection of a session.
type churnConn struct {
	e          *churnEcho
	c          net.Conn
	sent       atomic.Int64 // messages written on it (the probe's included)
	echoed     atomic.Int64
	done       chan struct{} // closed when it failed
	stop, quit chan struct{}
	stopOnce   sync.Once
	quitOnce   sync.Once
	failOnce   sync.Once
	err        error

	mu    sync.Mutex
	times []time.Time // when each message was sent
}

func (ec *churnConn) sentAt(seq int) time.Time {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	return ec.times[seq]
}

// run keeps the session going on c, whose message 0 (the probe's, sent
// at first) is echoed already.
func (e *churnEcho) run(c net.Conn, first time.Time) *churnConn {
	const seq = 1
	ec := &churnConn{e: e, c: c, done: make(chan struct{}), stop: make(chan struct{}), quit: make(chan struct{}), times: []time.Time{first}}
	ec.sent.Store(seq)
	ec.echoed.Store(seq)
	go func() { // the reader: every echo, in order
		buf := make([]byte, churnEchoSize)
		for want := uint64(seq); ; want++ {
			if _, err := io.ReadFull(c, buf); err != nil {
				ec.fail(fmt.Errorf("read echo %d: %w", want, err))
				return
			}
			if got := binary.BigEndian.Uint64(buf); got != want {
				ec.fail(fmt.Errorf("echo %d came back as %d", want, got))
				return
			}
			ec.echoed.Add(1)
			e.gotEcho(ec.sentAt(int(want)), time.Now())
		}
	}()
	go func() { // the writer
		t := time.NewTicker(churnEchoEvery)
		defer t.Stop()
		msg := make([]byte, churnEchoSize)
		for {
			select {
			case <-ec.stop:
				return
			case <-ec.quit:
				return
			case <-t.C:
				binary.BigEndian.PutUint64(msg, uint64(ec.sent.Load()))
				ec.mu.Lock()
				ec.times = append(ec.times, time.Now())
				ec.mu.Unlock()
				if _, err := c.Write(msg); err != nil {
					ec.fail(fmt.Errorf("write message %d: %w", ec.sent.Load(), err))
					return
				}
				ec.sent.Add(1)
				e.mu.Lock()
				e.sent++
				e.mu.Unlock()
			}
		}
	}()
	return ec
}

// fail records the first error and closes the connection, unless the
// session is done with it.
func (ec *churnConn) fail(err error) {
	select {
	case <-ec.quit:
		return
	default:
	}
	ec.failOnce.Do(func() {
		ec.err = err
		ec.c.Close()
		close(ec.done)
	})
}

func (ec *churnConn) errString() string {
	if ec.err == nil {
		return "?"
	}
	return ec.err.Error()
}

func (ec *churnConn) stopWriting() { ec.stopOnce.Do(func() { close(ec.stop) }) }

// close ends the connection without calling it a failure.
func (ec *churnConn) close() {
	ec.quitOnce.Do(func() { close(ec.quit) })
	ec.c.Close()
}

// churnDownload is one client's downloads over the run: churnChunk bytes
// at a time, one after the other, until the run ends.
type churnDownload struct {
	mu             sync.Mutex
	chunks, failed int
	bytes          int64
	maxGap         time.Duration
	errs           []string
}

func (d *churnDownload) run(ctx context.Context, sc *socksClient, end time.Time) {
	for ctx.Err() == nil && time.Until(end) > 10*time.Second {
		start := time.Now()
		r, err := sc.bytes(lab.Origin4.Addr(), churnChunk, 40*time.Second)
		d.mu.Lock()
		d.chunks++
		switch {
		case err != nil:
			d.failed++
			d.errs = append(d.errs, fmt.Sprintf("%s: %v", start.Format("15:04:05.000"), err))
		case r.N != churnChunk || !r.OK:
			d.failed++
			d.errs = append(d.errs, fmt.Sprintf("%s: %d bytes, pattern ok %v", start.Format("15:04:05.000"), r.N, r.OK))
		default:
			d.bytes += r.N
		}
		if g := time.Duration(r.MaxGapMS) * time.Millisecond; g > d.maxGap {
			d.maxGap = g
		}
		d.mu.Unlock()
	}
}
