package netstack

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// bigSegment builds an IP+TCP packet with a payload of n bytes and a partial
// (pseudo-header only) checksum, as gVisor hands one to a GSO link.
func bigSegment(is6 bool, n int, flags header.TCPFlags) []byte {
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = byte(i*7 + i/251)
	}
	ipLen := header.IPv4MinimumSize
	if is6 {
		ipLen = header.IPv6MinimumSize
	}
	tcpLen := header.TCPMinimumSize + 12 // with a timestamp option
	pkt := make([]byte, ipLen+tcpLen+n)
	src4, dst4 := tcpip.AddrFrom4([4]byte{198, 18, 0, 2}), tcpip.AddrFrom4([4]byte{100, 96, 0, 2})
	src6 := tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 2})
	dst6 := tcpip.AddrFrom16([16]byte{0xfd, 0x57, 15: 2})
	if is6 {
		header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(tcpLen + n), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: src6, DstAddr: dst6})
	} else {
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(pkt)), ID: 1000, TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src4, DstAddr: dst4})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	tcp := header.TCP(pkt[ipLen:])
	tcp.Encode(&header.TCPFields{SrcPort: 80, DstPort: 40000, SeqNum: 0xfffff000, AckNum: 7, DataOffset: uint8(tcpLen), Flags: flags, WindowSize: 1000})
	copy(pkt[ipLen+header.TCPMinimumSize:], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	copy(pkt[ipLen+tcpLen:], payload)
	tcp.SetChecksum(0xbeef) // partial: must be replaced
	return pkt
}

func TestSplitTCP(t *testing.T) {
	for _, tc := range []struct {
		name  string
		is6   bool
		n     int
		mss   int
		flags header.TCPFlags
	}{
		{"v4 exact", false, 1368 * 4, 1368, header.TCPFlagAck},
		{"v4 tail", false, 60000, 1368, header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin | header.TCPFlagCwr},
		{"v6 tail", true, 60001, 1348, header.TCPFlagAck | header.TCPFlagPsh},
		{"v6 one", true, 100, 1348, header.TCPFlagAck | header.TCPFlagPsh},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt := bigSegment(tc.is6, tc.n, tc.flags)
			ipLen := header.IPv4MinimumSize
			if tc.is6 {
				ipLen = header.IPv6MinimumSize
			}
			hdrLen := ipLen + header.TCPMinimumSize + 12
			want := tcpSegments(len(pkt), hdrLen, tc.mss)
			bufs := make([][]byte, want)
			for i := range bufs {
				bufs[i] = make([]byte, 16+hdrLen+tc.mss)
			}
			sizes := make([]int, want)
			n, err := splitTCP(pkt, tc.mss, bufs, sizes, 16)
			if err != nil || n != want {
				t.Fatalf("splitTCP = %d, %v; want %d", n, err, want)
			}
			var joined []byte
			for i := range n {
				seg := bufs[i][16 : 16+sizes[i]]
				var src, dst tcpip.Address
				var tcp header.TCP
				if tc.is6 {
					ip := header.IPv6(seg)
					if int(ip.PayloadLength()) != len(seg)-ipLen {
						t.Fatalf("segment %d: payload length %d, want %d", i, ip.PayloadLength(), len(seg)-ipLen)
					}
					src, dst, tcp = ip.SourceAddress(), ip.DestinationAddress(), header.TCP(ip.Payload())
				} else {
					ip := header.IPv4(seg)
					if !ip.IsChecksumValid() || int(ip.TotalLength()) != len(seg) || ip.ID() != 1000+uint16(i) {
						t.Fatalf("segment %d: bad IPv4 header (len %d, id %d)", i, ip.TotalLength(), ip.ID())
					}
					src, dst, tcp = ip.SourceAddress(), ip.DestinationAddress(), header.TCP(ip.Payload())
				}
				data := tcp[tcp.DataOffset():]
				if len(data) > tc.mss {
					t.Fatalf("segment %d carries %d bytes > mss %d", i, len(data), tc.mss)
				}
				if !tcp.IsChecksumValid(src, dst, checksumOf(data), uint16(len(data))) {
					t.Fatalf("segment %d: bad TCP checksum", i)
				}
				if got := tcp.SequenceNumber(); got != 0xfffff000+uint32(len(joined)) {
					t.Fatalf("segment %d: seq %#x, want %#x", i, got, 0xfffff000+uint32(len(joined)))
				}
				f := tcp.Flags()
				last := i == n-1
				if (f&header.TCPFlagFin != 0) != (last && tc.flags&header.TCPFlagFin != 0) ||
					(f&header.TCPFlagPsh != 0) != (last && tc.flags&header.TCPFlagPsh != 0) ||
					(f&header.TCPFlagCwr != 0) != (i == 0 && tc.flags&header.TCPFlagCwr != 0) ||
					f&header.TCPFlagAck == 0 {
					t.Fatalf("segment %d of %d: flags %v from %v", i, n, f, tc.flags)
				}
				if !bytes.Equal(tcp[header.TCPMinimumSize:tcp.DataOffset()], pkt[ipLen+header.TCPMinimumSize:hdrLen]) {
					t.Fatalf("segment %d: options changed", i)
				}
				joined = append(joined, data...)
			}
			if !bytes.Equal(joined, pkt[hdrLen:]) {
				t.Fatal("payloads joined differ from the original")
			}
		})
	}
}

func TestSplitTCPRejects(t *testing.T) {
	good := bigSegment(false, 5000, header.TCPFlagAck)
	bufs := [][]byte{make([]byte, 2000), make([]byte, 2000)}
	sizes := make([]int, 2)
	for name, pkt := range map[string][]byte{
		"empty":     {},
		"not ip":    {0x00, 1, 2, 3},
		"short tcp": good[:30],
		"udp":       func() []byte { p := bytes.Clone(good); p[9] = 17; return p }(),
		"too many":  good, // needs 4 buffers, has 2
	} {
		if _, err := splitTCP(pkt, 1368, bufs, sizes, 0); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzSplitTCP(f *testing.F) {
	f.Add(bigSegment(false, 3000, header.TCPFlagAck), uint16(1000))
	f.Add(bigSegment(true, 3000, header.TCPFlagAck), uint16(536))
	f.Fuzz(func(t *testing.T, pkt []byte, mss uint16) {
		bufs := make([][]byte, 8)
		for i := range bufs {
			bufs[i] = make([]byte, 1500)
		}
		n, err := splitTCP(pkt, int(mss), bufs, make([]int, 8), 0)
		if err == nil && (n < 1 || n > 8) {
			t.Fatalf("n = %d", n)
		}
	})
}

func checksumOf(b []byte) uint16 {
	var x uint32
	for i := 0; i+1 < len(b); i += 2 {
		x += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		x += uint32(b[len(b)-1]) << 8
	}
	for x > 0xffff {
		x = x&0xffff + x>>16
	}
	return uint16(x)
}
