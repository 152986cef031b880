package wgmsg

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/device"
)

const testSlot = 7

type translatorFixture struct {
	tr      *Translator
	key     uint32
	service keyPair
	peer    keyPair
	keys    PeerKeys // the peer's: for what the node sends it
	svcMAC1 [32]byte // the service's: for what the peer sends the node
	rng     *rand.Rand
}

func newFixture(tb testing.TB, cfg TranslatorConfig) *translatorFixture {
	tb.Helper()
	f := &translatorFixture{service: newKeyPair(tb), peer: newKeyPair(tb), rng: rand.New(rand.NewPCG(11, 12))}
	f.key = IndexKey(f.service.priv)
	f.keys = NewPeerKeys(f.peer.pub)
	f.svcMAC1 = MAC1Key(f.service.pub)
	if cfg.Slot == 0 {
		cfg.Slot = testSlot
	}
	cfg.IndexKey, cfg.PublicKey = f.key, f.service.pub
	tr, err := NewTranslator(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	f.tr = tr
	return f
}

// handshake returns a random initiation or response from wireguard-go's
// side, with sender index local and a valid MAC1 for the peer.
func (f *translatorFixture) handshake(typ Type, local uint32) []byte {
	size := InitiationSize
	if typ == Response {
		size = ResponseSize
	}
	m := make([]byte, size)
	for i := OffsetSender + 4; i < size-2*MACSize; i++ {
		m[i] = byte(f.rng.Uint32())
	}
	m[0] = byte(typ)
	binary.LittleEndian.PutUint32(m[OffsetSender:], local)
	SetMAC1(&f.keys.MAC1, m)
	return m
}

// fromPeer returns a message of type typ the peer sends to index idx; a
// response gets a valid MAC1 for the service key.
func (f *translatorFixture) fromPeer(typ Type, idx uint32) []byte {
	size := map[Type]int{Response: ResponseSize, CookieReply: CookieReplySize, Transport: 80}[typ]
	m := make([]byte, size)
	for i := range m {
		m[i] = byte(f.rng.Uint32())
	}
	m[0], m[1], m[2], m[3] = byte(typ), 0, 0, 0
	binary.LittleEndian.PutUint32(m[receiverOffset(typ):], idx)
	if typ == Response {
		clear(m[size-MACSize:])
		SetMAC1(&f.svcMAC1, m)
	}
	return m
}

// outgoing runs Outgoing on a fresh handshake message and returns the tagged
// index it got.
func (f *translatorFixture) outgoing(tb testing.TB, local uint32) uint32 {
	tb.Helper()
	m := f.handshake(Initiation, local)
	if !f.tr.Outgoing(m, &f.keys) {
		tb.Fatalf("Outgoing(local %#x) changed nothing", local)
	}
	idx, _ := Sender(m)
	return idx
}

// diffOutside reports the first byte outside the allowed ranges [lo, hi)
// where a and b differ, or -1.
func diffOutside(a, b []byte, allowed ...[2]int) int {
next:
	for i := range a {
		if a[i] == b[i] {
			continue
		}
		for _, r := range allowed {
			if i >= r[0] && i < r[1] {
				continue next
			}
		}
		return i
	}
	return -1
}

func TestOutgoing(t *testing.T) {
	f := newFixture(t, TranslatorConfig{})
	for _, typ := range []Type{Initiation, Response} {
		t.Run(typ.String(), func(t *testing.T) {
			local := f.rng.Uint32()
			m := f.handshake(typ, local)
			orig := bytes.Clone(m)
			if !f.tr.Outgoing(m, &f.keys) {
				t.Fatal("Outgoing changed nothing")
			}
			idx, _ := Sender(m)
			if slot, ok := SlotOf(idx, f.key); !ok || slot != testSlot {
				t.Errorf("sender %#08x: SlotOf = %d %v, want %d true", idx, slot, ok, testSlot)
			}
			if !CheckMAC1(&f.keys.MAC1, m) {
				t.Error("MAC1 not valid for the peer after Outgoing")
			}
			mac1 := len(m) - 2*MACSize
			if i := diffOutside(m, orig, [2]int{OffsetSender, OffsetSender + 4}, [2]int{mac1, mac1 + MACSize}); i >= 0 {
				t.Errorf("byte %d changed", i)
			}
			// The same wireguard-go index keeps its tagged index.
			again := f.handshake(typ, local)
			f.tr.Outgoing(again, &f.keys)
			if got, _ := Sender(again); got != idx {
				t.Errorf("second message from local %#x: got %#08x, want %#08x", local, got, idx)
			}
		})
	}
}

func TestOutgoingLeavesAlone(t *testing.T) {
	f := newFixture(t, TranslatorConfig{})
	other := NewPeerKeys(newKeyPair(t).pub)
	withMAC2 := f.handshake(Response, 1)
	withMAC2[len(withMAC2)-1] = 1
	for _, tc := range []struct {
		name string
		msg  []byte
		keys *PeerKeys
	}{
		{"cookie reply", f.fromPeer(CookieReply, 1), &f.keys},
		{"transport", f.fromPeer(Transport, 1), &f.keys},
		{"short initiation", f.handshake(Initiation, 1)[:100], &f.keys},
		{"wrong peer", f.handshake(Initiation, 2), &other},
		{"nil keys", f.handshake(Initiation, 3), nil},
		{"MAC2", withMAC2, &f.keys},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := bytes.Clone(tc.msg)
			if f.tr.Outgoing(tc.msg, tc.keys) {
				t.Error("Outgoing changed the message")
			}
			if !bytes.Equal(tc.msg, orig) {
				t.Error("Outgoing returned false but modified the message")
			}
		})
	}
	st := f.tr.Stats()
	if st.WrongKey != 1 || st.SkippedMAC2 != 1 || st.Tagged != 0 || st.Entries != 0 {
		t.Errorf("stats: got %+v, want WrongKey 1, SkippedMAC2 1, nothing tagged", st)
	}
}

