package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/wedge-edge/wedge/internal/api"
)

// The request headers of a relayed flow. Header names are canonical
// (net/http's CanonicalHeaderKey form); HTTP/2 sends them lower-case.
const (
	// HeaderKeepalive is the idle time, in whole seconds, after which the
	// exit's connection to the origin sends TCP keepalive probes; 0 turns
	// keepalive off. Required.
	HeaderKeepalive = "Exit-Tcp-Keepalive-Duration"
	// HeaderApplication names the application; only "warp" is served.
	// Required.
	HeaderApplication = "Application"
	// HeaderCountry is the client's egress country (ISO 3166-1 alpha-2,
	// upper case): the exit leaves from one of its addresses with that
	// country. Optional: absent means the exit's own choice.
	HeaderCountry = "Wedge-Egress-Country"
	// HeaderPool is the client's egress pool. Optional: absent means the
	// default pool.
	HeaderPool = "Wedge-Egress-Pool"
	// HeaderHops counts the relays the flow goes through, this one
	// included: the entry sends 1, an exit that relays once more sends 2.
	// Required.
	HeaderHops = "Wedge-Hops"
	// HeaderError is the response header that says why a request was
	// refused: one of the Reason constants.
	HeaderError = "Wedge-Error"
)

// Application is the only value of HeaderApplication served.
const Application = "warp"

// Limits on the header values.
const (
	// MaxKeepalive is the largest Exit-Tcp-Keepalive-Duration accepted
	// (a day).
	MaxKeepalive = 24 * time.Hour
	// DefaultMaxHops is how many relays a flow may go through unless
	// ServerConfig.MaxHops says otherwise.
	DefaultMaxHops = 2
	// hopsCeiling bounds the number parsed at all.
	hopsCeiling = 255
)

// The reasons a relay refuses a request (HeaderError's values).
const (
	ReasonBadRequest = "bad-request" // 400: a header is missing or malformed, or the method is not CONNECT
	ReasonHopLimit   = "hop-limit"   // 403: Wedge-Hops is past the exit's limit
	ReasonDenied     = "denied"      // 403: the exit's egress refused the destination (its ACL)
	ReasonDial       = "dial"        // 502: the exit could not connect to the origin
	ReasonTimeout    = "timeout"     // 504: the exit's connection to the origin timed out
)

// Tags are the client's egress tags, as the entry resolved them: Country
// is the country the client's flows leave with (its registration's
// override or the GeoIP answer), Pool its egress pool.
type Tags = api.Tags

// Request is what a CONNECT request asks of an exit.
type Request struct {
	Dst       netip.AddrPort
	Keepalive time.Duration // 0: no keepalive
	Tags      Tags
	Hops      int // relays the flow goes through, this one included (≥ 1)
}

// ErrBadRequest wraps every error of ParseRequest.
var ErrBadRequest = errors.New("relay: bad request")

// ParseRequest reads a CONNECT request's authority (host:port, the host an
// IP address literal, IPv6 in brackets) and headers. Everything in them is
// untrusted; every error wraps ErrBadRequest. It does not check the hop
// limit: that is the server's configuration.
func ParseRequest(authority string, h http.Header) (Request, error) {
	var r Request
	dst, err := netip.ParseAddrPort(authority)
	if err != nil || dst.Addr().Zone() != "" || dst.Port() == 0 || !dst.Addr().IsValid() {
		return r, fmt.Errorf("%w: authority %s: want an IP address and a port", ErrBadRequest, api.Shown(authority))
	}
	r.Dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())

	app, err := single(h, HeaderApplication, true)
	if err != nil {
		return r, err
	}
	if app != Application {
		return r, fmt.Errorf("%w: %s %s: want %q", ErrBadRequest, HeaderApplication, api.Shown(app), Application)
	}

	ka, err := single(h, HeaderKeepalive, true)
	if err != nil {
		return r, err
	}
	secs, ok := decimal(ka, int(MaxKeepalive/time.Second))
	if !ok {
		return r, fmt.Errorf("%w: %s %s: want whole seconds, 0 to %d", ErrBadRequest, HeaderKeepalive, api.Shown(ka), int(MaxKeepalive/time.Second))
	}
	r.Keepalive = time.Duration(secs) * time.Second

	hops, err := single(h, HeaderHops, true)
	if err != nil {
		return r, err
	}
	n, ok := decimal(hops, hopsCeiling)
	if !ok || n < 1 {
		return r, fmt.Errorf("%w: %s %s: want a count from 1 to %d", ErrBadRequest, HeaderHops, api.Shown(hops), hopsCeiling)
	}
	r.Hops = n

	if r.Tags.Country, err = single(h, HeaderCountry, false); err != nil {
		return r, err
	}
	if r.Tags.Pool, err = single(h, HeaderPool, false); err != nil {
		return r, err
	}
	if err := r.Tags.Validate(); err != nil {
		return r, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return r, nil
}

// Header is the header of a CONNECT request for r (its Dst goes in the
// authority).
func (r Request) Header() http.Header {
	h := http.Header{}
	h.Set(HeaderApplication, Application)
	h.Set(HeaderKeepalive, strconv.Itoa(int(r.Keepalive/time.Second)))
	h.Set(HeaderHops, strconv.Itoa(r.Hops))
	if r.Tags.Country != "" {
		h.Set(HeaderCountry, r.Tags.Country)
	}
	if r.Tags.Pool != "" {
		h.Set(HeaderPool, r.Tags.Pool)
	}
	return h
}

// single returns the one value of header k: twice is an error, absent is
// one when required.
func single(h http.Header, k string, required bool) (string, error) {
	v := h.Values(k)
	switch {
	case len(v) > 1:
		return "", fmt.Errorf("%w: %s given %d times", ErrBadRequest, k, len(v))
	case len(v) == 0 && required:
		return "", fmt.Errorf("%w: %s missing", ErrBadRequest, k)
	case len(v) == 0:
		return "", nil
	}
	return v[0], nil
}

// decimal parses s, only ASCII digits (no sign, no spaces), as a number
// from 0 to limit.
func decimal(s string, limit int) (int, bool) {
	if s == "" || len(s) > 10 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n <= limit
}

type requestKey struct{}

// RequestFrom returns the request a Server's DialFunc is dialing for: an
// exit that relays once more reads Hops from it.
func RequestFrom(ctx context.Context) (Request, bool) {
	r, ok := ctx.Value(requestKey{}).(Request)
	return r, ok
}
