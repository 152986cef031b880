// Package api holds the wire types of wedge's HTTP API: the registration
// request and answer, egress tags and the rules for their names, and the
// node's status report. The node (server/) serves them and the client
// (client/, cmd/wedge) reads them, so the JSON both sides speak is defined
// once; api_test.go pins it in both directions.
//
// api imports nothing of wedge's and nothing outside the standard library,
// so either side can import it without pulling in the other.
package api

import (
	"errors"
	"fmt"
	"time"
)

// RegRequest is the body of POST /v1/reg. Pool and Country are optional
// (empty: the default pool, the country GeoIP gives).
//
// Who may set what: on the public API a client sends its key, optionally
// an enrollment token and a country; its pool, plus tier and quota come
// from the enrollment token (a request naming a pool, Plus or QuotaBytes
// there is refused). On the admin API the operator sets any of them and
// EnrollToken is ignored.
type RegRequest struct {
	PublicKey string `json:"public_key"`
	Pool      string `json:"pool,omitempty"`
	Country   string `json:"country,omitempty"`
	// EnrollToken is an enrollment token the operator handed out: it
	// grants a pool, the plus tier, a quota and counts against its
	// max_registrations (public API only).
	EnrollToken string `json:"enroll_token,omitempty"`
	// Plus and QuotaBytes are the admin's to set (admin API only); nil:
	// not set (free tier, no quota).
	Plus       *bool   `json:"plus,omitempty"`
	QuotaBytes *uint64 `json:"quota_bytes,omitempty"`
}

// Registration is the answer to POST and GET /v1/reg (and PATCH):
// everything a client needs to build its configuration.
type Registration struct {
	ID        string    `json:"id"`
	ClientID  string    `json:"client_id"` // base64 of the 3 reserved bytes
	Reserved  [3]int    `json:"reserved"`  // the same bytes, for third-party clients
	PublicKey string    `json:"public_key"`
	Addresses Addresses `json:"addresses"`
	Server    Server    `json:"server"`
	MTU       int       `json:"mtu"`
	DNS       []string  `json:"dns"`
	// Tags are the egress tags the node stored. A node always sends them,
	// both keys present (an empty string is the default); nil only in an
	// answer from a node that predates tags.
	Tags    *Tags     `json:"tags,omitempty"`
	Created time.Time `json:"created"`
	// Plus is the plus tier (WARP+-like); QuotaBytes the registration's
	// traffic quota in bytes, 0 for none. Both are set by an enrollment
	// token or by the operator, never by the client itself.
	Plus       bool   `json:"plus"`
	QuotaBytes uint64 `json:"quota_bytes"`
	// Usage is the client's traffic in its current period and whether it
	// is over its quota; nil only in an answer from a node that predates
	// usage.
	Usage *Usage `json:"usage,omitempty"`
	// Token is the registration's own bearer token for GET, PATCH and
	// DELETE of itself on the public API. Only the answer to POST carries
	// it: the node keeps a hash, never the token.
	Token string `json:"token,omitempty"`
}

// Usage is a registration's traffic in its current period, summed over
// every node that served it. RxBytes is what the nodes received from the
// client (its uploads), TxBytes what they sent it (its downloads), as
// WireGuard counts a peer's bytes (encrypted, with its headers). Nodes
// add their counts to the registry every 30 s, so the last half minute
// may be missing.
type Usage struct {
	RxBytes uint64 `json:"rx_bytes"`
	TxBytes uint64 `json:"tx_bytes"`
	// Since is when the period began: the registration's creation or
	// the last usage reset.
	Since time.Time `json:"since"`
	// OverQuota: RxBytes+TxBytes passed the registration's quota, so its
	// new flows are refused (existing ones go on) until the quota is
	// raised or removed, or a usage reset starts a new period.
	OverQuota bool `json:"over_quota"`
}

// RegList is the answer to the admin API's GET /v1/reg: one page of the
// registrations, in id order, with their usage. Next, when not empty, is
// the "after" of the next page; the last page has none.
type RegList struct {
	Registrations []Registration `json:"registrations"`
	Next          string         `json:"next,omitempty"`
}

// Addresses are a client's inner addresses, as prefixes ("…/32", "…/128").
type Addresses struct {
	V4 string `json:"v4"`
	V6 string `json:"v6"`
}

// Server is the node side of the tunnel: the service's public key and the
// endpoints it advertises, v4 and v6.
type Server struct {
	PublicKey string   `json:"public_key"`
	Endpoints []string `json:"endpoints"`
}

// Tags choose how a client's traffic leaves: the egress pool its
// registration asked for and an optional country that overrides the GeoIP
// lookup. Empty means the default.
type Tags struct {
	Pool    string `json:"pool"`
	Country string `json:"country"`
}

// MaxPoolLen is the longest pool name ValidPool accepts.
const MaxPoolLen = 32

// ErrBadTags: Tags.Validate refused the tags.
var ErrBadTags = errors.New("bad tags")

// Validate checks t. Pool is empty (the default pool) or a name ValidPool
// accepts; Country is empty (GeoIP decides) or one ValidCountry accepts.
// Errors wrap ErrBadTags and say what a valid value looks like.
func (t Tags) Validate() error {
	if t.Pool != "" && !ValidPool(t.Pool) {
		return fmt.Errorf("%w: pool %s: want 1 to %d characters of a-z, 0-9 and '-', starting with a letter or digit (empty for the default pool)",
			ErrBadTags, Shown(t.Pool), MaxPoolLen)
	}
	if t.Country != "" && !ValidCountry(t.Country) {
		return fmt.Errorf("%w: country %s: want two upper-case letters A-Z, an ISO 3166-1 alpha-2 code such as \"NL\" (empty to use GeoIP)",
			ErrBadTags, Shown(t.Country))
	}
	return nil
}

// ValidPool reports whether s is a pool name: 1 to MaxPoolLen characters
// of a-z, 0-9 and '-', the first a letter or digit. The egress plan and
// the registry use the same rule, so every pool a plan names can be asked
// for and every pool a client asks for can be named in a plan.
func ValidPool(s string) bool {
	if len(s) == 0 || len(s) > MaxPoolLen || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidCountry reports whether s is an ISO 3166-1 alpha-2 code in upper
// case, such as "NL" (the form GeoIP databases and RFC 8805 feeds use).
func ValidCountry(s string) bool {
	return len(s) == 2 && 'A' <= s[0] && s[0] <= 'Z' && 'A' <= s[1] && s[1] <= 'Z'
}

// Shown quotes a rejected value for an error message, shortened: it may be
// anything a client sent.
func Shown(s string) string {
	const max = 40
	if len(s) > max {
		return fmt.Sprintf("%q… (%d bytes)", s[:max], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// Error is the body of every 4xx and 5xx answer.
type Error struct {
	Error string `json:"error"`
}
