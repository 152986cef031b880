package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/internal/etcdtest"
	"github.com/wedge-edge/wedge/internal/udpbind"
	"github.com/wedge-edge/wedge/server/registry"
)

// newTestNode is a Node on a fresh Bolt store; opts change its Config.
func newTestNode(t testing.TB, opts ...func(*Config)) (*Node, registry.Store) {
	t.Helper()
	st, err := registry.OpenBolt(filepath.Join(t.TempDir(), "reg.db"), registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	sk, _ := wgtypes.GeneratePrivateKey()
	cfg := Config{
		Name:       "wedgetest",
		PrivateKey: sk,
		Endpoints:  []string{"192.0.2.1:51820", "[2001:db8::1]:51820"},
		MTU:        1420,
		DNS:        []netip.Addr{netip.MustParseAddr("100.96.0.1")},
		Store:      st,
		TUN:        tuntest.NewChannelTUN().TUN(),
		Bind:       bindtest.NewChannelBinds()[0],
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); st.Close() })
	return n, st
}

func do(t testing.TB, h http.Handler, method, path, body string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	var out map[string]any
	if rec.Body.Len() > 0 {
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("%s %s: body is not JSON: %q", method, path, rec.Body.String())
		}
	}
	if ct := rec.Header().Get("Content-Type"); rec.Body.Len() > 0 && ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	return rec.Code, out
}

func pubKey(t testing.TB) string {
	k, _ := wgtypes.GeneratePrivateKey()
	return k.PublicKey().String()
}

func TestAPIRegisterLifecycle(t *testing.T) {
	n, _ := newTestNode(t)
	h := n.routes()
	pub := pubKey(t)
	code, body := do(t, h, "POST", "/v1/reg", `{"public_key":"`+pub+`"}`)
	if code != 200 {
		t.Fatalf("POST: %d %v", code, body)
	}
	id := body["id"].(string)
	res := body["reserved"].([]any)
	if len(res) != 3 || body["client_id"] == "" || body["mtu"].(float64) != 1420 {
		t.Fatalf("bad response %v", body)
	}
	srv := body["server"].(map[string]any)
	if srv["public_key"] != n.PublicKey().String() || len(srv["endpoints"].([]any)) != 2 || srv["endpoints"].([]any)[1] != "[2001:db8::1]:51820" {
		t.Fatalf("bad server block %v", srv)
	}
	addrs := body["addresses"].(map[string]any)
	if !strings.HasSuffix(addrs["v4"].(string), "/32") || !strings.HasSuffix(addrs["v6"].(string), "/128") {
		t.Fatalf("bad addresses %v", addrs)
	}
	// Known to the node at once; its peer comes when it handshakes,
	// with the registered addresses.
	k, _ := ParsePublicKey(pub)
	c, ok := n.client(k)
	if !ok || c.ID != id {
		t.Fatalf("registration not in the node's view: %+v", c)
	}
	if hasPeer(n, k) {
		t.Fatal("a registration added a peer before any handshake")
	}
	holdPeer(t, n, c)
	cfg, _ := n.dev.IpcGet()
	if !strings.Contains(cfg, hexKey(k)) || !strings.Contains(cfg, "allowed_ip="+addrs["v4"].(string)) {
		t.Fatalf("peer not in device:\n%s", cfg)
	}
	if code, got := do(t, h, "GET", "/v1/reg/"+id, ""); code != 200 || got["id"] != id || got["client_id"] != body["client_id"] {
		t.Fatalf("GET: %d %v", code, got)
	}
	if code, _ := do(t, h, "POST", "/v1/reg", `{"public_key":"`+pub+`"}`); code != http.StatusConflict {
		t.Fatalf("duplicate POST: %d, want 409", code)
	}
	if code, _ := do(t, h, "DELETE", "/v1/reg/"+id, ""); code != http.StatusNoContent {
		t.Fatalf("DELETE: %d, want 204", code)
	}
	cfg, _ = n.dev.IpcGet()
	if strings.Contains(cfg, hexKey(k)) {
		t.Fatal("deleted peer still in device")
	}
	if code, _ := do(t, h, "GET", "/v1/reg/"+id, ""); code != 404 {
		t.Fatalf("GET after DELETE: %d, want 404", code)
	}
	if code, _ := do(t, h, "DELETE", "/v1/reg/"+id, ""); code != 404 {
		t.Fatalf("second DELETE: %d, want 404", code)
	}
}

