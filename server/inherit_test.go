package server

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/internal/etcdtest"
	"github.com/wedge-edge/wedge/internal/testutil"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/registry"
)

// TestSessionRecords: what a node publishes for its heir: registered
// clients with a recent handshake at an authenticated endpoint; a session's
// Since survives its rekeys and restarts when the client moves.
func TestSessionRecords(t *testing.T) {
	var keys [4]wgtypes.Key
	n := &Node{clients: map[wgtypes.Key]registry.Client{}}
	for i := range keys {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k.PublicKey()
		if i < 3 {
			n.clients[keys[i]] = registry.Client{PublicKey: keys[i], ClientID: clientid.ID(100 + i)}
		}
	}
	ep := netip.MustParseAddrPort("203.0.113.5:4000")
	moved := netip.MustParseAddrPort("203.0.113.5:4001")
	t0 := time.Unix(1700000000, 0)
	peers := []peerState{
		{PublicKey: keys[0], Endpoint: ep, LastHandshake: t0},
		{PublicKey: keys[1], Endpoint: ep, LastHandshake: t0.Add(-4 * time.Minute)}, // lapsed
		{PublicKey: keys[2], LastHandshake: t0},                                     // no endpoint
		{PublicKey: keys[3], Endpoint: ep, LastHandshake: t0},                       // not registered
	}
	got := n.sessionRecords(peers, nil, t0)
	want := map[uint32]cluster.Session{100: {Endpoint: ep, Since: t0}}
	if len(got) != 1 || got[100] != want[100] {
		t.Fatalf("first records = %v, want %v", got, want)
	}
	// A rekey two minutes later: Since stays.
	peers[0].LastHandshake = t0.Add(2 * time.Minute)
	if got = n.sessionRecords(peers, got, t0.Add(2*time.Minute)); got[100] != want[100] {
		t.Errorf("after a rekey = %v, want Since unchanged %v", got[100], want[100])
	}
	// The client roams: a new session there.
	peers[0].Endpoint, peers[0].LastHandshake = moved, t0.Add(3*time.Minute)
	if got = n.sessionRecords(peers, got, t0.Add(3*time.Minute)); got[100] != (cluster.Session{Endpoint: moved, Since: t0.Add(3 * time.Minute)}) {
		t.Errorf("after a move = %v, want a new Since at the new endpoint", got[100])
	}
}

// TestSessionRecordsReturn: a client that went from this node to another
// and came back has a new session here: its Since restarts, or the other
// node's record would look newer than the live session here (and an heir
// or the other node's recovery would act on it).
func TestSessionRecordsReturn(t *testing.T) {
	e := etcdtest.Start(t)
	ctx := context.Background()
	opts := cluster.Options{TTL: 2 * time.Second}
	self, err := cluster.Join(ctx, e.Client(t), "/m/", cluster.Member{ID: "a", DC: "dc1", Underlay: netip.MustParseAddr("198.18.1.1")}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	other, err := cluster.Join(ctx, e.Client(t), "/m/", cluster.Member{ID: "b", DC: "dc1", Underlay: netip.MustParseAddr("198.18.2.1")}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	key := k.PublicKey()
	n := &Node{cfg: Config{Cluster: self}, clients: map[wgtypes.Key]registry.Client{key: {PublicKey: key, ClientID: 100}}}
	ep := netip.MustParseAddrPort("203.0.113.5:4000")
	t0 := time.Unix(1700000000, 0)
	other.SetSessions(map[uint32]cluster.Session{100: {Endpoint: ep, Since: t0.Add(time.Minute)}})
	testutil.WaitFor(t, 10*time.Second, "b's record", func() bool { _, _, ok := self.SessionElsewhere(100, ""); return ok })
	prev := map[uint32]cluster.Session{100: {Endpoint: ep, Since: t0}}
	// Still the session that began at t0 (its last rekey before b's).
	peers := []peerState{{PublicKey: key, Endpoint: ep, LastHandshake: t0.Add(50 * time.Second)}}
	if got := n.sessionRecords(peers, prev, t0.Add(70*time.Second)); got[100].Since != t0 {
		t.Errorf("before the return: Since %v, want %v", got[100].Since, t0)
	}
	// Back here after b: a new session.
	peers[0].LastHandshake = t0.Add(2 * time.Minute)
	if got := n.sessionRecords(peers, prev, t0.Add(2*time.Minute)); !got[100].Since.Equal(t0.Add(2 * time.Minute)) {
		t.Errorf("after the return: Since %v, want %v", got[100].Since, t0.Add(2*time.Minute))
	}
}
