package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/server/registry"
)

// MaxBodyBytes bounds API request bodies; larger ones get 413.
const MaxBodyBytes = 64 << 10

// routes serves the admin API's requests, with no authentication: the
// caller is AdminHandler (or a test).
//
//	POST   /v1/reg        {"public_key": "<base64>", "pool", "country", "plus", "quota_bytes"} → 200 api.Registration (with its token)
//	GET    /v1/reg?after=ID&limit=N → 200 api.RegList (a page, in id order, with usage)
//	GET    /v1/reg/{id}   → 200 api.Registration (with its usage)
//	PATCH  /v1/reg/{id}   {"pool", "country", "plus", "quota_bytes", "usage_reset"} (any of them) → 200 api.Registration
//	DELETE /v1/reg/{id}   → 204
//	GET    /v1/status     → 200 Status
//	GET    /v1/nodes      → 200 [cluster.Member]            (cluster only)
//	POST   /v1/nodes/{id}/drain → 204 (cluster only)
//	DELETE /v1/nodes/{id}/drain → 204 (cluster only)
//
// Every error is a 4xx or 5xx with a JSON body {"error": "..."}; a failed
// request changes nothing.
func (n *Node) routes() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := strings.TrimSuffix(r.URL.Path, "/")
		switch {
		case path == "/v1/reg":
			switch r.Method {
			case http.MethodPost:
				n.handleCreate(w, r)
			case http.MethodGet, http.MethodHead:
				n.handleList(w, r)
			default:
				methodNotAllowed(w, "GET, POST")
			}
		case strings.HasPrefix(path, "/v1/reg/"):
			id := strings.TrimPrefix(path, "/v1/reg/")
			switch r.Method {
			case http.MethodGet, http.MethodHead:
				n.handleGet(w, r, id)
			case http.MethodPatch:
				n.handlePatch(w, r, id)
			case http.MethodDelete:
				n.handleDelete(w, r, id)
			default:
				methodNotAllowed(w, "GET, PATCH, DELETE")
			}
		case path == "/v1/nodes" || strings.HasPrefix(path, "/v1/nodes/"):
			n.handleNodes(w, r, strings.TrimPrefix(path, "/v1/nodes"))
		case path == "/v1/status":
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				methodNotAllowed(w, "GET")
				return
			}
			writeJSON(w, http.StatusOK, n.Status())
		default:
			writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
		}
	})
}

// noBrowsers refuses requests a browser makes: the APIs are for
// programs, and a browser always sends Origin on cross-origin and POST
// requests, so a web page cannot register clients or read an API through
// CSRF or DNS rebinding.
func noBrowsers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") != "" {
			writeError(w, http.StatusForbidden, "browser requests are not accepted")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// handleCreate is the admin's POST /v1/reg: the operator may set the
// pool, the country, the plus tier and a quota.
func (n *Node) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req api.RegRequest
	if !readBody(w, r, &req) {
		return
	}
	pub, err := ParsePublicKey(req.PublicKey)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	want := registry.Client{PublicKey: pub, Tags: registry.Tags{Pool: req.Pool, Country: req.Country}}
	if req.Plus != nil {
		want.Plus = *req.Plus
	}
	if req.QuotaBytes != nil {
		want.QuotaBytes = *req.QuotaBytes
	}
	n.create(w, r, want)
}

// create registers want with a new token and answers with the
// registration and its token, or the error.
func (n *Node) create(w http.ResponseWriter, r *http.Request, want registry.Client) {
	want.ID = registry.NewID()
	tok, hash := NewRegToken(want.ID)
	want.TokenHash = hash
	want.AwaitingHandshake = true
	c, err := n.RegisterClient(r.Context(), want)
	if tagsError(w, err) {
		return
	}
	switch {
	case errors.Is(err, registry.ErrExists):
		writeError(w, http.StatusConflict, "public key already registered")
		return
	case errors.Is(err, ErrOwnKey):
		writeError(w, http.StatusBadRequest, "public_key is the server's own key")
		return
	case errors.Is(err, registry.ErrExhausted):
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	case errors.Is(err, registry.ErrUnavailable):
		n.log.Warn("registration refused: cluster store unreachable", "err", err)
		writeError(w, http.StatusServiceUnavailable, "the cluster's registry (etcd) is unreachable from this node; try again later")
		return
	case err != nil:
		n.log.Error("registration failed", "err", err)
		writeError(w, http.StatusInternalServerError, "registration failed")
		return
	}
	resp := n.response(c)
	if n.usage.store != nil {
		resp.Usage = apiUsage(c, registry.Usage{})
	}
	resp.Token = tok
	writeJSON(w, http.StatusOK, resp)
}