func TestAPIBadInput(t *testing.T) {
	n, st := newTestNode(t)
	h := n.routes()
	cases := []struct {
		name, method, path, body string
		want                     int
	}{
		{"empty body", "POST", "/v1/reg", "", 400},
		{"not JSON", "POST", "/v1/reg", "public_key=abc", 400},
		{"truncated JSON", "POST", "/v1/reg", `{"public_key":`, 400},
		{"trailing data", "POST", "/v1/reg", `{"public_key":"` + pubKey(t) + `"} {}`, 400},
		{"array", "POST", "/v1/reg", `[]`, 400},
		{"missing key", "POST", "/v1/reg", `{}`, 400},
		{"key not base64", "POST", "/v1/reg", `{"public_key":"not base64!"}`, 400},
		{"key too short", "POST", "/v1/reg", `{"public_key":"AAAA"}`, 400},
		{"zero key", "POST", "/v1/reg", `{"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`, 400},
		{"key wrong type", "POST", "/v1/reg", `{"public_key":42}`, 400},
		{"too big", "POST", "/v1/reg", `{"public_key":"` + strings.Repeat("A", MaxBodyBytes) + `"}`, 413},
		{"DELETE collection", "DELETE", "/v1/reg", "", 405},
		{"list: bad limit", "GET", "/v1/reg?limit=0", "", 400},
		{"list: limit too big", "GET", "/v1/reg?limit=1001", "", 400},
		{"list: bad after", "GET", "/v1/reg?after=../x", "", 400},
		{"list: unknown parameter", "GET", "/v1/reg?afterr=x", "", 400},
		{"list: twice", "GET", "/v1/reg?limit=1&limit=2", "", 400},
		{"PUT item", "PUT", "/v1/reg/x", "", 405},
		{"unknown id", "GET", "/v1/reg/nope", "", 404},
		{"unknown path", "GET", "/v2/whatever", "", 404},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := do(t, h, c.method, c.path, c.body)
			if code != c.want {
				t.Fatalf("got %d, want %d (%v)", code, c.want, body)
			}
			if msg, _ := body["error"].(string); msg == "" {
				t.Fatalf("no JSON error in %v", body)
			}
		})
	}
	if all, _ := st.List(context.Background()); len(all) != 0 {
		t.Fatalf("bad requests changed the store: %d clients", len(all))
	}
}

func TestAPIUnknownFieldsAccepted(t *testing.T) {
	n, _ := newTestNode(t)
	code, body := do(t, n.routes(), "POST", "/v1/reg", `{"public_key":"`+pubKey(t)+`","install_id":"x","tos":"2026"}`)
	if code != 200 {
		t.Fatalf("got %d %v, want 200", code, body)
	}
}

