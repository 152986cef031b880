package lab

// The XDP front's forwarding hop, measured (wedge-lab bench-front):
//
//	client (wedge connect, TUN) ── router ──┬── owner node      (direct: VIP routed here)
//	  iperf3 -c origin                      └── front node ─GUE─▶ owner
//	                                             (forward: VIP routed here;
//	                                              XDP_TX back through the router)
//
// One cluster lab with two nodes running wedged --xdp and one etcd member;
// one stamped client whose owner (Maglev on its ClientID) is found from the
// egress address the origin sees. Each round routes the VIP to the owner
// alone (direct), then to the other node alone (forward: every packet from
// the client is wrapped in GUE and sent on to the owner; answers go straight
// back from the owner), in alternating order, and runs iperf3 up and down
// through the same tunnel in each. The XDP counters prove which path the
// packets took.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// ToolsBenchFront are the tools BenchFront needs besides BaseTools.
var ToolsBenchFront = slices.Concat(ToolsOrigin, []string{"iperf3"}, ToolsEtcd, ToolsXDP)

// benchFrontNodes is the size of BenchFront's cluster: the owner and one
// node in front of it.
const benchFrontNodes = 2

// FrontBenchResult compares the forwarding hop with the direct path to the
// owner, measured in the same run through the same tunnel.
type FrontBenchResult struct {
	// Direct: VIP routed to the owner. Forward: VIP routed to Front, which
	// forwards every packet of the client to the owner.
	Direct, Forward BenchSide // Up and Down, bits/s; CPS unused
	// Owner and Front are node numbers.
	Owner, Front int
	// Forwarded is how many packets Front's XDP program forwarded during
	// the forward phases, Decap how many the owner's unwrapped then, and
	// Local how many the owner took straight from the router during the
	// direct phases (the "forwarded", "decap" and "local" counters).
	Forwarded, Decap, Local uint64
	// DirectCPU and ForwardCPU are how busy the whole machine was during
	// each run (0..1 of all cores): every node, the router and the client
	// share its cores, so work the hop adds is work the tunnel loses.
	DirectCPU, ForwardCPU BenchSide
	Opts                  BenchOpts
}

