package netstack

import (
	"context"
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gVisor has no ICMP forwarder: with promiscuous mode it would answer every
// echo request itself, for any destination. Echo requests are therefore
// taken out in Write, before gVisor sees them, and answered only when the
// real destination answered Dialer.Ping.

const (
	icmpv4EchoRequest = 8
	icmpv4EchoReply   = 0
	icmpv4DstUnreach  = 3
	icmpv4PortUnreach = 3
	icmpv4AdminProhib = 13
	icmpv6DstUnreach  = 1
	icmpv6AdminProhib = 1
	icmpv6PortUnreach = 4
	icmpv6EchoRequest = 128
	icmpv6EchoReply   = 129
	protoICMPv4       = 1
	protoICMPv6       = 58
	replyTTL          = 64
	icmpv4MaxQuote    = 576 - 20 - 8  // RFC 1812 4.3.2.3: as much as fits 576 bytes
	icmpv6MaxQuote    = 1280 - 40 - 8 // RFC 4443 2.4(c): as much as fits the minimum MTU
)

// echoRequest parses p as an unfragmented ICMP echo request without IPv6
// extension headers. It returns the packet trimmed to its IP length and
// the offset of the ICMP header.
func echoRequest(p []byte) (pkt []byte, icmpOff int, ok bool) {
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return nil, 0, false
		}
		ihl := int(p[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(p[2:4]))
		if ihl < 20 || total > len(p) || total < ihl+8 || p[9] != protoICMPv4 {
			return nil, 0, false
		}
		if binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 { // MF or fragment offset
			return nil, 0, false
		}
		if p[ihl] != icmpv4EchoRequest || p[ihl+1] != 0 {
			return nil, 0, false
		}
		return p[:total], ihl, true
	case 6:
		if len(p) < 40 || p[6] != protoICMPv6 {
			return nil, 0, false
		}
		total := 40 + int(binary.BigEndian.Uint16(p[4:6]))
		if total > len(p) || total < 48 || p[40] != icmpv6EchoRequest || p[41] != 0 {
			return nil, 0, false
		}
		return p[:total], 40, true
	}
	return nil, 0, false
}

func srcDst(p []byte) (src, dst netip.Addr) {
	if p[0]>>4 == 4 {
		return netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
	}
	return netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
}

// interceptEcho handles p if it is an ICMP echo request and reports
// whether it did.
func (s *Stack) interceptEcho(p []byte) bool {
	req, off, ok := echoRequest(p)
	if !ok {
		return false
	}
	s.stats.pingReq.Add(1)
	_, dst := srcDst(req)
	if s.isLocal(dst) {
		s.stats.pingLocal.Add(1)
		if s.sendRaw(echoReply(req, off)) {
			s.stats.pingRep.Add(1)
		}
		return true
	}
	select {
	case s.pings <- struct{}{}:
	default:
		s.stats.pingDrop.Add(1)
		return true
	}
	if !s.enter() {
		<-s.pings
		return true
	}
	req = append([]byte(nil), req...)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.pings }()
		ctx, cancel := context.WithTimeout(s.ctx, pingTimeout)
		err := s.cfg.Dialer.Ping(ctx, dst, req[off+8:])
		cancel()
		switch {
		case err == nil:
			if s.sendRaw(echoReply(req, off)) {
				s.stats.pingRep.Add(1)
			}
		case s.denied(err):
			s.stats.pingDenied.Add(1)
			s.sendRaw(unreachable(req, true))
		default:
			s.stats.pingFail.Add(1)
		}
	}()
	return true
}

// sendRaw queues a complete IP packet for Read and reports whether it
// was queued.
func (s *Stack) sendRaw(p []byte) bool {
	if p == nil {
		return false
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
	ok := s.link.enqueue(pkt)
	pkt.DecRef()
	return ok
}

// echoReply builds the reply to the echo request req (ICMP at off): source
// and destination swapped, same identifier, sequence and data.
func echoReply(req []byte, off int) []byte {
	r := append([]byte(nil), req...)
	icmp := r[off:]
	icmp[2], icmp[3] = 0, 0
	if r[0]>>4 == 4 {
		var a [4]byte
		copy(a[:], r[12:16])
		copy(r[12:16], r[16:20])
		copy(r[16:20], a[:])
		r[8] = replyTTL
		r[10], r[11] = 0, 0
		binary.BigEndian.PutUint16(r[10:12], ^fold(sum(r[:off], 0)))
		icmp[0] = icmpv4EchoReply
		binary.BigEndian.PutUint16(icmp[2:4], ^fold(sum(icmp, 0)))
		return r
	}
	var a [16]byte
	copy(a[:], r[8:24])
	copy(r[8:24], r[24:40])
	copy(r[24:40], a[:])
	r[7] = replyTTL
	icmp[0] = icmpv6EchoReply
	binary.BigEndian.PutUint16(icmp[2:4], icmpv6Checksum(r[8:24], r[24:40], icmp))
	return r
}

// unreachable builds an ICMP destination unreachable for the client packet
// orig (port unreachable, or administratively prohibited when admin), sent
// as if from orig's destination. It returns nil for a packet too short to
// quote.
func unreachable(orig []byte, admin bool) []byte {
	if len(orig) < 1 {
		return nil
	}
	switch orig[0] >> 4 {
	case 4:
		if len(orig) < 20 {
			return nil
		}
		q := orig[:min(len(orig), icmpv4MaxQuote)]
		r := make([]byte, 28+len(q))
		r[0] = 0x45
		binary.BigEndian.PutUint16(r[2:4], uint16(len(r)))
		r[8] = replyTTL
		r[9] = protoICMPv4
		copy(r[12:16], orig[16:20])
		copy(r[16:20], orig[12:16])
		binary.BigEndian.PutUint16(r[10:12], ^fold(sum(r[:20], 0)))
		r[20] = icmpv4DstUnreach
		r[21] = icmpv4PortUnreach
		if admin {
			r[21] = icmpv4AdminProhib
		}
		copy(r[28:], q)
		binary.BigEndian.PutUint16(r[22:24], ^fold(sum(r[20:], 0)))
		return r
	case 6:
		if len(orig) < 40 {
			return nil
		}
		q := orig[:min(len(orig), icmpv6MaxQuote)]
		r := make([]byte, 48+len(q))
		r[0] = 0x60
		binary.BigEndian.PutUint16(r[4:6], uint16(8+len(q)))
		r[6] = protoICMPv6
		r[7] = replyTTL
		copy(r[8:24], orig[24:40])
		copy(r[24:40], orig[8:24])
		r[40] = icmpv6DstUnreach
		r[41] = icmpv6PortUnreach
		if admin {
			r[41] = icmpv6AdminProhib
		}
		copy(r[48:], q)
		binary.BigEndian.PutUint16(r[42:44], icmpv6Checksum(r[8:24], r[24:40], r[40:]))
		return r
	}
	return nil
}

// icmpv6Checksum is the ICMPv6 checksum of msg (checksum field zero) with
// the RFC 8200 8.1 pseudo-header.
func icmpv6Checksum(src, dst, msg []byte) uint16 {
	var ph [8]byte
	binary.BigEndian.PutUint32(ph[0:4], uint32(len(msg)))
	ph[7] = protoICMPv6
	acc := sum(src, 0)
	acc = sum(dst, acc)
	acc = sum(ph[:], acc)
	acc = sum(msg, acc)
	return ^fold(acc)
}

// sum adds b as big-endian 16-bit words to acc (RFC 1071).
func sum(b []byte, acc uint64) uint64 {
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

func fold(acc uint64) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}
