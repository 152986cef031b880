package server

import (
	"context"
	"net/netip"
	"testing"

	"github.com/wedge-edge/wedge/server/registry"
)

// TestClientOf: both inner addresses of a registration name its ClientID,
// other addresses none, and a deleted registration's addresses are
// forgotten.
func TestClientOf(t *testing.T) {
	n, _ := newTestNode(t)
	ctx := context.Background()
	a, err := n.Register(ctx, newPub(t), registry.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.Register(ctx, newPub(t), registry.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []registry.Client{a, b} {
		for _, addr := range []netip.Addr{c.V4, c.V6} {
			if id, ok := n.ClientOf(addr); !ok || id != c.ClientID {
				t.Errorf("ClientOf(%s) = %v, %v; want %v", addr, id, ok, c.ClientID)
			}
		}
	}
	if _, err := n.Unregister(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []netip.Addr{a.V4, a.V6} {
		if id, ok := n.ClientOf(addr); ok {
			t.Errorf("ClientOf(%s) = %v after its registration was deleted", addr, id)
		}
	}
	if id, ok := n.ClientOf(b.V6); !ok || id != b.ClientID {
		t.Errorf("ClientOf(%s) = %v, %v after another client left; want %v", b.V6, id, ok, b.ClientID)
	}
}