// readBody decodes the request's JSON body into v, answering 413 or 400
// and returning false when it cannot.
func readBody(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	err := decodeJSON(r.Body, v)
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return true
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", MaxBodyBytes))
	default:
		writeError(w, http.StatusBadRequest, err.Error())
	}
	return false
}

// tagsError answers a refusal of tags: 400 for tags that are malformed,
// 422 for well-formed ones this node vetoes.
func tagsError(w http.ResponseWriter, err error) bool {
	switch {
	case errors.Is(err, registry.ErrBadTags):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrTagsRefused):
		writeError(w, http.StatusUnprocessableEntity, err.Error())
	default:
		return false
	}
	return true
}

// handlePatch is the admin's PATCH: tags, the plus tier and the quota.
// Unlike POST, which ignores fields it does not know, a PATCH with an
// unknown field is refused: the change it asked for would otherwise be
// silently lost.
func (n *Node) handlePatch(w http.ResponseWriter, r *http.Request, id string) {
	n.patch(w, r, id, adminPatchFields, nil)
}

// patch reads a PATCH body of the fields allowed, refuses with 403 the
// ones in forbidden (the public API's: what the client may not change of
// itself) and applies it.
func (n *Node) patch(w http.ResponseWriter, r *http.Request, id string, allowed []string, forbidden map[string]string) {
	var raw map[string]json.RawMessage
	if !readBody(w, r, &raw) {
		return
	}
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		if why, ok := forbidden[k]; ok {
			writeError(w, http.StatusForbidden, why)
			return
		}
	}
	p, err := parseRegPatch(raw, allowed)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	c, err := n.PatchRegistration(r.Context(), id, p)
	if tagsError(w, err) || n.lookupError(w, err) {
		return
	}
	if p.UsageReset {
		_, err := n.ResetUsage(r.Context(), id)
		if errors.Is(err, errNoUsage) {
			writeError(w, http.StatusNotImplemented, "this node's registry keeps no usage")
			return
		}
		if n.lookupError(w, err) {
			return
		}
	}
	writeJSON(w, http.StatusOK, n.responseUsage(r.Context(), c))
}

// TagsPatch is a change of a registration's tags (PATCH /v1/reg/{id}):
// each non-nil field replaces that tag, nil ones keep theirs; "" restores
// the default.
type TagsPatch struct {
	Pool    *string
	Country *string
}

// Apply returns t changed by p.
func (p TagsPatch) Apply(t registry.Tags) registry.Tags {
	if p.Pool != nil {
		t.Pool = *p.Pool
	}
	if p.Country != nil {
		t.Country = *p.Country
	}
	return t
}

// RegPatch is a change of a registration (PATCH /v1/reg/{id}): its tags,
// and (admin only) the plus tier and the quota. Nil fields keep theirs.
type RegPatch struct {
	TagsPatch
	Plus       *bool
	QuotaBytes *uint64
	// UsageReset starts a new usage period (Node.ResetUsage) after the
	// other changes; Apply leaves it to the caller.
	UsageReset bool
}

// Apply returns c changed by p.
func (p RegPatch) Apply(c registry.Client) registry.Client {
	c.Tags = p.TagsPatch.Apply(c.Tags)
	if p.Plus != nil {
		c.Plus = *p.Plus
	}
	if p.QuotaBytes != nil {
		c.QuotaBytes = *p.QuotaBytes
	}
	return c
}

