package wgmsg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// Fixed keys, so that a failing input means the same thing when replayed.
const (
	fuzzServiceSeed = "wgmsg fuzz service key"
	fuzzClientSeed  = "wgmsg fuzz client key"
)

func FuzzOpen(f *testing.F) {
	service, client := fixedKeyPair(f, fuzzServiceSeed), fixedKeyPair(f, fuzzClientSeed)
	o, err := NewOpener(service.priv)
	if err != nil {
		f.Fatal(err)
	}
	real := captureInitiations(f, client, service.pub, 1)[0]
	f.Add(real)
	f.Add(real[:100])
	f.Add(make([]byte, InitiationSize))
	f.Add([]byte{1, 0, 0, 0})
	mac1 := MAC1Key(service.pub)
	f.Fuzz(func(t *testing.T, msg []byte) {
		orig := bytes.Clone(msg)
		static, err := o.Open(msg)
		checkOpenResult(t, static, err, client.pub)
		if !bytes.Equal(msg, orig) {
			t.Fatal("Open modified its input")
		}
		// Random bytes never pass MAC1; make it valid to reach the Noise
		// steps behind it.
		if len(msg) == InitiationSize {
			msg[0] = byte(Initiation)
			SetMAC1(&mac1, msg)
			static, ts, err := o.OpenTimestamp(msg)
			checkOpenResult(t, static, err, client.pub)
			if err != nil && ts != [12]byte{} {
				t.Fatalf("OpenTimestamp failed (%v) but returned a timestamp", err)
			}
		}
	})
}

func checkOpenResult(t *testing.T, static [32]byte, err error, client [32]byte) {
	t.Helper()
	for _, e := range []error{ErrSize, ErrType, ErrMAC1, ErrEphemeral, ErrStatic, ErrTimestamp} {
		if errors.Is(err, e) {
			if static != [32]byte{} {
				t.Fatalf("Open failed (%v) but returned a static key", err)
			}
			return
		}
	}
	if err != nil {
		t.Fatalf("Open: unexpected error %v", err)
	}
	// Only an initiation made with the client's key decrypts.
	if static != client {
		t.Fatalf("Open: static key %x from a message the client did not make", static)
	}
}

// FuzzTranslator sends random messages through Outgoing and Incoming and
// checks that neither panics, that a message they decline is unchanged, and
// that they rewrite only the fields they own: the sender index and MAC1 on
// the way out; the receiver index, plus the MAC1 of a response or the
// sealed cookie of a cookie reply, on the way in.
func FuzzTranslator(f *testing.F) {
	service, client := fixedKeyPair(f, fuzzServiceSeed), fixedKeyPair(f, fuzzClientSeed)
	keys := NewPeerKeys(client.pub)
	svcMAC1 := MAC1Key(service.pub)
	key := IndexKey(service.priv)
	const local = 0xabcdef01

	real := captureInitiations(f, client, service.pub, 1)[0]
	for op := range uint8(4) {
		f.Add(real, op)
		f.Add(make([]byte, ResponseSize), op)
		f.Add(make([]byte, CookieReplySize), op)
		f.Add(make([]byte, MinTransportSize), op)
		f.Add([]byte{4, 0, 0, 0, 1, 2, 3, 4}, op)
	}
	f.Fuzz(func(t *testing.T, msg []byte, op uint8) {
		tr, err := NewTranslator(TranslatorConfig{Slot: testSlot, IndexKey: key, PublicKey: service.pub})
		if err != nil {
			t.Fatal(err)
		}
		// One mapping, so Incoming has something to translate.
		prime := make([]byte, InitiationSize)
		prime[0] = byte(Initiation)
		binary.LittleEndian.PutUint32(prime[OffsetSender:], local)
		SetMAC1(&keys.MAC1, prime)
		if !tr.Outgoing(prime, &keys) {
			t.Fatal("priming Outgoing failed")
		}
		tagged, _ := Sender(prime)

		m := bytes.Clone(msg)
		typ := Classify(m)
		switch op % 4 {
		case 1: // a valid MAC1, to get past the check
			if len(m) >= 2*MACSize {
				SetMAC1(&keys.MAC1, m)
			}
		case 3: // aimed at the primed index
			if off := receiverOffset(typ); off >= 0 {
				binary.LittleEndian.PutUint32(m[off:], tagged)
				if typ == Response {
					SetMAC1(&svcMAC1, m)
				}
			}
		}
		before := bytes.Clone(m)

		if op%4 < 2 {
			changed := tr.Outgoing(m, &keys)
			if !changed {
				if !bytes.Equal(m, before) {
					t.Fatal("Outgoing declined but modified the message")
				}
				return
			}
			mac1 := len(m) - 2*MACSize
			if i := diffOutside(m, before, [2]int{OffsetSender, OffsetSender + 4}, [2]int{mac1, mac1 + MACSize}); i >= 0 {
				t.Fatalf("Outgoing changed byte %d", i)
			}
			idx, _ := Sender(m)
			if slot, ok := SlotOf(idx, key); !ok || slot != testSlot {
				t.Fatalf("Outgoing gave sender %#08x, not tagged with slot %d", idx, testSlot)
			}
			if !CheckMAC1(&keys.MAC1, m) {
				t.Fatal("Outgoing left an invalid MAC1")
			}
			return
		}

		ok := tr.Incoming(m)
		if !ok {
			if !bytes.Equal(m, before) {
				t.Fatal("Incoming declined but modified the message")
			}
			return
		}
		off := receiverOffset(typ)
		allowed := [][2]int{{off, off + 4}}
		switch typ {
		case Response:
			allowed = append(allowed, [2]int{OffsetResponseMAC1, OffsetResponseMAC2})
			if !CheckMAC1(&svcMAC1, m) {
				t.Fatal("Incoming left a response with an invalid MAC1")
			}
		case CookieReply:
			allowed = append(allowed, [2]int{OffsetCookie, CookieReplySize})
		}
		if i := diffOutside(m, before, allowed...); i >= 0 {
			t.Fatalf("Incoming changed byte %d of a %v", i, typ)
		}
		if got := binary.LittleEndian.Uint32(m[off:]); got != local {
			t.Fatalf("Incoming translated to %#08x, the only mapping is %#08x", got, local)
		}
	})
}
