package e2e

// The public API: a client registers itself over TLS from its own
// namespace, pinning the node's self-signed certificate, and connects with
// wg-quick and with wedge connect; the admin API stays out of its reach.
//
//   client                                   node (wedged)                       origin
//   wedge register --api https://192.0.2.1:8443 --fingerprint FP
//   wg-quick / wedge connect                 public API 192.0.2.1:8443 (TLS)     originsrv :80
//   eth0 203.0.113.2 ──veth── cl0 203.0.113.1   admin API 127.0.0.1:8080         or0 ──veth── eth0 198.18.0.2
//                                              (the node's own loopback, token)
//
// The client's namespace has a route to the node (192.0.2.1, 203.0.113.1)
// but not to the node's loopback: the admin API cannot be reached from it,
// and from the node itself it needs the admin token.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

const publicAPIAddr = "192.0.2.1:8443" // lab.VIP4, in the node namespace

func TestPublicAPI(t *testing.T) {
	needLab(t, slices.Concat(lab.ToolsOrigin, lab.ToolsClient)...)
	bins, err := lab.Build(binDir)
	if err != nil {
		t.Fatal(err)
	}
	s, probe := newSingleNode(t)
	w, err := s.StartWedged(bins.Wedged, "--api-public", publicAPIAddr)
	if err != nil {
		t.Fatal(err)
	}
	// The operator reads the fingerprint on the node and hands it out.
	out, err := w.NS.Run(bins.Wedged, "fingerprint", w.State)
	if err != nil {
		t.Fatal(err)
	}
	fp := strings.TrimSpace(out)
	if len(fp) != 64 {
		t.Fatalf("wedged fingerprint printed %q", out)
	}
	if log, _ := os.ReadFile(w.Proc.Log); !strings.Contains(string(log), fp) {
		t.Errorf("wedged's log does not show the certificate's fingerprint %s", fp)
	}
	url := "https://" + publicAPIAddr
	path := s.Lab.Dir + "/public.conf"

	t.Run("admin-api-out-of-reach", func(t *testing.T) {
		for _, addr := range []string{"192.0.2.1:8080", "203.0.113.1:8080", "127.0.0.1:8080"} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c, err := s.Client.DialContext(ctx, "tcp", addr)
			cancel()
			if err == nil {
				c.Close()
				t.Errorf("the admin API port %s is reachable from the client's namespace", addr)
			}
		}
		// On the node: no token → 401, a foreign Host → 421.
		plain := &http.Client{Transport: &http.Transport{DialContext: w.NS.DialContext}, Timeout: 5 * time.Second}
		resp, err := plain.Get(w.API + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("admin API without the token: %s, want 401", resp.Status)
		}
		req, _ := http.NewRequest(http.MethodGet, w.API+"/v1/status", nil)
		req.Host = "rebound.example:8080"
		resp, err = w.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("admin API with a foreign Host: %s, want 421", resp.Status)
		}
		// The public API serves nothing of the admin's.
		if code := publicGet(t, s.Client, fp, "/v1/status", ""); code != http.StatusNotFound {
			t.Errorf("GET /v1/status on the public API: %d, want 404", code)
		}
	})

	t.Run("register-needs-the-pin", func(t *testing.T) {
		out, err := s.Client.Run(bins.Wedge, "register", "--api", url, "--out", s.Lab.Dir+"/nopin.conf", "--no-qr")
		if err == nil || !strings.Contains(out, "--fingerprint") || !strings.Contains(out, fp) {
			t.Fatalf("register without --fingerprint: %v\n%s\nwant a refusal naming --fingerprint and the certificate's SHA-256", err, out)
		}
		if _, err := s.Client.Run(bins.Wedge, "register", "--api", url, "--fingerprint", strings.Repeat("0", 64),
			"--out", s.Lab.Dir+"/badpin.conf", "--no-qr"); err == nil {
			t.Fatal("register with a wrong fingerprint succeeded")
		}
	})

	if _, err := s.Client.Run(bins.Wedge, "register", "--api", url, "--fingerprint", fp, "--out", path, "--no-qr"); err != nil {
		t.Fatal(err)
	}
	conf := readConf(t, path)
	id, tok := configMeta(conf, "Registration"), configMeta(conf, "Token")
	if !strings.HasPrefix(tok, "wedge."+id+".") || configMeta(conf, "Fingerprint") != fp {
		t.Fatalf("config without its token or pin:\n%s", conf)
	}

	t.Run("tokens", func(t *testing.T) {
		if code := publicGet(t, s.Client, fp, "/v1/reg/"+id, tok); code != http.StatusOK {
			t.Errorf("GET own registration with its token: %d", code)
		}
		if code := publicGet(t, s.Client, fp, "/v1/reg/"+id, ""); code != http.StatusUnauthorized {
			t.Errorf("GET without a token: %d, want 401", code)
		}
		other := s.Lab.Dir + "/other.conf"
		if _, err := s.Client.Run(bins.Wedge, "register", "--api", url, "--fingerprint", fp, "--out", other, "--no-qr"); err != nil {
			t.Fatal(err)
		}
		otherTok := configMeta(readConf(t, other), "Token")
		if code := publicGet(t, s.Client, fp, "/v1/reg/"+id, otherTok); code != http.StatusForbidden {
			t.Errorf("GET with another registration's token: %d, want 403", code)
		}
	})

	t.Run("wg-quick", func(t *testing.T) {
		wq, err := s.Client.WGQuickUp(conf)
		if err != nil {
			t.Fatal(err)
		}
		defer wq.Down()
		got, err := probe.RemoteAddr(lab.Origin4.Addr())
		if err != nil {
			t.Fatal(err)
		}
		checkEgressSeen(t, lab.Origin4.Addr(), got)
	})

	t.Run("wedge-connect", func(t *testing.T) {
		p := connectTUN(t, s, probe, bins.Wedge, path)
		p.Stop()
		if readConf(t, path) != conf {
			t.Error("wedge connect rewrote the config of a registration that exists")
		}
	})

	t.Run("wedge-connect-registers-again", func(t *testing.T) {
		// The operator removes the registration; the client's next start
		// finds it gone (404 to its token) and registers its key again.
		req, _ := http.NewRequest(http.MethodDelete, w.API+"/v1/reg/"+id, nil)
		resp, err := w.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("admin DELETE: %s", resp.Status)
		}
		p := connectTUN(t, s, probe, bins.Wedge, path)
		p.Stop()
		again := readConf(t, path)
		if nid := configMeta(again, "Registration"); nid == id || nid == "" || configMeta(again, "Token") == tok {
			t.Fatalf("after re-registration the config names %q (was %q)", nid, id)
		}
		if pk := lab.ConfigValue(again, "PrivateKey"); pk != lab.ConfigValue(conf, "PrivateKey") {
			t.Error("re-registration changed the private key")
		}
	})
}

