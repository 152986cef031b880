package lb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// GUESender sends packets to other nodes from userspace the way the program
// forwards them: the whole IP packet inside UDP (GUE variant 1) to the
// node's underlay address and GUE port, from this node's underlay address,
// which the receiving node's program accepts from its peers and strips.
type GUESender struct {
	conn *net.UDPConn
	port uint16
}

// NewGUESender opens a UDP socket on underlay (this node's IPv4 underlay
// address) for sending to other nodes' GUE port.
func NewGUESender(underlay netip.Addr, port uint16) (*GUESender, error) {
	if !underlay.Is4() {
		return nil, fmt.Errorf("lb: GUE needs an IPv4 underlay address, got %v", underlay)
	}
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(underlay, 0)))
	if err != nil {
		return nil, fmt.Errorf("lb: GUE socket on %v: %w", underlay, err)
	}
	return &GUESender{conn: c, port: port}, nil
}

// Send delivers payload to node at as a UDP datagram from src to dst, as
// if it had reached that node directly.
func (g *GUESender) Send(node netip.Addr, src, dst netip.AddrPort, payload []byte) error {
	pkt, err := UDPPacket(src, dst, payload)
	if err != nil {
		return err
	}
	_, err = g.conn.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(node, g.port))
	return err
}

// Close closes the socket.
func (g *GUESender) Close() error { return g.conn.Close() }

// UDPPacket is an IPv4 or IPv6 packet carrying payload in UDP from src to
// dst, with valid checksums: the receiving kernel checks them once the
// program has stripped the outer header.
func UDPPacket(src, dst netip.AddrPort, payload []byte) ([]byte, error) {
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	if !s.IsValid() || !d.IsValid() || s.Is4() != d.Is4() {
		return nil, fmt.Errorf("lb: UDP packet from %v to %v: addresses of one family needed", src, dst)
	}
	ulen := 8 + len(payload)
	hl := 20
	if s.Is6() {
		hl = 40
	}
	if hl+ulen > 0xffff {
		return nil, errors.New("lb: UDP packet too long")
	}
	be := binary.BigEndian
	p := make([]byte, hl+ulen)
	if s.Is4() {
		p[0] = 0x45
		be.PutUint16(p[2:], uint16(len(p)))
		be.PutUint16(p[6:], 0x4000) // DF
		p[8] = 64
		p[9] = 17
		a, b := s.As4(), d.As4()
		copy(p[12:], a[:])
		copy(p[16:], b[:])
		be.PutUint16(p[10:], fold(sum(0, p[:20])))
	} else {
		p[0] = 0x60
		be.PutUint16(p[4:], uint16(ulen))
		p[6] = 17
		p[7] = 64
		a, b := s.As16(), d.As16()
		copy(p[8:], a[:])
		copy(p[24:], b[:])
	}
	u := p[hl:]
	be.PutUint16(u[0:], src.Port())
	be.PutUint16(u[2:], dst.Port())
	be.PutUint16(u[4:], uint16(ulen))
	copy(u[8:], payload)
	c := fold(sum(sum(sum(0, s.AsSlice()), d.AsSlice())+17+uint32(ulen), u))
	if c == 0 {
		c = 0xffff // 0 means "no checksum" (and is invalid for IPv6)
	}
	be.PutUint16(u[6:], c)
	return p, nil
}

// sum adds b to the ones' complement sum as big-endian 16-bit words.
func sum(s uint32, b []byte) uint32 {
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
