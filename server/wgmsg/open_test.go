package wgmsg

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"golang.zx2c4.com/wireguard/tai64n"
)

func TestOpenRealInitiations(t *testing.T) {
	service, client := newKeyPair(t), newKeyPair(t)
	o, err := NewOpener(service.priv)
	if err != nil {
		t.Fatal(err)
	}
	if o.PublicKey() != service.pub {
		t.Fatalf("PublicKey: got %x, want %x", o.PublicKey(), service.pub)
	}
	start := tai64n.Now()
	msgs := captureInitiations(t, client, service.pub, 3)
	var last tai64n.Timestamp
	for i, m := range msgs {
		orig := bytes.Clone(m)
		static, err := o.Open(m)
		if err != nil {
			t.Fatalf("initiation %d: Open: %v", i, err)
		}
		if static != client.pub {
			t.Fatalf("initiation %d: Open: got %x, want %x", i, static, client.pub)
		}
		static, ts, err := o.OpenTimestamp(m)
		if err != nil {
			t.Fatalf("initiation %d: OpenTimestamp: %v", i, err)
		}
		if static != client.pub {
			t.Fatalf("initiation %d: OpenTimestamp: got %x, want %x", i, static, client.pub)
		}
		// TAI64N is whitened to 2^24 ns, so equal stamps are possible.
		if start.After(ts) || last.After(ts) || ts.After(tai64n.Now()) {
			t.Fatalf("initiation %d: timestamp %v not between %v and now", i, ts, start)
		}
		last = ts
		// OpenIf: the key alone when more declines, key and the same
		// timestamp when it accepts.
		var asked [32]byte
		static, ts2, auth, err := o.OpenIf(m, func(k [32]byte) bool { asked = k; return false })
		if err != nil || static != client.pub || asked != client.pub || auth || ts2 != (tai64n.Timestamp{}) {
			t.Fatalf("initiation %d: OpenIf declined: %x, %v, %v, %v", i, static, ts2, auth, err)
		}
		static, ts2, auth, err = o.OpenIf(m, func([32]byte) bool { return true })
		if err != nil || static != client.pub || !auth || ts2 != ts {
			t.Fatalf("initiation %d: OpenIf accepted: %x, %v, %v, %v; want timestamp %v", i, static, ts2, auth, err, ts)
		}
		if !bytes.Equal(m, orig) {
			t.Fatalf("initiation %d: Open modified the message", i)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	service, client := newKeyPair(t), newKeyPair(t)
	o, err := NewOpener(service.priv)
	if err != nil {
		t.Fatal(err)
	}
	real := captureInitiations(t, client, service.pub, 1)[0]
	mac1 := MAC1Key(service.pub)

	// remac applies f to a copy of the real initiation and makes its MAC1
	// valid again, to reach the checks behind MAC1.
	remac := func(f func(m []byte)) []byte {
		m := bytes.Clone(real)
		f(m)
		SetMAC1(&mac1, m)
		return m
	}
	lowOrder := make([]byte, 32) // the point 0 has order 4: X25519 gives all zeros
	other := newKeyPair(t)
	for _, tc := range []struct {
		name   string
		msg    []byte
		want   error
		wantTS error // OpenTimestamp, when it differs
	}{
		{"empty", nil, ErrSize, nil},
		{"short", real[:147], ErrSize, nil},
		{"long", append(bytes.Clone(real), 0), ErrSize, nil},
		{"response type", remac(func(m []byte) { m[0] = 2 }), ErrType, nil},
		{"flipped MAC1", func() []byte { m := bytes.Clone(real); m[OffsetInitiationMAC1] ^= 1; return m }(), ErrMAC1, nil},
		{"stamped", func() []byte { m := bytes.Clone(real); m[2] = 7; return m }(), ErrMAC1, nil},
		{"other service key", captureInitiations(t, client, other.pub, 1)[0], ErrMAC1, nil},
		{"low-order ephemeral", remac(func(m []byte) { copy(m[OffsetInitiationEphemeral:], lowOrder) }), ErrEphemeral, nil},
		{"altered ephemeral", remac(func(m []byte) { m[OffsetInitiationEphemeral] ^= 1 }), ErrStatic, nil},
		{"altered static", remac(func(m []byte) { m[OffsetInitiationStatic+5] ^= 1 }), ErrStatic, nil},
		{"altered timestamp", remac(func(m []byte) { m[OffsetInitiationTimestamp] ^= 1 }), nil, ErrTimestamp},
		{"MAC2 set", remac(func(m []byte) { m[OffsetInitiationMAC2] = 1 }), nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := o.Open(tc.msg)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("Open: got %v, want %v", err, tc.want)
			}
			wantTS := tc.want
			if tc.wantTS != nil {
				wantTS = tc.wantTS
			}
			_, _, err = o.OpenTimestamp(tc.msg)
			if !errors.Is(err, wantTS) || (wantTS == nil) != (err == nil) {
				t.Errorf("OpenTimestamp: got %v, want %v", err, wantTS)
			}
		})
	}
}

func TestNewOpenerRejectsZeroKey(t *testing.T) {
	if _, err := NewOpener([32]byte{}); err == nil {
		t.Error("NewOpener accepts a zero key")
	}
}

