package server

import "testing"

// TestCounters: the metrics' view agrees with the status report.
func TestCounters(t *testing.T) {
	n, _ := newTestNode(t)
	for range 2 {
		do(t, n.routes(), "POST", "/v1/reg", `{"public_key":"`+pubKey(t)+`"}`)
	}
	c, s := n.Counters(), n.Status()
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
