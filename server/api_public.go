package server

// The public API's door: what a client may do by itself from the
// internet. It serves only
//
//	POST   /v1/reg        {"public_key", "enroll_token"?, "country"?} → 200 api.Registration with "token"
//	GET    /v1/reg/{id}   Authorization: Bearer <that registration's token> → 200 api.Registration
//	PATCH  /v1/reg/{id}   the same, {"country": "…"} → 200 api.Registration
//	DELETE /v1/reg/{id}   the same → 204
//
// and 404 for everything else. A client never chooses its pool, plus tier
// or quota: they come from the enrollment token it presents, or the
// operator sets them on the admin API.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/server/registry"
)

// PublicConfig is the public API's policy.
type PublicConfig struct {
	// Enroll returns the enrollment tokens in force (nil: none), so a
	// file can be reloaded between requests (EnrollFile.Tokens).
	Enroll func() *EnrollTokens
	// Open lets a client register without an enrollment token: the
	// default pool, free tier, no quota. Off, such a POST is refused
	// with 403.
	Open bool
	// PerSource bounds the registrations from one source address (an
	// IPv4 address or an IPv6 /64); PerToken those with one enrollment
	// token. Above them a POST gets 429 with Retry-After. The zero Rate
	// is no limit. Both count on this node only.
	PerSource, PerToken Rate
	// AuthFailures bounds the requests per source address that fail
	// authentication (401, 403, or 404 for a token naming a registration
	// that is gone); above it such a source gets 429 before its token is
	// looked up. Zero: DefaultAuthFailures.
	AuthFailures Rate
}

// DefaultAuthFailures is PublicConfig.AuthFailures's default.
var DefaultAuthFailures = Rate{N: 60, Per: time.Minute}

type publicAPI struct {
	n        *Node
	cfg      PublicConfig
	bySource *keyedLimiter
	byToken  *keyedLimiter
	failures *keyedLimiter
	// enrollMu makes counting an enrollment token's registrations and
	// adding one a single step on this node.
	enrollMu sync.Mutex
}

// PublicHandler serves the public API (see the file's comment). It is
// meant for the internet: behind TLS, with no admin function, every
// registration's own token required for anything but POST.
func (n *Node) PublicHandler(cfg PublicConfig) http.Handler {
	if cfg.AuthFailures.Off() {
		cfg.AuthFailures = DefaultAuthFailures
	}
	p := &publicAPI{n: n, cfg: cfg, bySource: newKeyedLimiter(cfg.PerSource),
		byToken: newKeyedLimiter(cfg.PerToken), failures: newKeyedLimiter(cfg.AuthFailures)}
	return noBrowsers(http.HandlerFunc(p.serve))
}

func (p *publicAPI) serve(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimSuffix(r.URL.Path, "/")
	id, isReg := strings.CutPrefix(path, "/v1/reg/")
	switch {
	case path == "/v1/reg":
		if r.Method != http.MethodPost {
			methodNotAllowed(w, "POST")
			return
		}
		p.create(w, r)
	case isReg && id != "" && !strings.Contains(id, "/"):
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodPatch, http.MethodDelete:
		default:
			methodNotAllowed(w, "GET, PATCH, DELETE")
			return
		}
		if !p.authorize(w, r, id) {
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			p.n.handleGet(w, r, id)
		case http.MethodPatch:
			p.n.patch(w, r, id, publicPatchFields, clientMayNotSet)
		case http.MethodDelete:
			p.n.handleDelete(w, r, id)
		}
	default:
		writeError(w, http.StatusNotFound, "no such endpoint on the public API: "+api.Shown(r.URL.Path))
	}
}

// clientMayNotSet are the fields a client cannot set for itself, and why.
var clientMayNotSet = map[string]string{
	"pool":        "a client cannot choose its pool: it comes with an enrollment token or from the operator",
	"plus":        "a client cannot choose the plus tier: it comes with an enrollment token or from the operator",
	"quota_bytes": "a client cannot choose its quota: it comes with an enrollment token or from the operator",
	"usage_reset": "a client cannot reset its own usage: the operator does (admin API)",
}