// connectTUN runs wedge connect in TUN mode in the client namespace and
// waits until the origin answers through it.
func connectTUN(t *testing.T, s *lab.SingleNode, probe lab.Probe, wedge, conf string) *lab.Proc {
	t.Helper()
	p, err := s.Client.Start("wedge-connect", nil, wedge, "connect", "--config", conf, "--name", s.Lab.IfName(), "--status-interval", "1s")
	if err != nil {
		t.Fatal(err)
	}
	var last error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if p.Exited() {
			t.Fatalf("wedge connect exited:\n%s", p.Output())
		}
		// A short timeout per try: the first SYN may leave before the
		// routes are up, and its retransmit would take seconds.
		var out string
		out, last = probe.NS.Run(probe.Bin, "get", "-timeout", "3s", fmt.Sprintf("http://%s/ip", netip.AddrPortFrom(lab.Origin4.Addr(), lab.HTTPPort)))
		if last == nil {
			got, err := netip.ParseAddrPort(strings.TrimSpace(out))
			if err != nil {
				t.Fatalf("/ip answered %q", out)
			}
			checkEgressSeen(t, lab.Origin4.Addr(), got)
			return p
		}
	}
	p.Stop()
	t.Fatalf("no path to the origin through wedge connect: %v\n%s", last, p.Output())
	return nil
}

func readConf(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// publicGet GETs path on the public API from ns, pinning the certificate
// by fingerprint fp, with bearer token tok (if set); it returns the
// status code.
func publicGet(t *testing.T, ns *lab.NS, fp, path, tok string) int {
	t.Helper()
	tr := &http.Transport{
		DialContext: ns.DialContext,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, VerifyConnection: func(cs tls.ConnectionState) error {
			h := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if hex.EncodeToString(h[:]) != fp {
				return errors.New("certificate is not the pinned one")
			}
			return nil
		}},
	}
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	req, _ := http.NewRequest(http.MethodGet, "https://"+publicAPIAddr+path, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(fmt.Errorf("public API %s: %w", path, err))
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
