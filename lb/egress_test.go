package lb

import (
	"bytes"
	"encoding/binary"
	"maps"
	"net/netip"
	"testing"
)

// Return traffic to egress addresses (issue 7): the program sends a reply
// to the node whose port slice holds its destination port, or to the data
// center that owns the address, and a node that gets such a packet from
// another data center passes it on to the slice's node.

var (
	xEgressLocal  = netip.MustParseAddr("198.51.100.10") // ours, sliced
	xEgressRemote = netip.MustParseAddr("198.51.100.20") // data center 0
	xEgressDark   = netip.MustParseAddr("198.51.100.21") // data center 1: no nodes
	xEgressNone   = netip.MustParseAddr("198.51.100.99") // not an egress address
	xOrigin       = netip.MustParseAddrPort("198.18.200.2:443")
	xRemoteDC     = []netip.Addr{netip.MustParseAddr("198.18.9.1"), netip.MustParseAddr("198.18.9.2")}
)

const (
	xPortLo = 1024
	xSlice  = 2048
)

// xSlicePort is a port in the slice of node index (slot) n.
func xSlicePort(n int, k int) uint16 { return uint16(xPortLo + (n-1)*xSlice + k) }

// xReply is a frame from the origin to dst:port, TCP (proto 6) or UDP (17).
func xReply(proto byte, dst netip.Addr, port uint16, payload []byte) []byte {
	var l4 []byte
	if proto == 17 {
		l4 = xUDP(xOrigin.Addr(), dst, xOrigin.Port(), port, payload)
	} else {
		l4 = make([]byte, 20+len(payload))
		binary.BigEndian.PutUint16(l4[0:], xOrigin.Port())
		binary.BigEndian.PutUint16(l4[2:], port)
		l4[12] = 5 << 4
		l4[13] = 0x10 // ACK
		copy(l4[20:], payload)
	}
	return xEth(xNodeMAC, xRouterMAC, 0x0800, xIPv4(xOrigin.Addr(), dst, proto, nil, l4))
}

// xEgressSport is the outer source port the program picks for a reply:
// entropy from the origin's address and the two ports, as the program reads
// them (little-endian loads of network-order fields).
func xEgressSport(f []byte) uint16 {
	le := binary.LittleEndian
	ip := f[14:]
	l4 := ip[int(ip[0]&0xf)*4:]
	h := Hash(le.Uint32(ip[12:]) ^ (uint32(le.Uint16(l4[0:]))<<16 | uint32(le.Uint16(l4[2:]))))
	return uint16(49152 + h%16384)
}

func xEgressEnv(t *testing.T) (*Objects, netip.Addr) {
	t.Helper()
	o := xLoad(t)
	self := xUnderlay[1]
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(o.SetConfig(Config{VIP4: xVIP4, VIP6: xVIP6, WGPort: xWGPort, GUEPort: xGUEPort, Self: 2,
		SelfUnderlay4: self, Enabled: true, Egress: true}))
	must(o.SetNode(1, Node{Underlay4: xUnderlay[0], Valid: true}))
	must(o.SetNode(2, Node{Underlay4: self, Valid: true}))
	must(o.SetNode(3, Node{Underlay4: xUnderlay[2], Valid: true}))
	for i, a := range append([]netip.Addr{xUnderlay[0], xUnderlay[2]}, xRemoteDC...) {
		must(o.SetPeer(a, uint32(100+i)))
	}
	must(o.SetEgress4(xEgressLocal, Egress4{Local: true, PortLo: xPortLo, Slice: xSlice, Slices: 31}))
	must(o.SetEgress4(xEgressRemote, Egress4{DC: 0}))
	must(o.SetEgress4(xEgressDark, Egress4{DC: 1}))
	must(o.SetDC(0, xRemoteDC))
	return o, self
}