func TestStatus(t *testing.T) {
	n, _ := newTestNode(t)
	do(t, n.routes(), "POST", "/v1/reg", `{"public_key":"`+pubKey(t)+`"}`)
	code, body := do(t, n.routes(), "GET", "/v1/status", "")
	if code != 200 || body["clients"].(float64) != 1 || body["public_key"] != n.PublicKey().String() {
		t.Fatalf("status: %d %v", code, body)
	}
	if _, ok := body["bind"].(map[string]any)["socket"]; ok {
		t.Errorf("socket counters with a Bind that is not udpbind: %v", body["bind"])
	}
	if _, ok := body["paths"]; ok {
		t.Errorf("a path table without Config.Paths: %v", body["paths"])
	}
	// The path table, when the node keeps one.
	np, _ := newTestNode(t, func(c *Config) {
		c.Name = "wedgetestp"
		c.Paths = func() api.PathsStatus {
			return api.PathsStatus{DC: "dc1", Known: 1, Relayed: 1, DCs: []api.PathDC{{DC: "dc2", RTTMs: 10, Nodes: 1}},
				Routes: []api.PathRoute{{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Exit: "dc2", ViaMs: 50, DirectMs: 100, AgeS: 2}}}
		}
	})
	_, body = do(t, np.routes(), "GET", "/v1/status", "")
	paths, _ := body["paths"].(map[string]any)
	routes, _ := paths["routes"].([]any)
	if paths["dc"] != "dc1" || len(routes) != 1 || routes[0].(map[string]any)["prefix"] != "203.0.113.0/24" ||
		routes[0].(map[string]any)["exit"] != "dc2" || routes[0].(map[string]any)["via_ms"] != 50.0 {
		t.Errorf("paths in the status: %v", body["paths"])
	}
	// With wedge's own Bind the socket layer's counters are there too.
	ub := udpbind.New()
	n2, _ := newTestNode(t, func(c *Config) { c.Bind = ub; c.Name = "wedgetest2" })
	if err := n2.dev.Up(); err != nil {
		t.Fatal(err)
	}
	_, body = do(t, n2.routes(), "GET", "/v1/status", "")
	sock, ok := body["bind"].(map[string]any)["socket"].(map[string]any)
	if !ok {
		t.Fatalf("no socket counters with udpbind: %v", body["bind"])
	}
	for _, k := range []string{"src_fallbacks", "endpoint_cache_resets", "gso_off", "gro_messages", "gro_datagrams"} {
		if _, ok := sock[k].(float64); !ok {
			t.Errorf("socket counters lack %q: %v", k, sock)
		}
	}
}

