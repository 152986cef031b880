package server

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
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
	for range 4 {
		sk, _ := wgtypes.GeneratePrivateKey()
		c, err := n.Register(context.Background(), sk.PublicKey(), registry.Tags{})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, sk.PublicKey())
		ids = append(ids, c.ClientID)
	}
	now := time.Now()
	peers := []peerState{
		{PublicKey: keys[0], LastHandshake: now.Add(-10 * time.Second)}, // live session
		{PublicKey: keys[1]}, // never handshaken here
		{PublicKey: keys[2], LastHandshake: now.Add(-200 * time.Second)}, // expired
		{PublicKey: keys[3]}, // sent nothing
	}
	ep := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), uint16(4000+i))
	}
	seen := []DataSeen{{ep(0), ids[0], 3}, {ep(1), ids[1], 1}, {ep(2), ids[2], 9}, {ep(9), ids[3] + 1000, 1}}
	got := n.sessionless(seen, peers, now)
	slices.SortFunc(got, func(a, b sessionCandidate) int { return int(a.id) - int(b.id) })
	want := []sessionCandidate{{keys[1], ids[1], ep(1)}, {keys[2], ids[2], ep(2)}}
	slices.SortFunc(want, func(a, b sessionCandidate) int { return int(a.id) - int(b.id) })
	if !slices.Equal(got, want) {
		t.Fatalf("sessionless: got %+v, want %+v", got, want)
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
