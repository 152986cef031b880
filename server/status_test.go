package server

import (
	"context"
	"testing"
)

// TestCounters: the metrics' view agrees with the status report.
func TestCounters(t *testing.T) {
	n, _ := newTestNode(t)
	var ids []string
	for range 3 {
		_, body := do(t, n.routes(), "POST", "/v1/reg", `{"public_key":"`+pubKey(t)+`"}`)
		ids = append(ids, body["id"].(string))
	}
	// Registrations add no peers; two of the clients handshake, and the
	// deletion of one removes its peer.
	for _, id := range ids[:2] {
		c, err := n.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		holdPeer(t, n, c)
	}
	if code, _ := do(t, n.routes(), "DELETE", "/v1/reg/"+ids[0], ""); code != 204 && code != 200 {
		t.Fatalf("delete: %d", code)
	}
	c, s := n.Counters(), n.Status()
	if c.PeersAdded != 2 || c.PeersRemoved != 1 || c.Peers.Held != 1 || c.Peers.Removed[removedDeleted] != 1 {
		t.Errorf("peers added %d, removed %d, held %d; want 2, 1, 1 (%+v)", c.PeersAdded, c.PeersRemoved, c.Peers.Held, c.Peers)
	}
	if p, ok := s.Sections["peers"].(PeersStatus); !ok || p.Held != 1 {
		t.Errorf("status peers section %#v", s.Sections["peers"])
	}
	if c.Clients != 2 || c.Clients != s.Clients || c.Active != s.Active {
		t.Fatalf("counters %+v, status clients %d active %d", c, s.Clients, s.Active)
	}
	if c.Bind != s.Bind {
		t.Fatalf("bind counters %+v, status %+v", c.Bind, s.Bind)
	}
	if c.Indexes != nil {
		t.Fatalf("index counters without tagged indexes: %+v", c.Indexes)
	}
}
