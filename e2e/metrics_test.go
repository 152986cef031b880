package e2e

// wedged --metrics on the single-node lab (lab/topo.go), a stock wg-quick
// client downloading 128 MiB over HTTP from the origin:
//
//   client ──veth── node: wedged --metrics 127.0.0.1:9100 ──veth── origin
//   wg-quick                 scraped from inside the node's namespace   originsrv
//
// The tunnel's byte counters must move by what was downloaded (within 5%:
// the inner IP and TCP headers are counted too), a scrape during the
// download must already see it moving, and the series stay few. An HTTP
// body of known size, not iperf3: iperf3 -R's receiver stops counting at
// the deadline while what is in flight still crosses the tunnel, and its
// sender counts what it wrote, not what arrived (the two differed by 8%
// through wedged's buffers).

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

const metricsAddr = "127.0.0.1:9100"

func TestMetrics(t *testing.T) {
	needLab(t, slices.Concat(lab.ToolsOrigin, lab.ToolsClient)...)
	bins, err := lab.Build(binDir)
	if err != nil {
		t.Fatal(err)
	}
	s, probe := newSingleNode(t)
	w, err := s.StartWedged(bins.Wedged, "--metrics", metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := w.Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.WGQuickUp(conf); err != nil {
		t.Fatal(err)
	}
	if err := s.Client.Ping(lab.Origin4.Addr(), 1); err != nil {
		t.Fatalf("no tunnel: %v", err)
	}

	before := scrape(t, w)
	for name, want := range map[string]float64{
		`wedge_clients_registered`:                                          1,
		`wedge_peers_active`:                                                1,
		`wedge_handshake_messages_sent_total{type="response"}`:              1,
		fmt.Sprintf(`wedge_egress_ports{address="%s"}`, lab.Egress4):        sliceHi - sliceLo + 1,
		fmt.Sprintf(`wedge_egress_ports_in_use{address="%s"}`, lab.Egress4): 0,
	} {
		if got, ok := before[name]; !ok || got != want {
			t.Errorf("%s = %v (present: %v), want %v", name, got, ok, want)
		}
	}
	if n := len(before); n >= 2000 {
		t.Errorf("%d series", n)
	}

	const size = 128 << 20
	type result struct {
		r   lab.BytesResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := probe.Bytes(lab.Origin4.Addr(), size)
		done <- result{r, err}
	}()
	const down = `wedge_tunnel_bytes_total{direction="to_client"}`
	var during map[string]float64
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(100 * time.Millisecond) {
		if during = scrape(t, w); during[down]-before[down] > size/8 {
			break
		}
	}
	res := <-done
	if res.err != nil || !res.r.OK {
		t.Fatalf("download: %+v, %v", res.r, res.err)
	}
	after := scrape(t, w)

	if moved := during[down] - before[down]; moved < size/8 || moved >= after[down]-before[down] {
		t.Errorf("during the download the tunnel's bytes to the client moved by %v, after it by %v", moved, after[down]-before[down])
	}
	if n := during[fmt.Sprintf(`wedge_egress_ports_in_use{address="%s"}`, lab.Egress4)]; n < 1 {
		t.Errorf("egress ports in use during the download: %v, want 1", n)
	}
	if n := during[`wedge_flows_open{protocol="tcp"}`]; n < 1 {
		t.Errorf("TCP flows open during the download: %v, want 1", n)
	}
	// What the tunnel carried is the download, its headers (52 bytes per
	// 1,368: 1.039× in quiet runs) and what the netstack sent again: on
	// this shared machine the client loses packets under load (8% more
	// bytes in some runs). gVisor counts a retransmitted segment once,
	// and its segments are up to 64 KiB (GSO), so that is what each one
	// may add.
	moved := after[down] - before[down]
	retrans := after[`wedge_netstack_tcp_retransmitted_segments_total`] - before[`wedge_netstack_tcp_retransmitted_segments_total`]
	packets := after[`wedge_tunnel_packets_total{direction="to_client"}`] - before[`wedge_tunnel_packets_total{direction="to_client"}`]
	ratio := moved / size
	t.Logf("downloaded %d bytes; tunnel bytes to the client moved by %.0f (%.3f×; %.0f segments retransmitted), from it by %.0f",
		size, moved, ratio, retrans, after[`wedge_tunnel_bytes_total{direction="from_client"}`]-before[`wedge_tunnel_bytes_total{direction="from_client"}`])
	if moved < size || moved > size*1.05+retrans*65536 {
		t.Errorf("the tunnel's bytes to the client moved by %.0f, %.3f× the %d downloaded; want within 5%% (plus at most 64 KiB for each of the %.0f retransmitted segments)", moved, ratio, size, retrans)
	}
	// Each packet is at most the tunnel's MTU (1420).
	if packets < moved/1420 {
		t.Errorf("packets to the client moved by %v for %.0f bytes", packets, moved)
	} else {
		t.Logf("%.0f packets to the client, %.0f bytes each on average", packets, moved/packets)
	}
	for _, name := range []string{`wedge_flows_opened_total{protocol="tcp"}`, `wedge_egress_dials_total{protocol="tcp"}`} {
		if d := after[name] - before[name]; d < 1 {
			t.Errorf("%s moved by %v, want at least the download's connection", name, d)
		}
	}
	if len(after) != len(before) {
		t.Errorf("%d series before the download, %d after", len(before), len(after))
	}

}

// TestMetricsManyClients: the same series with 10,000 registered clients
// as with one (no label per client), far under the 2,000.
func TestMetricsManyClients(t *testing.T) {
	needLab(t, lab.ToolsOrigin...)
	bins, err := lab.Build(binDir)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := newSingleNode(t)
	w, err := s.StartWedged(bins.Wedged, "--metrics", metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	registerMany(t, w, 1)
	one := scrape(t, w)
	start := time.Now()
	registerMany(t, w, 9999)
	t.Logf("registered 9,999 more clients in %v", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	many := scrape(t, w)
	t.Logf("a scrape with 10,000 clients took %v: %d series", time.Since(start).Round(time.Millisecond), len(many))
	if got := many[`wedge_clients_registered`]; got != 10000 {
		t.Errorf("wedge_clients_registered = %v, want 10000", got)
	}
	// Registrations add no peers: clients get theirs when they handshake.
	if got := many[`wedge_peers_added_total`] - one[`wedge_peers_added_total`]; got != 0 || many[`wedge_peers_held`] != 0 {
		t.Errorf("wedge_peers_added_total moved by %v, %v peers held; want 0, 0 (peers on demand)", got, many[`wedge_peers_held`])
	}
	var extra []string
	for k := range many {
		if _, ok := one[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(extra) > 0 || len(many) != len(one) || len(many) >= 2000 {
		t.Errorf("%d series with 10,000 clients, %d with one; new: %v", len(many), len(one), extra)
	}
}

// registerMany registers n clients with random keys through w's admin
// API, 16 at a time.
func registerMany(t *testing.T, w *lab.Wedged, n int) {
	t.Helper()
	client := w.HTTPClient()
	jobs := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				var k [32]byte
				rand.Read(k[:])
				body := fmt.Sprintf(`{"public_key":%q}`, base64.StdEncoding.EncodeToString(k[:]))
				resp, err := client.Post(w.API+"/v1/reg", "application/json", strings.NewReader(body))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("POST /v1/reg: %s", resp.Status)
					}
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		select {
		case jobs <- i:
		case err := <-errs:
			close(jobs)
			wg.Wait()
			t.Fatal(err)
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

// scrape fetches the metrics from inside the node's namespace: series
// ("name{labels}") → value; Go's summaries' quantile lines are skipped.
func scrape(t *testing.T, w *lab.Wedged) map[string]float64 {
	t.Helper()
	resp, err := w.HTTPClient().Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s: %s", resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("bad line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad value in %q", line)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