func TestNodeReloadsClients(t *testing.T) {
	st, err := registry.OpenBolt(filepath.Join(t.TempDir(), "reg.db"), registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var keys []wgtypes.Key
	for range 3 {
		k, _ := wgtypes.GeneratePrivateKey()
		if _, err := st.Create(context.Background(), registry.Client{PublicKey: k.PublicKey()}); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k.PublicKey())
	}
	sk, _ := wgtypes.GeneratePrivateKey()
	n, err := New(context.Background(), Config{
		Name: "wedgetest", PrivateKey: sk, Store: st, MTU: 1420,
		TUN: tuntest.NewChannelTUN().TUN(), Bind: bindtest.NewChannelBinds()[0],
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	cfg, _ := n.dev.IpcGet()
	for _, k := range keys {
		if !n.registered(k) {
			t.Fatalf("client %s not loaded into the node's view", k)
		}
		if strings.Contains(cfg, hexKey(k)) {
			t.Fatalf("client %s loaded into the device before it handshook", k)
		}
	}
	if s := n.Status(); s.Clients != 3 || len(s.Peers) != 0 {
		t.Fatalf("status: %d clients, %d peers; want 3 registered, none listed", s.Clients, len(s.Peers))
	}
}

func TestNewRejectsNil(t *testing.T) {
	if _, err := New(context.Background(), Config{Name: "x"}); err == nil {
		t.Fatal("New with nil deps succeeded")
	}
}

func TestParsePeers(t *testing.T) {
	k1, _ := wgtypes.GeneratePrivateKey()
	k2, _ := wgtypes.GeneratePrivateKey()
	in := "private_key=00\nlisten_port=1\npublic_key=" + hexKey(k1) + "\nendpoint=[::ffff:203.0.113.9]:4000\nlast_handshake_time_sec=100\nlast_handshake_time_nsec=5\nrx_bytes=7\ntx_bytes=8\n" +
		"public_key=" + hexKey(k2) + "\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
	ps, err := parsePeers(in)
	if err != nil || len(ps) != 2 {
		t.Fatalf("parsePeers: %v %v", ps, err)
	}
	if ps[0].Endpoint != netip.MustParseAddrPort("203.0.113.9:4000") || ps[0].LastHandshake.Unix() != 100 || ps[0].RxBytes != 7 || ps[0].TxBytes != 8 {
		t.Errorf("peer 0 = %+v", ps[0])
	}
	if !ps[1].LastHandshake.IsZero() || ps[1].Endpoint.IsValid() {
		t.Errorf("peer 1 = %+v", ps[1])
	}
	if ps[0].PublicKey != k1 || ps[1].PublicKey != k2 {
		t.Errorf("keys %v %v", ps[0].PublicKey, ps[1].PublicKey)
	}
	for _, bad := range []string{"public_key=00\n", "public_key=" + strings.Repeat("zz", 32) + "\n", "public_key=" + hexKey(k1) + "0\n"} {
		if _, err := parsePeers(bad); err == nil {
			t.Errorf("parsePeers(%q) took a bad key", bad)
		}
	}
	if ps, err := parsePeers("public_key=" + strings.ToUpper(hexKey(k1))); err != nil || len(ps) != 1 || ps[0].PublicKey != k1 {
		t.Errorf("upper-case hex, no final newline: %v %v", ps, err)
	}
}

// FuzzRegister: whatever the body, the API answers 200 or a 4xx with a JSON
// error, never a 5xx, and stores a client only when it answered 200.
func FuzzRegister(f *testing.F) {
	f.Add([]byte(`{"public_key":"` + pubKey(f) + `"}`))
	f.Add([]byte(`{"public_key":"AAAA"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`nul`))
	f.Add([]byte(`{"public_key":"` + pubKey(f) + `","pool":"trusted","country":"NL"}`))
	f.Add([]byte(`{"public_key":"` + pubKey(f) + `","pool":"Trusted"}`))
	n, st := newTestNode(f)
	h := n.routes()
	f.Fuzz(func(t *testing.T, body []byte) {
		before, _ := st.List(context.Background())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/reg", bytes.NewReader(body)))
		after, _ := st.List(context.Background())
		switch {
		case rec.Code == 200:
			if len(after) != len(before)+1 {
				t.Fatalf("200 but %d → %d clients", len(before), len(after))
			}
		case rec.Code >= 400 && rec.Code < 500:
			var e map[string]string
			if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e["error"] == "" {
				t.Fatalf("%d without a JSON error: %q", rec.Code, rec.Body.String())
			}
			if len(after) != len(before) {
				t.Fatalf("%d but the store changed", rec.Code)
			}
		default:
			t.Fatalf("status %d for body %q", rec.Code, body)
		}
	})
}

func TestAPIRefusesOwnKeyAndBrowsers(t *testing.T) {
	n, st := newTestNode(t)
	h := n.routes()
	if code, _ := do(t, h, "POST", "/v1/reg", `{"public_key":"`+n.PublicKey().String()+`"}`); code != 400 {
		t.Errorf("own key: got %d, want 400", code)
	}
	admin, tok := adminDoor(t, n)
	for name, h := range map[string]http.Handler{"admin": admin, "public": n.PublicHandler(PublicConfig{Open: true})} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/v1/reg", strings.NewReader(`{"public_key":"`+pubKey(t)+`"}`))
		req.Host = testAdminAddr
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Origin", "http://evil.example")
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusForbidden {
			t.Errorf("%s API, browser request: got %d, want 403", name, rec.Code)
		}
	}
	if all, _ := st.List(context.Background()); len(all) != 0 {
		t.Fatalf("refused requests changed the store: %d clients", len(all))
	}
}

// TestRegisterUnregisterRace deletes and re-registers one key from many
// goroutines; afterwards the store and the device must agree.
func TestRegisterUnregisterRace(t *testing.T) {
	n, st := newTestNode(t)
	pub, _ := ParsePublicKey(pubKey(t))
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if c, err := n.Register(ctx, pub, registry.Tags{}); err == nil {
					n.addPeer(c, time.Now(), unfinishedOnDemand, 0) // as a handshake would
					n.Unregister(ctx, c.ID)
				}
				if c, err := n.Register(ctx, pub, registry.Tags{}); err == nil {
					n.addPeer(c, time.Now(), unfinishedOnDemand, 0)
				}
			}
		}()
	}
	wg.Wait()
	all, _ := st.List(ctx)
	cfg, _ := n.dev.IpcGet()
	inDevice := strings.Contains(cfg, hexKey(pub))
	// The last Register of the survivor, if any, came with its peer.
	if (len(all) == 1) != inDevice || len(all) > 1 || (len(all) == 1) != n.registered(pub) {
		t.Fatalf("store has %d registrations, device has the peer: %v, the node's view: %v", len(all), inDevice, n.registered(pub))
	}
}

// viewTags is what the node's own view (n.clients, which handshakes and
// egress read) holds for pub.
func viewTags(n *Node, pub wgtypes.Key) (registry.Tags, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.clients[pub]
	return c.Tags, ok
}

// tagsOf reads the "tags" object of an API answer; both keys must be there.
func tagsOf(t *testing.T, body map[string]any) registry.Tags {
	t.Helper()
	m, ok := body["tags"].(map[string]any)
	if !ok {
		t.Fatalf("no tags object in %v", body)
	}
	pool, ok1 := m["pool"].(string)
	country, ok2 := m["country"].(string)
	if !ok1 || !ok2 || len(m) != 2 {
		t.Fatalf("tags %v: want exactly the string keys pool and country", m)
	}
	return registry.Tags{Pool: pool, Country: country}
}

// syncBuffer is a bytes.Buffer a logger may write to while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// vetoNowhere is a Config.ValidTags: the node has no egress in pool
// "nowhere".
func vetoNowhere(t registry.Tags) error {
	if t.Pool == "nowhere" {
		return errors.New(`no egress address in pool "nowhere"`)
	}
	return nil
}

func TestAPICreateTags(t *testing.T) {
	n, st := newTestNode(t, func(c *Config) { c.ValidTags = vetoNowhere })
	h := n.routes()
	cases := []struct {
		name, extra string
		want        int
		tags        registry.Tags
	}{
		{"no tags", ``, 200, registry.Tags{}},
		{"pool and country", `,"pool":"trusted","country":"NL"`, 200, registry.Tags{Pool: "trusted", Country: "NL"}},
		{"pool only", `,"pool":"acme-2"`, 200, registry.Tags{Pool: "acme-2"}},
		{"empty strings", `,"pool":"","country":""`, 200, registry.Tags{}},
		{"null pool is the default", `,"pool":null`, 200, registry.Tags{}},
		{"pool upper case", `,"pool":"Trusted"`, 400, registry.Tags{}},
		{"pool too long", `,"pool":"` + strings.Repeat("a", 33) + `"`, 400, registry.Tags{}},
		{"pool leading dash", `,"pool":"-a"`, 400, registry.Tags{}},
		{"pool not a string", `,"pool":7`, 400, registry.Tags{}},
		{"country lower case", `,"country":"nl"`, 400, registry.Tags{}},
		{"country alpha-3", `,"country":"NLD"`, 400, registry.Tags{}},
		{"country not a string", `,"country":["NL"]`, 400, registry.Tags{}},
		{"vetoed pool", `,"pool":"nowhere"`, 422, registry.Tags{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, _ := st.List(context.Background())
			pub := pubKey(t)
			code, body := do(t, h, "POST", "/v1/reg", `{"public_key":"`+pub+`"`+c.extra+`}`)
			if code != c.want {
				t.Fatalf("got %d, want %d (%v)", code, c.want, body)
			}
			after, _ := st.List(context.Background())
			if code != 200 {
				if msg, _ := body["error"].(string); msg == "" {
					t.Fatalf("no JSON error in %v", body)
				}
				if len(after) != len(before) {
					t.Fatalf("a %d changed the store", code)
				}
				return
			}
			if got := tagsOf(t, body); got != c.tags {
				t.Fatalf("POST answered tags %+v, want %+v", got, c.tags)
			}
			if code, got := do(t, h, "GET", "/v1/reg/"+body["id"].(string), ""); code != 200 || tagsOf(t, got) != c.tags {
				t.Fatalf("GET: %d, tags %+v; want %+v", code, got["tags"], c.tags)
			}
			k, _ := ParsePublicKey(pub)
			if got, ok := viewTags(n, k); !ok || got != c.tags {
				t.Fatalf("node view: %+v (loaded %v), want %+v", got, ok, c.tags)
			}
		})
	}
	if code, body := do(t, h, "POST", "/v1/reg", `{"public_key":"`+pubKey(t)+`","pool":"nowhere"}`); code != 422 ||
		!strings.Contains(body["error"].(string), `no egress address in pool "nowhere"`) {
		t.Errorf("veto: %d %v; want 422 with the veto's message", code, body)
	}
}

func TestAPIPatchTags(t *testing.T) {
	var log syncBuffer
	var retagMu sync.Mutex
	var retagged []registry.Tags // what OnTags was told, in order
	n, st := newTestNode(t, func(c *Config) {
		c.ValidTags = vetoNowhere
		c.Logger = slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.OnTags = func(c registry.Client) {
			retagMu.Lock()
			retagged = append(retagged, c.Tags)
			retagMu.Unlock()
		}
	})
	calls := func() []registry.Tags {
		retagMu.Lock()
		defer retagMu.Unlock()
		return slices.Clone(retagged)
	}
	h := n.routes()
	pubS := pubKey(t)
	pub, _ := ParsePublicKey(pubS)
	code, body := do(t, h, "POST", "/v1/reg", `{"public_key":"`+pubS+`","pool":"trusted","country":"NL"}`)
	if code != 200 {
		t.Fatalf("POST: %d %v", code, body)
	}
	id := body["id"].(string)
	addrs := body["addresses"].(map[string]any)
	// The client handshook: the PATCHes below must leave its peer alone.
	if c, ok := n.client(pub); ok {
		holdPeer(t, n, c)
	}
	rewrites := strings.Count(log.String(), "Removing all allowedips")
	// Run in order: each case starts from the tags the previous one left.
	cases := []struct {
		name, path, body string
		want             int
		tags             registry.Tags // after the request
	}{
		{"pool keeps country", "", `{"pool":"acme"}`, 200, registry.Tags{Pool: "acme", Country: "NL"}},
		{"clear country", "", `{"country":""}`, 200, registry.Tags{Pool: "acme"}},
		{"both", "", `{"pool":"","country":"DE"}`, 200, registry.Tags{Country: "DE"}},
		{"same again", "", `{"country":"DE"}`, 200, registry.Tags{Country: "DE"}},
		{"spaces around null", "", `{ "pool" : null }`, 400, registry.Tags{Country: "DE"}},
		{"empty object", "", `{}`, 400, registry.Tags{Country: "DE"}},
		{"unknown field", "", `{"pool":"acme","colour":"red"}`, 400, registry.Tags{Country: "DE"}},
		{"public_key not changeable", "", `{"public_key":"` + pubKey(t) + `"}`, 400, registry.Tags{Country: "DE"}},
		{"null", "", `{"pool":null}`, 400, registry.Tags{Country: "DE"}},
		{"number", "", `{"pool":5}`, 400, registry.Tags{Country: "DE"}},
		{"bad pool", "", `{"pool":"Acme"}`, 400, registry.Tags{Country: "DE"}},
		{"bad country", "", `{"country":"deu"}`, 400, registry.Tags{Country: "DE"}},
		{"bad country good pool", "", `{"pool":"acme","country":"de"}`, 400, registry.Tags{Country: "DE"}},
		{"vetoed", "", `{"pool":"nowhere"}`, 422, registry.Tags{Country: "DE"}},
		{"JSON null", "", `null`, 400, registry.Tags{Country: "DE"}},
		{"array", "", `[]`, 400, registry.Tags{Country: "DE"}},
		{"string", "", `"acme"`, 400, registry.Tags{Country: "DE"}},
		{"empty body", "", ``, 400, registry.Tags{Country: "DE"}},
		{"trailing data", "", `{"pool":"a"} {}`, 400, registry.Tags{Country: "DE"}},
		{"too big", "", `{"pool":"` + strings.Repeat("a", MaxBodyBytes) + `"}`, 413, registry.Tags{Country: "DE"}},
		{"unknown id", "/v1/reg/" + strings.Repeat("0", 32), `{"pool":"acme"}`, 404, registry.Tags{Country: "DE"}},
		{"garbage id", "/v1/reg/nope", `{"pool":"acme"}`, 404, registry.Tags{Country: "DE"}},
		{"trailing slash", "/v1/reg/" + id + "/", `{"pool":"x1"}`, 200, registry.Tags{Pool: "x1", Country: "DE"}},
	}
	prev := registry.Tags{Pool: "trusted", Country: "NL"}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := c.path
			if path == "" {
				path = "/v1/reg/" + id
			}
			before := len(calls())
			code, body := do(t, h, "PATCH", path, c.body)
			// OnTags hears of every change, once, and of nothing else.
			if got := calls(); c.tags != prev && (len(got) != before+1 || got[before] != c.tags) {
				t.Errorf("OnTags calls %v after the change to %+v, want one more with it", got[before:], c.tags)
			} else if c.tags == prev && len(got) != before {
				t.Errorf("OnTags called %v without a change", got[before:])
			}
			prev = c.tags
			if code != c.want {
				t.Fatalf("got %d, want %d (%v)", code, c.want, body)
			}
			if code == 200 {
				if got := tagsOf(t, body); got != c.tags || body["id"] != id || body["addresses"].(map[string]any)["v4"] != addrs["v4"] {
					t.Fatalf("PATCH answered %v; want the registration with tags %+v", body, c.tags)
				}
			} else if msg, _ := body["error"].(string); msg == "" {
				t.Fatalf("no JSON error in %v", body)
			}
			if code, got := do(t, h, "GET", "/v1/reg/"+id, ""); code != 200 || tagsOf(t, got) != c.tags {
				t.Fatalf("GET after: %d, tags %v; want %+v", code, got["tags"], c.tags)
			}
			if got, ok := viewTags(n, pub); !ok || got != c.tags {
				t.Fatalf("node view after: %+v (loaded %v), want %+v", got, ok, c.tags)
			}
		})
	}
	if all, _ := st.List(context.Background()); len(all) != 1 {
		t.Fatalf("%d registrations, want 1", len(all))
	}
	// A change made on another node arrives as an EventPut of the whole
	// registration (apply, as the watch calls it).
	remote, err := st.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	remote.Tags = registry.Tags{Pool: "remote", Country: "FR"}
	before := len(calls())
	n.apply(registry.Event{Type: registry.EventPut, Client: remote})
	if got, _ := viewTags(n, pub); got != remote.Tags {
		t.Fatalf("node view after an EventPut: %+v, want %+v", got, remote.Tags)
	}
	if got := calls(); len(got) != before+1 || got[before] != remote.Tags {
		t.Fatalf("OnTags after an EventPut with new tags: %v, want %+v", got[before:], remote.Tags)
	}
	n.apply(registry.Event{Type: registry.EventPut, Client: remote})
	if got := calls(); len(got) != before+1 {
		t.Fatalf("OnTags called again for the same registration: %v", got[before:])
	}
	// Tags are not the device's business: neither a PATCH nor an
	// EventPut that changed only tags rewrote the peer.
	if got := strings.Count(log.String(), "Removing all allowedips"); got != rewrites {
		t.Errorf("tag changes rewrote the peer's allowed IPs %d times, want 0", got-rewrites)
	}
	cfg, _ := n.dev.IpcGet()
	if !strings.Contains(cfg, hexKey(pub)) || !strings.Contains(cfg, "allowed_ip="+addrs["v4"].(string)) {
		t.Fatalf("peer gone from the device after PATCH:\n%s", cfg)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("PUT", "/v1/reg/"+id, strings.NewReader(`{}`)))
	if allow := rec.Header().Get("Allow"); rec.Code != 405 || !strings.Contains(allow, "PATCH") {
		t.Errorf("PUT: %d, Allow %q; want 405 naming PATCH", rec.Code, allow)
	}
}

// TestClusterPatchTags: a PATCH on one node reaches the other node's view
// through the watch, without touching its device's peer; with etcd
// unreachable a PATCH is refused as a registration is.
func TestClusterPatchTags(t *testing.T) {
	e := etcdtest.Start(t)
	sk, _ := wgtypes.GeneratePrivateKey()
	a := newClusterNode(t, e, "a", sk)
	b := newClusterNode(t, e, "b", sk)
	c, err := a.Register(context.Background(), newPub(t), registry.Tags{Pool: "trusted"})
	if err != nil {
		t.Fatal(err)
	}
	waitView := func(n *Node, want registry.Tags, what string) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			got, ok := viewTags(n, c.PublicKey)
			if ok && got == want {
				return time.Since(start)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s: the node's view holds %+v (loaded %v), want %+v", what, got, ok, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitView(b, registry.Tags{Pool: "trusted"}, "registration on a, view of b")
	holdPeer(t, a, c) // the client handshook with both
	if cb, ok := b.client(c.PublicKey); ok {
		holdPeer(t, b, cb)
	}
	want := registry.Tags{Pool: "trusted", Country: "NL"}
	code, body := do(t, b.routes(), http.MethodPatch, "/v1/reg/"+c.ID, `{"country":"NL"}`)
	if code != 200 || tagsOf(t, body) != want {
		t.Fatalf("PATCH on b: %d %v", code, body)
	}
	if got, _ := viewTags(b, c.PublicKey); got != want {
		t.Fatalf("b's own view after its PATCH: %+v, want %+v", got, want)
	}
	t.Logf("a PATCH on b reached a's view in %v", waitView(a, want, "PATCH on b, view of a"))
	if !hasPeer(a, c.PublicKey) || !hasPeer(b, c.PublicKey) {
		t.Fatal("a PATCH removed the peer from a device")
	}
	if code, body := do(t, a.routes(), http.MethodGet, "/v1/reg/"+c.ID, ""); code != 200 || tagsOf(t, body) != want {
		t.Fatalf("GET on a: %d %v", code, body)
	}

	e.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for a.cfg.Cluster.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("the node still thinks etcd is reachable")
		}
		time.Sleep(50 * time.Millisecond)
	}
	start := time.Now()
	if code, body := do(t, a.routes(), http.MethodPatch, "/v1/reg/"+c.ID, `{"pool":"acme"}`); code != http.StatusServiceUnavailable {
		t.Fatalf("PATCH with etcd down: %d %v, want 503", code, body)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the 503 took %v", d)
	}
	if got, _ := viewTags(a, c.PublicKey); got != want {
		t.Fatalf("a refused PATCH changed the view to %+v", got)
	}
}

// FuzzPatchTags: whatever the body, PATCH answers 200 or a 4xx with a
// JSON error, never a 5xx, and changes the tags only when it answered 200.
func FuzzPatchTags(f *testing.F) {
	for _, b := range []string{`{"pool":"acme"}`, `{"country":""}`, `{"pool":"a","country":"NL"}`, `{}`, `{"pool":null}`, `{"x":1}`, `null`} {
		f.Add([]byte(b))
	}
	n, st := newTestNode(f, func(c *Config) { c.ValidTags = vetoNowhere })
	c, err := n.Register(context.Background(), wgtypes.Key{1}, registry.Tags{})
	if err != nil {
		f.Fatal(err)
	}
	h := n.routes()
	f.Fuzz(func(t *testing.T, body []byte) {
		before, _ := st.Get(context.Background(), c.ID)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("PATCH", "/v1/reg/"+c.ID, bytes.NewReader(body)))
		after, _ := st.Get(context.Background(), c.ID)
		switch {
		case rec.Code == 200:
			if err := after.Tags.Validate(); err != nil {
				t.Fatalf("200 but stored bad tags: %v", err)
			}
		case rec.Code >= 400 && rec.Code < 500:
			var e map[string]string
			if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e["error"] == "" {
				t.Fatalf("%d without a JSON error: %q", rec.Code, rec.Body.String())
			}
			if after != before {
				t.Fatalf("%d but the tags changed: %+v → %+v", rec.Code, before.Tags, after.Tags)
			}
		default:
			t.Fatalf("status %d for body %q", rec.Code, body)
		}
	})
}
