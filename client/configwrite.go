package client

// This file renders the client configuration `wedge register` writes: a
// wg-quick file that wg-quick accepts as it is, carrying wedge's extra
// facts (ClientID, every endpoint) on "#@ Key = value" lines, which
// wg-quick and other WireGuard tools read as comments. config.go parses
// the same file back.

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
)

// WriteOptions shape the rendered file.
type WriteOptions struct {
	// Family picks the Endpoint line wg-quick uses: 4, 6, or 0 for the
	// first endpoint the server listed.
	Family int
	// API is recorded so the client can find its registration again.
	API string
	// Keepalive is the PersistentKeepalive interval in seconds (0: none).
	Keepalive int
	// Fingerprint is the API certificate's pinned SHA-256, recorded so
	// the client reaches the API again the same way (ParseFingerprint's
	// form; "" for none).
	Fingerprint string
}

// PrimaryEndpoint returns the endpoint of the wanted family (4 or 6), or the
// first one when family is 0 or none matches.
func PrimaryEndpoint(eps []string, family int) (string, error) {
	if len(eps) == 0 {
		return "", fmt.Errorf("client: the server advertised no endpoint")
	}
	for _, e := range eps {
		host, _, err := net.SplitHostPort(e)
		if err != nil {
			continue
		}
		is6 := strings.Contains(host, ":")
		if family == 0 || family == 6 && is6 || family == 4 && !is6 {
			return e, nil
		}
	}
	if family != 0 {
		return "", fmt.Errorf("client: the server advertised no IPv%d endpoint (it has %s)", family, strings.Join(eps, ", "))
	}
	return eps[0], nil
}

// CheckRegistration checks every field a server sent before any of it is written
// into a file that wg-quick executes as root: a key is a key, an address
// an address, an endpoint a host and port, identifiers plain text. A
// malicious or hijacked API could otherwise smuggle "PostUp = ..." lines.
func CheckRegistration(r api.Registration) error {
	bad := func(field, v string) error { return fmt.Errorf("client: server sent a bad %s: %q", field, v) }
	if _, err := wgtypes.ParseKey(r.Server.PublicKey); err != nil {
		return bad("server public key", r.Server.PublicKey)
	}
	if !plain(r.ID) || r.ID == "" {
		return bad("registration id", r.ID)
	}
	if !plain(r.ClientID) {
		return bad("client_id", r.ClientID)
	}
	if !plain(r.Token) {
		return bad("token", r.Token)
	}
	for _, b := range r.Reserved {
		if b < 0 || b > 255 {
			return bad("reserved byte", fmt.Sprint(b))
		}
	}
	for _, a := range []string{r.Addresses.V4, r.Addresses.V6} {
		if _, err := netip.ParsePrefix(a); err != nil && a != "" {
			return bad("address", a)
		}
	}
	if r.Addresses.V4 == "" && r.Addresses.V6 == "" {
		return bad("address", "")
	}
	for _, d := range r.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			return bad("DNS server", d)
		}
	}
	for _, e := range r.Server.Endpoints {
		host, port, err := net.SplitHostPort(e)
		if err != nil || !plain(host) || strings.ContainsAny(host, " ,#=") {
			return bad("endpoint", e)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return bad("endpoint", e)
		}
	}
	if r.MTU != 0 && (r.MTU < 576 || r.MTU > 65535) {
		return bad("MTU", fmt.Sprint(r.MTU))
	}
	return nil
}

// plain reports whether s is printable ASCII with no line breaks.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// WriteConfig renders the configuration for private key priv.
func WriteConfig(w io.Writer, priv wgtypes.Key, r api.Registration, o WriteOptions) error {
	if err := CheckRegistration(r); err != nil {
		return err
	}
	if !plain(o.API) {
		return fmt.Errorf("client: bad API URL %q", o.API)
	}
	if o.Fingerprint != "" {
		if _, err := ParseFingerprint(o.Fingerprint); err != nil {
			return fmt.Errorf("client: %w", err)
		}
	}
	ep, err := PrimaryEndpoint(r.Server.Endpoints, o.Family)
	if err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# wedge client configuration. `wg-quick up` takes it as it is;\n")
	fmt.Fprintf(&b, "# the \"#@\" lines are for `wedge connect` and third-party clients.\n")
	fmt.Fprintf(&b, "#@ Registration = %s\n", r.ID)
	if o.API != "" {
		fmt.Fprintf(&b, "#@ API = %s\n", o.API)
	}
	if o.Fingerprint != "" {
		fmt.Fprintf(&b, "#@ Fingerprint = %s\n", o.Fingerprint)
	}
	if r.Token != "" {
		// The registration's credential: the file is mode 0600, as it
		// holds the private key anyway.
		fmt.Fprintf(&b, "#@ Token = %s\n", r.Token)
	}
	fmt.Fprintf(&b, "#@ ClientID = %s\n", r.ClientID)
	fmt.Fprintf(&b, "#@ Reserved = [%d, %d, %d]\n", r.Reserved[0], r.Reserved[1], r.Reserved[2])
	for _, e := range r.Server.Endpoints {
		fmt.Fprintf(&b, "#@ Endpoint = %s\n", e)
	}
	fmt.Fprintf(&b, "\n[Interface]\nPrivateKey = %s\n", priv)
	fmt.Fprintf(&b, "Address = %s\n", strings.Join(nonEmpty(r.Addresses.V4, r.Addresses.V6), ", "))
	if len(r.DNS) > 0 {
		fmt.Fprintf(&b, "DNS = %s\n", strings.Join(r.DNS, ", "))
	}
	if r.MTU > 0 {
		fmt.Fprintf(&b, "MTU = %d\n", r.MTU)
	}
	fmt.Fprintf(&b, "\n[Peer]\nPublicKey = %s\nAllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = %s\n", r.Server.PublicKey, ep)
	if o.Keepalive > 0 {
		fmt.Fprintf(&b, "PersistentKeepalive = %d\n", o.Keepalive)
	}
	_, err = io.WriteString(w, b.String())
	return err
}

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