// The fields each API's PATCH reads.
var (
	adminPatchFields  = []string{"pool", "country", "plus", "quota_bytes", "usage_reset"}
	publicPatchFields = []string{"country"}
)

// parseRegPatch reads a PATCH body: an object with one or more of the
// fields allowed: "pool" and "country" strings, "plus" a boolean,
// "quota_bytes" a number of bytes (0 or null: none), "usage_reset" true.
func parseRegPatch(raw map[string]json.RawMessage, allowed []string) (RegPatch, error) {
	names := `"` + strings.Join(allowed, `", "`) + `"`
	if raw == nil {
		return RegPatch{}, errors.New("body must be a JSON object")
	}
	if len(raw) == 0 {
		return RegPatch{}, fmt.Errorf("nothing to change: give one or more of %s", names)
	}
	var p RegPatch
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		if !slices.Contains(allowed, k) {
			return RegPatch{}, fmt.Errorf("unknown field %q: only %s can be changed", k, names)
		}
		v := raw[k]
		null := bytes.Equal(v, []byte("null"))
		switch k {
		case "pool", "country":
			var s string
			if null || json.Unmarshal(v, &s) != nil {
				return RegPatch{}, fmt.Errorf(`%q must be a string ("" for the default)`, k)
			}
			if k == "pool" {
				p.Pool = &s
			} else {
				p.Country = &s
			}
		case "plus":
			var b bool
			if null || json.Unmarshal(v, &b) != nil {
				return RegPatch{}, errors.New(`"plus" must be true or false`)
			}
			p.Plus = &b
		case "quota_bytes":
			var q uint64
			if !null && json.Unmarshal(v, &q) != nil {
				return RegPatch{}, errors.New(`"quota_bytes" must be a whole number of bytes from 0 to 18446744073709551615 (0 or null: no quota)`)
			}
			p.QuotaBytes = &q
		case "usage_reset":
			var b bool
			if null || json.Unmarshal(v, &b) != nil || !b {
				return RegPatch{}, errors.New(`"usage_reset" must be true (it starts a new usage period: since now, counts zero)`)
			}
			p.UsageReset = true
		}
	}
	return p, nil
}

// ErrTagsRefused wraps Config.ValidTags's veto of tags this node cannot
// serve.
var ErrTagsRefused = errors.New("this node cannot serve those tags")

// checkTags validates tags and asks Config.ValidTags.
func (n *Node) checkTags(t registry.Tags) error {
	if err := t.Validate(); err != nil {
		return err
	}
	if n.cfg.ValidTags != nil {
		if err := n.cfg.ValidTags(t); err != nil {
			return fmt.Errorf("%w: %w", ErrTagsRefused, err)
		}
	}
	return nil
}

// PatchTags changes the tags of registration id by p (PatchRegistration).
func (n *Node) PatchTags(ctx context.Context, id string, p TagsPatch) (registry.Client, error) {
	return n.PatchRegistration(ctx, id, RegPatch{TagsPatch: p})
}

// PatchRegistration changes registration id by p, its tags checked as
// Register checks them, and returns the registration. The node's view
// holds the change when it returns; other nodes of a cluster get it
// through their watch. Like Register it is refused
// (registry.ErrUnavailable) while the cluster's etcd is unreachable. The
// change is applied to the record as stored (registry.Store.Update), so
// two PATCHes of different fields at one instant on two nodes both hold.
func (n *Node) PatchRegistration(ctx context.Context, id string, p RegPatch) (registry.Client, error) {
	n.regMu.Lock()
	defer n.regMu.Unlock()
	if n.cfg.Cluster != nil && !n.cfg.Cluster.Connected() {
		return registry.Client{}, fmt.Errorf("%w: etcd is not reachable from this node", registry.ErrUnavailable)
	}
	c, err := n.cfg.Store.Update(ctx, id, func(c *registry.Client) error {
		next := p.Apply(*c)
		if next.Tags != c.Tags {
			if err := n.checkTags(next.Tags); err != nil {
				return err
			}
		}
		*c = next
		return nil
	})
	if err != nil {
		return registry.Client{}, err
	}
	n.mu.Lock()
	old, held := n.clients[c.PublicKey]
	held = held && old.ID == c.ID
	if held {
		n.clients[c.PublicKey] = c
	}
	n.mu.Unlock()
	if held && old.Tags != c.Tags && n.cfg.OnTags != nil {
		n.cfg.OnTags(c)
	}
	if held && (old.QuotaBytes != c.QuotaBytes || old.Plus != c.Plus) {
		n.checkOver()
	}
	n.log.Info("registration changed", "id", c.ID, "pool", c.Tags.Pool, "country", c.Tags.Country,
		"plus", c.Plus, "quota_bytes", c.QuotaBytes)
	return c, nil
}

