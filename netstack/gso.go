package netstack

import (
	"errors"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The link endpoint offers "host" GSO to gVisor's TCP, so the stack hands it
// segments of up to gsoMaxSize bytes with only a partial checksum, as a
// kernel would hand a NIC doing TSO. splitTCP does the NIC's part: it cuts
// such a segment into MSS-sized packets with full checksums. The stack's
// per-segment cost (one PacketBuffer, one trip through TCP and IP) is then
// paid once per ~45 packets, and wireguard-go gets them in one Read, so its
// Send coalesces them into one UDP GSO write.

// gsoMaxSize bounds a GSO segment: headers plus payload must fit the 16-bit
// IP length fields.
const gsoMaxSize = 1<<16 - 1 - header.IPv6MinimumSize - 60 // 60: the largest TCP header

var errGSO = errors.New("netstack: malformed GSO segment")

// tcpSegments returns how many packets splitTCP makes of a GSO segment of
// size bytes with headers hdrLen and mss.
func tcpSegments(size, hdrLen, mss int) int {
	if mss <= 0 || size <= hdrLen {
		return 1
	}
	return (size - hdrLen + mss - 1) / mss
}

// splitTCP cuts pkt, an IPv4 or IPv6 packet carrying one TCP segment whose
// payload may exceed mss, into packets of at most mss payload bytes written
// to bufs[i][offset:], with their lengths in sizes. Each copy gets its own
// IP length (and IPv4 ID and header checksum), sequence number, flags (FIN
// and PSH only on the last, CWR only on the first) and TCP checksum. It
// returns the number of packets, or an error if pkt is malformed or bufs
// are too few or too small.
func splitTCP(pkt []byte, mss int, bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(pkt) < 1 || mss <= 0 {
		return 0, errGSO
	}
	var ipLen int
	is6 := pkt[0]>>4 == 6
	switch {
	case is6:
		ipLen = header.IPv6MinimumSize
		if len(pkt) < ipLen || header.IPv6(pkt).NextHeader() != uint8(header.TCPProtocolNumber) {
			return 0, errGSO
		}
	case pkt[0]>>4 == 4:
		ipLen = int(pkt[0]&0xf) * 4
		if ipLen < header.IPv4MinimumSize || len(pkt) < ipLen || header.IPv4(pkt).Protocol() != uint8(header.TCPProtocolNumber) {
			return 0, errGSO
		}
	default:
		return 0, errGSO
	}
	if len(pkt) < ipLen+header.TCPMinimumSize {
		return 0, errGSO
	}
	tcpLen := int(header.TCP(pkt[ipLen:]).DataOffset())
	hdrLen := ipLen + tcpLen
	if tcpLen < header.TCPMinimumSize || len(pkt) < hdrLen {
		return 0, errGSO
	}
	payload := pkt[hdrLen:]
	n := tcpSegments(len(pkt), hdrLen, mss)
	if n > len(bufs) {
		return 0, errGSO
	}
	tcp0 := header.TCP(pkt[ipLen:])
	seq0, flags := tcp0.SequenceNumber(), tcp0.Flags()
	var src, dst tcpip.Address
	var id0 uint16
	if is6 {
		ip := header.IPv6(pkt)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	} else {
		ip := header.IPv4(pkt)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
		id0 = ip.ID()
	}
	for i := range n {
		start := i * mss
		end := min(start+mss, len(payload))
		segLen := hdrLen + end - start
		if len(bufs[i]) < offset+segLen {
			return 0, errGSO
		}
		out := bufs[i][offset : offset+segLen]
		copy(out, pkt[:hdrLen])
		copy(out[hdrLen:], payload[start:end])
		if is6 {
			header.IPv6(out).SetPayloadLength(uint16(segLen - ipLen))
		} else {
			ip := header.IPv4(out)
			ip.SetTotalLength(uint16(segLen))
			ip.SetID(id0 + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		}
		tcp := header.TCP(out[ipLen:])
		tcp.SetSequenceNumber(seq0 + uint32(start))
		f := flags
		if i < n-1 {
			f &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if i > 0 {
			f &^= header.TCPFlagCwr
		}
		out[ipLen+13] = uint8(f)
		tcp.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(segLen-ipLen))
		xsum = checksum.Checksum(out[ipLen:], xsum)
		tcp.SetChecksum(^xsum)
		sizes[i] = segLen
	}
	return n, nil
}
