package server

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/internal/etcdtest"
	"github.com/wedge-edge/wedge/internal/testutil"
	"github.com/wedge-edge/wedge/server/registry"
)

// usageLab is a node on bbolt with one client device that can send it
// packets and receive packets from it.
type usageLab struct {
	n                    *Node
	st                   *registry.Bolt
	reg                  registry.Client
	serverTUN, clientTUN *tuntest.ChannelTUN
	h                    http.Handler
}

func newUsageLab(t *testing.T, interval time.Duration) *usageLab {
	t.Helper()
	st, err := registry.OpenBolt(filepath.Join(t.TempDir(), "reg.db"), registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	binds := bindtest.NewChannelBinds()
	sk, _ := wgtypes.GeneratePrivateKey()
	l := &usageLab{st: st, serverTUN: tuntest.NewChannelTUN(), clientTUN: tuntest.NewChannelTUN()}
	l.n, err = New(context.Background(), Config{
		Name: "wedgetest", PrivateKey: sk, Store: st, MTU: 1420,
		TUN: l.serverTUN.TUN(), Bind: binds[1],
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		UsageInterval: interval,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.n.Close)
	l.connect(t, binds[0], sk.PublicKey())
	return l
}

// connect registers a client and brings its device up on bind.
func (l *usageLab) connect(t *testing.T, bind conn.Bind, server wgtypes.Key) {
	t.Helper()
	l.h = l.n.routes()
	ck, _ := wgtypes.GeneratePrivateKey()
	var err error
	if l.reg, err = l.n.Register(context.Background(), ck.PublicKey(), registry.Tags{}); err != nil {
		t.Fatal(err)
	}
	cfg, _ := l.n.dev.IpcGet()
	port := regexp.MustCompile(`listen_port=(\d+)`).FindStringSubmatch(cfg)[1]
	client := device.NewDevice(l.clientTUN.TUN(), bind, device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(client.Close)
	hexk := func(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }
	if err := client.IpcSet("private_key=" + hexk(ck) + "\nlisten_port=0\npublic_key=" + hexk(server) +
		"\nallowed_ip=0.0.0.0/0\nendpoint=127.0.0.1:" + port + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := client.Up(); err != nil {
		t.Fatal(err)
	}
}

// traffic sends k packets each way through the tunnel.
func (l *usageLab) traffic(t *testing.T, k int) {
	t.Helper()
	far := netip.MustParseAddr("192.0.2.9")
	for range k {
		l.clientTUN.Outbound <- tuntest.Ping(far, l.reg.V4)
		select {
		case <-l.serverTUN.Inbound:
		case <-time.After(5 * time.Second):
			t.Fatal("the client's packet did not arrive")
		}
		l.serverTUN.Outbound <- tuntest.Ping(l.reg.V4, far)
		select {
		case <-l.clientTUN.Inbound:
		case <-time.After(5 * time.Second):
			t.Fatal("the node's packet did not reach the client")
		}
	}
}

func (l *usageLab) get(t *testing.T) api.Registration {
	t.Helper()
	rec := httptest.NewRecorder()
	l.h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/reg/"+l.reg.ID, nil))
	var r api.Registration
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &r) != nil || r.Usage == nil {
		t.Fatalf("GET: %d %s", rec.Code, rec.Body)
	}
	return r
}

func (l *usageLab) patch(t *testing.T, body string) api.Registration {
	t.Helper()
	rec := httptest.NewRecorder()
	l.h.ServeHTTP(rec, httptest.NewRequest("PATCH", "/v1/reg/"+l.reg.ID, strings.NewReader(body)))
	var r api.Registration
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &r) != nil || r.Usage == nil {
		t.Fatalf("PATCH %s: %d %s", body, rec.Code, rec.Body)
	}
	return r
}

// TestUsageAndQuota: the node counts a client's bytes both ways into the
// registry, GET shows them, a quota below them makes the client over
// quota (OverQuota, over_quota) and a usage reset ends that; Close adds
// what was counted since the last flush.
func TestUsageAndQuota(t *testing.T) {
	l := newUsageLab(t, 100*time.Millisecond)
	r := l.get(t)
	if r.Usage.RxBytes != 0 || r.Usage.TxBytes != 0 || !r.Usage.Since.Equal(l.reg.Created) || r.Usage.OverQuota {
		t.Fatalf("new registration's usage: %+v (created %v)", r.Usage, l.reg.Created)
	}
	l.traffic(t, 10)
	testutil.WaitFor(t, 5*time.Second, "usage counted both ways", func() bool {
		u := l.get(t).Usage
		return u.RxBytes > 10*28 && u.TxBytes > 10*28
	})
	if l.n.OverQuota(l.reg.ClientID) {
		t.Fatal("over quota without a quota")
	}
	r = l.patch(t, `{"quota_bytes": 100}`)
	if r.QuotaBytes != 100 || !r.Usage.OverQuota {
		t.Fatalf("after a quota below the usage: %+v", r)
	}
	if !l.n.OverQuota(l.reg.ClientID) {
		t.Fatal("the node does not hold the client over quota at once after the PATCH")
	}
	// A reset starts a new period: since now, counts zero, flows again.
	before := time.Now().Add(-time.Second)
	r = l.patch(t, `{"usage_reset": true}`)
	if r.Usage.Since.Before(before) || r.Usage.OverQuota || r.Usage.RxBytes+r.Usage.TxBytes > 100 {
		t.Fatalf("after usage_reset: %+v", r.Usage)
	}
	if l.n.OverQuota(l.reg.ClientID) {
		t.Fatal("still over quota after a reset")
	}
	// Crossing the quota in the new period is noticed by the node's own
	// counting, within its interval.
	l.traffic(t, 10)
	testutil.WaitFor(t, 5*time.Second, "over quota again", func() bool { return l.n.OverQuota(l.reg.ClientID) })
	if u := l.get(t).Usage; !u.OverQuota {
		t.Fatalf("GET: %+v", u)
	}
	// Malformed values are refused with what a good one looks like, and
	// change nothing.
	for _, body := range []string{`{"quota_bytes":-1}`, `{"quota_bytes":"10"}`, `{"quota_bytes":1.5}`,
		`{"quota_bytes":18446744073709551616}`, `{"quota_bytes":true}`,
		`{"usage_reset":false}`, `{"usage_reset":"yes"}`, `{"usage_reset":null}`, `{"usage_reset":1}`} {
		code, ans := do(t, l.h, "PATCH", "/v1/reg/"+l.reg.ID, body)
		field := body[2 : strings.Index(body[2:], `"`)+2]
		if msg, _ := ans["error"].(string); code != 400 || !strings.Contains(msg, field) {
			t.Errorf("PATCH %s: %d %v; want 400 naming %s", body, code, ans, field)
		}
	}
	if r = l.get(t); r.QuotaBytes != 100 || !r.Usage.OverQuota {
		t.Fatalf("refused PATCHes changed the registration: %+v", r)
	}
	// null removes the quota.
	if r = l.patch(t, `{"quota_bytes": null}`); r.QuotaBytes != 0 || r.Usage.OverQuota || l.n.OverQuota(l.reg.ClientID) {
		t.Fatalf("after quota null: %+v, OverQuota %v", r, l.n.OverQuota(l.reg.ClientID))
	}
}

// TestPlusTier: a plus client has the plus tier (its flows may be
// relayed) while within its quota; over it, it falls back to the free
// tier: not relayed, and its new flows are not refused either (as WARP+
// data ran out). Taking plus away or a reset applies at once.
func TestPlusTier(t *testing.T) {
	l := newUsageLab(t, 100*time.Millisecond)
	id := l.reg.ClientID
	if l.n.Plus(id) {
		t.Fatal("a free registration has the plus tier")
	}
	l.patch(t, `{"plus": true}`)
	if !l.n.Plus(id) || l.n.OverQuota(id) {
		t.Fatalf("after plus: Plus %v, OverQuota %v; want true, false", l.n.Plus(id), l.n.OverQuota(id))
	}
	l.traffic(t, 10)
	testutil.WaitFor(t, 5*time.Second, "usage counted", func() bool { u := l.get(t).Usage; return u.RxBytes+u.TxBytes > 100 })
	if r := l.patch(t, `{"quota_bytes": 100}`); !r.Usage.OverQuota {
		t.Fatalf("after a quota below the usage: %+v", r.Usage)
	}
	if l.n.Plus(id) || l.n.OverQuota(id) {
		t.Fatalf("plus client over its quota: Plus %v, OverQuota %v; want false, false (the free tier)", l.n.Plus(id), l.n.OverQuota(id))
	}
	l.patch(t, `{"usage_reset": true}`)
	if !l.n.Plus(id) {
		t.Fatal("plus not back after a usage reset")
	}
	l.patch(t, `{"plus": false}`)
	if l.n.Plus(id) {
		t.Fatal("plus kept after it was taken away")
	}
}

// TestUsageFlushOnClose: bytes counted since the last flush are added to
// the registry when the node closes.
func TestUsageFlushOnClose(t *testing.T) {
	l := newUsageLab(t, time.Hour) // only Close's flush can add them
	l.traffic(t, 5)
	l.n.Close()
	u, err := l.st.Usage(context.Background(), l.reg.ID)
	if err != nil || u.Rx() == 0 || u.Tx() == 0 {
		t.Fatalf("usage after Close: rx %d tx %d, %v", u.Rx(), u.Tx(), err)
	}
}

// TestUsageList: GET /v1/reg pages the registrations with their usage.
func TestUsageList(t *testing.T) {
	l := newUsageLab(t, 100*time.Millisecond)
	for range 4 {
		if _, err := l.n.Register(context.Background(), newPub(t), registry.Tags{}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	after := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("too many pages")
		}
		rec := httptest.NewRecorder()
		l.h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/reg?limit=2&after="+after, nil))
		var page api.RegList
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &page) != nil {
			t.Fatalf("list: %d %s", rec.Code, rec.Body)
		}
		for _, r := range page.Registrations {
			if r.Usage == nil || r.Token != "" || seen[r.ID] {
				t.Fatalf("listed %+v", r)
			}
			seen[r.ID] = true
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	if len(seen) != 5 || !seen[l.reg.ID] {
		t.Fatalf("listed %d registrations, want 5", len(seen))
	}
}

// FuzzParseListQuery: any query string is read or refused with an error,
// never a panic, and what is read is in range.
func FuzzParseListQuery(f *testing.F) {
	for _, s := range []string{"", "limit=10", "after=0123456789abcdef0123456789abcdef&limit=1000", "limit=-1", "x=%zz", "after=&after="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := parseListQuery(raw)
		if err != nil {
			return
		}
		if q.Limit < 1 || q.Limit > registry.MaxUsagePage || (q.After != "" && !registry.ValidID(q.After)) {
			t.Fatalf("%q read as %+v", raw, q)
		}
	})
}

// FuzzParseRegPatch: any PATCH body is read or refused with an error,
// never a panic; usage_reset is only ever set by true.
func FuzzParseRegPatch(f *testing.F) {
	for _, s := range []string{`{"quota_bytes": 5}`, `{"quota_bytes": null}`, `{"usage_reset": true}`, `{"usage_reset": false}`,
		`{"quota_bytes": -1}`, `{"quota_bytes": 1e30}`, `{"pool": "a", "country": "NL", "plus": true}`, `[]`, `null`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var raw map[string]json.RawMessage
		if decodeJSON(strings.NewReader(body), &raw) != nil {
			return
		}
		p, err := parseRegPatch(raw, adminPatchFields)
		if err != nil {
			return
		}
		if p.UsageReset && !strings.Contains(body, "true") {
			t.Fatalf("%q read as a usage reset", body)
		}
	})
}

// TestClusterQuota: usage another node adds in etcd makes this node
// refuse the client (OverQuota) within its check, a quota set through one
// node holds on the other, and a reset through one lifts it on both.
func TestClusterQuota(t *testing.T) {
	e := etcdtest.Start(t)
	sk, _ := wgtypes.GeneratePrivateKey()
	a := newClusterNode(t, e, "node-a", sk)
	b := newClusterNode(t, e, "node-b", sk)
	ctx := context.Background()
	reg, err := a.Register(ctx, newPub(t), registry.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	if reg, err = a.PatchRegistration(ctx, reg.ID, RegPatch{QuotaBytes: ptr(uint64(1000))}); err != nil {
		t.Fatal(err)
	}
	// A third node (as far as etcd can tell) adds bytes past the quota.
	other, _ := registry.NewEtcd(e.Client(t), "/wedge/", registry.DefaultPools)
	if _, err := other.AddUsage(ctx, "node-c", 1, []registry.Delta{{ID: reg.ID, Rx: 900, Tx: 200}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{a, b} {
		testutil.WaitFor(t, 2*overCheckEvery, "over quota on "+n.usage.node, func() bool { return n.OverQuota(reg.ClientID) })
		if u := n.usageOf(ctx, reg); u == nil || !u.OverQuota || u.RxBytes != 900 || u.TxBytes != 200 {
			t.Fatalf("%s: usage %+v", n.usage.node, u)
		}
	}
	if _, err := b.ResetUsage(ctx, reg.ID); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{a, b} {
		testutil.WaitFor(t, 2*overCheckEvery, "quota lifted on "+n.usage.node, func() bool { return !n.OverQuota(reg.ClientID) })
	}
}

func ptr[T any](v T) *T { return &v }

// lostAnswers is a Bolt whose first AddUsage commits and then reports a
// failure, as a write whose answer was lost with the connection does.
type lostAnswers struct {
	*registry.Bolt
	calls atomic.Int32
}

func (s *lostAnswers) AddUsage(ctx context.Context, node string, batch uint64, ds []registry.Delta) (map[string]registry.Usage, error) {
	got, err := s.Bolt.AddUsage(ctx, node, batch, ds)
	if s.calls.Add(1) == 1 && len(ds) > 0 {
		return nil, errors.New("connection lost")
	}
	return got, err
}

// TestUsageRetryNotTwice: a batch whose write committed but whose answer
// was lost is tried again as it was, and counted once: the registry ends
// with exactly what the device counted.
func TestUsageRetryNotTwice(t *testing.T) {
	st, err := registry.OpenBolt(filepath.Join(t.TempDir(), "reg.db"), registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	lost := &lostAnswers{Bolt: st}
	binds := bindtest.NewChannelBinds()
	sk, _ := wgtypes.GeneratePrivateKey()
	l := &usageLab{st: st, serverTUN: tuntest.NewChannelTUN(), clientTUN: tuntest.NewChannelTUN()}
	l.n, err = New(context.Background(), Config{
		Name: "wedgetest", PrivateKey: sk, Store: lost, MTU: 1420,
		TUN: l.serverTUN.TUN(), Bind: binds[1],
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		UsageInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.n.Close()
	l.connect(t, binds[0], sk.PublicKey())
	l.traffic(t, 5)
	testutil.WaitFor(t, 5*time.Second, "a failed flush and a good one", func() bool {
		return l.n.usage.flushErrors.Load() == 1 && l.n.usage.flushes.Load() >= 2
	})
	l.traffic(t, 5)
	peers, _ := l.n.peers()
	l.n.Close() // adds the rest; the device counts no more
	u, _ := st.Usage(context.Background(), l.reg.ID)
	if len(peers) != 1 || u.Rx() != peers[0].RxBytes || u.Tx() != peers[0].TxBytes {
		t.Fatalf("registry rx %d tx %d; the device counted %+v", u.Rx(), u.Tx(), peers)
	}
}

// TestUsageLoadedAtStart: a node alone (bbolt) that starts with a client
// already over its quota in its store refuses it from the start.
func TestUsageLoadedAtStart(t *testing.T) {
	st, err := registry.OpenBolt(filepath.Join(t.TempDir(), "reg.db"), registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	c, err := st.Create(ctx, registry.Client{PublicKey: newPub(t), QuotaBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUsage(ctx, "local", 1, []registry.Delta{{ID: c.ID, Rx: 11}}); err != nil {
		t.Fatal(err)
	}
	sk, _ := wgtypes.GeneratePrivateKey()
	n, err := New(ctx, Config{Name: "wedgetest", PrivateKey: sk, Store: st, MTU: 1420,
		TUN: tuntest.NewChannelTUN().TUN(), Bind: bindtest.NewChannelBinds()[0],
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	testutil.WaitFor(t, 2*time.Second, "the client over quota", func() bool { return n.OverQuota(c.ClientID) })
}
