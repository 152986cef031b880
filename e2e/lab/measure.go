package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// IperfOpts are the knobs of one iperf3 client run.
type IperfOpts struct {
	Seconds  int  // -t; 0: 3
	Reverse  bool // -R: the server sends
	Parallel int  // -P; 0: 1
	Port     int  // -p; 0: IperfPort
	// UDPRate, if set, makes it a UDP test (-u) sending at this many
	// bits per second (-b), Length bytes a datagram (-l; 0: 1200, which
	// fits the tunnel's MTU without fragments).
	UDPRate float64
	Length  int
	// Extra arguments, appended as they are.
	Extra []string
}

// IperfResult is what one iperf3 run measured.
type IperfResult struct {
	// BitsPerSecond is the receiver's rate.
	BitsPerSecond float64
	// BytesSent and BytesReceived are the sender's and receiver's totals.
	BytesSent, BytesReceived int64
	Seconds                  float64
	Retransmits              int64
	// UDP tests: the receiver's loss and jitter.
	LostPercent float64
	JitterMS    float64
}

func (r IperfResult) String() string {
	return fmt.Sprintf("%.2f Gbit/s (%d bytes sent, %d received in %.1fs, %d retransmits)",
		r.BitsPerSecond/1e9, r.BytesSent, r.BytesReceived, r.Seconds, r.Retransmits)
}

