package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/internal/api"
)

func TestPrintNodeStatusCluster(t *testing.T) {
	now := time.Now()
	s := api.Status{Name: "wedge0", Clients: 3, Active: 2, Cluster: &api.ClusterStatus{
		Node: api.Member{ID: "node1", DC: "ams", State: api.Active, Underlay: netip.MustParseAddr("198.18.1.1")},
		Etcd: api.Health{Endpoints: []string{"http://198.18.11.1:2379"}, Connected: false, Since: now, LastError: "context deadline exceeded", ErrorAt: now},
		Nodes: []api.Member{
			{ID: "node1", DC: "ams", State: api.Active, Clients: 2, Underlay: netip.MustParseAddr("198.18.1.1")},
			{ID: "node2", DC: "ams", State: api.Draining, Clients: 5, Underlay: netip.MustParseAddr("198.18.2.1")},
		},
	}}
	var b bytes.Buffer
	printNodeStatus(&b, s)
	out := b.String()
	for _, want := range []string{
		"active (handshake < 3 min): 2",
		"this node node1 in ams (active)",
		"UNREACHABLE",
		"context deadline exceeded",
		"node2", "draining", "198.18.2.1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	s.Paths = &api.PathsStatus{DC: "ams", Known: 2, Relayed: 1, Measured: 2,
		DCs: []api.PathDC{{DC: "fra", RTTMs: 9.5, AgeS: 3, Nodes: 2}, {DC: "lon", Down: true}},
		Routes: []api.PathRoute{
			{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Exit: "fra", Node: "node7", ViaMs: 50.25, DirectMs: 100, AgeS: 2},
			{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Exit: "direct", ViaMs: 30, ViaDC: "fra", DirectMs: 29, AgeS: 1},
		}}
	printNodeStatus(&b, s)
	out = b.String()
	for _, want := range []string{
		"path table of ams: 2 prefixes known, 1 relayed",
		"fra  9.5ms", "lon  -", "relay down",
		"203.0.113.0/24   fra (node7)  50.2ms", "100.0ms", "198.51.100.0/24  direct       30.0ms (fra)  29.0ms",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	printNodeStatus(&b, api.Status{Name: "solo"})
	if !strings.Contains(b.String(), "cluster: none") {
		t.Errorf("single-node output:\n%s", b.String())
	}
}
