package server

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/internal/testutil"
	"github.com/wedge-edge/wedge/server/registry"
)

func TestBindTakeData(t *testing.T) {
	b := NewBind(nil)
	ep1 := netip.MustParseAddrPort("203.0.113.7:4000")
	ep2 := netip.MustParseAddrPort("203.0.113.8:4000")
	ep3 := netip.MustParseAddrPort("203.0.113.9:4000")
	type msg struct {
		ep  netip.AddrPort
		typ byte
		id  clientid.ID
	}
	batch := []msg{{ep1, 4, 5}, {ep1, 4, 5}, {ep2, 1, 6}, {ep3, 4, 0}, {ep2, 3, 6}}
	inner := func(packets [][]byte, sz []int, eps []conn.Endpoint) (int, error) {
		for i, m := range batch {
			packets[i] = packets[i][:32]
			clear(packets[i])
			packets[i][0] = m.typ
			clientid.Stamp(packets[i], m.id)
			sz[i] = 32
			eps[i] = &conn.StdNetEndpoint{AddrPort: m.ep}
		}
		return len(batch), nil
	}
	fn := b.wrap(inner)
	bufs := make([][]byte, len(batch))
	for i := range bufs {
		bufs[i] = make([]byte, 64)
	}
	fn(bufs, make([]int, len(batch)), make([]conn.Endpoint, len(batch)))
	got := b.TakeData()
	want := []DataSeen{{ep1, 5, 2}} // only stamped transport messages count
	if !slices.Equal(got, want) {
		t.Fatalf("TakeData: got %+v, want %+v", got, want)
	}
	if got := b.TakeData(); len(got) != 0 {
		t.Fatalf("second TakeData: got %+v, want nothing", got)
	}
}

func TestSessionless(t *testing.T) {
	n, _ := newTestNode(t)
	var keys []wgtypes.Key
	var ids []clientid.ID
	for range 6 {
		sk, _ := wgtypes.GeneratePrivateKey()
		c, err := n.Register(context.Background(), sk.PublicKey(), registry.Tags{})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, sk.PublicKey())
		ids = append(ids, c.ClientID)
	}
	now := time.Now()
	ep := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), uint16(4000+i))
	}
	forged := netip.MustParseAddrPort("198.51.100.66:53")
	peers := []peerState{
		{PublicKey: keys[0], Endpoint: ep(0), LastHandshake: now.Add(-10 * time.Second)},  // live session
		{PublicKey: keys[1], Endpoint: ep(1)},                                             // authenticated here once, no session
		{PublicKey: keys[2], Endpoint: ep(2), LastHandshake: now.Add(-200 * time.Second)}, // expired
		{PublicKey: keys[3], Endpoint: ep(3)},                                             // sent nothing
		{PublicKey: keys[4]},                                                              // never authenticated here
		{PublicKey: keys[5], Endpoint: ep(5), LastHandshake: now.Add(-200 * time.Second)}, // data from elsewhere
	}
	seen := []DataSeen{{ep(0), ids[0], 3}, {ep(1), ids[1], 1}, {ep(2), ids[2], 9}, {ep(9), ids[3] + 1000, 1},
		{forged, ids[4], 1}, {forged, ids[5], 1}}
	got := n.sessionless(seen, peers, now)
	slices.SortFunc(got, func(a, b sessionCandidate) int { return int(a.id) - int(b.id) })
	want := []sessionCandidate{{keys[1], ids[1], ep(1), time.Time{}}, {keys[2], ids[2], ep(2), now.Add(-200 * time.Second)}}
	slices.SortFunc(want, func(a, b sessionCandidate) int { return int(a.id) - int(b.id) })
	if !slices.Equal(got, want) {
		t.Fatalf("sessionless: got %+v, want %+v", got, want)
	}
}

// TestAddrBudget: recoveries towards one address are limited to the
// burst, then to the rate, whatever the clients; other addresses keep
// their own budget.
func TestAddrBudget(t *testing.T) {
	b := newAddrBudget(4, 16, 3)
	a := netip.MustParseAddr("203.0.113.7")
	other := netip.MustParseAddr("203.0.113.8")
	now := time.Unix(1000, 0)
	n := 0
	for range 100 {
		if b.take(a, now) {
			n++
		}
	}
	if n != 16 {
		t.Fatalf("%d initiations towards one address at once, want the burst of 16", n)
	}
	if !b.take(other, now) {
		t.Fatal("another address was refused: budgets are per address")
	}
	now = now.Add(time.Second)
	n = 0
	for range 100 {
		if b.take(a, now) {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("%d initiations a second later, want the rate of 4", n)
	}
	// Full: the map is cleared rather than grown.
	for i := range 10 {
		b.take(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), now)
	}
	if len(b.buckets) > 3 {
		t.Fatalf("%d budgets kept, want at most 3", len(b.buckets))
	}
}