// TestOpenConcurrent runs Open from many goroutines (for -race).
func TestOpenConcurrent(t *testing.T) {
	service, client := newKeyPair(t), newKeyPair(t)
	o, err := NewOpener(service.priv)
	if err != nil {
		t.Fatal(err)
	}
	m := captureInitiations(t, client, service.pub, 1)[0]
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for range 20 {
				static, err := o.Open(m)
				if err == nil && static != client.pub {
					err = errors.New("wrong static key")
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	service, client := newKeyPair(b), newKeyPair(b)
	o, err := NewOpener(service.priv)
	if err != nil {
		b.Fatal(err)
	}
	m := captureInitiations(b, client, service.pub, 1)[0]
	b.Run("Open", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := o.Open(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("OpenTimestamp", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := o.OpenTimestamp(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Baselines, to report Open as a ratio: one X25519, and wireguard-go's
	// own processing of the same initiation up to its peer lookup (its
	// device is down, so it stops there, after the same X25519 and AEAD).
	b.Run("X25519", func(b *testing.B) {
		priv, _ := ecdh.X25519().NewPrivateKey(service.priv[:])
		b.ReportAllocs()
		for b.Loop() {
			pub, _ := ecdh.X25519().NewPublicKey(m[OffsetInitiationEphemeral:OffsetInitiationStatic])
			if _, err := priv.ECDH(pub); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("wireguard-go", func(b *testing.B) {
		binds := bindtest.NewChannelBinds()
		dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), binds[0], device.NewLogger(device.LogLevelSilent, ""))
		defer dev.Close()
		if err := dev.IpcSet(uapi("private_key", hex.EncodeToString(service.priv[:]), "public_key", hex.EncodeToString(client.pub[:]))); err != nil {
			b.Fatal(err)
		}
		var msg device.MessageInitiation
		msg.Type = device.MessageInitiationType
		copy(msg.Ephemeral[:], m[OffsetInitiationEphemeral:])
		copy(msg.Static[:], m[OffsetInitiationStatic:])
		copy(msg.Timestamp[:], m[OffsetInitiationTimestamp:])
		b.ReportAllocs()
		for b.Loop() {
			dev.ConsumeMessageInitiation(&msg)
		}
	})
	b.Run("BadMAC1", func(b *testing.B) {
		bad := bytes.Clone(m)
		bad[OffsetInitiationMAC1] ^= 1
		b.ReportAllocs()
		for b.Loop() {
			if _, err := o.Open(bad); err != ErrMAC1 {
				b.Fatal(err)
			}
		}
	})
}

// initiation builds a handshake initiation to service the way an initiator
// does, claiming static key claimed but computing the static-static DH with
// priv: a genuine initiation when priv is claimed's, a forged claim
// otherwise.
func initiation(t *testing.T, service [32]byte, claimed [32]byte, priv [32]byte) []byte {
	t.Helper()
	x := ecdh.X25519()
	eph, err := x.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	servicePub, _ := x.NewPublicKey(service[:])
	m := make([]byte, InitiationSize)
	m[0] = byte(Initiation)
	binary.LittleEndian.PutUint32(m[OffsetSender:], 0x01020304)
	copy(m[OffsetInitiationEphemeral:], eph.PublicKey().Bytes())

	var hash, ck, key [32]byte
	hash2(&hash, initialHash[:], service[:])
	hash2(&hash, hash[:], eph.PublicKey().Bytes())
	kdf1(&ck, initialChainKey[:], eph.PublicKey().Bytes())
	ss, _ := eph.ECDH(servicePub)
	kdf2(&ck, &key, ck[:], ss)
	aead, _ := chacha20poly1305.New(key[:])
	aead.Seal(m[OffsetInitiationStatic:OffsetInitiationStatic], zeroNonce[:], claimed[:], hash[:])
	hash2(&hash, hash[:], m[OffsetInitiationStatic:OffsetInitiationTimestamp])

	static, _ := x.NewPrivateKey(priv[:])
	ss, _ = static.ECDH(servicePub)
	kdf2(&ck, &key, ck[:], ss)
	aead, _ = chacha20poly1305.New(key[:])
	ts := tai64n.Now()
	aead.Seal(m[OffsetInitiationTimestamp:OffsetInitiationTimestamp], zeroNonce[:], ts[:], hash[:])
	mac1 := MAC1Key(service)
	SetMAC1(&mac1, m)
	return m
}

// TestOpenIsAClaim shows why Open's key is a claim and OpenTimestamp's a
// proof: an initiation naming someone else's key opens, but its timestamp
// does not decrypt.
func TestOpenIsAClaim(t *testing.T) {
	service, victim, attacker := newKeyPair(t), newKeyPair(t), newKeyPair(t)
	o, err := NewOpener(service.priv)
	if err != nil {
		t.Fatal(err)
	}
	genuine := initiation(t, service.pub, victim.pub, victim.priv)
	if static, _, err := o.OpenTimestamp(genuine); err != nil || static != victim.pub {
		t.Fatalf("genuine initiation: got %x, %v", static, err)
	}
	forged := initiation(t, service.pub, victim.pub, attacker.priv)
	if static, err := o.Open(forged); err != nil || static != victim.pub {
		t.Fatalf("forged initiation: Open got %x, %v; want the claimed key", static, err)
	}
	if static, _, err := o.OpenTimestamp(forged); !errors.Is(err, ErrTimestamp) || static != [32]byte{} {
		t.Fatalf("forged initiation: OpenTimestamp got %x, %v; want ErrTimestamp", static, err)
	}
}
