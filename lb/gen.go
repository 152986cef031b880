// Package lb is the XDP front of a wedge node: it loads the data-plane
// program in bpf/ and feeds its maps (configuration, node entries, the
// Maglev table of ClientID owners, pins and flows), and builds the tables
// from cluster membership.
//
// It must not import gVisor, wireguard-go, server/, client/, netstack/ or
// egress/: membership and the egress table reach it as plain values from
// server/front.
package lb

// The generated wedgelb_bpfel.go and .o are committed; regenerate them with
// `go generate ./lb/` (needs clang and libbpf's headers) after changing bpf/.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -go-package lb wedgeLB ../bpf/xdp_lb.c -- -O2 -g -Wall -Werror
