package udpbind

import (
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
)

// Endpoint is a peer's address as seen by a Bind: the remote address and
// port (Dst) and the local address the peer's datagram was sent to (Src).
// Send uses Src as the source address of replies.
//
// An Endpoint is immutable. Receive hands the same *Endpoint to every packet
// from the same (remote, local) pair, so it must never change: ClearSrc is a
// no-op (see its comment).
type Endpoint struct {
	dst   netip.AddrPort // remote address, never v4-mapped
	src   netip.Addr     // local address the peer targeted; invalid if unknown
	scope uint32         // dst's IPv6 scope id (link-local peers), else 0
	srcIf int32          // ifindex for a link-local IPv6 src, else 0
}

var _ conn.Endpoint = (*Endpoint)(nil)

// AddrPort returns the remote address and port.
func (e *Endpoint) AddrPort() netip.AddrPort { return e.dst }

// Src returns the local address the peer's datagram was sent to, the source
// address Send uses to reply, or the zero Addr if unknown.
func (e *Endpoint) Src() netip.Addr { return e.src }

// ClearSrc does nothing. Endpoints are shared and immutable, and a wedge node
// must always answer from the address the client targeted (an anycast VIP
// under direct server return). If that address stops being local, Send
// notices (the kernel rejects the source) and sends from the kernel's chosen
// address instead.
//
// wireguard-go calls ClearSrc only from its route listener, which it runs for
// conn.StdNetBind alone.
func (e *Endpoint) ClearSrc() {}

// SrcToString returns Src as a string, or "" if unknown.
func (e *Endpoint) SrcToString() string {
	if !e.src.IsValid() {
		return ""
	}
	return e.src.String()
}

// DstToString returns the remote address as ip:port.
func (e *Endpoint) DstToString() string { return e.dst.String() }

// DstToBytes returns the remote address in netip.AddrPort's binary form, for
// wireguard-go's cookie (mac2) computation. It allocates a new slice.
func (e *Endpoint) DstToBytes() []byte {
	b, _ := e.dst.MarshalBinary()
	return b
}

// DstIP returns the remote address.
func (e *Endpoint) DstIP() netip.Addr { return e.dst.Addr() }

// SrcIP returns Src.
func (e *Endpoint) SrcIP() netip.Addr { return e.src }

// NewEndpoint is the endpoint of a peer at dst that a node reaches from its
// local address src (invalid: the kernel's choice): for a peer learned from
// elsewhere than its own packets, such as a session another node held.
// Neither address may be link-local: a zone is dropped.
func NewEndpoint(dst netip.AddrPort, src netip.Addr) *Endpoint {
	return &Endpoint{dst: netip.AddrPortFrom(dst.Addr().Unmap().WithZone(""), dst.Port()), src: src.Unmap().WithZone("")}
}
