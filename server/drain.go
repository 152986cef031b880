package server

import (
	"context"
	"net/http"
	"strings"
	"time"
)

// handleNodes serves the cluster's membership and drain:
//
//	GET    /v1/nodes              the live nodes
//	POST   /v1/nodes/{id}/drain   mark id draining: it keeps its clients and
//	                              takes no new ones (once the front uses
//	                              membership)
//	DELETE /v1/nodes/{id}/drain   make id active again
//
// rest is the path after /v1/nodes.
func (n *Node) handleNodes(w http.ResponseWriter, r *http.Request, rest string) {
	m := n.cfg.Cluster
	if m == nil {
		writeError(w, http.StatusConflict, "this node is not in a cluster (wedged --etcd)")
		return
	}
	if rest == "" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, "GET")
			return
		}
		writeJSON(w, http.StatusOK, m.Members())
		return
	}
	id, ok := strings.CutSuffix(strings.TrimPrefix(rest, "/"), "/drain")
	if !ok || id == "" || strings.Contains(id, "/") {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
		return
	}
	var on bool
	switch r.Method {
	case http.MethodPost:
		on = true
	case http.MethodDelete:
	default:
		methodNotAllowed(w, "POST, DELETE")
		return
	}
	live := false
	for _, mem := range m.Members() {
		live = live || mem.ID == id
	}
	// Draining a node that is not up is refused (a typo would otherwise
	// drain nothing, silently); making one active again is always allowed,
	// so a mark left by a node that is gone can be cleared.
	if on && !live {
		writeError(w, http.StatusNotFound, "no live node "+id)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if err := m.SetDrain(ctx, id, on); err != nil {
		n.log.Warn("drain failed", "node", id, "err", err)
		writeError(w, http.StatusServiceUnavailable, "etcd did not take the change: "+err.Error())
		return
	}
	n.log.Info("drain changed", "node", id, "draining", on)
	w.WriteHeader(http.StatusNoContent)
}
