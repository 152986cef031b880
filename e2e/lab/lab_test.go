package lab

// Unit tests of the lab's pure parts: no root, no namespaces.

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseIperf(t *testing.T) {
	for _, tc := range []struct {
		name    string
		json    string
		want    IperfResult
		wantErr string
	}{
		{
			name: "ok",
			json: `{"start":{},"end":{
				"sum_sent":{"seconds":1.0006,"bytes":3230924800,"bits_per_second":2.58e10,"retransmits":1,"sender":true},
				"sum_received":{"seconds":1.0039,"bytes":3229745152,"bits_per_second":2.57e10,"sender":true}}}`,
			want: IperfResult{BitsPerSecond: 2.57e10, BytesSent: 3230924800, BytesReceived: 3229745152, Seconds: 1.0039, Retransmits: 1},
		},
		{
			name:    "refused",
			json:    `{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}`,
			wantErr: "Connection refused",
		},
		{
			name: "udp",
			json: `{"start":{"test_start":{"protocol":"UDP"}},"end":{
				"sum":{"seconds":1.000465,"bytes":62486400,"bits_per_second":499742276.8,"jitter_ms":0.0066,"lost_percent":38.6,"sender":true},
				"sum_sent":{"seconds":1.000298,"bytes":62486400,"bits_per_second":499742276.8,"lost_percent":0,"sender":true},
				"sum_received":{"seconds":1.000465,"bytes":38354400,"bits_per_second":306692587.9,"jitter_ms":0.0066,"lost_percent":38.6,"sender":false}}}`,
			want: IperfResult{BitsPerSecond: 306692587.9, BytesSent: 62486400, BytesReceived: 38354400, Seconds: 1.000465, LostPercent: 38.6, JitterMS: 0.0066},
		},
		{name: "udp-no-sums", json: `{"start":{"test_start":{"protocol":"UDP"}},"end":{}}`, wantErr: "UDP report has no end sums"},
		{name: "no-sums", json: `{"end":{}}`, wantErr: "no end sums"},
		{name: "not-json", json: `iperf3: error`, wantErr: "bad JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseIperf([]byte(tc.json))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseIperf: got error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("parseIperf: got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestClientConfig(t *testing.T) {
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	peer, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	c := ClientConfig{
		PrivateKey: k.Private,
		Addresses:  []netip.Prefix{BaselineClient4, BaselineClient6},
		DNS:        []netip.Addr{Origin4.Addr()},
		PeerKey:    peer.Public,
		Endpoint:   netip.AddrPortFrom(VIP6, 51820),
	}
	conf := c.String()
	for key, want := range map[string]string{
		"PrivateKey": k.Private,
		"Address":    "198.19.64.2/32, 2001:db8:64::2/128",
		"DNS":        "198.18.0.2",
		"PublicKey":  peer.Public,
		"Endpoint":   "[2001:db8:1::1]:51820",
		"AllowedIPs": "0.0.0.0/0, ::/0",
		"MTU":        "",
	} {
		if got := ConfigValue(conf, key); got != want {
			t.Errorf("%s = %q, want %q in\n%s", key, got, want, conf)
		}
	}
	if len(k.Private) != 44 || len(k.Public) != 44 || k.Private == k.Public {
		t.Errorf("key pair %+v: want two different 32-byte base64 keys", k)
	}
}

func TestTail(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 5, "a\nb\nc"},
		{"a\nb\nc\n", 3, "a\nb\nc"},
		{"", 3, ""},
	} {
		if got := tail([]byte(tc.in), tc.n); got != tc.want {
			t.Errorf("tail(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func TestCleanupsOrder(t *testing.T) {
	var c Cleanups
	var got []int
	c.Cleanup(func() { got = append(got, 1) })
	c.Cleanup(func() {
		got = append(got, 2)
		c.Cleanup(func() { got = append(got, 3) }) // registered while running
	})
	c.Run()
	c.Run() // nothing left
	if want := []int{2, 3, 1}; !slices.Equal(got, want) {
		t.Errorf("cleanup order %v, want %v", got, want)
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "e2e", "lab", "lab.go")); err != nil {
		t.Errorf("RepoRoot() = %s: %v", root, err)
	}
}

func TestIfName(t *testing.T) {
	l := &Lab{ID: "abcdef"}
	seen := map[string]bool{}
	for range 200 {
		n := l.IfName()
		if len(n) > 15 || !validIface.MatchString(n) || seen[n] {
			t.Fatalf("IfName() = %q: want a new valid name of at most 15 bytes", n)
		}
		seen[n] = true
	}
}

// fakeOwner records what a Lab reports through the optional methods.
type fakeOwner struct {
	Cleanups
	errors, logs []string
}

func (o *fakeOwner) Errorf(format string, args ...any) {
	o.errors = append(o.errors, fmt.Sprintf(format, args...))
}
func (o *fakeOwner) Logf(format string, args ...any) {
	o.logs = append(o.logs, fmt.Sprintf(format, args...))
}
func (o *fakeOwner) Failed() bool { return len(o.errors) > 0 }

func TestCleanupReportsRaces(t *testing.T) {
	var o fakeOwner
	l, err := New(&o)
	if err != nil {
		t.Fatal(err)
	}
	log := "==================\nWARNING: DATA RACE\nWrite at 0x00c000012345 by goroutine 7:\n"
	if err := os.WriteFile(filepath.Join(l.Dir, "node-wedged.log"), []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	o.Run()
	if len(o.errors) != 1 || !strings.Contains(o.errors[0], "node-wedged.log") {
		t.Errorf("errors %q, want one naming node-wedged.log", o.errors)
	}
	if _, err := os.Stat(l.Dir); err != nil {
		t.Errorf("lab dir of a failed run: %v, want it kept", err)
	}
	os.RemoveAll(l.Dir)

	// A clean run removes its directory and reports nothing.
	var clean fakeOwner
	if l, err = New(&clean); err != nil {
		t.Fatal(err)
	}
	clean.Run()
	if _, err := os.Stat(l.Dir); !os.IsNotExist(err) || len(clean.errors) > 0 {
		t.Errorf("clean run: dir %v, errors %q; want the dir gone and no errors", err, clean.errors)
	}
}

// TestProcCPU: this process's CPU time grows while it spins; a missing
// process reads 0, and perUnit refuses a failed reading or no work.
func TestProcCPU(t *testing.T) {
	before := procCPU(os.Getpid())
	if before < 0 {
		t.Fatalf("procCPU = %v", before)
	}
	x := 0
	for after := before; after <= before; after = procCPU(os.Getpid()) {
		for i := range 10_000_000 {
			x += i
		}
	}
	_ = x
	if got := procCPU(-1); got != 0 {
		t.Errorf("procCPU(-1) = %v, want 0", got)
	}
	for _, tc := range []struct{ b, a, u, want float64 }{
		{1, 3, 2, 1}, {0, 3, 2, 0}, {1, 0, 2, 0}, {1, 3, 0, 0},
	} {
		if got := perUnit(tc.b, tc.a, tc.u); got != tc.want {
			t.Errorf("perUnit(%v, %v, %v) = %v, want %v", tc.b, tc.a, tc.u, got, tc.want)
		}
	}
}

// TestBenchPrint: the result table has the ratios and the CPU table the
// medians of each side.
func TestBenchPrint(t *testing.T) {
	r := BenchResult{Opts: BenchOpts{Rounds: 3}}
	r.Wedged = BenchSide{Up: []float64{1e9, 2e9, 3e9}, Down: []float64{1e9}, CPS: []float64{100},
		ServerUp: []float64{3, 4, 5}, ServerDown: []float64{2}, ServerCPS: []float64{250},
		ClientUp: []float64{1}, ClientDown: []float64{1.5}, ClientCPS: []float64{80}}
	r.Baseline = BenchSide{Up: []float64{4e9}, Down: []float64{2e9}, CPS: []float64{200},
		ServerUp: []float64{2}, ServerDown: []float64{2.5}, ServerCPS: []float64{150},
		ClientUp: []float64{1.2}, ClientDown: []float64{1.1}, ClientCPS: []float64{90}}
	var b strings.Builder
	r.Print(&b)
	out := b.String()
	for _, want := range []string{"0.50", "2.00", "4.00", "up (s/GB)", "4.00  ", "250.00", "150.00", "per connection (µs)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