// create is the public POST /v1/reg.
func (p *publicAPI) create(w http.ResponseWriter, r *http.Request) {
	if ok, wait := p.bySource.take(sourceKey(r.RemoteAddr)); !ok {
		tooMany(w, wait, "from this address")
		return
	}
	var raw map[string]json.RawMessage
	if !readBody(w, r, &raw) {
		return
	}
	if raw == nil {
		writeError(w, http.StatusBadRequest, "body must be a JSON object")
		return
	}
	var req api.RegRequest
	if err := remarshal(raw, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	for _, k := range []string{"plus", "quota_bytes"} {
		if _, ok := raw[k]; ok {
			writeError(w, http.StatusForbidden, clientMayNotSet[k])
			return
		}
	}
	pub, err := ParsePublicKey(req.PublicKey)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	want := registry.Client{PublicKey: pub, Tags: registry.Tags{Country: req.Country}}
	if req.EnrollToken == "" {
		switch {
		case !p.cfg.Open:
			writeError(w, http.StatusForbidden, `this node takes registrations only with an enrollment token ("enroll_token")`)
		case req.Pool != "":
			writeError(w, http.StatusForbidden, clientMayNotSet["pool"])
		default:
			p.n.create(w, r, want)
		}
		return
	}
	var tokens *EnrollTokens
	if p.cfg.Enroll != nil {
		tokens = p.cfg.Enroll()
	}
	g, eid, ok := tokens.Lookup(req.EnrollToken)
	if !ok {
		writeError(w, http.StatusForbidden, "unknown enrollment token")
		return
	}
	if ok, wait := p.byToken.take(eid); !ok {
		tooMany(w, wait, "with this enrollment token")
		return
	}
	if req.Pool != "" && req.Pool != g.Pool {
		writeError(w, http.StatusForbidden, fmt.Sprintf("this enrollment token grants pool %s; a client cannot choose another", api.Shown(g.Pool)))
		return
	}
	want.Tags.Pool, want.Plus, want.QuotaBytes, want.Enrollment = g.Pool, g.Plus, g.QuotaBytes, eid
	if g.MaxRegistrations > 0 {
		p.enrollMu.Lock()
		defer p.enrollMu.Unlock()
		if have := p.n.countEnrollment(eid); have >= g.MaxRegistrations {
			writeError(w, http.StatusForbidden, fmt.Sprintf("this enrollment token has all the registrations it allows (%d)", g.MaxRegistrations))
			return
		}
	}
	p.n.create(w, r, want)
}

// remarshal decodes a JSON object already split into fields into v.
func remarshal(raw map[string]json.RawMessage, v any) error {
	b, err := json.Marshal(raw)
	if err != nil {
		return fmt.Errorf("invalid JSON: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("invalid JSON: %v", err)
	}
	return nil
}

// countEnrollment counts the registrations the node knows that used
// enrollment token eid. In a cluster the node's view lags the others'
// registrations by the watch (milliseconds), so two nodes taking the
// last place of a token at one instant may both succeed.
func (n *Node) countEnrollment(eid string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	count := 0
	for _, c := range n.clients {
		if c.Enrollment == eid {
			count++
		}
	}
	return count
}

// authorize checks that the request carries the token of registration
// id: 401 without a token or with a wrong one, 403 with another
// registration's valid token, 404 when the token's registration is gone
// (the client may register again). Sources that fail too often get 429.
func (p *publicAPI) authorize(w http.ResponseWriter, r *http.Request, id string) bool {
	src := sourceKey(r.RemoteAddr)
	fail := func(code int, msg string) bool {
		p.failures.take(src)
		if code == http.StatusUnauthorized {
			unauthorized(w, "wedge", msg)
		} else {
			writeError(w, code, msg)
		}
		return false
	}
	if ok, wait := p.failures.peek(src); !ok {
		tooMany(w, wait, "with failed authentication from this address")
		return false
	}
	tok, err := ParseBearer(r.Header.Get("Authorization"))
	if err != nil {
		return fail(http.StatusUnauthorized, err.Error()+" (the registration's token, from the answer to its POST)")
	}
	tid, err := ParseRegToken(tok)
	if err != nil {
		return fail(http.StatusUnauthorized, "not a registration token")
	}
	c, err := p.n.Get(r.Context(), tid)
	valid := err == nil && c.TokenHash != ([32]byte{}) && sameHash(c.TokenHash, tokenHash(tok))
	switch {
	case tid != id && valid:
		return fail(http.StatusForbidden, "this token belongs to another registration")
	case tid != id:
		return fail(http.StatusUnauthorized, "wrong token")
	case errors.Is(err, registry.ErrNotFound):
		return fail(http.StatusNotFound, "no such registration (it was removed: register again)")
	case err != nil:
		p.n.lookupError(w, err)
		return false
	case !valid:
		return fail(http.StatusUnauthorized, "wrong token for this registration")
	}
	return true
}
