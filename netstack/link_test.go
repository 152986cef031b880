package netstack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// recorder is a NetworkDispatcher that keeps a copy of each packet.
type recorder struct{ pkts [][]byte }

func (r *recorder) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	r.pkts = append(r.pkts, pkt.Data().AsRange().ToSlice())
}

func (*recorder) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// flowPackets cuts a segment of n bytes for source port port into MSS-sized
// packets, as a client's TCP would send them.
func flowPackets(t *testing.T, is6 bool, port uint16, n, mss int) [][]byte {
	t.Helper()
	seg := bigSegment(is6, n, header.TCPFlagAck)
	ipLen := header.IPv4MinimumSize
	if is6 {
		ipLen = header.IPv6MinimumSize
	}
	binary.BigEndian.PutUint16(seg[ipLen:], port)
	bufs := make([][]byte, tcpSegments(len(seg), ipLen+32, mss))
	for i := range bufs {
		bufs[i] = make([]byte, 1500)
	}
	sizes := make([]int, len(bufs))
	k, err := splitTCP(seg, mss, bufs, sizes, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range k {
		bufs[i] = bufs[i][:sizes[i]]
	}
	return bufs[:k]
}

// payloads sums the TCP payload each source port received, in order.
func payloads(t *testing.T, pkts [][]byte) map[uint16][]byte {
	t.Helper()
	out := map[uint16][]byte{}
	for _, p := range pkts {
		ipLen := header.IPv4MinimumSize
		if p[0]>>4 == 6 {
			ipLen = header.IPv6MinimumSize
		}
		tcp := header.TCP(p[ipLen:])
		out[tcp.SourcePort()] = append(out[tcp.SourcePort()], p[ipLen+int(tcp.DataOffset()):]...)
	}
	return out
}

// TestInBatchGRO: one Write's in-sequence segments of each flow reach the
// stack merged, every byte of every flow once and in order, and nothing is
// left in the engine when the batch ends (gVisor's Flush alone leaves all
// but the first packet of each bucket; 24 flows share its 8 buckets).
func TestInBatchGRO(t *testing.T) {
	for _, is6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("ipv6=%v", is6), func(t *testing.T) {
			proto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
			if is6 {
				proto = ipv6.ProtocolNumber
			}
			e := newLinkEndpoint(1420, nil)
			rec := &recorder{}
			e.Attach(rec)
			const flows, segs, mss = 24, 4, 1000
			var sent [][]byte
			want := map[uint16][]byte{}
			for f := range flows {
				pkts := flowPackets(t, is6, uint16(1000+f), segs*mss, mss)
				sent = append(sent, pkts...)
				want[uint16(1000+f)] = payloads(t, pkts)[uint16(1000+f)]
			}
			for round := range 2 { // the second round reuses the pooled engine
				rec.pkts = nil
				in, ok := e.beginIn()
				if !ok {
					t.Fatal("beginIn on an attached link")
				}
				for _, p := range sent {
					in.deliver(proto, p)
				}
				in.end()
				got := payloads(t, rec.pkts)
				for port, w := range want {
					if !bytes.Equal(got[port], w) {
						t.Fatalf("round %d: flow %d got %d payload bytes, want the %d sent in order", round, port, len(got[port]), len(w))
					}
				}
				if len(rec.pkts) >= len(sent) {
					t.Errorf("round %d: %d packets delivered for %d sent: nothing merged", round, len(rec.pkts), len(sent))
				}
			}
			e.Attach(nil)
			if _, ok := e.beginIn(); ok {
				t.Fatal("beginIn on a detached link")
			}
		})
	}
}

// FuzzInBatch feeds arbitrary packets (each prefixed by a length byte pair)
// through one batch's GRO: nothing panics, nothing delivered is empty, and
// the batch leaves nothing held for the next one.
func FuzzInBatch(f *testing.F) {
	for _, is6 := range []bool{false, true} {
		var seed []byte
		for port := range uint16(3) {
			for _, p := range flowPackets(&testing.T{}, is6, 1000+port, 3000, 1000) {
				seed = binary.BigEndian.AppendUint16(seed, uint16(len(p)))
				seed = append(seed, p...)
			}
		}
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e := newLinkEndpoint(1420, nil)
		rec := &recorder{}
		e.Attach(rec)
		in, _ := e.beginIn()
		for len(data) >= 2 {
			n := min(int(binary.BigEndian.Uint16(data)), len(data)-2)
			p := data[2 : 2+n]
			data = data[2+n:]
			if proto, ok := ipProto(append(p[:len(p):len(p)], 0)); ok && n > 0 {
				in.deliver(proto, p)
			}
		}
		in.end()
		for i, p := range rec.pkts {
			if len(p) == 0 {
				t.Fatalf("packet %d delivered empty", i)
			}
		}
		rec.pkts = nil
		in, _ = e.beginIn()
		in.end()
		if len(rec.pkts) != 0 {
			t.Fatalf("an empty batch delivered %d packets held from the last one", len(rec.pkts))
		}
	})
}
