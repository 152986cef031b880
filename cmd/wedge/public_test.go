package main

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wedge-edge/wedge/client"
	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/registry"
)

// publicNode serves a real node's public API over TLS (httptest's
// self-signed certificate) and its admin API; it returns both URLs and
// the certificate's fingerprint.
func publicNode(t *testing.T, cfg server.PublicConfig) (pub, admin, fp string, st registry.Store) {
	t.Helper()
	n, st := testNode(t)
	ps := httptest.NewTLSServer(n.PublicHandler(cfg))
	t.Cleanup(ps.Close)
	as := httptest.NewUnstartedServer(nil)
	as.Config.Handler = n.AdminHandler(server.AdminConfig{Token: testToken(t), Addr: as.Listener.Addr().String()})
	as.Start()
	t.Cleanup(as.Close)
	t.Setenv("WEDGE_ADMIN_TOKEN", adminTok)
	return ps.URL, as.URL, client.CertFingerprint(ps.Certificate().Raw), st
}

func readConfig(t *testing.T, path string) *client.Config {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := client.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRegisterPublic: wedge register talks to the public API with the
// certificate pinned, keeps the token in the config's "#@ Token" line,
// and never sends the admin token there.
func TestRegisterPublic(t *testing.T) {
	enroll, err := server.ParseEnrollTokens(strings.NewReader(`{"acme-0123456789abcdef": {"pool": "acme", "plus": true}}`))
	if err != nil {
		t.Fatal(err)
	}
	pub, _, fp, st := publicNode(t, server.PublicConfig{Open: true, Enroll: func() *server.EnrollTokens { return enroll }})
	dir := t.TempDir()
	out := filepath.Join(dir, "wedge.conf")
	// Self-signed without a pin: refused, with advice.
	err = register([]string{"--api", pub, "--out", out, "--no-qr"})
	if err == nil || !strings.Contains(err.Error(), "--fingerprint") {
		t.Fatalf("self-signed without --fingerprint: %v", err)
	}
	if _, serr := os.Stat(out); serr == nil {
		t.Fatal("a config was written after a refused certificate")
	}
	// A wrong pin: refused.
	if err := register([]string{"--api", pub, "--fingerprint", strings.Repeat("0", 64), "--out", out, "--no-qr"}); err == nil {
		t.Fatal("a wrong fingerprint was accepted")
	}
	if err := register([]string{"--api", pub, "--fingerprint", strings.ToUpper(fp), "--out", out, "--no-qr", "--enroll-token", "acme-0123456789abcdef"}); err != nil {
		t.Fatal(err)
	}
	c := readConfig(t, out)
	if !strings.HasPrefix(c.Token, "wedge."+c.Registration+".") || c.Fingerprint != fp || c.API != pub {
		t.Fatalf("config: Token %q Fingerprint %q API %q", c.Token, c.Fingerprint, c.API)
	}
	got, err := st.Get(context.Background(), c.Registration)
	if err != nil || got.Tags.Pool != "acme" || !got.Plus {
		t.Fatalf("stored %+v, %v; want the enrollment token's grant", got, err)
	}
	// Asking for a pool without a token: the node's 403 comes through.
	err = register([]string{"--api", pub, "--fingerprint", fp, "--out", filepath.Join(dir, "x"), "--no-qr", "--pool", "acme"})
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("pool without a token: %v, want the node's 403", err)
	}
	// --fingerprint and --enroll-token make no sense for the admin API.
	if err := register([]string{"--api", "http://127.0.0.1:1", "--fingerprint", fp}); err == nil {
		t.Fatal("--fingerprint with an http:// URL accepted")
	}
}

// TestEnsureRegistered: wedge connect finds its registration gone (the
// admin deleted it) and registers the same key again, rewriting the
// config; a registration that exists is left alone.
func TestEnsureRegistered(t *testing.T) {
	pub, admin, fp, st := publicNode(t, server.PublicConfig{Open: true})
	out := filepath.Join(t.TempDir(), "wedge.conf")
	if err := register([]string{"--api", pub, "--fingerprint", fp, "--out", out, "--no-qr"}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := readConfig(t, out)
	same, err := ensureRegistered(context.Background(), out, c, "", log)
	if err != nil || same != c {
		t.Fatalf("existing registration: %v, config replaced %v", err, same != c)
	}
	a, err := adminAPI(admin, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(context.Background(), c.Registration); err != nil {
		t.Fatal(err)
	}
	n, err := ensureRegistered(context.Background(), out, c, "", log)
	if err != nil {
		t.Fatal(err)
	}
	if n.Registration == c.Registration || n.Token == c.Token || n.PrivateKey != c.PrivateKey || n.Fingerprint != fp {
		t.Fatalf("after re-registration: id %s→%s, same key %v, fingerprint %q", c.Registration, n.Registration, n.PrivateKey == c.PrivateKey, n.Fingerprint)
	}
	if onDisk := readConfig(t, out); onDisk.Registration != n.Registration || onDisk.Token != n.Token {
		t.Fatalf("the file was not rewritten: %s", onDisk.Registration)
	}
	if got, err := st.Get(context.Background(), n.Registration); err != nil || got.PublicKey != c.PrivateKey.PublicKey() {
		t.Fatalf("stored %+v, %v", got, err)
	}
	// Not a public-API config: nothing is asked.
	c2 := *n
	c2.API = "http://127.0.0.1:1"
	if got, err := ensureRegistered(context.Background(), out, &c2, "", log); err != nil || got != &c2 {
		t.Fatalf("admin-API config: %v", err)
	}
}

// TestAdminTokenSources: --admin-token-file wins over the environment;
// without either the default file's absence is not an error.
func TestAdminTokenSources(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(f, []byte(" from-file-token \n"), 0o600)
	t.Setenv("WEDGE_ADMIN_TOKEN", "from-env")
	if tok, err := adminToken(f); err != nil || tok != "from-file-token" {
		t.Fatalf("file: %q, %v", tok, err)
	}
	if tok, err := adminToken(""); err != nil || tok != "from-env" {
		t.Fatalf("env: %q, %v", tok, err)
	}
	if _, err := adminToken(f + "-missing"); err == nil {
		t.Fatal("a missing --admin-token-file was not an error")
	}
	// status and drain without a token: the node's 401 with advice.
	api, _ := apiNode(t)
	t.Setenv("WEDGE_ADMIN_TOKEN", "wrong-token-0123456789")
	if err := status([]string{"--api", api}); err == nil || !strings.Contains(err.Error(), "admin token") {
		t.Fatalf("status with a wrong token: %v", err)
	}
	t.Setenv("WEDGE_ADMIN_TOKEN", adminTok)
	if err := status([]string{"--api", api, "--json"}); err != nil {
		t.Fatalf("status with the token: %v", err)
	}
}
