package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/front"
	"github.com/wedge-edge/wedge/server/registry"
	"github.com/wedge-edge/wedge/server/relay"
)

// verdicts stand for lb's counter names (a fixed set).
var verdicts = []string{"not_ours", "malformed", "local", "forwarded", "pin_hit", "flow_hit", "decap", "index_hit", "egress", "index_heir"}

// fakes are Sources with every metric present and distinct values: n
// numbers the fields in the order they are read.
func fakes() Sources {
	n := uint64(0)
	next := func() uint64 { n++; return n * 10 }
	flows := func() Flows {
		f := Flows{Open: int64(next()), Opened: next(), Refused: map[string]uint64{}, DialTimeouts: next(), DialErrors: next()}
		for _, r := range RefusalReasons {
			f.Refused[r] = next()
		}
		return f
	}
	st := Stack{
		TCP: flows(), UDP: flows(),
		PacketsFromClient: 1001, PacketsToClient: 1002, BytesFromClient: 1003, BytesToClient: 1004,
		DroppedFromClient: 1005, DroppedToClient: 1006,
		TCPEstablished: 1007, TCPRetransmits: 1008, TCPFailedAttempts: 1009,
		TCPEstablishedResets: 1010, TCPTimeouts: 1011, TCPResetsSent: 1012,
	}
	counts := func(base uint64) egress.Counts {
		return egress.Counts{OK: base, Failed: base * 4, Denied: base + 2, NoEgress: base + 3, SliceExhausted: base + 4, PortShare: base + 1}
	}
	fc := front.Counters{Verdicts: map[string]uint64{}, TableNodes: 3, Pins: 4, Heirs: 1, EgressAddresses: 2, ForwardErrors: 7, FlowErrors: 8}
	for i, v := range verdicts {
		fc.Verdicts[v] = uint64(100 + i)
	}
	return Sources{
		Node: func() server.Counters {
			return server.Counters{Clients: 1000, Active: 400, PeersAdded: 1100, PeersRemoved: 100,
				Peers: server.PeersStatus{Held: 500, Max: 65536, Removed: map[string]uint64{"deleted": 20, "idle": 21, "unfinished": 22, "full": 23},
					RefusedFull: 24, RefusedReplay: 25, Opens: 26, Known: 27, Unregistered: 28, MissRemembered: 29,
					RateLimited: 30, CookiesSent: 31, PassedLoaded: 32, OpenFailed: 33, AddSlow: 34},
				Bind:    server.BindStatus{Stamped: 1, Unstamped: 2, Mismatches: 3, HandshakesStarted: 4, RecoveriesRefused: 5, SessionsInherited: 6, CookieReplies: 7, InitiationsSent: 13, ResponsesSent: 14},
				Indexes: &server.IndexStatus{Opened: 8, OpenFailed: 9, OpenLimited: 10, NotRecorded: 11, Forwarded: 12},
			}
		},
		Stack:  func() Stack { return st },
		Egress: func() egress.Stats { return egress.Stats{TCP: counts(100), UDP: counts(200), Ping: counts(300)} },
		Slices: func() []egress.Slice {
			return []egress.Slice{{Addr: netip.MustParseAddr("192.0.2.99"), PortLo: 32768, PortHi: 36863}}
		},
		Front: func() (front.Counters, error) { return fc, nil },
		Cluster: func() Cluster {
			return Cluster{EtcdReachable: true, ActiveNodes: 3, Draining: 1, SelfDraining: true, Revision: 1234, WatchLag: 5}
		},
		RelayClient: func() relay.Stats {
			return relay.Stats{Relayed: 501, Direct: 502, Fallbacks: 503, Skipped: 504, Refused: 505, Failed: 506, Conns: 507, ExitsDown: 2}
		},
		RelayServer: func() relay.ServerStats {
			return relay.ServerStats{Conns: 601, ConnsOpen: 602, TLSRefused: 603, Streams: 604, StreamsOpen: 605, BadRequests: 606, HopLimit: 607, Denied: 608, DialFailures: 609}
		},
	}
}

// series gathers g into "name{label="value",...}" → value.
func series(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := mf.GetName()
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			out[key] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return -1 // histograms, summaries: Go's own
}

func collectorOnly(src Sources) *prometheus.Registry {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(New(src))
	return reg
}