func TestIncoming(t *testing.T) {
	f := newFixture(t, TranslatorConfig{})
	const local = 0x1234abcd
	idx := f.outgoing(t, local)
	for _, typ := range []Type{Transport, Response} {
		t.Run(typ.String(), func(t *testing.T) {
			m := f.fromPeer(typ, idx)
			orig := bytes.Clone(m)
			if !f.tr.Incoming(m) {
				t.Fatal("Incoming did not translate")
			}
			off := receiverOffset(typ)
			if got := binary.LittleEndian.Uint32(m[off:]); got != local {
				t.Errorf("receiver: got %#08x, want %#08x", got, local)
			}
			allowed := [][2]int{{off, off + 4}}
			if typ == Response {
				allowed = append(allowed, [2]int{OffsetResponseMAC1, OffsetResponseMAC2})
				if !CheckMAC1(&f.svcMAC1, m) {
					t.Error("translated response's MAC1 is not valid for the service key")
				}
			}
			if i := diffOutside(m, orig, allowed...); i >= 0 {
				t.Errorf("byte %d changed", i)
			}
		})
	}

	otherSlot := Tag(testSlot+1, idx, f.key)
	unknown := Tag(testSlot, idx+1, f.key)
	badMAC := f.fromPeer(Response, idx)
	badMAC[OffsetResponseMAC1] ^= 1
	stamped := f.fromPeer(Response, idx)
	stamped[1] = 9
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"other slot", f.fromPeer(Transport, otherSlot)},
		{"untagged", f.fromPeer(Transport, idx&0x00ffffff)},
		{"bad check", f.fromPeer(Transport, idx^1<<20)},
		{"unknown index", f.fromPeer(Transport, unknown)},
		{"initiation", f.handshake(Initiation, idx)},
		{"short transport", f.fromPeer(Transport, idx)[:31]},
		{"response with bad MAC1", badMAC},
		{"stamped response", stamped},
		{"cookie reply not sealed to our MAC1", f.fromPeer(CookieReply, idx)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := bytes.Clone(tc.msg)
			if f.tr.Incoming(tc.msg) {
				t.Error("Incoming translated it")
			}
			if !bytes.Equal(tc.msg, orig) {
				t.Error("Incoming returned false but modified the message")
			}
		})
	}
	st := f.tr.Stats()
	want := TranslatorStats{Entries: 1, Tagged: 1, Translated: 2, NotOurs: 3, Unknown: 1, Rejected: 3}
	if st != want {
		t.Errorf("stats: got %+v, want %+v", st, want)
	}
}

