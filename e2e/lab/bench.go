package lab

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// BenchOpts shape a benchmark run.
type BenchOpts struct {
	Seconds int           // each iperf3 run; 0: 5
	Rounds  int           // measurements per side, interleaved; 0: 3
	CPS     time.Duration // each connections-per-second run; 0: 3 s
	CPSConc int           // concurrent connections in it; 0: 8
	Streams int           // the parallel TCP run's streams; 0: 8
	// UDPSteps is how many iperf3 UDP runs (of UDPSeconds each) the search
	// for the highest rate with < 1% loss makes per direction; 0: 6 and 2.
	// UDPStart is the rate it tries first (bits/s); 0: 500 Mbit/s.
	UDPSteps, UDPSeconds int
	UDPStart             float64
	// Echo is each latency run: 512-byte messages at 100/s; 0: 5 s.
	Echo time.Duration
	// IdleFlows is how many idle TCP connections the memory measurement
	// holds open at once; 0: 500.
	IdleFlows int
	Logf      func(format string, args ...any)
}

// BenchSide is what one server measured, one value per round.
type BenchSide struct {
	Up, Down, CPS []float64 // bits/s, bits/s, connections/s
	// UpN and DownN are BenchOpts.Streams parallel TCP streams (bits/s).
	UpN, DownN []float64
	// UDPUp and UDPDown are the highest UDP rates (bits/s received) with
	// less than 1% loss.
	UDPUp, UDPDown []float64
	// RTTP50 and RTTP99 are a 512-byte TCP echo's round trips at 100/s
	// (µs).
	RTTP50, RTTP99 []float64
	// IdleFlowRSS is the server's resident memory per idle open TCP flow
	// (bytes), ActiveFlowRSS its growth during a single-stream download
	// (bytes), ActiveFlowRate that download's rate (bits/s). Measured once.
	IdleFlowRSS, ActiveFlowRSS, ActiveFlowRate float64
	// CPU time spent by the server process (wedged or the baseline's
	// wireguard-go) and by the client's wireguard-go: seconds per GB moved
	// (received by iperf3) up and down, µs per connection. All zero when
	// a process could not be read.
	ServerUp, ServerDown, ServerCPS []float64
	ClientUp, ClientDown, ClientCPS []float64
}

// BenchResult compares wedged with the baseline measured in the same run.
type BenchResult struct {
	Wedged, Baseline BenchSide
	// Plan is wedged with an egress plan (--egress-plan): every flow's
	// source chosen per client, in the node's port slice. Connections per
	// second only: what the plan changes is the dial.
	Plan BenchSide
	Opts BenchOpts
}