// frontStatus is the part of GET /v1/status BenchFront reads.
type frontStatus struct {
	Cluster *struct {
		Nodes []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"nodes"`
	} `json:"cluster"`
	Sections struct {
		XDP map[string]uint64 `json:"xdp"`
	} `json:"sections"`
}

func readFrontStatus(w *Wedged) (frontStatus, error) {
	var s frontStatus
	resp, err := w.HTTPClient().Get(w.API + "/v1/status")
	if err != nil {
		return s, fmt.Errorf("lab: [%s] status: %w", w.NS.Name, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, fmt.Errorf("lab: [%s] status: %w", w.NS.Name, err)
	}
	return s, nil
}

// frontCounters reads the xdp section of every node's status.
func frontCounters(nodes []*Wedged) ([]map[string]uint64, error) {
	cs := make([]map[string]uint64, len(nodes))
	for i, w := range nodes {
		s, err := readFrontStatus(w)
		if err != nil {
			return nil, err
		}
		if s.Sections.XDP == nil {
			return nil, fmt.Errorf("lab: node%d: status has no xdp section (is the front on?)", i+1)
		}
		cs[i] = s.Sections.XDP
	}
	return cs, nil
}

// pollUntil polls cond every 100 ms until it holds or limit passes, and
// returns cond's last error.
func pollUntil(limit time.Duration, cond func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// BenchFront builds the cluster lab pictured above and measures iperf3 TCP
// throughput both ways through one stamped client's tunnel with the VIP
// routed to the client's owner (direct) and to the other node (forward),
// o.Rounds times each, alternating. Only o.Seconds, o.Rounds and o.Logf
// are used. It fails when the counters show the packets did not take the
// path a phase is meant to measure.
func BenchFront(owner Cleaner, bins Bins, o BenchOpts) (FrontBenchResult, error) {
	if o.Seconds == 0 {
		o.Seconds = 5
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	res := FrontBenchResult{Opts: o}

	l, err := New(owner)
	if err != nil {
		return res, err
	}
	c, err := NewCluster(l, benchFrontNodes, 1)
	if err != nil {
		return res, err
	}
	if _, err := c.StartOrigin(bins.Originsrv); err != nil {
		return res, err
	}
	if err := c.StartEtcdCluster(); err != nil {
		return res, err
	}
	if _, err := c.Router.Run(bins.Wedged, "genkey", filepath.Join(l.Dir, "service.key")); err != nil {
		return res, err
	}
	// Frames a node sends back with XDP_TX reach the router only if its
	// veth has an XDP program; a client checksum left to offload would
	// never be finished once XDP moved the packet (DESIGN.md, the lab).
	for n := 1; n <= benchFrontNodes; n++ {
		if err := c.Router.AttachXDPPass(RouterNodeIf(n)); err != nil {
			return res, err
		}
	}
	if err := c.Client.TxOff(ClientIf); err != nil {
		return res, err
	}
	nodes := make([]*Wedged, benchFrontNodes)
	var want []string
	for i := range nodes {
		if nodes[i], err = c.StartWedged(i+1, bins.Wedged,
			"--xdp", NodeUplinkIf, "--vip", VIP4.String(), "--vip", VIP6.String()); err != nil {
			return res, err
		}
		want = append(want, fmt.Sprintf("node%d:active", i+1))
	}
	// Until every node sees every other, and has taken it into its table
	// (a joining node waits a few seconds), their Maglev tables differ.
	err = pollUntil(20*time.Second, func() error {
		for i, w := range nodes {
			s, err := readFrontStatus(w)
			if err != nil {
				return err
			}
			if s.Cluster == nil {
				return fmt.Errorf("lab: node%d: status has no cluster section", i+1)
			}
			var got []string
			for _, m := range s.Cluster.Nodes {
				got = append(got, m.ID+":"+m.State)
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				return fmt.Errorf("lab: node%d sees %v, want %v", i+1, got, want)
			}
			if n := s.Sections.XDP["table_nodes"]; n != benchFrontNodes {
				return fmt.Errorf("lab: node%d's table holds %d nodes, want %d", i+1, n, benchFrontNodes)
			}
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	logf("%d nodes with the XDP front up, every one sees the others", benchFrontNodes)

	conf, err := nodes[0].Register(bins.Wedge)
	if err != nil {
		return res, err
	}
	confPath := filepath.Join(l.Dir, "bench-front.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return res, err
	}
	// TUN mode, inside the client namespace: iperf3 runs over the tunnel.
	client, err := c.Client.Start("wedge-connect", nil, bins.Wedge, "connect",
		"--config", confPath, "--name", l.IfName(), "--status-interval", "0")
	if err != nil {
		return res, err
	}
	origin := Origin4.Addr()
	url := fmt.Sprintf("http://%s/ip", netip.AddrPortFrom(origin, HTTPPort))
	// egress fetches /ip through the tunnel: the origin sees the egress
	// address of the node that terminated the flow.
	egress := func() (int, error) {
		if client.Exited() {
			return 0, client.exitedError()
		}
		out, err := c.Client.Run(bins.Originsrv, "get", "-timeout", "3s", url)
		if err != nil {
			return 0, err
		}
		ap, err := netip.ParseAddrPort(strings.TrimSpace(out))
		if err != nil {
			return 0, fmt.Errorf("lab: /ip answered %q", out)
		}
		for n := 1; n <= benchFrontNodes; n++ {
			if NodeEgress4(n) == ap.Addr() {
				return n, nil
			}
		}
		return 0, fmt.Errorf("lab: the origin saw %v, no node's egress", ap)
	}
	err = pollUntil(30*time.Second, func() error {
		n, err := egress()
		res.Owner = n
		return err
	})
	if err != nil {
		return res, fmt.Errorf("lab: no path to the origin through wedge connect: %w", err)
	}
	res.Front = res.Owner%benchFrontNodes + 1
	logf("the client's owner is node%d; node%d forwards in the forward phase", res.Owner, res.Front)

	type phase struct {
		name string
		via  int // the node the VIP is routed to
		out  *BenchSide
		cpu  *BenchSide // Up and Down: the machine's busy fraction
	}
	direct := phase{"direct", res.Owner, &res.Direct, &res.DirectCPU}
	forward := phase{"forward", res.Front, &res.Forward, &res.ForwardCPU}
	for round := 1; round <= o.Rounds; round++ {
		// direct, forward in odd rounds, forward, direct in even ones, so
		// a drift of the machine's speed hits both alike.
		order := []phase{direct, forward}
		if round%2 == 0 {
			order = []phase{forward, direct}
		}
		for _, ph := range order {
			if err := c.SetVIPRoute(ph.via); err != nil {
				return res, err
			}
			err := pollUntil(20*time.Second, func() error {
				n, err := egress()
				if err == nil && n != res.Owner {
					err = fmt.Errorf("lab: the flow ended on node%d, not on the owner node%d", n, res.Owner)
				}
				return err
			})
			if err != nil {
				return res, fmt.Errorf("%s (VIP via node%d): %w", ph.name, ph.via, err)
			}
			before, err := frontCounters(nodes)
			if err != nil {
				return res, err
			}
			for _, reverse := range []bool{false, true} {
				cpu0, err := readCPU()
				if err != nil {
					return res, err
				}
				r, err := c.Client.Iperf3(origin, IperfOpts{Seconds: o.Seconds, Reverse: reverse})
				if err != nil {
					return res, fmt.Errorf("%s iperf3 (reverse %v): %w", ph.name, reverse, err)
				}
				cpu1, err := readCPU()
				if err != nil {
					return res, err
				}
				busy := cpu1.busysince(cpu0)
				if reverse {
					ph.out.Down = append(ph.out.Down, r.BitsPerSecond)
					ph.cpu.Down = append(ph.cpu.Down, busy)
				} else {
					ph.out.Up = append(ph.out.Up, r.BitsPerSecond)
					ph.cpu.Up = append(ph.cpu.Up, busy)
				}
				logf("round %d %-7s %-4s %s, machine %.0f%% busy", round, ph.name, map[bool]string{false: "up", true: "down"}[reverse], r, 100*busy)
			}
			after, err := frontCounters(nodes)
			if err != nil {
				return res, err
			}
			delta := func(n int, key string) uint64 { return after[n-1][key] - before[n-1][key] }
			fwd, decap, local := delta(res.Front, "forwarded"), delta(res.Owner, "decap"), delta(res.Owner, "local")
			logf("round %d %-7s xdp: node%d forwarded %d; owner node%d decap %d, local %d",
				round, ph.name, res.Front, fwd, res.Owner, decap, local)
			if ph.via == res.Front {
				// Without this the "forward" figures would measure
				// some other path.
				if fwd == 0 {
					return res, fmt.Errorf("forward phase, round %d: node%d's XDP forwarded no packet while the VIP was routed to it "+
						"(owner node%d: decap %d, local %d): the measurement would not cover the forwarding hop",
						round, res.Front, res.Owner, decap, local)
				}
				if local != 0 {
					return res, fmt.Errorf("forward phase, round %d: the owner node%d took %d packets straight from the router: "+
						"not every packet took the forwarding hop", round, res.Owner, local)
				}
				if decap == 0 {
					return res, fmt.Errorf("forward phase, round %d: node%d forwarded %d packets but the owner node%d unwrapped none",
						round, res.Front, fwd, res.Owner)
				}
				res.Forwarded += fwd
				res.Decap += decap
			} else {
				if fwd != 0 || local == 0 {
					return res, fmt.Errorf("direct phase, round %d: node%d forwarded %d packets, the owner node%d took %d locally: "+
						"want none forwarded and some local", round, res.Front, fwd, res.Owner, local)
				}
				res.Local += local
			}
		}
	}
	return res, nil
}

// Ratios are forward/direct for the medians of each direction.
func (r FrontBenchResult) Ratios() (up, down float64) {
	ratio := func(a, b []float64) float64 {
		if median(b) == 0 {
			return 0
		}
		return median(a) / median(b)
	}
	return ratio(r.Forward.Up, r.Direct.Up), ratio(r.Forward.Down, r.Direct.Down)
}

// Print writes the medians and ratios as a table, and the counters that
// show which path each phase took.
func (r FrontBenchResult) Print(w io.Writer) {
	up, down := r.Ratios()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "median of %d rounds\tdirect\tforward\tforward/direct\t\n", r.Opts.Rounds)
	fmt.Fprintf(tw, "TCP up, client→origin (Gbit/s)\t%.2f\t%.2f\t%.2f\t\n", median(r.Direct.Up)/1e9, median(r.Forward.Up)/1e9, up)
	fmt.Fprintf(tw, "TCP down, origin→client (Gbit/s)\t%.2f\t%.2f\t%.2f\t\n", median(r.Direct.Down)/1e9, median(r.Forward.Down)/1e9, down)
	tw.Flush()
	fmt.Fprintf(w, "direct: VIP routed to the owner node%d (XDP local: %d packets); "+
		"forward: VIP routed to node%d, which forwarded %d packets over GUE (owner decap: %d)\n",
		r.Owner, r.Local, r.Front, r.Forwarded, r.Decap)
	fmt.Fprintf(w, "machine busy (all cores, median): direct up %.0f%% down %.0f%%, forward up %.0f%% down %.0f%%\n",
		100*median(r.DirectCPU.Up), 100*median(r.DirectCPU.Down), 100*median(r.ForwardCPU.Up), 100*median(r.ForwardCPU.Down))
	fmt.Fprintln(w, "issue target: forward/direct >= 0.9 (one run on a noisy machine: compare ratios, not times)")
}

// cpuTimes are the host's CPU time counters, all cores (/proc/stat).
type cpuTimes struct{ busy, total uint64 }

func readCPU() (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("lab: /proc/stat: unexpected first line %q", line)
	}
	var t cpuTimes
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("lab: /proc/stat: %q: %w", line, err)
		}
		if i >= 8 { // guest time is already counted in user
			break
		}
		t.total += n
		if i != 3 && i != 4 { // idle, iowait
			t.busy += n
		}
	}
	return t, nil
}

// busysince is the fraction of all cores' time spent busy since a.
func (t cpuTimes) busysince(a cpuTimes) float64 {
	if t.total <= a.total {
		return 0
	}
	return float64(t.busy-a.busy) / float64(t.total-a.total)
}
