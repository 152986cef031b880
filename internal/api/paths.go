package api

import "net/netip"

// PathsStatus is a node's path table (WARP+ smart routing): which data
// center each destination prefix is best reached through, in the status
// report (Status.Paths).
type PathsStatus struct {
	// DC is the node's data center.
	DC string `json:"dc"`
	// Measured is how many prefixes the node measures itself; Evicted
	// how many it forgot to stay within its bound.
	Measured int    `json:"measured"`
	Evicted  uint64 `json:"evicted,omitempty"`
	// Known is how many prefixes the table knows (its own and the other
	// nodes' published ones), Relayed how many of them it relays now.
	Known   int `json:"known"`
	Relayed int `json:"relayed"`
	// DCs are the other data centers the node knows of.
	DCs []PathDC `json:"dcs"`
	// Routes are the relayed prefixes first (largest gain first), then
	// the others, at most the report's limit.
	Routes []PathRoute `json:"routes"`
}

// PathDC is one other data center as the path table sees it.
type PathDC struct {
	DC string `json:"dc"`
	// RTTMs is the round trip from this node's data center to it (0:
	// unknown), AgeS the age of that figure in seconds.
	RTTMs float64 `json:"rtt_ms"`
	AgeS  float64 `json:"age_s"`
	// Nodes is how many of its nodes publish a fresh summary.
	Nodes int `json:"nodes"`
	// Down: its relay failed and has not answered since.
	Down bool `json:"down,omitempty"`
}

// PathRoute is one prefix's route.
type PathRoute struct {
	Prefix netip.Prefix `json:"prefix"`
	// Exit is "direct" or the data center relayed through; Node is the
	// exit node.
	Exit string `json:"exit"`
	Node string `json:"node,omitempty"`
	// ViaMs is rtt(here → exit) + rtt(exit → prefix) of the exit, or of
	// the best relay (ViaDC) while the route is direct; 0: none known.
	// DirectMs is rtt(here → prefix); 0: not measured.
	ViaMs    float64 `json:"via_ms,omitempty"`
	ViaDC    string  `json:"via_dc,omitempty"`
	DirectMs float64 `json:"direct_ms,omitempty"`
	// AgeS is the age in seconds of the oldest figure the route rests on.
	AgeS float64 `json:"age_s"`
}