// Iperf3 runs `iperf3 -c server -J` in ns and parses its report.
func (ns *NS) Iperf3(server netip.Addr, o IperfOpts) (IperfResult, error) {
	if o.Seconds == 0 {
		o.Seconds = 3
	}
	if o.Port == 0 {
		o.Port = IperfPort
	}
	args := []string{"iperf3", "-c", server.String(), "-p", fmt.Sprint(o.Port), "-t", fmt.Sprint(o.Seconds), "-J"}
	if o.Reverse {
		args = append(args, "-R")
	}
	if o.Parallel > 1 {
		args = append(args, "-P", fmt.Sprint(o.Parallel))
	}
	if o.UDPRate > 0 {
		if o.Length == 0 {
			o.Length = 1200
		}
		args = append(args, "-u", "-b", fmt.Sprintf("%.0f", o.UDPRate), "-l", fmt.Sprint(o.Length))
	}
	args = append(args, o.Extra...)
	// iperf3 -s runs one test at a time: it answers "busy", or refuses
	// connections while it has no listener, until the last test has ended
	// on its side. Through a proxy the client finishes first (wedged still
	// holds the data in flight), so the next test may arrive too early.
	for busyUntil := time.Now().Add(10 * time.Second); ; {
		res, err := ns.iperf3Once(args, time.Duration(o.Seconds+30)*time.Second)
		if err != nil && (strings.Contains(err.Error(), "server is busy") ||
			strings.Contains(err.Error(), "unable to connect to server")) && time.Now().Before(busyUntil) {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		return res, err
	}
}

func (ns *NS) iperf3Once(args []string, timeout time.Duration) (IperfResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := ns.Command(ctx, args...)
	start := time.Now()
	out, runErr := cmd.Output() // stdout only: the JSON
	res, err := parseIperf(out)
	if err == nil {
		ns.lab.record(ns.Name, strings.Join(args, " "), time.Since(start), []byte(res.String()), nil)
		return res, nil
	}
	ns.lab.record(ns.Name, strings.Join(args, " "), time.Since(start), nil, err)
	if runErr != nil {
		return res, fmt.Errorf("lab: [%s] iperf3: %w (%v)", ns.Name, err, runErr)
	}
	return res, fmt.Errorf("lab: [%s] iperf3: %w", ns.Name, err)
}

func parseIperf(out []byte) (IperfResult, error) {
	type sum struct {
		Seconds       float64 `json:"seconds"`
		Bytes         int64   `json:"bytes"`
		BitsPerSecond float64 `json:"bits_per_second"`
		Retransmits   int64   `json:"retransmits"`
		LostPercent   float64 `json:"lost_percent"`
		JitterMS      float64 `json:"jitter_ms"`
	}
	var rep struct {
		Error string `json:"error"`
		Start struct {
			Test struct {
				Protocol string `json:"protocol"`
			} `json:"test_start"`
		} `json:"start"`
		End struct {
			SumSent     *sum `json:"sum_sent"`
			SumReceived *sum `json:"sum_received"`
			Sum         *sum `json:"sum"` // UDP: the receiver's view
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return IperfResult{}, fmt.Errorf("bad JSON report: %w: %.300s", err, out)
	}
	if rep.Error != "" {
		return IperfResult{}, fmt.Errorf("%s", rep.Error)
	}
	if rep.Start.Test.Protocol == "UDP" {
		// The receiver's sum has its loss and jitter (iperf3 3.12 puts
		// them in "sum" too, with the sender's bytes).
		rx := rep.End.SumReceived
		if rx == nil {
			rx = rep.End.Sum
		}
		if rx == nil || rep.End.SumSent == nil {
			return IperfResult{}, fmt.Errorf("UDP report has no end sums: %.300s", out)
		}
		return IperfResult{
			BitsPerSecond: rx.BitsPerSecond,
			BytesSent:     rep.End.SumSent.Bytes,
			BytesReceived: rx.Bytes,
			Seconds:       rx.Seconds,
			LostPercent:   rx.LostPercent,
			JitterMS:      rx.JitterMS,
		}, nil
	}
	if rep.End.SumSent == nil || rep.End.SumReceived == nil {
		return IperfResult{}, fmt.Errorf("report has no end sums: %.300s", out)
	}
	return IperfResult{
		BitsPerSecond: rep.End.SumReceived.BitsPerSecond,
		BytesSent:     rep.End.SumSent.Bytes,
		BytesReceived: rep.End.SumReceived.Bytes,
		Seconds:       rep.End.SumReceived.Seconds,
		Retransmits:   rep.End.SumSent.Retransmits,
	}, nil
}

// Ping sends count echo requests to dst from ns and fails unless all are
// answered.
func (ns *NS) Ping(dst netip.Addr, count int) error {
	_, err := ns.Run("ping", "-n", "-q", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "2", dst.String())
	return err
}

// Probe runs originsrv's client modes inside a namespace.
type Probe struct {
	NS *NS
	// Bin is the originsrv binary.
	Bin string
}

// Get fetches url and returns the body (originsrv get).
func (p Probe) Get(url string) (string, error) {
	out, err := p.NS.Run(p.Bin, "get", url)
	return strings.TrimSpace(out), err
}

// RemoteAddr fetches http://origin/ip: the address and port the origin saw.
func (p Probe) RemoteAddr(origin netip.Addr) (netip.AddrPort, error) {
	body, err := p.Get(fmt.Sprintf("http://%s/ip", netip.AddrPortFrom(origin, HTTPPort)))
	if err != nil {
		return netip.AddrPort{}, err
	}
	ap, err := netip.ParseAddrPort(body)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("lab: /ip answered %q: %w", body, err)
	}
	return ap, nil
}

// BytesResult is what `originsrv get -check` reports for /bytes.
type BytesResult struct {
	N      int64  `json:"n"`
	SHA256 string `json:"sha256"`
	OK     bool   `json:"ok"` // the body is the deterministic pattern, n bytes long
	// MaxGapMS is the longest wait, in milliseconds, between two reads
	// of the body: the worst stall of the download.
	MaxGapMS int64 `json:"max_gap_ms"`
}

// Bytes fetches http://origin/bytes?n=N and checks the body is the
// deterministic pattern (originsrv.Pattern).
func (p Probe) Bytes(origin netip.Addr, n int64) (BytesResult, error) {
	url := fmt.Sprintf("http://%s/bytes?n=%d", netip.AddrPortFrom(origin, HTTPPort), n)
	out, err := p.NS.Run(p.Bin, "get", "-check", fmt.Sprint(n), url)
	if err != nil {
		return BytesResult{}, err
	}
	var r BytesResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return r, fmt.Errorf("lab: get -check: %w: %s", err, out)
	}
	return r, nil
}

