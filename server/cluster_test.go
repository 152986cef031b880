package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/etcdtest"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/registry"
)

// newClusterNode is a Node on a shared etcd registry with its own etcd
// client and membership, as a wedged --etcd is.
func newClusterNode(t *testing.T, e *etcdtest.Etcd, id string, sk wgtypes.Key) *Node {
	t.Helper()
	cli := e.Client(t)
	st, err := registry.NewEtcd(cli, "/wedge/", registry.DefaultPools)
	if err != nil {
		t.Fatal(err)
	}
	m, err := cluster.Join(context.Background(), cli, "/wedge/", cluster.Member{
		ID: id, DC: "dc1", Underlay: netip.MustParseAddr("198.18.1.1"),
	}, cluster.Options{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(context.Background(), Config{
		Name:       "wedgetest",
		PrivateKey: sk,
		Store:      st,
		TUN:        tuntest.NewChannelTUN().TUN(),
		Bind:       bindtest.NewChannelBinds()[0],
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Cluster:    m,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); m.Close() })
	return n
}

// hasPeer reports whether the node's device holds pub.
func hasPeer(n *Node, pub wgtypes.Key) bool {
	peers, _ := n.peers()
	for _, p := range peers {
		if p.PublicKey == pub {
			return true
		}
	}
	return false
}

func waitPeer(t *testing.T, n *Node, pub wgtypes.Key, want bool, what string) time.Duration {
	t.Helper()
	start := time.Now()
	for hasPeer(n, pub) != want {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%s: peer present = %v after 5 s", what, !want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// TestClusterNodes: a registration on one node reaches the other node's
// view (through the watch), and a deletion removes the client's peer on
// both; clients registered before a node starts are known (no peer until
// they handshake); with etcd down registration is refused
// with 503 while lookups are answered from the node's view.
func TestClusterNodes(t *testing.T) {
	e := etcdtest.Start(t)
	sk, _ := wgtypes.GeneratePrivateKey()
	a := newClusterNode(t, e, "a", sk)
	early, err := a.Register(context.Background(), newPub(t), registry.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	b := newClusterNode(t, e, "b", sk)
	if !b.registered(early.PublicKey) || hasPeer(b, early.PublicKey) {
		t.Fatal("a node started after a registration does not know it, or loaded its peer")
	}
	c, err := a.Register(context.Background(), newPub(t), registry.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	if !a.registered(c.PublicKey) {
		t.Fatal("the registering node does not know the client when Register returns")
	}
	start := time.Now()
	for !b.registered(c.PublicKey) {
		if time.Since(start) > 5*time.Second {
			t.Fatal("registration on a never reached b")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("registration on a reached b in %v", time.Since(start))
	// The client handshakes with both (a peer each); a deletion on b
	// removes a's peer too.
	holdPeer(t, a, c)
	if cb, ok := b.client(c.PublicKey); ok {
		holdPeer(t, b, cb)
	}
	if _, err := b.Unregister(context.Background(), c.ID); err != nil {
		t.Fatal(err)
	}
	if hasPeer(b, c.PublicKey) {
		t.Fatal("the deleting node kept the peer")
	}
	t.Logf("deletion on b reached a's device in %v", waitPeer(t, a, c.PublicKey, false, "deletion on b, device of a"))

	// Cluster status lists both nodes.
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := a.Status()
		if s.Cluster != nil && len(s.Cluster.Nodes) == 2 && s.Cluster.Etcd.Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster status %+v", s.Cluster)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Drain through the API; unknown nodes are refused.
	h := a.routes()
	if code, body := do(t, h, http.MethodPost, "/v1/nodes/nosuch/drain", ""); code != http.StatusNotFound {
		t.Errorf("drain of an unknown node: %d %v", code, body)
	}
	if code, body := do(t, h, http.MethodPost, "/v1/nodes/b/drain", ""); code != http.StatusNoContent {
		t.Fatalf("drain b: %d %v", code, body)
	}
	waitState := func(want cluster.State) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for b.Status().Cluster.Node.State != want {
			if time.Now().After(deadline) {
				t.Fatalf("b's own state is %q, want %q", b.Status().Cluster.Node.State, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitState(cluster.Draining)
	if code, body := do(t, h, http.MethodDelete, "/v1/nodes/b/drain", ""); code != http.StatusNoContent {
		t.Fatalf("undrain b: %d %v", code, body)
	}
	waitState(cluster.Active)

	// etcd down: 503 on registration, GET served from the node's view,
	// known clients stay in the device.
	e.Stop()
	deadline = time.Now().Add(10 * time.Second)
	for a.cfg.Cluster.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("the node still thinks etcd is reachable")
		}
		time.Sleep(50 * time.Millisecond)
	}
	start = time.Now()
	code, body := do(t, h, http.MethodPost, "/v1/reg", fmt.Sprintf(`{"public_key":%q}`, newPub(t).String()))
	if code != http.StatusServiceUnavailable {
		t.Fatalf("registration with etcd down: %d %v", code, body)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the 503 took %v", d)
	}
	if code, body := do(t, h, http.MethodGet, "/v1/reg/"+early.ID, ""); code != http.StatusOK {
		t.Errorf("GET of a known client with etcd down: %d %v", code, body)
	}
	if !a.registered(early.PublicKey) || !b.registered(early.PublicKey) {
		t.Error("a known client left a node's view during the outage")
	}

	// etcd back: a registration on b reaches a.
	e.Restart(t)
	deadline = time.Now().Add(15 * time.Second)
	var late registry.Client
	for {
		late, err = b.Register(context.Background(), newPub(t), registry.Tags{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("registration after etcd returned: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// a's watch comes back on its etcd client's reconnect, whose backoff
	// grew during the outage (gRPC: up to several seconds on a loaded
	// machine): the same 15 s as b's first write.
	for start := time.Now(); !a.registered(late.PublicKey); time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 15*time.Second {
			t.Fatal("registration after the outage never reached a")
		}
	}
}

func newPub(t *testing.T) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}
