package wgmsg

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"golang.zx2c4.com/wireguard/device"
)

// TestMAC1AgainstWireGuard checks MAC1 both ways against wireguard-go's own
// cookie code: what its CookieGenerator (sender side) sets, CheckMAC1
// accepts; what SetMAC1 sets, its CookieChecker (receiver side) accepts.
func TestMAC1AgainstWireGuard(t *testing.T) {
	kp := newKeyPair(t)
	key := MAC1Key(kp.pub)
	var gen device.CookieGenerator
	gen.Init(device.NoisePublicKey(kp.pub))
	var chk device.CookieChecker
	chk.Init(device.NoisePublicKey(kp.pub))

	rng := rand.New(rand.NewPCG(3, 4))
	for _, size := range []int{InitiationSize, ResponseSize, 32, 33, 200} {
		for range 20 {
			msg := make([]byte, size)
			for i := range msg[:size-32] {
				msg[i] = byte(rng.Uint32())
			}
			gen.AddMacs(msg)
			if !CheckMAC1(&key, msg) {
				t.Fatalf("size %d: CheckMAC1 rejects wireguard-go's MAC1", size)
			}
			var mac [MACSize]byte
			ComputeMAC1(&mac, &key, msg)
			if !bytes.Equal(mac[:], msg[size-32:size-16]) {
				t.Fatalf("size %d: ComputeMAC1 %x, wireguard-go %x", size, mac, msg[size-32:size-16])
			}

			clear(msg[size-32:])
			SetMAC1(&key, msg)
			if !chk.CheckMAC1(msg) {
				t.Fatalf("size %d: wireguard-go rejects SetMAC1's MAC1", size)
			}
			msg[1] ^= 1 // a stamp in the reserved bytes
			if CheckMAC1(&key, msg) {
				t.Fatalf("size %d: MAC1 does not cover the reserved bytes", size)
			}
		}
	}
	if CheckMAC1(&key, make([]byte, 31)) {
		t.Error("CheckMAC1 accepts a message shorter than the MACs")
	}
}

func TestMAC1OfRealInitiation(t *testing.T) {
	service := newKeyPair(t)
	msgs := captureInitiations(t, newKeyPair(t), service.pub, 2)
	key := MAC1Key(service.pub)
	other := MAC1Key(newKeyPair(t).pub)
	for _, m := range msgs {
		if !CheckMAC1(&key, m) {
			t.Error("MAC1 of a wireguard-go initiation does not verify")
		}
		if CheckMAC1(&other, m) {
			t.Error("MAC1 verifies under another key")
		}
		if HasMAC2(m) {
			t.Error("initiation without a cookie has a MAC2")
		}
	}
}

func TestMAC1RoundTrip(t *testing.T) {
	key := MAC1Key([32]byte{1})
	msg := make([]byte, InitiationSize)
	SetMAC1(&key, msg)
	if !CheckMAC1(&key, msg) {
		t.Fatal("SetMAC1 then CheckMAC1 fails")
	}
	msg[5] ^= 1
	if CheckMAC1(&key, msg) {
		t.Fatal("CheckMAC1 accepts a changed message")
	}
}
