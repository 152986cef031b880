package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/server/registry"
)

func newTestNode(t testing.TB) (*Node, registry.Store) {
	t.Helper()
	st, err := registry.OpenBolt(filepath.Join(t.TempDir(), "reg.db"), registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	sk, _ := wgtypes.GeneratePrivateKey()
	n, err := New(context.Background(), Config{
		Name:       "wedgetest",
		PrivateKey: sk,
		Endpoints:  []string{"192.0.2.1:51820", "[2001:db8::1]:51820"},
		MTU:        1420,
		DNS:        []netip.Addr{netip.MustParseAddr("100.96.0.1")},
		Store:      st,
		TUN:        tuntest.NewChannelTUN().TUN(),
		Bind:       bindtest.NewChannelBinds()[0],
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
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
	h := n.Handler()
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
	// Applied to the running device at once.
	cfg, _ := n.dev.IpcGet()
	k, _ := ParsePublicKey(pub)
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
	h := n.Handler()
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
		{"GET collection", "GET", "/v1/reg", "", 405},
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
	code, body := do(t, n.Handler(), "POST", "/v1/reg", `{"public_key":"`+pubKey(t)+`","install_id":"x","tos":"2026"}`)
	if code != 200 {
		t.Fatalf("got %d %v, want 200", code, body)
	}
}

func TestStatus(t *testing.T) {
	n, _ := newTestNode(t)
	do(t, n.Handler(), "POST", "/v1/reg", `{"public_key":"`+pubKey(t)+`"}`)
	code, body := do(t, n.Handler(), "GET", "/v1/status", "")
	if code != 200 || body["clients"].(float64) != 1 || body["public_key"] != n.PublicKey().String() {
		t.Fatalf("status: %d %v", code, body)
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
		if _, err := st.Create(context.Background(), k.PublicKey()); err != nil {
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
		if !strings.Contains(cfg, hexKey(k)) {
			t.Fatalf("client %s not loaded into the device", k)
		}
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
}

// FuzzRegister: whatever the body, the API answers 200 or a 4xx with a JSON
// error, never a 5xx, and stores a client only when it answered 200.
func FuzzRegister(f *testing.F) {
	f.Add([]byte(`{"public_key":"` + pubKey(f) + `"}`))
	f.Add([]byte(`{"public_key":"AAAA"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`nul`))
	n, st := newTestNode(f)
	h := n.Handler()
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
	h := n.Handler()
	if code, _ := do(t, h, "POST", "/v1/reg", `{"public_key":"`+n.PublicKey().String()+`"}`); code != 400 {
		t.Errorf("own key: got %d, want 400", code)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/v1/reg", strings.NewReader(`{"public_key":"`+pubKey(t)+`"}`))
	req.Header.Set("Origin", "http://evil.example")
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("browser request: got %d, want 403", rec.Code)
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
				if c, err := n.Register(ctx, pub); err == nil {
					n.Unregister(ctx, c.ID)
				}
				n.Register(ctx, pub)
			}
		}()
	}
	wg.Wait()
	all, _ := st.List(ctx)
	cfg, _ := n.dev.IpcGet()
	inDevice := strings.Contains(cfg, hexKey(pub))
	if (len(all) == 1) != inDevice || len(all) > 1 {
		t.Fatalf("store has %d registrations, device has the peer: %v", len(all), inDevice)
	}
}
