package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/registry"
)

// apiNode serves a real node's admin API over HTTP on a fresh store.
func apiNode(t *testing.T) (string, registry.Store) {
	t.Helper()
	n, st := testNode(t)
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.Handler = n.AdminHandler(server.AdminConfig{Token: testToken(t), Addr: srv.Listener.Addr().String()})
	srv.Start()
	t.Setenv("WEDGE_ADMIN_TOKEN", adminTok)
	t.Cleanup(srv.Close)
	return srv.URL, st
}

// testNode is a real node on a fresh store.
func testNode(t *testing.T) (*server.Node, registry.Store) {
	t.Helper()
	st, err := registry.OpenBolt(filepath.Join(t.TempDir(), "reg.db"), registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	sk, _ := wgtypes.GeneratePrivateKey()
	n, err := server.New(context.Background(), server.Config{
		Name: "wedgetest", PrivateKey: sk, MTU: 1420,
		Endpoints: []string{"192.0.2.1:51820"},
		DNS:       []netip.Addr{netip.MustParseAddr("100.96.0.1")},
		Store:     st, TUN: tuntest.NewChannelTUN().TUN(), Bind: bindtest.NewChannelBinds()[0],
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); st.Close() })
	return n, st
}

const adminTok = "cmd-wedge-test-admin-token"

func testToken(t *testing.T) server.AdminToken {
	tok, err := server.NewAdminToken(adminTok)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestRegisterTags(t *testing.T) {
	api, st := apiNode(t)
	out := filepath.Join(t.TempDir(), "wedge.conf")
	if err := register([]string{"--api", api, "--out", out, "--no-qr", "--pool", "acme", "--country", "NL"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out); err != nil {
		t.Fatal(err)
	}
	all, _ := st.List(context.Background())
	if want := (registry.Tags{Pool: "acme", Country: "NL"}); len(all) != 1 || all[0].Tags != want {
		t.Fatalf("stored %+v; want one registration with tags %+v", all, want)
	}
}

// TestRegisterPlus: --plus asks the admin API for the plus tier; without
// it the registration is free.
func TestRegisterPlus(t *testing.T) {
	api, st := apiNode(t)
	dir := t.TempDir()
	if err := register([]string{"--api", api, "--out", filepath.Join(dir, "a.conf"), "--no-qr", "--plus"}); err != nil {
		t.Fatal(err)
	}
	if err := register([]string{"--api", api, "--out", filepath.Join(dir, "b.conf"), "--no-qr"}); err != nil {
		t.Fatal(err)
	}
	all, _ := st.List(context.Background())
	plus := 0
	for _, c := range all {
		if c.Plus {
			plus++
		}
	}
	if len(all) != 2 || plus != 1 {
		t.Fatalf("stored %d registrations, %d plus; want 2 and 1", len(all), plus)
	}
}

func TestRegisterBadTags(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	for _, args := range [][]string{
		{"--pool", "Acme"},
		{"--pool", "a_b"},
		{"--country", "nl"},
		{"--country", "NLD"},
	} {
		err := register(append([]string{"--api", srv.URL, "--out", filepath.Join(t.TempDir(), "c"), "--no-qr"}, args...))
		if err == nil || !errors.As(err, new(usageError)) || !errors.Is(err, api.ErrBadTags) {
			t.Errorf("%q: got %v, want a usage error wrapping ErrBadTags", args, err)
		}
	}
	if hits.Load() != 0 {
		t.Errorf("bad tags reached the API %d times", hits.Load())
	}
}

// TestRegisterOldNode: a node that ignores the tags (it predates them)
// answers without them; the registration is taken back.
func TestRegisterOldNode(t *testing.T) {
	api, _ := apiNode(t)
	var deleted atomic.Int32
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			deleted.Add(1)
		}
		// Forward to a real node, dropping the tags both ways.
		var body map[string]any
		if r.Method == http.MethodPost {
			json.NewDecoder(r.Body).Decode(&body)
			delete(body, "pool")
			delete(body, "country")
		}
		raw, _ := json.Marshal(body)
		req, _ := http.NewRequest(r.Method, api+r.URL.Path, strings.NewReader(string(raw)))
		req.Header.Set("Authorization", r.Header.Get("Authorization"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		defer resp.Body.Close()
		var ans map[string]any
		json.NewDecoder(resp.Body).Decode(&ans)
		delete(ans, "tags")
		w.WriteHeader(resp.StatusCode)
		if ans != nil {
			json.NewEncoder(w).Encode(ans)
		}
	}))
	defer old.Close()
	err := register([]string{"--api", old.URL, "--out", filepath.Join(t.TempDir(), "c"), "--no-qr", "--pool", "acme"})
	if err == nil || !strings.Contains(err.Error(), "ignored the tags") {
		t.Fatalf("got %v, want an error saying the node ignored the tags", err)
	}
	if deleted.Load() != 1 {
		t.Fatalf("%d DELETEs, want the registration taken back once", deleted.Load())
	}
	// Without tags an old node is fine.
	if err := register([]string{"--api", old.URL, "--out", filepath.Join(t.TempDir(), "c"), "--no-qr"}); err != nil {
		t.Fatal(err)
	}
}