// TestCookieReplyResealed drives wireguard-go's own cookie code: the node's
// CookieGenerator MACs a message, Outgoing tags it, the peer's CookieChecker
// answers with a cookie reply sealed to the MAC1 it saw, Incoming translates
// it, and the node's CookieGenerator must accept it. It then puts a MAC2 on
// the next message, which Outgoing must leave alone.
func TestCookieReplyResealed(t *testing.T) {
	f := newFixture(t, TranslatorConfig{})
	var nodeGen device.CookieGenerator // the node's peer state for the client
	nodeGen.Init(device.NoisePublicKey(f.peer.pub))
	var peerChk device.CookieChecker // the client's own
	peerChk.Init(device.NoisePublicKey(f.peer.pub))

	const local = 0x0badcafe
	m := f.handshake(Initiation, local)
	clear(m[len(m)-2*MACSize:])
	nodeGen.AddMacs(m)
	if !f.tr.Outgoing(m, &f.keys) {
		t.Fatal("Outgoing changed nothing")
	}
	if !peerChk.CheckMAC1(m) {
		t.Fatal("the peer rejects the translated MAC1")
	}
	tagged, _ := Sender(m)
	reply, err := peerChk.CreateReply(m, tagged, []byte{192, 0, 2, 1, 0x12, 0x34})
	if err != nil {
		t.Fatal(err)
	}
	wire := make([]byte, CookieReplySize)
	wire[0] = byte(CookieReply)
	binary.LittleEndian.PutUint32(wire[OffsetReceiver:], reply.Receiver)
	copy(wire[OffsetCookieNonce:], reply.Nonce[:])
	copy(wire[OffsetCookie:], reply.Cookie[:])
	parse := func(b []byte) *device.MessageCookieReply {
		var r device.MessageCookieReply
		r.Type = binary.LittleEndian.Uint32(b)
		r.Receiver = binary.LittleEndian.Uint32(b[OffsetReceiver:])
		copy(r.Nonce[:], b[OffsetCookieNonce:])
		copy(r.Cookie[:], b[OffsetCookie:])
		return &r
	}

	// Translating the index alone is not enough: the cookie is sealed to the
	// MAC1 the peer saw, not the one wireguard-go remembers.
	indexOnly := bytes.Clone(wire)
	binary.LittleEndian.PutUint32(indexOnly[OffsetReceiver:], local)
	if nodeGen.ConsumeReply(parse(indexOnly)) {
		t.Fatal("wireguard-go consumed a cookie sealed to the translated MAC1")
	}

	orig := bytes.Clone(wire)
	if !f.tr.Incoming(wire) {
		t.Fatalf("Incoming did not translate the cookie reply (stats %+v)", f.tr.Stats())
	}
	if i := diffOutside(wire, orig, [2]int{OffsetReceiver, OffsetReceiver + 4}, [2]int{OffsetCookie, CookieReplySize}); i >= 0 {
		t.Errorf("byte %d changed", i)
	}
	r := parse(wire)
	if r.Receiver != local {
		t.Errorf("receiver: got %#08x, want %#08x", r.Receiver, local)
	}
	if !nodeGen.ConsumeReply(r) {
		t.Fatal("wireguard-go rejects the resealed cookie reply")
	}

	next := f.handshake(Initiation, local+1)
	clear(next[len(next)-2*MACSize:])
	nodeGen.AddMacs(next)
	if !HasMAC2(next) {
		t.Fatal("wireguard-go did not use the cookie")
	}
	if f.tr.Outgoing(next, &f.keys) {
		t.Error("Outgoing translated a message with a MAC2")
	}
	if st := f.tr.Stats(); st.SkippedMAC2 != 1 {
		t.Errorf("SkippedMAC2: got %d, want 1", st.SkippedMAC2)
	}
}

