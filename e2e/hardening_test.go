package e2e

// The node's own surroundings (issue 17): what an attacker who can send
// packets, but holds no client's key, can make a node do. Two nodes with
// the XDP front, the VIP spread over both, and one registered client that
// never connected.
//
//   client ns 203.0.113.2 ── router ══ node1 198.18.1.1 (wedged --xdp eth0)
//     forger: a UDP socket    │  ║     node2 198.18.2.1 (wedged --xdp eth0)
//     sending stamped data    │  ╚═ VIP 192.0.2.1:51820 via node1 and node2 (ECMP)
//     to the VIP; tcpdump     └─ origin, etcd1
//     on eth0
//
//   node2's namespace sends GUE (UDP to node1's underlay, port 6080) from
//   its own underlay, carrying a TCP SYN to node1's own underlay.
//
// - A forged 32-byte transport message naming the registered ClientID,
//   from an address the node never authenticated, reaches the client's
//   owner (its Bind counts it) and makes no node send anything back there:
//   session recovery answers only towards a client's authenticated
//   endpoint.
// - A member's GUE whose inner packet is TCP to the node's own address is
//   dropped by the receiving front and counted (decap_refused in
//   /v1/status's xdp section), not unwrapped into the node's stack.

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
	"github.com/wedge-edge/wedge/internal/clientid"
)

func TestHardening(t *testing.T) {
	c, bins, _ := newCluster(t, 2, 1)
	nodes := startFrontNodes(t, c, bins, true)
	if err := c.SetVIPRoute(1, 2); err != nil {
		t.Fatal(err)
	}
	t.Run("forged transport message", func(t *testing.T) { testForgedTransport(t, c, bins, nodes) })
	t.Run("GUE carrying TCP to the node", func(t *testing.T) { testGUEToNode(t, c, nodes) })
}

// udpIn opens a UDP socket bound to laddr inside ns; it stays in ns.
func udpIn(t *testing.T, ns *lab.NS, laddr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var u *net.UDPConn
	if err := ns.Do(func() error {
		var err error
		u, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(laddr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

func testForgedTransport(t *testing.T, c *lab.Cluster, bins lab.Bins, nodes []*lab.Wedged) {
	conf, err := nodes[0].Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	cid, err := clientid.Parse(configMeta(conf, "ClientID"))
	if err != nil {
		t.Fatal(err)
	}
	client := lab.ClientWAN4.Addr()
	forger := udpIn(t, c.Client, netip.AddrPortFrom(client, 0))
	// Anything a node sends to the client's address from its WireGuard
	// port (the only traffic there: no client is connected).
	capt, err := c.Client.StartCapture(lab.ClientIf, "udp and src port 51820 and dst host "+client.String())
	if err != nil {
		t.Fatal(err)
	}
	sum := func(f func(nodeStatus) uint64) uint64 {
		var n uint64
		for _, w := range nodes {
			n += f(status(t, w))
		}
		return n
	}
	stamped := func(s nodeStatus) uint64 { return s.Bind.Stamped }
	started := func(s nodeStatus) uint64 { return s.Bind.HandshakesStarted }
	stampedBefore, startedBefore := sum(stamped), sum(started)

	msg := make([]byte, 32)
	msg[0] = 4 // transport data, its counter and MAC garbage
	clientid.Stamp(msg, cid)
	vip := netip.AddrPortFrom(lab.VIP4, 51820)
	const sent = 8
	for range sent {
		if _, err := forger.WriteToUDPAddrPort(msg, vip); err != nil {
			t.Fatal(err)
		}
		time.Sleep(250 * time.Millisecond) // one recovery tick apart
	}
	waitUntil(t, 10*time.Second, "the forged messages reach a node's Bind", func() bool {
		return sum(stamped)-stampedBefore >= sent
	})
	// Recovery runs every 250 ms; give it several ticks after the last
	// message was counted. A node that answered would have done so by
	// now; one that is merely slow only makes this pass (never fail).
	time.Sleep(2 * time.Second)
	forger.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, from, err := forger.ReadFromUDPAddrPort(make([]byte, 1500)); err == nil {
		t.Errorf("the forger's socket received %d bytes from %v", n, from)
	}
	res, err := capt.Stop()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range res.UDP {
		t.Errorf("a node sent %d bytes to the forger's address: %v -> %v", d.Len, d.Src, d.Dst)
	}
	if n := sum(started) - startedBefore; n != 0 {
		t.Errorf("nodes started %d handshakes from forged data", n)
	}
	if !t.Failed() {
		t.Logf("%d forged messages for ClientID %s counted, nothing sent back (capture: %d packets)", sent, cid, res.Packets)
	}
}

func testGUEToNode(t *testing.T, c *lab.Cluster, nodes []*lab.Wedged) {
	from, to := lab.NodeUnderlay(2), lab.NodeUnderlay(1)
	// A TCP SYN from node2's underlay to node1's own address, port 22,
	// as the inner packet of GUE (IP directly in UDP).
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 22)
	tcp[12], tcp[13] = 5<<4, 0x02
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	inner := make([]byte, 20, 40)
	inner[0], inner[8], inner[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(inner[2:], 40)
	copy(inner[12:16], from.AsSlice())
	copy(inner[16:20], to.AsSlice())
	binary.BigEndian.PutUint16(inner[10:], ipChecksum(inner))
	inner = append(inner, tcp...) // the TCP checksum is left 0: the packet must not get that far

	sock := udpIn(t, c.Nodes[1], netip.AddrPortFrom(from, 0))
	before := xdpCounters(t, nodes[0])
	const sent = 3
	for range sent {
		if _, err := sock.WriteToUDPAddrPort(inner, netip.AddrPortFrom(to, 6080)); err != nil {
			t.Fatal(err)
		}
	}
	var after map[string]uint64
	waitUntil(t, 10*time.Second, "node1 counts the refused GUE packets", func() bool {
		after = xdpCounters(t, nodes[0])
		return after["decap_refused"]-before["decap_refused"] >= sent
	})
	if d := after["decap_refused"] - before["decap_refused"]; d != sent {
		t.Errorf("decap_refused went up by %d, want %d", d, sent)
	}
	if d := after["decap"] - before["decap"]; d != 0 {
		t.Errorf("node1 unwrapped %d GUE packets during the test, want none", d)
	}
	t.Logf("node1: decap_refused %d -> %d, decap_reject %d -> %d", before["decap_refused"], after["decap_refused"],
		before["decap_reject"], after["decap_reject"])
}

// ipChecksum is the IPv4 header checksum of h (its checksum field 0).
func ipChecksum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		s += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