func (n *Node) handleGet(w http.ResponseWriter, r *http.Request, id string) {
	c, err := n.Get(r.Context(), id)
	if n.lookupError(w, err) {
		return
	}
	writeJSON(w, http.StatusOK, n.responseUsage(r.Context(), c))
}

// responseUsage is response with the client's usage.
func (n *Node) responseUsage(ctx context.Context, c registry.Client) api.Registration {
	resp := n.response(c)
	resp.Usage = n.usageOf(ctx, c)
	return resp
}

func (n *Node) handleDelete(w http.ResponseWriter, r *http.Request, id string) {
	_, err := n.Unregister(r.Context(), id)
	if n.lookupError(w, err) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (n *Node) lookupError(w http.ResponseWriter, err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, "no such registration")
	case errors.Is(err, registry.ErrUnavailable):
		writeError(w, http.StatusServiceUnavailable, "the cluster's registry (etcd) is unreachable from this node; try again later")
	default:
		n.log.Error("registry lookup failed", "err", err)
		writeError(w, http.StatusInternalServerError, "registry error")
	}
	return true
}

func (n *Node) response(c registry.Client) api.Registration {
	rb := c.ClientID.Bytes()
	resp := api.Registration{
		ID:         c.ID,
		ClientID:   c.ClientID.String(),
		Reserved:   [3]int{int(rb[0]), int(rb[1]), int(rb[2])},
		PublicKey:  c.PublicKey.String(),
		Addresses:  api.Addresses{V4: c.V4.String() + "/32", V6: c.V6.String() + "/128"},
		Server:     api.Server{PublicKey: n.PublicKey().String(), Endpoints: []string{}},
		MTU:        n.cfg.MTU,
		DNS:        []string{},
		Tags:       &api.Tags{Pool: c.Tags.Pool, Country: c.Tags.Country},
		Created:    c.Created,
		Plus:       c.Plus,
		QuotaBytes: c.QuotaBytes,
	}
	for _, e := range n.cfg.Endpoints {
		resp.Server.Endpoints = append(resp.Server.Endpoints, e)
	}
	for _, d := range n.cfg.DNS {
		resp.DNS = append(resp.DNS, d.String())
	}
	return resp
}

// ErrBadKey reports a public key that is not usable for WireGuard.
var ErrBadKey = errors.New("bad public key")

// ParsePublicKey accepts the standard base64 of a 32-byte Curve25519 public
// key, as `wg pubkey` prints it.
func ParsePublicKey(s string) (wgtypes.Key, error) {
	if s == "" {
		return wgtypes.Key{}, fmt.Errorf("%w: public_key is missing", ErrBadKey)
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(raw) != wgtypes.KeyLen {
		return wgtypes.Key{}, fmt.Errorf("%w: public_key must be the base64 of 32 bytes", ErrBadKey)
	}
	k := wgtypes.Key(raw)
	if k == (wgtypes.Key{}) {
		return wgtypes.Key{}, fmt.Errorf("%w: public_key is all zeros", ErrBadKey)
	}
	return k, nil
}

// decodeJSON reads exactly one JSON object. Unknown fields are allowed (so
// clients may send more than we read); trailing data is not.
func decodeJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		if errors.Is(err, io.EOF) {
			return errors.New("empty body: want a JSON object")
		}
		return fmt.Errorf("invalid JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		return errors.New("invalid JSON: data after the object")
	}
	return nil
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "method not allowed; use "+allow)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, api.Error{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