// TestRecoveryAuthenticatedEndpoint runs a node over loopback sockets: a
// forged transport message naming a registered client, from an address
// that is not the client's authenticated endpoint, makes the node send
// nothing there and leaves the peer's endpoint alone; the same message
// from the authenticated endpoint starts a handshake towards it.
func TestRecoveryAuthenticatedEndpoint(t *testing.T) {
	n, _ := newTestNode(t, func(c *Config) { c.Bind = conn.NewStdNetBind(); c.ListenPort = 0 })
	sk, _ := wgtypes.GeneratePrivateKey()
	c, err := n.Register(context.Background(), sk.PublicKey(), registry.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	holdPeer(t, n, c)
	var uapi strings.Builder
	if err := n.dev.IpcGetOperation(&uapi); err != nil {
		t.Fatal(err)
	}
	port := regexp.MustCompile(`(?m)^listen_port=(\d+)$`).FindStringSubmatch(uapi.String())
	if port == nil {
		t.Fatalf("no listen_port in %q", uapi.String())
	}
	node := netip.MustParseAddrPort("127.0.0.1:" + port[1])
	listen := func(addr string) *net.UDPConn {
		u, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		return u
	}
	client, forger := listen("127.0.0.1:0"), listen("127.0.0.2:0")
	authentic := client.LocalAddr().(*net.UDPAddr).AddrPort()
	// What wireguard-go records when it authenticates a handshake or data
	// from the client: its endpoint (no session is live: the client's
	// last handshake is not recent).
	if err := n.dev.IpcSet(fmt.Sprintf("public_key=%s\nupdate_only=true\nendpoint=%s\n", hexKey(c.PublicKey), authentic)); err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 32)
	msg[0] = msgTransport
	clientid.Stamp(msg, c.ClientID)
	// recv waits up to d for a datagram on u.
	recv := func(u *net.UDPConn, d time.Duration) []byte {
		buf := make([]byte, 1500)
		u.SetReadDeadline(time.Now().Add(d))
		k, err := u.Read(buf)
		if err != nil {
			return nil
		}
		return buf[:k]
	}

	stamped, _ := n.bind.Counts()
	// Several ticks' worth of forged data from a new address.
	for range 4 {
		if _, err := forger.WriteToUDPAddrPort(msg, node); err != nil {
			t.Fatal(err)
		}
		if got := recv(forger, 500*time.Millisecond); got != nil {
			t.Fatalf("the node sent %d bytes (type %d) to the forger's address", len(got), got[0])
		}
	}
	if now, _ := n.bind.Counts(); now-stamped != 4 {
		t.Fatalf("the node counted %d stamped messages, want the 4 forged ones", now-stamped)
	}
	peers, err := n.peers()
	if err != nil || len(peers) != 1 || peers[0].Endpoint != authentic {
		t.Fatalf("after the forged data the peer is %+v (%v), want its endpoint still %v", peers, err, authentic)
	}
	if r := n.recovered.Load(); r != 0 {
		t.Fatalf("%d recoveries started from forged data", r)
	}

	// The same data from the authenticated endpoint: an initiation there.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := client.WriteToUDPAddrPort(msg, node); err != nil {
			t.Fatal(err)
		}
		if got := recv(client, 500*time.Millisecond); got != nil {
			if len(got) != 148 || got[0] != 1 {
				t.Fatalf("the node sent %d bytes of type %d to the client, want a 148-byte initiation", len(got), got[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no initiation reached the authenticated endpoint in 10 s")
		}
	}
	// The counter is bumped after the initiation is on its way: wait for it.
	testutil.WaitFor(t, 5*time.Second, "the recovery to be counted", func() bool { return n.recovered.Load() >= 1 })
	if r := n.recovered.Load(); r != 1 {
		t.Fatalf("%d recoveries started, want 1", r)
	}
}

// TestPinsFor: a draining node pins every client with a session; an active
// one pins those the table gives to another node, and never a client
// without a session or one it does not know.
func TestPinsFor(t *testing.T) {
	now := time.Now()
	key := func(i byte) wgtypes.Key { return wgtypes.Key{i} }
	clients := map[wgtypes.Key]registry.Client{
		key(1): {ClientID: 1}, key(2): {ClientID: 2}, key(3): {ClientID: 3}, key(4): {ClientID: 4},
	}
	peers := []peerState{
		{PublicKey: key(1), LastHandshake: now.Add(-time.Minute)},
		{PublicKey: key(2), LastHandshake: now.Add(-time.Minute)},
		{PublicKey: key(3), LastHandshake: now.Add(-4 * time.Minute)}, // lapsed
		{PublicKey: key(4)},                     // never
		{PublicKey: key(9), LastHandshake: now}, // not registered
	}
	owner := func(cid uint32) string {
		if cid%2 == 0 {
			return "self"
		}
		return "other"
	}
	for _, tc := range []struct {
		name     string
		draining bool
		owner    func(uint32) string
		pins     []uint32
	}{
		{"active, table moved 1 and 3 away", false, owner, []uint32{1}},
		{"active, no table", false, nil, nil},
		{"draining", true, owner, []uint32{1, 2}},
	} {
		active, pins := pinsFor(peers, clients, now, tc.draining, tc.owner, "self")
		slices.Sort(pins)
		if active != 3 || !slices.Equal(pins, tc.pins) {
			t.Errorf("%s: active %d, pins %v; want 3 and %v", tc.name, active, pins, tc.pins)
		}
	}
}
