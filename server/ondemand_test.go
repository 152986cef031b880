package server

import (
	"testing"
	"time"

	"github.com/wedge-edge/wedge/server/registry"
)

// holdPeer adds c's peer as a handshake on demand would (for tests of what
// the device holds).
func holdPeer(t testing.TB, n *Node, cs ...registry.Client) {
	t.Helper()
	for _, c := range cs {
		if err := n.addPeer(c, time.Now(), unfinishedOnDemand, 0); err != nil {
			t.Fatalf("add peer %s: %v", c.ID, err)
		}
	}
}
