package lab

// ReadPcap against pcap files built here: no root, no tcpdump.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"
)

// pcapFile builds a classic pcap file.
type pcapFile struct {
	bo   binary.ByteOrder
	nano bool
	buf  bytes.Buffer
}

func newPcap(bo binary.ByteOrder, nano bool, link uint32) *pcapFile {
	f := &pcapFile{bo: bo, nano: nano}
	magic := uint32(0xa1b2c3d4)
	if nano {
		magic = 0xa1b23c4d
	}
	var h [24]byte
	bo.PutUint32(h[0:], magic)
	bo.PutUint16(h[4:], 2)
	bo.PutUint16(h[6:], 4)
	bo.PutUint32(h[16:], 262144)
	bo.PutUint32(h[20:], link)
	f.buf.Write(h[:])
	return f
}

func (f *pcapFile) add(ts time.Time, frame []byte) {
	var r [16]byte
	f.bo.PutUint32(r[0:], uint32(ts.Unix()))
	frac := uint32(ts.Nanosecond() / 1000)
	if f.nano {
		frac = uint32(ts.Nanosecond())
	}
	f.bo.PutUint32(r[4:], frac)
	f.bo.PutUint32(r[8:], uint32(len(frame)))
	f.bo.PutUint32(r[12:], uint32(len(frame)))
	f.buf.Write(r[:])
	f.buf.Write(frame)
}

// udpPacket builds an IPv4 or IPv6 packet holding a UDP datagram (no
// checksums: ReadPcap does not look at them).
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	udp = append(udp, payload...)
	if src.Addr().Is4() {
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		ip[8], ip[9] = 64, protoUDP
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		return append(ip, udp...)
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	ip[6], ip[7] = protoUDP, 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(ip, udp...)
}

func ether(etype uint16, vlan bool, pkt []byte) []byte {
	f := make([]byte, 12, 18+len(pkt))
	if vlan {
		f = binary.BigEndian.AppendUint16(f, etherVLAN)
		f = binary.BigEndian.AppendUint16(f, 42)
	}
	f = binary.BigEndian.AppendUint16(f, etype)
	return append(f, pkt...)
}

func sll(etype uint16, pkt []byte) []byte {
	f := make([]byte, 14, 16+len(pkt))
	f = binary.BigEndian.AppendUint16(f, etype)
	return append(f, pkt...)
}