// benchPlan is the egress plan of the Plan side: the lab's egress address
// alone, this node (slot 1 of data center "default") on ports 40000-49999.
const benchPlan = `{
  "ports": "40000-49999",
  "slice": 10000,
  "data_centers": {"default": {"country": "NL"}},
  "ipv4": [{"prefix": "198.51.100.10/32", "country": "NL", "pool": "trusted", "dc": "default"}],
  "fallback": {"pools": {"trusted": "NL"}}
}
`

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Bench builds two single-node labs side by side, one with wedged and one
// with the baseline (a plain wireguard-go server with kernel forwarding and
// NAT: DESIGN.md "Measuring"), each with a wg-quick client, and measures
// iperf3 TCP throughput both ways and new TCP connections per second
// through each, alternating between the two so both see the same machine.
func Bench(owner Cleaner, bins Bins, o BenchOpts) (BenchResult, error) {
	if o.Seconds == 0 {
		o.Seconds = 5
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.CPS == 0 {
		o.CPS = 3 * time.Second
	}
	if o.CPSConc == 0 {
		o.CPSConc = 8
	}
	if o.Streams == 0 {
		o.Streams = 8
	}
	if o.UDPSteps == 0 {
		o.UDPSteps = 6
	}
	if o.UDPSeconds == 0 {
		o.UDPSeconds = 2
	}
	if o.UDPStart == 0 {
		o.UDPStart = 500e6
	}
	if o.Echo == 0 {
		o.Echo = 5 * time.Second
	}
	if o.IdleFlows == 0 {
		o.IdleFlows = 500
	}
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	res := BenchResult{Opts: o}

	type side struct {
		name           string
		s              *SingleNode
		probe          Probe
		out            *BenchSide
		server, client int // pids, for CPU time
	}
	var serverPid int // set by each start func
	setup := func(name string, start func(s *SingleNode) (string, error), out *BenchSide) (side, error) {
		l, err := New(owner)
		if err != nil {
			return side{}, err
		}
		s, err := NewSingleNode(l)
		if err != nil {
			return side{}, err
		}
		if _, err := s.StartOrigin(bins.Originsrv); err != nil {
			return side{}, err
		}
		conf, err := start(s)
		if err != nil {
			return side{}, fmt.Errorf("%s: %w", name, err)
		}
		if _, err := s.Client.WGQuickUp(conf); err != nil {
			return side{}, fmt.Errorf("%s: %w", name, err)
		}
		return side{name: name, s: s, probe: Probe{NS: s.Client, Bin: bins.Originsrv}, out: out,
			server: serverPid, client: s.Client.pidOf("wireguard", "wireguard-go")}, nil
	}
	wedged, err := setup("wedged", func(s *SingleNode) (string, error) {
		// The benchmark measures the node, not one client's budget: no
		// rate of new flows per client.
		w, err := s.StartWedged(bins.Wedged, "--flow-rate", "0")
		if err != nil {
			return "", err
		}
		serverPid = w.Proc.Pid()
		return w.Register(bins.Wedge)
	}, &res.Wedged)
	if err != nil {
		return res, err
	}
	plan, err := setup("plan", func(s *SingleNode) (string, error) {
		path := filepath.Join(s.Lab.Dir, "egress-plan.json")
		if err := os.WriteFile(path, []byte(benchPlan), 0o644); err != nil {
			return "", err
		}
		w, err := s.StartWedged(bins.Wedged, "--egress-plan", path, "--flow-rate", "0")
		if err != nil {
			return "", err
		}
		serverPid = w.Proc.Pid()
		return w.Register(bins.Wedge)
	}, &res.Plan)
	if err != nil {
		return res, err
	}
	baseline, err := setup("baseline", func(s *SingleNode) (string, error) {
		b, err := s.StartBaseline()
		if err != nil {
			return "", err
		}
		serverPid = b.Proc.Pid()
		return b.Client.String(), nil
	}, &res.Baseline)
	if err != nil {
		return res, err
	}

	origin := Origin4.Addr()
	url := fmt.Sprintf("http://%s/ip", netip.AddrPortFrom(origin, HTTPPort))
	dir := map[bool]string{false: "up", true: "down"}
	for round := 1; round <= o.Rounds; round++ {
		for _, sd := range []side{wedged, plan, baseline} {
			for _, reverse := range []bool{false, true} {
				if sd.name == "plan" {
					break
				}
				s0, c0 := procCPU(sd.server), procCPU(sd.client)
				r, err := sd.s.Client.Iperf3(origin, IperfOpts{Seconds: o.Seconds, Reverse: reverse})
				if err != nil {
					return res, fmt.Errorf("%s iperf3 (reverse %v): %w", sd.name, reverse, err)
				}
				gb := float64(r.BytesReceived) / 1e9
				sCPU, cCPU := perUnit(s0, procCPU(sd.server), gb), perUnit(c0, procCPU(sd.client), gb)
				if reverse {
					sd.out.Down = append(sd.out.Down, r.BitsPerSecond)
					sd.out.ServerDown = append(sd.out.ServerDown, sCPU)
					sd.out.ClientDown = append(sd.out.ClientDown, cCPU)
				} else {
					sd.out.Up = append(sd.out.Up, r.BitsPerSecond)
					sd.out.ServerUp = append(sd.out.ServerUp, sCPU)
					sd.out.ClientUp = append(sd.out.ClientUp, cCPU)
				}
				logf("round %d %-8s %-4s %s", round, sd.name, dir[reverse], r)

				r, err = sd.s.Client.Iperf3(origin, IperfOpts{Seconds: o.Seconds, Reverse: reverse, Parallel: o.Streams})
				if err != nil {
					return res, fmt.Errorf("%s iperf3 -P %d (reverse %v): %w", sd.name, o.Streams, reverse, err)
				}
				if reverse {
					sd.out.DownN = append(sd.out.DownN, r.BitsPerSecond)
				} else {
					sd.out.UpN = append(sd.out.UpN, r.BitsPerSecond)
				}
				logf("round %d %-8s %-4s %d streams %s", round, sd.name, dir[reverse], o.Streams, r)

				u, err := sd.s.Client.IperfUDPMax(origin, reverse, o.UDPStart, o.UDPSteps, o.UDPSeconds, 1, logf)
				if err != nil {
					return res, fmt.Errorf("%s iperf3 UDP (reverse %v): %w", sd.name, reverse, err)
				}
				if reverse {
					sd.out.UDPDown = append(sd.out.UDPDown, u.BitsPerSecond)
				} else {
					sd.out.UDPUp = append(sd.out.UDPUp, u.BitsPerSecond)
				}
				logf("round %d %-8s %-4s UDP %.2f Gbit/s with %.2f%% loss (offered %.2f, %d runs)",
					round, sd.name, dir[reverse], u.BitsPerSecond/1e9, u.LostPercent, u.Offered/1e9, u.Steps)
			}
			s0, c0 := procCPU(sd.server), procCPU(sd.client)
			c, err := sd.probe.CPS(url, o.CPS, o.CPSConc)
			if err != nil {
				return res, fmt.Errorf("%s cps: %w", sd.name, err)
			}
			conns := float64(c.OK) / 1e6 // µs per connection
			sd.out.ServerCPS = append(sd.out.ServerCPS, perUnit(s0, procCPU(sd.server), conns))
			sd.out.ClientCPS = append(sd.out.ClientCPS, perUnit(c0, procCPU(sd.client), conns))
			if c.Errors > 0 {
				logf("round %d %-8s cps: %d errors, e.g. %s", round, sd.name, c.Errors, c.FirstError)
			}
			sd.out.CPS = append(sd.out.CPS, c.Rate)
			logf("round %d %-8s cps  %.0f/s", round, sd.name, c.Rate)
			if sd.name == "plan" {
				continue
			}
			e, err := sd.probe.Echo(netip.AddrPortFrom(origin, EchoPort), 512, 10*time.Millisecond, o.Echo)
			if err != nil {
				return res, fmt.Errorf("%s echo: %w", sd.name, err)
			}
			if e.Broken || e.Echoed == 0 {
				return res, fmt.Errorf("%s echo: session broken: %+v", sd.name, e)
			}
			sd.out.RTTP50 = append(sd.out.RTTP50, float64(e.RTTP50US))
			sd.out.RTTP99 = append(sd.out.RTTP99, float64(e.RTTP99US))
			logf("round %d %-8s echo RTT p50 %d µs, p99 %d µs, max %d µs (%d echoes)", round, sd.name, e.RTTP50US, e.RTTP99US, e.RTTMaxUS, e.Echoed)
		}
	}
	for _, sd := range []side{wedged, baseline} {
		if err := benchMemory(sd.s, sd.probe, sd.server, origin, o, sd.out, logf); err != nil {
			return res, fmt.Errorf("%s memory: %w", sd.name, err)
		}
	}
	return res, nil
}

// benchMemory measures the server's resident memory per idle TCP flow (n
// connections held open at once, sampled while they are) and its growth
// during one single-stream download.
func benchMemory(s *SingleNode, p Probe, pid int, origin netip.Addr, o BenchOpts, out *BenchSide, logf func(string, ...any)) error {
	runtime.GC() // ours, not the server's: keep the lab's own noise down
	before := RSS(pid)
	hold := 6 * time.Second
	url := fmt.Sprintf("http://%s/hold", netip.AddrPortFrom(origin, HTTPPort))
	type held struct {
		ok  int
		err error
	}
	done := make(chan held, 1)
	go func() {
		ok, err := p.Hold(url, o.IdleFlows, hold)
		done <- held{ok, err}
	}()
	var peak int64
	for deadline := time.Now().Add(hold - time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		peak = max(peak, RSS(pid))
	}
	h := <-done
	if h.ok == 0 {
		return h.err
	}
	if h.err != nil { // some were refused or timed out: count the held ones
		logf("idle flows: %v", h.err)
	}
	if before > 0 && peak > 0 {
		out.IdleFlowRSS = float64(peak-before) / float64(h.ok)
	}
	logf("%d idle flows: RSS %d → %d KiB", h.ok, before>>10, peak>>10)

	time.Sleep(2 * time.Second) // let the held flows close
	before, peak = RSS(pid), 0
	type run struct {
		r   IperfResult
		err error
	}
	ran := make(chan run, 1)
	go func() {
		r, err := s.Client.Iperf3(origin, IperfOpts{Seconds: o.Seconds, Reverse: true})
		ran <- run{r, err}
	}()
	var r run
sample:
	for {
		select {
		case r = <-ran:
			break sample
		case <-time.After(250 * time.Millisecond):
			peak = max(peak, RSS(pid))
		}
	}
	if r.err != nil {
		return r.err
	}
	if before > 0 && peak > 0 {
		out.ActiveFlowRSS, out.ActiveFlowRate = float64(peak-before), r.r.BitsPerSecond
	}
	logf("one download at %.2f Gbit/s: RSS %d → %d KiB", r.r.BitsPerSecond/1e9, before>>10, peak>>10)
	return nil
}

// Ratios are wedged/baseline for the medians of each measurement.
func (r BenchResult) Ratios() (up, down, cps float64) {
	ratio := func(a, b []float64) float64 {
		if median(b) == 0 {
			return 0
		}
		return median(a) / median(b)
	}
	return ratio(r.Wedged.Up, r.Baseline.Up), ratio(r.Wedged.Down, r.Baseline.Down), ratio(r.Wedged.CPS, r.Baseline.CPS)
}

// ratioOf is median(a)/median(b), 0 without b.
func ratioOf(a, b []float64) float64 {
	if median(b) == 0 {
		return 0
	}
	return median(a) / median(b)
}

// PlanCPSRatio is wedged with an egress plan over the baseline, medians of
// connections per second.
func (r BenchResult) PlanCPSRatio() float64 {
	if median(r.Baseline.CPS) == 0 {
		return 0
	}
	return median(r.Plan.CPS) / median(r.Baseline.CPS)
}

// Print writes the medians and ratios as a table.
func (r BenchResult) Print(w io.Writer) {
	up, down, cps := r.Ratios()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "median of %d rounds\twedged\tbaseline\twedged/baseline\t\n", r.Opts.Rounds)
	fmt.Fprintf(tw, "TCP up, client→origin (Gbit/s)\t%.2f\t%.2f\t%.2f\t\n", median(r.Wedged.Up)/1e9, median(r.Baseline.Up)/1e9, up)
	fmt.Fprintf(tw, "TCP down, origin→client (Gbit/s)\t%.2f\t%.2f\t%.2f\t\n", median(r.Wedged.Down)/1e9, median(r.Baseline.Down)/1e9, down)
	fmt.Fprintf(tw, "new TCP connections/s\t%.0f\t%.0f\t%.2f\t\n", median(r.Wedged.CPS), median(r.Baseline.CPS), cps)
	if len(r.Plan.CPS) > 0 {
		fmt.Fprintf(tw, "new TCP connections/s, egress plan\t%.0f\t%.0f\t%.2f\t\n", median(r.Plan.CPS), median(r.Baseline.CPS), r.PlanCPSRatio())
	}
	gbit := func(what string, a, b []float64) {
		fmt.Fprintf(tw, "%s (Gbit/s)\t%.2f\t%.2f\t%.2f\t\n", what, median(a)/1e9, median(b)/1e9, ratioOf(a, b))
	}
	gbit(fmt.Sprintf("TCP up, %d streams", r.Opts.Streams), r.Wedged.UpN, r.Baseline.UpN)
	gbit(fmt.Sprintf("TCP down, %d streams", r.Opts.Streams), r.Wedged.DownN, r.Baseline.DownN)
	gbit("UDP up, highest rate < 1% loss", r.Wedged.UDPUp, r.Baseline.UDPUp)
	gbit("UDP down, highest rate < 1% loss", r.Wedged.UDPDown, r.Baseline.UDPDown)
	fmt.Fprintf(tw, "512 B echo RTT p50 (µs)\t%.0f\t%.0f\t%+.0f µs\t\n", median(r.Wedged.RTTP50), median(r.Baseline.RTTP50), median(r.Wedged.RTTP50)-median(r.Baseline.RTTP50))
	fmt.Fprintf(tw, "512 B echo RTT p99 (µs)\t%.0f\t%.0f\t%+.0f µs\t\n", median(r.Wedged.RTTP99), median(r.Baseline.RTTP99), median(r.Wedged.RTTP99)-median(r.Baseline.RTTP99))
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "server memory (RSS)\twedged\tbaseline server\t\n")
	fmt.Fprintf(tw, "per idle TCP flow (%d open, KiB)\t%.1f\t%.1f\t\n", r.Opts.IdleFlows, r.Wedged.IdleFlowRSS/1024, r.Baseline.IdleFlowRSS/1024)
	fmt.Fprintf(tw, "growth during one download (MiB)\t%.1f at %.2f Gbit/s\t%.1f at %.2f Gbit/s\t\n",
		r.Wedged.ActiveFlowRSS/(1<<20), r.Wedged.ActiveFlowRate/1e9, r.Baseline.ActiveFlowRSS/(1<<20), r.Baseline.ActiveFlowRate/1e9)
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "CPU time, median\twedged\tbaseline server\tclient (wedged)\tclient (baseline)\t\n")
	row := func(what, unit string, a, b, c, d []float64) {
		fmt.Fprintf(tw, "%s (%s)\t%.2f\t%.2f\t%.2f\t%.2f\t\n", what, unit, median(a), median(b), median(c), median(d))
	}
	row("up", "s/GB", r.Wedged.ServerUp, r.Baseline.ServerUp, r.Wedged.ClientUp, r.Baseline.ClientUp)
	row("down", "s/GB", r.Wedged.ServerDown, r.Baseline.ServerDown, r.Wedged.ClientDown, r.Baseline.ClientDown)
	row("per connection", "µs", r.Wedged.ServerCPS, r.Baseline.ServerCPS, r.Wedged.ClientCPS, r.Baseline.ClientCPS)
	tw.Flush()
}

// procCPU returns the CPU time (user and system) pid has used, in
// seconds; 0 if it cannot be read.
func procCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: fields count from the
	// closing parenthesis. utime and stime are fields 14 and 15, in clock
	// ticks (USER_HZ, 100 on Linux).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return (ut + st) / 100
}

// perUnit is the CPU time between two procCPU readings per unit of work;
// 0 when either reading failed or there was no work.
func perUnit(before, after, units float64) float64 {
	if before == 0 || after == 0 || units <= 0 {
		return 0
	}
	return (after - before) / units
}
