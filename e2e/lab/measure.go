package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// IperfOpts are the knobs of one iperf3 client run.
type IperfOpts struct {
	Seconds  int  // -t; 0: 3
	Reverse  bool // -R: the server sends
	Parallel int  // -P; 0: 1
	Port     int  // -p; 0: IperfPort
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
	}
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumSent     *sum `json:"sum_sent"`
			SumReceived *sum `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return IperfResult{}, fmt.Errorf("bad JSON report: %w: %.300s", err, out)
	}
	if rep.Error != "" {
		return IperfResult{}, fmt.Errorf("%s", rep.Error)
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
