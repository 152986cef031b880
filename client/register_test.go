package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wedge-edge/wedge/internal/api"
)

// TestHTTPClientPinning: a pinned certificate is accepted whoever signed
// it, another one is refused; without a pin a self-signed certificate is
// refused with advice naming --fingerprint and what was presented.
func TestHTTPClientPinning(t *testing.T) {
	var auth string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		if r.URL.Path == "/v1/reg/gone" {
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(api.Error{Error: "no such registration"})
			return
		}
		if r.URL.Path == "/v1/reg/busy" {
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(429)
			json.NewEncoder(w).Encode(api.Error{Error: "too many"})
			return
		}
		json.NewEncoder(w).Encode(api.Registration{ID: "abc", ClientID: "AQID", PublicKey: "x",
			Addresses: api.Addresses{V4: "100.96.0.2/32"}, Server: api.Server{PublicKey: "c2VydmVyLWtleS1zZXJ2ZXIta2V5LXNlcnZlci1rZXk="}})
	}))
	defer srv.Close()
	fp := CertFingerprint(srv.Certificate().Raw)
	ctx := context.Background()
	a := &API{URL: srv.URL, HTTP: HTTPClient(fp), Token: "tok"}
	r, err := a.Get(ctx, "abc")
	if err != nil || r.ID != "abc" || auth != "Bearer tok" {
		t.Fatalf("pinned: %+v, %v, Authorization %q", r, err, auth)
	}
	if _, err := a.Get(ctx, "gone"); !errors.Is(err, ErrGone) {
		t.Fatalf("404: %v, want ErrGone", err)
	}
	if err := a.Delete(ctx, "gone"); err != nil {
		t.Fatalf("Delete of a registration already gone: %v", err)
	}
	if _, err := a.Get(ctx, "busy"); err == nil || !strings.Contains(err.Error(), "retry after 7 s") {
		t.Fatalf("429: %v", err)
	}
	wrong := &API{URL: srv.URL, HTTP: HTTPClient(strings.Repeat("0", 64))}
	if _, err := wrong.Get(ctx, "abc"); !errors.Is(err, ErrPinMismatch) || !strings.Contains(err.Error(), fp) {
		t.Fatalf("wrong pin: %v", err)
	}
	plain := &API{URL: srv.URL, HTTP: HTTPClient("")}
	_, err = plain.Get(ctx, "abc")
	if err == nil || !strings.Contains(err.Error(), "--fingerprint") || !strings.Contains(err.Error(), fp) {
		t.Fatalf("self-signed without a pin: %v; want advice naming --fingerprint and the certificate's SHA-256", err)
	}
}
