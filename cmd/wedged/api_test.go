package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wedge-edge/wedge/server"
)

// TestAPISettings: the public API's flags are checked before anything
// listens; without --tls-cert a self-signed certificate is made once in
// --state and kept; the admin token is made once and kept.
func TestAPISettings(t *testing.T) {
	dir := t.TempDir()
	s := &settings{log: slog.New(slog.NewTextHandler(io.Discard, nil)), endpoints: []string{"192.0.2.1:51820"}}
	parse := func(args ...string) *config {
		t.Helper()
		c, err := flags(append([]string{"--state", dir}, args...))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, bad := range [][]string{
		{"--tls-cert", "x.pem", "--tls-key", "k.pem"},
		{"--enroll-tokens", "e.json"},
		{"--api-public", ":8443", "--tls-cert", "x.pem"},
		{"--api-public", "8443"},
		{"--api-public", ":8443", "--reg-limit-addr", "lots"},
		{"--api-public", ":8443", "--reg-limit-token", "5/1ms"},
		{"--api-public", ":8443", "--enroll-tokens", filepath.Join(dir, "missing.json")},
	} {
		if _, err := publicSettings(parse(bad...), s); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if p, err := publicSettings(parse(), s); p != nil || err != nil {
		t.Fatalf("no --api-public: %v, %v; want no public API", p, err)
	}
	enroll := filepath.Join(dir, "enroll.json")
	os.WriteFile(enroll, []byte(`{"acme-0123456789abcdef": {"pool": "acme"}}`), 0o600)
	p, err := publicSettings(parse("--api-public", "192.0.2.1:8443", "--enroll-tokens", enroll, "--reg-limit-addr", "3/1m"), s)
	if err != nil {
		t.Fatal(err)
	}
	if fp, err := server.CertFingerprint(filepath.Join(dir, "api-public.crt")); err != nil || fp != p.fingerprint {
		t.Fatalf("certificate in --state: %s, %v; want fingerprint %s", fp, err, p.fingerprint)
	}
	if _, _, ok := p.cfg.Enroll().Lookup("acme-0123456789abcdef"); !ok || p.cfg.PerSource != (server.Rate{N: 3, Per: 60e9}) || !p.cfg.Open {
		t.Fatalf("public settings %+v", p.cfg)
	}
	again, err := publicSettings(parse("--api-public", "192.0.2.1:8443"), s)
	if err != nil || again.fingerprint != p.fingerprint {
		t.Fatalf("second start: %v, fingerprint %s → %s; want the same certificate", err, p.fingerprint, again.fingerprint)
	}
	a, path, err := adminSettings(parse(), s)
	if err != nil || path != filepath.Join(dir, "admin.token") {
		t.Fatalf("admin token: %s, %v", path, err)
	}
	raw, _ := os.ReadFile(path)
	if !a.Token.Matches(strings.TrimSpace(string(raw))) || a.Addr != "127.0.0.1:8080" {
		t.Fatalf("admin settings %+v do not match %s", a, path)
	}
	if _, _, err := adminSettings(parse("--admin-token-file", filepath.Join(dir, "none")), s); err == nil {
		t.Fatal("a missing --admin-token-file was accepted")
	}
}