// TestResponseToWireGuard checks a translated response against the node's
// wireguard-go CookieChecker, which is what drops responses with a bad MAC1.
func TestResponseToWireGuard(t *testing.T) {
	f := newFixture(t, TranslatorConfig{})
	var nodeChk device.CookieChecker
	nodeChk.Init(device.NoisePublicKey(f.service.pub))
	var peerGen device.CookieGenerator // the client's peer state for the node
	peerGen.Init(device.NoisePublicKey(f.service.pub))

	idx := f.outgoing(t, 42)
	m := f.fromPeer(Response, idx)
	clear(m[len(m)-2*MACSize:])
	peerGen.AddMacs(m)
	if !nodeChk.CheckMAC1(m) {
		t.Fatal("fixture: untranslated response fails MAC1")
	}
	if !f.tr.Incoming(m) {
		t.Fatal("Incoming did not translate")
	}
	if !nodeChk.CheckMAC1(m) {
		t.Fatal("wireguard-go rejects the translated response's MAC1")
	}
}

func TestTranslatorFull(t *testing.T) {
	f := newFixture(t, TranslatorConfig{MaxEntries: 2})
	f.outgoing(t, 1)
	f.outgoing(t, 2)
	f.outgoing(t, 1) // a known index needs no room
	m := f.handshake(Response, 3)
	orig := bytes.Clone(m)
	if f.tr.Outgoing(m, &f.keys) || !bytes.Equal(m, orig) {
		t.Fatal("Outgoing translated a third index into a table of two")
	}
	if st := f.tr.Stats(); st.Full != 1 || st.Entries != 2 {
		t.Errorf("stats: got %+v, want Full 1, Entries 2", st)
	}
	f.tr.Sweep(time.Now().Add(DefaultExpiry + time.Minute))
	f.outgoing(t, 3)
}

func TestSweep(t *testing.T) {
	f := newFixture(t, TranslatorConfig{})
	start := time.Now()
	idle := f.outgoing(t, 1)
	busy := f.outgoing(t, 2)
	use := func(idx uint32) bool { return f.tr.Incoming(f.fromPeer(Transport, idx)) }

	if n := f.tr.Sweep(start.Add(DefaultExpiry - time.Second)); n != 0 {
		t.Fatalf("sweep before the expiry removed %d", n)
	}
	use(busy)
	if n := f.tr.Sweep(start.Add(DefaultExpiry + time.Second)); n != 1 {
		t.Fatalf("sweep after the expiry removed %d, want 1 (the idle one)", n)
	}
	if use(idle) {
		t.Error("expired index still translates")
	}
	if !use(busy) {
		t.Error("used index was removed")
	}
	// busy was seen used at the second sweep: it is idle from then on.
	second := start.Add(DefaultExpiry + time.Second)
	f.tr.Sweep(second.Add(time.Minute)) // clears the flag set just above
	if n := f.tr.Sweep(second.Add(time.Minute + DefaultExpiry - time.Second)); n != 0 {
		t.Fatalf("removed %d before its idle time reached the expiry", n)
	}
	if n := f.tr.Sweep(second.Add(time.Minute + DefaultExpiry)); n != 1 {
		t.Fatalf("removed %d, want 1", n)
	}
	st := f.tr.Stats()
	if st.Entries != 0 || st.Expired != 2 || st.Unknown != 1 {
		t.Errorf("stats: got %+v, want no entries, 2 expired, 1 unknown", st)
	}
	// A forgotten wireguard-go index that shows up again gets a new mapping.
	again := f.outgoing(t, 1)
	m := f.fromPeer(Transport, again)
	if !f.tr.Incoming(m) || binary.LittleEndian.Uint32(m[OffsetReceiver:]) != 1 {
		t.Error("re-created mapping does not translate back")
	}
}

func TestNewTranslatorRejects(t *testing.T) {
	pub := newKeyPair(t).pub
	for _, tc := range []struct {
		name string
		cfg  TranslatorConfig
	}{
		{"slot 0", TranslatorConfig{PublicKey: pub}},
		{"zero public key", TranslatorConfig{Slot: 1}},
		{"short expiry", TranslatorConfig{Slot: 1, PublicKey: pub, Expiry: time.Minute}},
		{"huge table", TranslatorConfig{Slot: 1, PublicKey: pub, MaxEntries: MaxEntries + 1}},
		{"negative table", TranslatorConfig{Slot: 1, PublicKey: pub, MaxEntries: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewTranslator(tc.cfg); err == nil {
				t.Error("NewTranslator accepted it")
			}
		})
	}
}

