package lb

import (
	"bytes"
	"net/netip"
	"testing"
)

// TestUDPPacket: the packet a node sends from userspace is the one a
// client would have sent (same checksums as the tests' reference builder),
// and the program strips the GUE around it.
func TestUDPPacket(t *testing.T) {
	wg := xWG(1, 0, 148)
	for _, src := range []netip.AddrPort{
		netip.MustParseAddrPort("203.0.113.7:40000"),
		netip.MustParseAddrPort("[2001:db8:7::7]:40000"),
	} {
		dst := netip.AddrPortFrom(xVIP4, xWGPort)
		if src.Addr().Is6() {
			dst = netip.AddrPortFrom(xVIP6, xWGPort)
		}
		got, err := UDPPacket(src, dst, wg)
		if err != nil {
			t.Fatal(err)
		}
		want := xClientUDP(src, dst, wg)[14:]
		// The reference sets its own IPv4 id and TTL and an IPv6 flow
		// label; the rest, and the UDP checksum, must match.
		hl := 20
		if src.Addr().Is6() {
			hl = 40
		}
		if !bytes.Equal(got[hl:], want[hl:]) {
			t.Errorf("%v: UDP part\n got % x\nwant % x", src, got[hl:], want[hl:])
		}
		if src.Addr().Is4() && xFold(xSum(0, got[:20])) != 0 {
			t.Errorf("%v: IPv4 header checksum does not verify: % x", src, got[:20])
		}
		if xFold(xSum(xSum(xSum(0, src.Addr().AsSlice()), dst.Addr().AsSlice())+17+uint32(len(got)-hl), got[hl:])) != 0 {
			t.Errorf("%v: UDP checksum does not verify", src)
		}
	}
	if _, err := UDPPacket(netip.MustParseAddrPort("203.0.113.7:1"), netip.MustParseAddrPort("[2001:db8::1]:2"), nil); err == nil {
		t.Error("mixed families accepted")
	}
}

// TestUDPPacketDecap runs a GUE packet built around UDPPacket through the
// program of the owner: it is stripped and passed up as the inner packet.
func TestUDPPacketDecap(t *testing.T) {
	requireBPF(t)
	objs := xLoad(t)
	self, peer := netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.2.1")
	f, err := NewFront(objs, FrontConfig{VIP4: xVIP4, VIP6: xVIP6, WGPort: xWGPort, GUEPort: xGUEPort,
		Self: "a", SelfUnderlay: self})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Update([]Member{{ID: "a", Underlay: self, Active: true}, {ID: "b", Underlay: peer, Active: true}}); err != nil {
		t.Fatal(err)
	}
	inner, err := UDPPacket(netip.MustParseAddrPort("203.0.113.7:40000"), netip.AddrPortFrom(xVIP4, xWGPort), xWG(1, 0, 148))
	if err != nil {
		t.Fatal(err)
	}
	verdict, out, delta, err := xRun(t, objs, xGUE(peer, self, xGUEPort, inner))
	if err != nil {
		t.Fatal(err)
	}
	if verdict != uint32(xdpPass) || delta["decap"] != 1 {
		t.Fatalf("verdict %s, counters %v; want PASS and decap", xdpVerdictName(verdict), delta)
	}
	if !bytes.Equal(out[14:14+len(inner)], inner) {
		t.Fatalf("decapsulated\n got % x\nwant % x", out[14:14+len(inner)], inner)
	}
}