func TestReadPcap(t *testing.T) {
	c4 := netip.MustParseAddrPort("203.0.113.2:40000")
	n4 := netip.MustParseAddrPort("192.0.2.1:51820")
	c6 := netip.MustParseAddrPort("[2001:db8:c::2]:40001")
	n6 := netip.MustParseAddrPort("[2001:db8:1::1]:51820")
	msg := []byte{1, 0xab, 0xcd, 0xef, 9, 9, 9}
	ts := time.Unix(1700000000, 123456000)

	t.Run("ethernet", func(t *testing.T) {
		for _, bo := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
			for _, nano := range []bool{false, true} {
				f := newPcap(bo, nano, linkEthernet)
				f.add(ts, ether(etherIPv4, false, udpPacket(c4, n4, msg)))
				f.add(ts, ether(etherIPv6, true, udpPacket(c6, n6, msg)))
				f.add(ts, ether(0x0806, false, make([]byte, 28))) // ARP
				// Ethernet padding after a short IPv4 packet.
				f.add(ts, ether(etherIPv4, false, append(udpPacket(n4, c4, []byte{4}), 0, 0, 0)))
				res, err := ReadPcap(&f.buf)
				if err != nil {
					t.Fatal(err)
				}
				if res.Packets != 4 || res.Skipped != 1 || len(res.UDP) != 3 {
					t.Fatalf("%v nano=%v: %d packets, %d skipped, %d UDP; want 4, 1, 3", bo, nano, res.Packets, res.Skipped, len(res.UDP))
				}
				want := []struct {
					src, dst netip.AddrPort
					payload  []byte
				}{{c4, n4, msg}, {c6, n6, msg}, {n4, c4, []byte{4}}}
				for i, w := range want {
					d := res.UDP[i]
					if d.Src != w.src || d.Dst != w.dst || !bytes.Equal(d.Payload, w.payload) || d.Len != len(w.payload) || d.Truncated() {
						t.Errorf("datagram %d: %v → %v % x (len %d), want %v → %v % x", i, d.Src, d.Dst, d.Payload, d.Len, w.src, w.dst, w.payload)
					}
					if !d.Time.Equal(ts) {
						t.Errorf("datagram %d: time %v, want %v", i, d.Time, ts)
					}
				}
			}
		}
	})

	t.Run("linux-cooked-and-raw", func(t *testing.T) {
		f := newPcap(binary.LittleEndian, false, linkLinuxSLL)
		f.add(ts, sll(etherIPv6, udpPacket(c6, n6, msg)))
		res, err := ReadPcap(&f.buf)
		if err != nil || len(res.UDP) != 1 || res.UDP[0].Src != c6 {
			t.Errorf("SLL: %+v, %v", res, err)
		}
		f = newPcap(binary.LittleEndian, false, linkRaw)
		f.add(ts, udpPacket(c4, n4, msg))
		res, err = ReadPcap(&f.buf)
		if err != nil || len(res.UDP) != 1 || res.UDP[0].Dst != n4 {
			t.Errorf("raw: %+v, %v", res, err)
		}
	})

	t.Run("skipped", func(t *testing.T) {
		f := newPcap(binary.LittleEndian, false, linkEthernet)
		frag := udpPacket(c4, n4, msg)
		binary.BigEndian.PutUint16(frag[6:], 100) // a later fragment
		f.add(ts, ether(etherIPv4, false, frag))
		tcp := udpPacket(c4, n4, msg)
		tcp[9] = 6
		f.add(ts, ether(etherIPv4, false, tcp))
		f.add(ts, ether(etherIPv6, false, udpPacket(c6, n6, msg)[:45])) // short UDP header
		res, err := ReadPcap(&f.buf)
		if err != nil || res.Packets != 3 || res.Skipped != 3 || len(res.UDP) != 0 {
			t.Errorf("got %+v, %v; want 3 packets, all skipped", res, err)
		}
	})

	t.Run("truncated", func(t *testing.T) {
		// A record holding less than the datagram (a snapshot length).
		f := newPcap(binary.LittleEndian, false, linkEthernet)
		f.add(ts, ether(etherIPv4, false, udpPacket(c4, n4, msg))[:14+20+8+2])
		res, err := ReadPcap(&f.buf)
		if err != nil || len(res.UDP) != 1 || !res.UDP[0].Truncated() || res.UDP[0].Len != len(msg) {
			t.Errorf("got %+v, %v; want one truncated datagram", res, err)
		}
		// A file cut inside a record: what came before it.
		f = newPcap(binary.LittleEndian, false, linkEthernet)
		f.add(ts, ether(etherIPv4, false, udpPacket(c4, n4, msg)))
		f.add(ts, ether(etherIPv4, false, udpPacket(c4, n4, msg)))
		b := f.buf.Bytes()
		res, err = ReadPcap(bytes.NewReader(b[:len(b)-5]))
		if err != nil || res.Packets != 1 {
			t.Errorf("cut file: %+v, %v; want 1 packet", res, err)
		}
	})

	t.Run("bad", func(t *testing.T) {
		for name, b := range map[string][]byte{
			"empty":  nil,
			"pcapng": append([]byte{0x0a, 0x0d, 0x0d, 0x0a}, make([]byte, 20)...),
			"link":   newPcap(binary.LittleEndian, false, 127).buf.Bytes(), // radiotap
			"huge": func() []byte {
				f := newPcap(binary.LittleEndian, false, linkEthernet)
				var r [16]byte
				binary.LittleEndian.PutUint32(r[8:], 1<<30)
				return append(f.buf.Bytes(), r[:]...)
			}(),
		} {
			if _, err := ReadPcap(bytes.NewReader(b)); !errors.Is(err, ErrPcap) {
				t.Errorf("%s: err %v, want ErrPcap", name, err)
			}
		}
	})
}

func FuzzReadPcap(f *testing.F) {
	p := newPcap(binary.LittleEndian, false, linkEthernet)
	p.add(time.Unix(1, 0), ether(etherIPv6, true, udpPacket(
		netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::2]:2"), []byte{4, 0, 0, 0})))
	f.Add(p.buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		res, err := ReadPcap(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, d := range res.UDP {
			if len(d.Payload) > d.Len {
				t.Fatalf("payload of %d bytes, UDP length %d", len(d.Payload), d.Len)
			}
		}
	})
}
