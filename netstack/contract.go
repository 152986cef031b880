package netstack

import (
	"context"
	"net"
	"net/netip"
)

// Dialer reaches the real destination of a flow the stack terminated. The
// egress package implements it; tests replace it (a refusing dialer, a
// hanging one). src is the client's inner address and port, dst the address
// the client asked for. Implementations apply the egress ACL and return an
// error wrapping egress.ErrDenied (or any error) to refuse.
type Dialer interface {
	// DialTCP returns a connected TCP connection to dst.
	DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error)
	// DialUDP returns a connected UDP socket to dst.
	DialUDP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error)
	// Ping sends one ICMP echo request carrying data to dst from the node
	// and returns nil once a matching echo reply arrived, or an error when
	// ctx ends first or dst is denied.
	Ping(ctx context.Context, dst netip.Addr, data []byte) error
}