func TestXDPEgress(t *testing.T) {
	requireBPF(t)
	o, self := xEgressEnv(t)

	for _, c := range []struct {
		name    string
		frame   []byte
		verdict uint32
		to      netip.Addr // TX: the outer destination
		counts  map[string]uint64
	}{
		{"tcp to our slice", xReply(6, xEgressLocal, xSlicePort(2, 5), nil), xdpPass, netip.Addr{}, xCounts("local", "egress")},
		{"tcp to node 1's slice", xReply(6, xEgressLocal, xSlicePort(1, 7), []byte("data")), xdpTX, xUnderlay[0], xCounts("forwarded", "egress")},
		{"udp to node 3's slice", xReply(17, xEgressLocal, xSlicePort(3, 2047), []byte("dns answer")), xdpTX, xUnderlay[2], xCounts("forwarded", "egress")},
		{"empty udp to node 3's slice", xReply(17, xEgressLocal, xSlicePort(3, 0), nil), xdpTX, xUnderlay[2], xCounts("forwarded", "egress")},
		{"port below the slices", xReply(6, xEgressLocal, 80, nil), xdpPass, netip.Addr{}, xCounts("local", "egress_unsliced")},
		{"port above the slices", xReply(6, xEgressLocal, xSlicePort(32, 0), nil), xdpPass, netip.Addr{}, xCounts("local", "egress_unsliced")},
		{"slice of a node not there", xReply(6, xEgressLocal, xSlicePort(5, 0), nil), xdpPass, netip.Addr{}, xCounts("no_node", "egress")},
		{"another data center's address", xReply(6, xEgressRemote, 50000, nil), xdpTX, netip.Addr{}, xCounts("forwarded", "egress_dc")},
		{"a data center without nodes", xReply(17, xEgressDark, 50000, nil), xdpPass, netip.Addr{}, xCounts("no_node", "egress_dc")},
		{"not an egress address", xReply(6, xEgressNone, xSlicePort(1, 0), nil), xdpPass, netip.Addr{}, xCounts("not_ours")},
		{"icmp to an egress address", xEth(xNodeMAC, xRouterMAC, 0x0800, xIPv4(xOrigin.Addr(), xEgressLocal, 1, nil, make([]byte, 8))), xdpPass, netip.Addr{}, xCounts("not_ours")},
	} {
		t.Run(c.name, func(t *testing.T) {
			verdict, out, delta, err := xRun(t, o, c.frame)
			if err != nil {
				t.Fatal(err)
			}
			if verdict != c.verdict || !maps.Equal(delta, c.counts) {
				t.Fatalf("verdict %s, counters %v; want %s, %v", xdpVerdictName(verdict), delta, xdpVerdictName(c.verdict), c.counts)
			}
			if verdict != xdpTX {
				if !bytes.Equal(out[:len(c.frame)], c.frame) {
					t.Fatal("a passed frame was changed")
				}
				return
			}
			out = out[:len(c.frame)+28]
			to := c.to
			if !to.IsValid() {
				// Another data center: one of its nodes, by the flow.
				to, _ = netip.AddrFromSlice(out[14+16 : 14+20])
				if to != xRemoteDC[0] && to != xRemoteDC[1] {
					t.Fatalf("sent to %v, not a node of the data center", to)
				}
			}
			if err := xCheckEncap(c.frame, out, self, to, xEgressSport(c.frame)); err != nil {
				t.Fatal(err)
			}
		})
	}

	// The same reply with steering off: not ours.
	if err := o.SetConfig(Config{VIP4: xVIP4, VIP6: xVIP6, WGPort: xWGPort, GUEPort: xGUEPort, Self: 2,
		SelfUnderlay4: self, Enabled: true}); err != nil {
		t.Fatal(err)
	}
	if v, _, delta, _ := xRun(t, o, xReply(6, xEgressLocal, xSlicePort(1, 7), nil)); v != xdpPass || !maps.Equal(delta, xCounts("not_ours")) {
		t.Fatalf("steering off: %s %v, want PASS not_ours", xdpVerdictName(v), delta)
	}
}