// TestLint: names, types and help pass Prometheus's linter, for our
// collector and for the whole registry the handler serves.
func TestLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(New(fakes()))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	problems, err = testutil.GatherAndLint(Registry(fakes()))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint (whole registry): %s: %s", p.Metric, p.Text)
	}
	// The pedantic registry checks every metric against its Desc.
	if _, err := collectorOnly(fakes()).Gather(); err != nil {
		t.Fatal(err)
	}
}

// TestValues: the metrics are the sources' numbers.
func TestValues(t *testing.T) {
	src := fakes()
	got := series(t, collectorOnly(src))
	st, eg, fc := src.Stack(), src.Egress(), func() front.Counters { f, _ := src.Front(); return f }()
	want := map[string]float64{
		`wedge_clients_registered`:                                                1000,
		`wedge_peers_active`:                                                      400,
		`wedge_peers_added_total`:                                                 1100,
		`wedge_peers_removed_total`:                                               100,
		`wedge_peers_held`:                                                        500,
		`wedge_peers_max`:                                                         65536,
		`wedge_peers_evicted_total{reason="idle"}`:                                21,
		`wedge_peers_evicted_total{reason="unfinished"}`:                          22,
		`wedge_peers_evicted_total{reason="full"}`:                                23,
		`wedge_peers_refused_total{reason="full"}`:                                24,
		`wedge_peers_refused_total{reason="replay"}`:                              25,
		`wedge_peer_opens_total`:                                                  26,
		`wedge_peer_door_total{outcome="known"}`:                                  27,
		`wedge_peer_door_total{outcome="unregistered"}`:                           28,
		`wedge_peer_door_total{outcome="miss_remembered"}`:                        29,
		`wedge_peer_door_total{outcome="rate_limited"}`:                           30,
		`wedge_peer_door_total{outcome="cookie_sent"}`:                            31,
		`wedge_peer_door_total{outcome="passed_under_load"}`:                      32,
		`wedge_peer_door_total{outcome="open_failed"}`:                            33,
		`wedge_peer_door_total{outcome="add_slow"}`:                               34,
		`wedge_messages_received_total{kind="stamped"}`:                           1,
		`wedge_messages_received_total{kind="unstamped"}`:                         2,
		`wedge_client_id_mismatches_total`:                                        3,
		`wedge_handshakes_initiated_total{reason="recovery"}`:                     4,
		`wedge_session_recoveries_refused_total`:                                  5,
		`wedge_handshakes_initiated_total{reason="inheritance"}`:                  6,
		`wedge_handshake_messages_sent_total{type="cookie_reply"}`:                7,
		`wedge_handshake_messages_sent_total{type="initiation"}`:                  13,
		`wedge_handshake_messages_sent_total{type="response"}`:                    14,
		`wedge_handshake_responses_total{outcome="opened"}`:                       8,
		`wedge_handshake_responses_total{outcome="open_failed"}`:                  9,
		`wedge_handshake_responses_total{outcome="rate_limited"}`:                 10,
		`wedge_handshake_responses_total{outcome="unrecorded"}`:                   11,
		`wedge_handshakes_forwarded_total`:                                        12,
		`wedge_tunnel_packets_total{direction="from_client"}`:                     float64(st.PacketsFromClient),
		`wedge_tunnel_packets_total{direction="to_client"}`:                       float64(st.PacketsToClient),
		`wedge_tunnel_bytes_total{direction="from_client"}`:                       float64(st.BytesFromClient),
		`wedge_tunnel_bytes_total{direction="to_client"}`:                         float64(st.BytesToClient),
		`wedge_tunnel_dropped_packets_total{direction="from_client"}`:             float64(st.DroppedFromClient),
		`wedge_tunnel_dropped_packets_total{direction="to_client"}`:               float64(st.DroppedToClient),
		`wedge_flows_open{protocol="udp"}`:                                        float64(st.UDP.Open),
		`wedge_flows_opened_total{protocol="tcp"}`:                                float64(st.TCP.Opened),
		`wedge_flows_refused_total{protocol="tcp",reason="acl"}`:                  float64(st.TCP.Refused["acl"]),
		`wedge_flows_refused_total{protocol="udp",reason="rate"}`:                 float64(st.UDP.Refused["rate"]),
		`wedge_flows_dial_failures_total{protocol="tcp",reason="timeout"}`:        float64(st.TCP.DialTimeouts),
		`wedge_flows_dial_failures_total{protocol="udp",reason="error"}`:          float64(st.UDP.DialErrors),
		`wedge_netstack_tcp_established`:                                          float64(st.TCPEstablished),
		`wedge_netstack_tcp_retransmitted_segments_total`:                         float64(st.TCPRetransmits),
		`wedge_netstack_tcp_failed_connection_attempts_total`:                     float64(st.TCPFailedAttempts),
		`wedge_netstack_tcp_established_resets_total`:                             float64(st.TCPEstablishedResets),
		`wedge_netstack_tcp_retransmission_timeouts_total`:                        float64(st.TCPTimeouts),
		`wedge_netstack_tcp_resets_sent_total`:                                    float64(st.TCPResetsSent),
		`wedge_egress_dials_total{protocol="tcp"}`:                                float64(eg.TCP.OK + eg.TCP.Failed + eg.TCP.Denied),
		`wedge_egress_dial_errors_total{protocol="udp",reason="acl"}`:             float64(eg.UDP.Denied),
		`wedge_egress_dial_errors_total{protocol="tcp",reason="no_egress"}`:       float64(eg.TCP.NoEgress),
		`wedge_egress_dial_errors_total{protocol="udp",reason="slice_exhausted"}`: float64(eg.UDP.SliceExhausted),
		`wedge_egress_dial_errors_total{protocol="udp",reason="port_share"}`:      float64(eg.UDP.PortShare),
		`wedge_egress_dial_errors_total{protocol="icmp",reason="other"}`:          float64(eg.Ping.Failed - eg.Ping.NoEgress - eg.Ping.SliceExhausted - eg.Ping.PortShare),
		`wedge_egress_ports{address="192.0.2.99"}`:                                4096,
		`wedge_egress_ports_in_use{address="192.0.2.99"}`:                         0, // not on this host
		`wedge_xdp_packets_total{verdict="index_hit"}`:                            float64(fc.Verdicts["index_hit"]),
		`wedge_xdp_packets_total{verdict="not_ours"}`:                             float64(fc.Verdicts["not_ours"]),
		`wedge_xdp_table_nodes`:                                                   3,
		`wedge_xdp_pins`:                                                          4,
		`wedge_xdp_heirs`:                                                         1,
		`wedge_xdp_egress_addresses`:                                              2,
		`wedge_xdp_forward_errors_total{kind="send"}`:                             7,
		`wedge_xdp_forward_errors_total{kind="flow_entry"}`:                       8,
		`wedge_cluster_etcd_reachable`:                                            1,
		`wedge_cluster_nodes{state="active"}`:                                     3,
		`wedge_cluster_nodes{state="draining"}`:                                   1,
		`wedge_cluster_draining`:                                                  1,
		`wedge_cluster_revision`:                                                  1234,
		`wedge_cluster_watch_lag_revisions`:                                       5,
		`wedge_relay_flows_total{route="relayed"}`:                                501,
		`wedge_relay_flows_total{route="direct"}`:                                 502,
		`wedge_relay_fallbacks_total`:                                             503,
		`wedge_relay_skipped_total`:                                               504,
		`wedge_relay_refused_total`:                                               505,
		`wedge_relay_failures_total`:                                              506,
		`wedge_relay_exits_down`:                                                  2,
		`wedge_relay_served_total{outcome="relayed"}`:                             604,
		`wedge_relay_served_total{outcome="bad_request"}`:                         606,
		`wedge_relay_served_total{outcome="hop_limit"}`:                           607,
		`wedge_relay_served_total{outcome="denied"}`:                              608,
		`wedge_relay_served_total{outcome="dial_failed"}`:                         609,
		`wedge_relay_streams_open`:                                                605,
		`wedge_relay_connections_open`:                                            602,
		`wedge_relay_tls_refused_total`:                                           603,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("%s: missing", k)
		} else if g != v {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
	// The peers on demand: held, max, 3 evicted, 2 refused, opens, 8 door;
	// the relay: 7 client series, 8 server series.
	if n := len(got); n != 4+2+1+4+1+3+2+1+6+2*(2+len(RefusalReasons)+2)+6+3*(1+5)+2+len(verdicts)+4+2+6+2+3+2+1+8+7+8 {
		t.Errorf("%d series; a metric was added or lost? (update this test and the README)", n)
	}
}

// TestSourcesOptional: a node without the front, a cluster or netstack
// numbers serves the rest, and a failing front leaves only its metrics
// out.
func TestSourcesOptional(t *testing.T) {
	if got := series(t, collectorOnly(Sources{})); len(got) != 0 {
		t.Fatalf("no sources, yet %v", got)
	}
	src := fakes()
	src.Front = func() (front.Counters, error) { return front.Counters{}, errors.New("map gone") }
	rec := httptest.NewRecorder()
	Handler(src).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != 200 || !strings.Contains(body, "wedge_peers_active 400") || strings.Contains(body, "wedge_xdp_pins") {
		t.Fatalf("scrape with a failing front: %d\n%s", rec.Code, body)
	}
}

// TestHandler: the text format, with Go's runtime metrics beside ours.
func TestHandler(t *testing.T) {
	rec := httptest.NewRecorder()
	Handler(fakes()).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	ct := rec.Header().Get("Content-Type")
	if rec.Code != 200 || !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("%d %q", rec.Code, ct)
	}
	for _, s := range []string{
		"# TYPE wedge_tunnel_bytes_total counter",
		`wedge_tunnel_bytes_total{direction="to_client"} 1004`,
		"# TYPE wedge_peers_active gauge",
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		if !strings.Contains(rec.Body.String(), s) {
			t.Errorf("no %q in\n%s", s, rec.Body.String())
		}
	}
}

