package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/wedge-edge/wedge/internal/api"
)

// API is a node's registration API as the client calls it: the public
// API (https://, a registration's own token) or the admin API (http:// on
// the node, the admin token).
type API struct {
	// URL is the base URL, such as https://edge.example:443 or
	// http://127.0.0.1:8080.
	URL string
	// HTTP makes the requests (nil: a client with a 30 s timeout that
	// verifies certificates the system way; see HTTPClient for pinning).
	HTTP *http.Client
	// Token is sent as "Authorization: Bearer Token" when set.
	Token string
}

// ErrGone: the registration asked for does not exist (any more): the
// client may register again.
var ErrGone = errors.New("the registration is gone")

// Register posts req to POST /v1/reg and returns the registration (with
// its token when the node hands one out). An error answer is returned
// with the server's message.
func (a *API) Register(ctx context.Context, req api.RegRequest) (api.Registration, error) {
	body, _ := json.Marshal(req)
	var r api.Registration
	if err := a.do(ctx, http.MethodPost, "/v1/reg", body, http.StatusOK, &r); err != nil {
		return api.Registration{}, fmt.Errorf("register: %w", err)
	}
	if err := CheckRegistration(r); err != nil {
		return api.Registration{}, fmt.Errorf("register: answer from %s: %w", a.URL, err)
	}
	return r, nil
}

// Get returns registration id; ErrGone when the node answers 404.
func (a *API) Get(ctx context.Context, id string) (api.Registration, error) {
	var r api.Registration
	if err := a.do(ctx, http.MethodGet, "/v1/reg/"+url.PathEscape(id), nil, http.StatusOK, &r); err != nil {
		return api.Registration{}, fmt.Errorf("get registration %s: %w", id, err)
	}
	if err := CheckRegistration(r); err != nil {
		return api.Registration{}, fmt.Errorf("get registration: answer from %s: %w", a.URL, err)
	}
	return r, nil
}

// Delete removes registration id (used to undo a registration whose
// configuration could not be written, so no orphan is left behind). A
// registration already gone is not an error.
func (a *API) Delete(ctx context.Context, id string) error {
	err := a.do(ctx, http.MethodDelete, "/v1/reg/"+url.PathEscape(id), nil, http.StatusNoContent, nil)
	if err != nil && !errors.Is(err, ErrGone) {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	return nil
}

// do sends one request and decodes a want answer into out.
func (a *API) do(ctx context.Context, method, path string, body []byte, want int, out any) error {
	u := strings.TrimSuffix(a.URL, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.Token != "" {
		req.Header.Set("Authorization", "Bearer "+a.Token)
	}
	hc := a.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return explainTLS(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != want {
		msg := resp.Status
		var e api.Error
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			msg += ": " + e.Error
		}
		if resp.StatusCode == http.StatusNotFound && method != http.MethodPost {
			return fmt.Errorf("%w (%s)", ErrGone, msg)
		}
		if ra := resp.Header.Get("Retry-After"); resp.StatusCode == http.StatusTooManyRequests && ra != "" {
			msg += " (retry after " + ra + " s)"
		}
		return errors.New(msg)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("bad answer from %s: %w", u, err)
		}
	}
	return nil
}

// ParseFingerprint reads a certificate's SHA-256 fingerprint: 64 hex
// digits, upper or lower case, optionally in colon-separated pairs (as
// openssl prints it). It returns the lower-case form.
func ParseFingerprint(s string) (string, error) {
	fp := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	if b, err := hex.DecodeString(fp); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("fingerprint %q: want the certificate's SHA-256 as 64 hex digits (wedged prints it at start; `wedged fingerprint` on the node)", s)
	}
	return fp, nil
}

// CertFingerprint is the SHA-256 of a certificate's DER bytes in
// lower-case hex.
func CertFingerprint(der []byte) string {
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:])
}

// HTTPClient returns the client for a node's API. With a fingerprint
// (ParseFingerprint's form) the TLS certificate must be exactly that one
// (a self-signed certificate is fine, names are not checked); without,
// the system's roots verify it as usual.
func HTTPClient(fingerprint string) *http.Client {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if fingerprint != "" {
		tc.InsecureSkipVerify = true // replaced by the pin below
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			if got := CertFingerprint(cs.PeerCertificates[0].Raw); got != fingerprint {
				return fmt.Errorf("%w: the server's certificate has SHA-256 %s, not the pinned %s", ErrPinMismatch, got, fingerprint)
			}
			return nil
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// ErrPinMismatch: the server's certificate is not the pinned one.
var ErrPinMismatch = errors.New("certificate fingerprint mismatch")

// explainTLS turns a certificate the system does not trust into advice:
// a node with a self-signed certificate is reached by pinning it.
func explainTLS(err error) error {
	var cert *x509.Certificate
	var ua x509.UnknownAuthorityError
	var inv x509.CertificateInvalidError
	var host x509.HostnameError
	switch {
	case errors.As(err, &ua):
		cert = ua.Cert
	case errors.As(err, &inv):
		cert = inv.Cert
	case errors.As(err, &host):
		cert = host.Certificate
	default:
		return err
	}
	seen := ""
	if cert != nil {
		seen = fmt.Sprintf("; the certificate presented has SHA-256 %s", CertFingerprint(cert.Raw))
	}
	return fmt.Errorf("%w\nthe node's certificate is not one this machine trusts (a self-signed one?): pin it with --fingerprint SHA256, "+
		"which the node's operator gets from wedged's start-up log or `wedged fingerprint` on the node%s (compare, do not copy it blindly)", err, seen)
}
