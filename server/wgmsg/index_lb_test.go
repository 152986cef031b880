package wgmsg_test

// An external test package, so that importing lb stays legal even if lb
// comes to import wgmsg (to feed the XDP program the index key).

import (
	"math/rand/v2"
	"testing"

	"github.com/wedge-edge/wedge/lb"
	"github.com/wedge-edge/wedge/server/wgmsg"
)

// TestHashIsLBHash pins wgmsg's copy of the hash to lb.Hash, which the XDP
// program implements, and the check bits of Tag to the formula computed
// with lb.Hash.
func TestHashIsLBHash(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for range 10000 {
		x := rng.Uint32()
		if got, want := wgmsg.Hash(x), lb.Hash(x); got != want {
			t.Fatalf("Hash(%#x): got %#x, lb.Hash %#x", x, got, want)
		}
		slot, r, key := uint8(1+rng.IntN(255)), rng.Uint32()&wgmsg.IndexRandomMask, rng.Uint32()
		want := uint32(slot)<<24 | lb.Hash(r^key^uint32(slot)<<20)>>28<<20 | r
		if got := wgmsg.Tag(slot, r, key); got != want {
			t.Fatalf("Tag(%d, %#x, %#x): got %#08x, want %#08x", slot, r, key, got, want)
		}
	}
}