// DNS asks server (ip:port; "" means the namespace's resolv.conf) for name
// and type ("A", "AAAA"), over TCP when tcp is set, and returns the answers.
func (p Probe) DNS(server, name, qtype string, tcp bool) ([]netip.Addr, error) {
	args := []string{p.Bin, "dns", "-name", name, "-type", qtype}
	if server != "" {
		args = append(args, "-server", server)
	}
	if tcp {
		args = append(args, "-tcp")
	}
	out, err := p.NS.Run(args...)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	for f := range strings.FieldsSeq(out) {
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("lab: dns answered %q", out)
		}
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// CPSResult is a connections-per-second measurement.
type CPSResult struct {
	OK      int64   `json:"ok"`
	Errors  int64   `json:"errors"`
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"rate"` // OK per second
	// FirstError is one of the errors, if any.
	FirstError string `json:"first_error,omitempty"`
}

// CPS opens, uses and closes HTTP connections to url (one request each,
// conc at a time) for d and reports the rate (originsrv cps).
func (p Probe) CPS(url string, d time.Duration, conc int) (CPSResult, error) {
	out, err := p.NS.Run(p.Bin, "cps", "-url", url, "-d", d.String(), "-c", fmt.Sprint(conc))
	if err != nil {
		return CPSResult{}, err
	}
	var r CPSResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return r, fmt.Errorf("lab: cps: %w: %s", err, out)
	}
	return r, nil
}

// UDPMaxResult is the highest UDP rate a path carried with little loss.
type UDPMaxResult struct {
	// BitsPerSecond is what the receiver got at the highest offered rate
	// that lost less than MaxLoss percent; 0 if even the lowest lost more.
	BitsPerSecond float64
	LostPercent   float64 // at that rate
	Offered       float64 // that offered rate
	Steps         int     // iperf3 runs made
}

// IperfUDPMax looks for the highest rate iperf3 UDP (1200-byte datagrams)
// carries from ns to server (reverse: from server to ns) with less than
// maxLoss percent lost, in steps runs of seconds each: from start bits/s
// it doubles while the rate passes and halves while it fails, then, once
// one rate passed and one failed, bisects between them. logf, if set, gets
// every step.
func (ns *NS) IperfUDPMax(server netip.Addr, reverse bool, start float64, steps, seconds int, maxLoss float64, logf func(string, ...any)) (UDPMaxResult, error) {
	var res UDPMaxResult
	pass, fail := 0.0, 0.0 // the highest passing and lowest failing rates
	rate := start
	for range steps {
		r, err := ns.Iperf3(server, IperfOpts{Seconds: seconds, Reverse: reverse, UDPRate: rate})
		if err != nil {
			return res, err
		}
		res.Steps++
		if logf != nil {
			logf("  UDP offered %.3f Gbit/s: received %.3f Gbit/s, %.2f%% lost", rate/1e9, r.BitsPerSecond/1e9, r.LostPercent)
		}
		if r.LostPercent < maxLoss {
			if r.BitsPerSecond > res.BitsPerSecond {
				res.BitsPerSecond, res.LostPercent, res.Offered = r.BitsPerSecond, r.LostPercent, rate
			}
			pass = max(pass, rate)
		} else if fail == 0 || rate < fail {
			fail = rate
		}
		switch {
		case fail == 0:
			rate = pass * 2
		case pass == 0:
			rate = fail / 2
		default:
			rate = (pass + fail) / 2
		}
	}
	return res, nil
}

// Echo runs an interactive session (originsrv echo: size bytes every
// interval for d) from p's namespace to to, directly (no proxy).
func (p Probe) Echo(to netip.AddrPort, size int, every, d time.Duration) (EchoResult, error) {
	out, err := p.NS.Run(p.Bin, "echo", "-to", to.String(), "-size", fmt.Sprint(size),
		"-every", every.String(), "-d", d.String())
	if err != nil {
		return EchoResult{}, err
	}
	var r EchoResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return r, fmt.Errorf("lab: echo: %w: %s", err, out)
	}
	return r, nil
}

// EchoResult is what `originsrv echo` prints (originsrv.EchoResult).
type EchoResult struct {
	Sent     int    `json:"sent"`
	Echoed   int    `json:"echoed"`
	MaxGapMS int64  `json:"max_gap_ms"`
	GapAtMS  int64  `json:"gap_at_ms"`
	RTTP50US int64  `json:"rtt_p50_us"`
	RTTP99US int64  `json:"rtt_p99_us"`
	RTTMaxUS int64  `json:"rtt_max_us"`
	Broken   bool   `json:"broken"`
	Err      string `json:"err"`
}

// RSS returns the resident memory of process pid in bytes (VmRSS); 0 if
// it cannot be read.
func RSS(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb << 10
				}
			}
		}
	}
	return 0
}

// Hold opens n connections at once through p's namespace to url (originsrv
// hold: the origin's /hold answers after ms) and returns once they have
// all been answered or failed; ok counts the answered.
func (p Probe) Hold(url string, n int, hold time.Duration) (ok int, err error) {
	out, err := p.NS.Run(p.Bin, "hold", "-n", fmt.Sprint(n), "-ms", fmt.Sprint(hold.Milliseconds()), url)
	if err != nil {
		return 0, err
	}
	var r struct {
		OK         int    `json:"ok"`
		Failed     int    `json:"failed"`
		FirstError string `json:"first_error"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, fmt.Errorf("lab: hold: %w: %s", err, out)
	}
	if r.Failed > 0 {
		return r.OK, fmt.Errorf("lab: hold: %d of %d failed, e.g. %s", r.Failed, n, r.FirstError)
	}
	return r.OK, nil
}

