package lb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Frame builders and checkers for the XDP tests: Ethernet, IPv4 and IPv6,
// UDP with valid checksums, WireGuard messages and GUE, addressed in the
// fixture cluster of model_test.go; xCheckEncap and xIPLen read frames back.

func xSum(sum uint32, b []byte) uint32 {
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

func xFold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func xEth(dst, src [6]byte, etype uint16, payload []byte) []byte {
	return slices.Concat(dst[:], src[:], []byte{byte(etype >> 8), byte(etype)}, payload)
}

// xIPv4 is an IPv4 packet with a valid header checksum.
func xIPv4(src, dst netip.Addr, proto byte, opts, payload []byte) []byte {
	hl := 20 + len(opts)
	p := make([]byte, hl+len(payload))
	p[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 0x1234) // id
	p[8] = 61                                 // ttl: some hops already
	p[9] = proto
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	copy(p[20:], opts)
	copy(p[hl:], payload)
	binary.BigEndian.PutUint16(p[10:], xFold(xSum(0, p[:hl])))
	return p
}

func xIPv6(src, dst netip.Addr, next byte, payload []byte) []byte {
	p := make([]byte, 40+len(payload))
	p[0], p[1], p[2], p[3] = 0x60, 0x01, 0x23, 0x45 // flow label 0x12345
	binary.BigEndian.PutUint16(p[4:], uint16(len(payload)))
	p[6] = next
	p[7] = 61
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	copy(p[40:], payload)
	return p
}

// xUDP is a UDP datagram with a valid checksum for src and dst.
func xUDP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	sum := xSum(xSum(0, src.AsSlice()), dst.AsSlice()) + 17 + uint32(len(u))
	c := xFold(xSum(sum, u))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return u
}

func xWGLen(typ byte) int {
	switch typ {
	case 1:
		return 148
	case 2:
		return 92
	case 3:
		return 64
	}
	return 32 + 4*16 // a data message with 64 bytes of ciphertext
}

// xWG is a WireGuard message of n bytes: type, ClientID, then filler. The
// filler's session indexes (bytes 4..11) are untagged: their slot bytes
// (7 and 11) are 0, so only rows that put a tagged index there (xWGIdx)
// are routed by it.
func xWG(typ byte, cid uint32, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	b[0], b[1], b[2], b[3] = typ, byte(cid>>16), byte(cid>>8), byte(cid)
	if n >= 12 {
		b[7], b[11] = 0, 0
	}
	return b
}

// xWGIdx is the WireGuard message xClient sends (type typ, stamped with cid
// or not) with idx at byte off, little-endian: 4 is the receiver index of a
// cookie reply or data message and the sender index of an initiation or
// response, 8 the receiver index of a response.
func xWGIdx(typ byte, cid uint32, off int, idx uint32) []byte {
	b := xWG(typ, cid, xWGLen(typ))
	binary.LittleEndian.PutUint32(b[off:], idx)
	return b
}

// xIdx is an unstamped message of type typ from src to the VIP of its
// family carrying receiver index idx (for an initiation: sender index).
func xIdx(src netip.AddrPort, typ byte, idx uint32) []byte {
	off := 4
	if typ == 2 {
		off = 8
	}
	return xClientTo(src, xWGIdx(typ, 0, off, idx))
}

// xIP wraps an L4 payload in IPv4 or IPv6 by the family of src.
func xIP(src, dst netip.Addr, proto byte, l4 []byte) (etype uint16, ip []byte) {
	if src.Is4() {
		return 0x0800, xIPv4(src, dst, proto, nil, l4)
	}
	return 0x86dd, xIPv6(src, dst, proto, l4)
}

// xClientUDP is a frame from a client at src to dst carrying payload in UDP.
func xClientUDP(src, dst netip.AddrPort, payload []byte) []byte {
	et, ip := xIP(src.Addr(), dst.Addr(), 17, xUDP(src.Addr(), dst.Addr(), src.Port(), dst.Port(), payload))
	return xEth(xNodeMAC, xRouterMAC, et, ip)
}

// xClient is a WireGuard message of type typ stamped with cid (0: not
// stamped) from src to the VIP of its family.
func xClient(src netip.AddrPort, cid uint32, typ byte) []byte {
	return xClientTo(src, xWG(typ, cid, xWGLen(typ)))
}