// TestXDPEgressRetarget: a reply that another data center wrapped for this
// one reaches a node that does not hold its slice; that node sends it on to
// the one that does, and the one that does unwraps it.
func TestXDPEgressRetarget(t *testing.T) {
	requireBPF(t)
	o, self := xEgressEnv(t)
	inner := xReply(6, xEgressLocal, xSlicePort(1, 9), []byte("payload"))[14:]
	in := xGUE(xRemoteDC[0], self, xGUEPort, inner)

	verdict, out, delta, err := xRun(t, o, in)
	if err != nil {
		t.Fatal(err)
	}
	if verdict != xdpTX || !maps.Equal(delta, xCounts("retarget", "egress")) {
		t.Fatalf("GUE for node 1's slice: %s %v, want TX retarget+egress", xdpVerdictName(verdict), delta)
	}
	out = out[:len(in)]
	be := binary.BigEndian
	if !bytes.Equal(out[0:6], in[6:12]) || !bytes.Equal(out[6:12], in[0:6]) {
		t.Errorf("MACs not swapped: %x > %x", out[6:12], out[0:6])
	}
	src, _ := netip.AddrFromSlice(out[14+12 : 14+16])
	dst, _ := netip.AddrFromSlice(out[14+16 : 14+20])
	if src != self || dst != xUnderlay[0] {
		t.Errorf("outer %v > %v, want %v > %v", src, dst, self, xUnderlay[0])
	}
	if out[14+8] != in[14+8]-1 {
		t.Errorf("outer ttl %d, want %d", out[14+8], in[14+8]-1)
	}
	if xFold(xSum(0, out[14:34])) != 0 {
		t.Error("outer IPv4 checksum does not verify")
	}
	if !bytes.Equal(out[34:], in[34:]) || be.Uint16(out[36:]) != xGUEPort {
		t.Error("the UDP header or the inner packet changed")
	}

	// For this node's own slice: unwrapped here.
	mine := xGUE(xRemoteDC[0], self, xGUEPort, xReply(6, xEgressLocal, xSlicePort(2, 9), nil)[14:])
	if v, _, delta, _ := xRun(t, o, mine); v != xdpPass || !maps.Equal(delta, xCounts("decap")) {
		t.Fatalf("GUE for our slice: %s %v, want PASS decap", xdpVerdictName(v), delta)
	}
	// Outer TTL 1: not sent on again, unwrapped here.
	tired := xPatch4(in, func(ip []byte) { ip[8] = 1 })
	if v, _, delta, _ := xRun(t, o, tired); v != xdpPass || !maps.Equal(delta, xCounts("decap")) {
		t.Fatalf("GUE with TTL 1: %s %v, want PASS decap", xdpVerdictName(v), delta)
	}
	// From a stranger: dropped as before.
	if v, _, delta, _ := xRun(t, o, xGUE(xStranger, self, xGUEPort, inner)); v != xdpDrop || !maps.Equal(delta, xCounts("decap_reject")) {
		t.Fatalf("GUE from a stranger: %s %v, want DROP decap_reject", xdpVerdictName(v), delta)
	}
}

func TestXDPEgressSetters(t *testing.T) {
	requireBPF(t)
	o := xLoad(t)
	for _, c := range []struct {
		name string
		err  error
	}{
		{"v6 address", o.SetEgress4(netip.MustParseAddr("2001:db8::1"), Egress4{Local: true, PortLo: 1024, Slice: 1, Slices: 1})},
		{"no slices", o.SetEgress4(xEgressLocal, Egress4{Local: true, PortLo: 1024, Slice: 2048})},
		{"beyond the port space", o.SetEgress4(xEgressLocal, Egress4{Local: true, PortLo: 1024, Slice: 2048, Slices: 32})},
		{"dc out of range", o.SetEgress4(xEgressLocal, Egress4{DC: XDPMaxDCs})},
		{"too many targets", o.SetDC(0, make([]netip.Addr, XDPDCTargets+1))},
		{"dc index out of range", o.SetDC(XDPMaxDCs, nil)},
	} {
		if c.err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	if err := o.SetEgress4(xEgressLocal, Egress4{Local: true, PortLo: 1024, Slice: 2048, Slices: 31}); err != nil {
		t.Fatal(err)
	}
	if err := o.DeleteEgress4(xEgressLocal); err != nil {
		t.Fatal(err)
	}
	if err := o.DeleteEgress4(xEgressLocal); err != nil {
		t.Fatalf("deleting a missing address: %v", err)
	}
}
