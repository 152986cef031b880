package server

import (
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
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