// StartDelay runs originsrv's delay hop in ns (bin is originsrv): a TUN
// device dev that hands every packet routed into it back to the kernel
// after d. DelayRoute sends traffic into it. The lab's cleanup stops it.
func (ns *NS) StartDelay(bin, dev string, d time.Duration) (*Proc, error) {
	p, err := ns.Start("delay-"+dev, nil, bin, "delay", "-tun", dev, "-ms", fmt.Sprint(d.Milliseconds()))
	if err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := ns.Run("ip", "link", "show", "dev", dev); err == nil {
			break
		}
		if time.Now().After(deadline) || p.Exited() {
			return nil, fmt.Errorf("lab: [%s] delay hop %s did not come up: %s", ns.Name, dev, p.Output())
		}
	}
	for _, argv := range [][]string{
		{"ip", "link", "set", dev, "up"},
		// Packets come back out of dev with sources routed elsewhere.
		{"sysctl", "-qw", "net.ipv4.conf." + dev + ".rp_filter=0"},
		{"sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"},
	} {
		if _, err := ns.Run(argv...); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// DelayRoute sends the packets that arrive in ns on interface iif for dst
// through the delay hop dev (policy routing table table); what comes back
// out of dev takes the main table on.
func (ns *NS) DelayRoute(dev, iif string, dst netip.Prefix, table int) error {
	fam := "-4"
	if dst.Addr().Is6() {
		fam = "-6"
	}
	t := fmt.Sprint(table)
	for _, argv := range [][]string{
		{"ip", fam, "route", "replace", "default", "dev", dev, "table", t},
		{"ip", fam, "rule", "add", "iif", iif, "to", dst.String(), "lookup", t, "pref", t},
	} {
		if _, err := ns.Run(argv...); err != nil {
			return err
		}
	}
	return nil
}