func TestIncomingAllocs(t *testing.T) {
	f := newFixture(t, TranslatorConfig{})
	idx := f.outgoing(t, 99)
	m := f.fromPeer(Transport, idx)
	if n := testing.AllocsPerRun(1000, func() {
		binary.LittleEndian.PutUint32(m[OffsetReceiver:], idx)
		if !f.tr.Incoming(m) {
			t.Fatal("not translated")
		}
	}); n != 0 {
		t.Errorf("Incoming(transport): got %v allocations, want 0", n)
	}
}

// TestTranslatorConcurrent runs Outgoing, Incoming, Sweep and Stats from many
// goroutines (for -race) and checks that every mapping translates back to
// its own index.
func TestTranslatorConcurrent(t *testing.T) {
	f := newFixture(t, TranslatorConfig{})
	const workers, perWorker = 8, 200
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				f.tr.Sweep(time.Now())
				f.tr.Stats()
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 0))
			keys := f.keys
			for i := range perWorker {
				local := uint32(w)<<16 | uint32(i)
				m := make([]byte, InitiationSize)
				m[0] = byte(Initiation)
				binary.LittleEndian.PutUint32(m[OffsetSender:], local)
				SetMAC1(&keys.MAC1, m)
				if !f.tr.Outgoing(m, &keys) {
					t.Errorf("Outgoing(%#x) changed nothing", local)
					return
				}
				idx, _ := Sender(m)
				for range 5 {
					d := make([]byte, 48)
					d[0] = byte(Transport)
					binary.LittleEndian.PutUint32(d[OffsetReceiver:], idx)
					if !f.tr.Incoming(d) {
						t.Errorf("Incoming(%#08x) not translated", idx)
						return
					}
					if got := binary.LittleEndian.Uint32(d[OffsetReceiver:]); got != local {
						t.Errorf("Incoming(%#08x): got %#x, want %#x", idx, got, local)
						return
					}
					junk := make([]byte, 48)
					junk[0] = byte(Transport)
					binary.LittleEndian.PutUint32(junk[OffsetReceiver:], rng.Uint32())
					f.tr.Incoming(junk)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if st := f.tr.Stats(); st.Entries != workers*perWorker || st.Tagged != workers*perWorker {
		t.Errorf("stats: got %+v, want %d entries", st, workers*perWorker)
	}
}

// benchEntries is the table size the Incoming benchmarks run with.
const benchEntries = 1 << 14

func benchFixture(b *testing.B) (*translatorFixture, [][]byte) {
	f := newFixture(b, TranslatorConfig{})
	msgs := make([][]byte, benchEntries)
	for i := range msgs {
		idx := f.outgoing(b, uint32(i))
		msgs[i] = f.fromPeer(Transport, idx)
	}
	return f, msgs
}

func BenchmarkIncoming(b *testing.B) {
	f, msgs := benchFixture(b)
	idxs := make([]uint32, len(msgs))
	for i, m := range msgs {
		idxs[i], _ = Receiver(m)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		m := make([]byte, 64)
		m[0] = byte(Transport)
		i := 0
		for b.Loop() {
			binary.LittleEndian.PutUint32(m[OffsetReceiver:], idxs[i%len(idxs)])
			f.tr.Incoming(m)
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			m := make([]byte, 64)
			m[0] = byte(Transport)
			i := rand.IntN(len(idxs))
			for pb.Next() {
				binary.LittleEndian.PutUint32(m[OffsetReceiver:], idxs[i%len(idxs)])
				f.tr.Incoming(m)
				i++
			}
		})
	})
	b.Run("parallel-one-session", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			m := make([]byte, 64)
			m[0] = byte(Transport)
			for pb.Next() {
				binary.LittleEndian.PutUint32(m[OffsetReceiver:], idxs[0])
				f.tr.Incoming(m)
			}
		})
	})
	b.Run("not-ours", func(b *testing.B) {
		m := make([]byte, 64)
		m[0] = byte(Transport)
		binary.LittleEndian.PutUint32(m[OffsetReceiver:], 0x00123456)
		for b.Loop() {
			f.tr.Incoming(m)
		}
	})
}

func BenchmarkOutgoing(b *testing.B) {
	f := newFixture(b, TranslatorConfig{})
	m := f.handshake(Response, 1)
	wg := bytes.Clone(m)
	b.ReportAllocs()
	for b.Loop() {
		copy(m, wg)
		f.tr.Outgoing(m, &f.keys)
	}
}