// TestSeriesBounded: a real node with 10 and with 1,000 registered
// clients exports the same series (no label is per client), and the whole
// registry, Go's and the process's metrics included, stays far below the
// issue's bound of 2,000 series for 100,000 clients.
func TestSeriesBounded(t *testing.T) {
	var sets [][]string
	for _, n := range []int{10, 1000} {
		node := nodeWith(t, n)
		src := fakes()
		src.Node = node.Counters
		reg := Registry(src)
		got := series(t, reg)
		if got["wedge_clients_registered"] != float64(n) {
			t.Fatalf("wedge_clients_registered = %v, want %d", got["wedge_clients_registered"], n)
		}
		keys := make([]string, 0, len(got))
		for k := range got {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		sets = append(sets, keys)
		// Histograms and summaries count one series per bucket and more.
		count, err := testutil.GatherAndCount(reg)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d clients: %d series", n, count)
		if count >= 500 {
			t.Errorf("%d series with %d clients", count, n)
		}
	}
	if !slices.Equal(sets[0], sets[1]) {
		t.Fatalf("series differ between 10 and 1,000 clients:\n%v\n%v", sets[0], sets[1])
	}
}

// nodeWith is a node whose registry holds n clients.
func nodeWith(t *testing.T, n int) *server.Node {
	t.Helper()
	// Each Create is a transaction and an fsync: on tmpfs when there is
	// one, it takes milliseconds instead of seconds.
	dir := t.TempDir()
	if d, err := os.MkdirTemp("/dev/shm", "wedge-metrics-test"); err == nil {
		dir = d
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	st, err := registry.OpenBolt(filepath.Join(dir, "reg.db"), registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		k, _ := wgtypes.GeneratePrivateKey()
		if _, err := st.Create(context.Background(), registry.Client{PublicKey: k.PublicKey()}); err != nil {
			t.Fatal(err)
		}
	}
	sk, _ := wgtypes.GeneratePrivateKey()
	node, err := server.New(context.Background(), server.Config{
		Name: "metricstest", PrivateKey: sk, Store: st, MTU: 1420,
		TUN: tuntest.NewChannelTUN().TUN(), Bind: bindtest.NewChannelBinds()[0],
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close(); st.Close() })
	return node
}

// TestREADME: the README's list of metrics is what wedged exports.
func TestREADME(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(wedge_[a-z_]+)` \\|").FindAllStringSubmatch(string(b), -1) {
		listed = append(listed, m[1])
	}
	mfs, err := collectorOnly(fakes()).Gather()
	if err != nil {
		t.Fatal(err)
	}
	var exported []string
	for _, mf := range mfs {
		exported = append(exported, mf.GetName())
	}
	slices.Sort(listed)
	slices.Sort(exported)
	if !slices.Equal(listed, exported) {
		t.Fatalf("README lists\n%v\nwedged exports\n%v", listed, exported)
	}
	if len(all) != len(exported) {
		t.Fatalf("%d metrics described, %d exported by the test's sources", len(all), len(exported))
	}
}
