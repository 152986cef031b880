package wgmsg

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Golden values: the index layout is a contract with the XDP program and
// third parties, so its output is pinned, not just its round trip. The Hash
// values were computed with lb.Hash (index_lb_test.go checks the two agree).
func TestIndexGolden(t *testing.T) {
	for _, tc := range []struct{ in, want uint32 }{
		{0, 0},
		{1, 0x514e28b7},
		{0xdeadbeef, 0x0de5c6a9},
		{0xffffffff, 0x81f16f39},
	} {
		if got := Hash(tc.in); got != tc.want {
			t.Errorf("Hash(%#x): got %#x, want %#x", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		slot   uint8
		r, key uint32
		want   uint32
	}{
		{1, 0, 0, 0x01e00000},
		{7, 0x12345, 0xdeadbeef, 0x07112345},
		{255, 0xfffff, 0x01020304, 0xffefffff},
		{42, 0xabcdef12, 0x9e3779b9, 0x2a4def12}, // r's high bits ignored
	} {
		if got := Tag(tc.slot, tc.r, tc.key); got != tc.want {
			t.Errorf("Tag(%d, %#x, %#x): got %#08x, want %#08x", tc.slot, tc.r, tc.key, got, tc.want)
		}
	}
	// Checked against Python's hashlib.blake2s as well.
	var key [32]byte
	for i := range key {
		key[i] = byte(i)
	}
	if got, want := IndexKey(key), uint32(0x2c738bb0); got != want {
		t.Errorf("IndexKey(0, 1, ..., 31): got %#08x, want %#08x", got, want)
	}
}

func TestTagSlotOf(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 10000 {
		key := rng.Uint32()
		slot := uint8(1 + rng.IntN(255))
		r := rng.Uint32()
		idx := Tag(slot, r, key)
		if idx&IndexRandomMask != r&IndexRandomMask {
			t.Fatalf("Tag(%d, %#x, %#x) = %#x: random part lost", slot, r, key, idx)
		}
		got, ok := SlotOf(idx, key)
		if !ok || got != slot {
			t.Fatalf("SlotOf(Tag(%d, %#x, %#x)) = %d %v", slot, r, key, got, ok)
		}
		// Every other check value must fail.
		for c := uint32(1); c < 16; c++ {
			if _, ok := SlotOf(idx^c<<20, key); ok {
				t.Fatalf("SlotOf accepts %#x with check flipped by %#x", idx^c<<20, c)
			}
		}
		if _, ok := SlotOf(idx&0x00ffffff, key); ok {
			t.Fatalf("SlotOf accepts slot 0 (%#x)", idx&0x00ffffff)
		}
	}
	if _, ok := SlotOf(Tag(0, 123, 456), 456); ok {
		t.Error("Tag(0, ...) passes SlotOf")
	}
}

// TestUntaggedFalsePositives measures the rate the package comment states:
// a random index passes for one given slot with probability 1/4096 and for
// some slot with 255/4096.
func TestUntaggedFalsePositives(t *testing.T) {
	const n = 1 << 20
	rng := rand.New(rand.NewPCG(7, 8))
	key := rng.Uint32()
	var any, slot7 int
	for range n {
		s, ok := SlotOf(rng.Uint32(), key)
		if ok {
			any++
			if s == 7 {
				slot7++
			}
		}
	}
	// Binomial counts: allow five standard deviations around the mean.
	check := func(name string, got int, p float64) {
		mean := n * p
		sd := math.Sqrt(mean * (1 - p))
		if math.Abs(float64(got)-mean) > 5*sd {
			t.Errorf("%s: %d of %d random indexes pass, want about %.0f", name, got, n, mean)
		}
	}
	check("any slot", any, 255.0/4096)
	check("slot 7", slot7, 1.0/4096)
}