// xClientTo is a frame carrying the WireGuard message wg from src to the
// VIP of its family.
func xClientTo(src netip.AddrPort, wg []byte) []byte {
	vip := xVIP4
	if src.Addr().Is6() {
		vip = xVIP6
	}
	return xClientUDP(src, netip.AddrPortFrom(vip, xWGPort), wg)
}

// xGUE is inner encapsulated the way the program does it, from the node
// at from to the node at to, as the router delivers it.
func xGUE(from, to netip.Addr, dport uint16, inner []byte) []byte {
	u := make([]byte, 8, 8+len(inner))
	binary.BigEndian.PutUint16(u[0:], 50000)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(inner)))
	u = append(u, inner...)
	return xEth(xNodeMAC, xRouterMAC, 0x0800, xIPv4(from, to, 17, nil, u))
}

// xPatch4 returns a copy of the IPv4 frame f changed by fn, with the IPv4
// header checksum recomputed.
func xPatch4(f []byte, fn func(ip []byte)) []byte {
	f = slices.Clone(f)
	ip := f[14:]
	fn(ip)
	hl := int(ip[0]&0x0f) * 4
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], xFold(xSum(0, ip[:hl])))
	return f
}

// xCheckEncap reports how out fails to be the frame in encapsulated by the
// node at from towards the node at to, with outer source port sport.
func xCheckEncap(in, out []byte, from, to netip.Addr, sport uint16) error {
	be := binary.BigEndian
	if len(out) != len(in)+28 {
		return fmt.Errorf("output is %d bytes, want %d + 28", len(out), len(in))
	}
	var innerLen int
	switch be.Uint16(in[12:]) {
	case 0x0800:
		innerLen = int(be.Uint16(in[16:]))
	case 0x86dd:
		innerLen = 40 + int(be.Uint16(in[18:]))
	default:
		return errors.New("input is not IP")
	}
	if !bytes.Equal(out[0:6], in[6:12]) || !bytes.Equal(out[6:12], in[0:6]) {
		return fmt.Errorf("outer MACs %x > %x, want the input's swapped %x > %x", out[6:12], out[0:6], in[0:6], in[6:12])
	}
	if et := be.Uint16(out[12:]); et != 0x0800 {
		return fmt.Errorf("outer ethertype %#04x, want 0x0800", et)
	}
	ip := out[14:34]
	s, d := from.As4(), to.As4()
	for _, c := range []struct {
		field     string
		got, want uint64
	}{
		{"version/ihl", uint64(ip[0]), 0x45},
		{"tos", uint64(ip[1]), 0},
		{"total length", uint64(be.Uint16(ip[2:])), uint64(28 + innerLen)},
		{"id", uint64(be.Uint16(ip[4:])), 0},
		{"flags/fragment (DF)", uint64(be.Uint16(ip[6:])), 0x4000},
		{"ttl", uint64(ip[8]), 64},
		{"protocol", uint64(ip[9]), 17},
		{"checksum verification (0 when valid)", uint64(xFold(xSum(0, ip))), 0},
		{"source", uint64(be.Uint32(ip[12:])), uint64(be.Uint32(s[:]))},
		{"destination", uint64(be.Uint32(ip[16:])), uint64(be.Uint32(d[:]))},
		{"udp source port", uint64(be.Uint16(out[34:])), uint64(sport)},
		{"udp destination port", uint64(be.Uint16(out[36:])), xGUEPort},
		{"udp length", uint64(be.Uint16(out[38:])), uint64(8 + innerLen)},
		{"udp checksum", uint64(be.Uint16(out[40:])), 0},
	} {
		if c.got != c.want {
			return fmt.Errorf("outer %s is %#x, want %#x", c.field, c.got, c.want)
		}
	}
	if sport < 49152 {
		return fmt.Errorf("outer source port %d below 49152", sport)
	}
	if !bytes.Equal(out[42:], in[14:]) {
		return fmt.Errorf("inner bytes differ from the input's IP packet:\n got %x\nwant %x", out[42:], in[14:])
	}
	return nil
}

// xIPLen is the length of the IP packet in frame f by its header, or 0.
func xIPLen(f []byte) int {
	if len(f) < 14+20 {
		return 0
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		return int(binary.BigEndian.Uint16(f[16:]))
	case 0x86dd:
		return 40 + int(binary.BigEndian.Uint16(f[18:]))
	}
	return 0
}
