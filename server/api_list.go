package server

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/server/registry"
)

// DefaultListLimit is the page size of GET /v1/reg without "limit".
const DefaultListLimit = 100

// listQuery is GET /v1/reg's query: the page after id After (""; the
// first), of at most Limit registrations.
type listQuery struct {
	After string
	Limit int
}

// parseListQuery reads GET /v1/reg's query string: "after" a
// registration id (or empty), "limit" 1 to registry.MaxUsagePage;
// anything else is refused, so a misspelled parameter is not ignored.
func parseListQuery(raw string) (listQuery, error) {
	q := listQuery{Limit: DefaultListLimit}
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return q, fmt.Errorf("bad query string: %v", err)
	}
	for k, vs := range vals {
		if len(vs) != 1 {
			return q, fmt.Errorf("query parameter %s given %d times", api.Shown(k), len(vs))
		}
		v := vs[0]
		switch k {
		case "after":
			if v != "" && !registry.ValidID(v) {
				return q, fmt.Errorf(`"after" %s: want a registration id (32 lower-case hex characters), the "next" of the previous page`, api.Shown(v))
			}
			q.After = v
		case "limit":
			l, err := strconv.Atoi(v)
			if err != nil || l < 1 || l > registry.MaxUsagePage {
				return q, fmt.Errorf(`"limit" %s: want a whole number from 1 to %d`, api.Shown(v), registry.MaxUsagePage)
			}
			q.Limit = l
		default:
			return q, fmt.Errorf(`unknown query parameter %s: GET /v1/reg takes "after" and "limit"`, api.Shown(k))
		}
	}
	return q, nil
}

// handleList is the admin's GET /v1/reg: one page of the registrations
// with their usage, for the billing export (wedge usage).
func (n *Node) handleList(w http.ResponseWriter, r *http.Request) {
	q, err := parseListQuery(r.URL.RawQuery)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if n.usage.store == nil {
		writeError(w, http.StatusNotImplemented, "this node's registry keeps no usage")
		return
	}
	page, err := n.usage.store.ListUsage(r.Context(), q.After, q.Limit)
	if n.lookupError(w, err) {
		return
	}
	out := api.RegList{Registrations: make([]api.Registration, 0, len(page))}
	for _, cu := range page {
		resp := n.response(cu.Client)
		resp.Usage = apiUsage(cu.Client, cu.Usage)
		out.Registrations = append(out.Registrations, resp)
	}
	if len(page) == q.Limit {
		out.Next = page[len(page)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}
