package server

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/server/wgmsg"
)

// taggedPair is a stock client and a server whose Bind tags indexes.
type taggedPair struct {
	devPair
	bind      *Bind
	clientPub wgtypes.Key
	key       uint32 // the index key

	mu       sync.Mutex
	indexes  []uint32 // receiver indexes of the client's data messages
	forwards []forwardCall
}

type forwardCall struct {
	cid clientid.ID
	src netip.AddrPort
	typ wgmsg.Type
}

const testSlot = 7

// newTaggedPair brings up the pair; forward, if set, decides what the
// server forwards.
func newTaggedPair(t *testing.T, forward func(clientid.ID) bool) *taggedPair {
	t.Helper()
	return newTaggedPairStamping(t, forward, 0)
}

// newTaggedPairStamping is newTaggedPair with a client that stamps stamp
// into every message it sends (0: none), as a WARP-style client does.
func newTaggedPairStamping(t *testing.T, forward func(clientid.ID) bool, stamp clientid.ID) *taggedPair {
	t.Helper()
	binds := bindtest.NewChannelBinds()
	ck, _ := wgtypes.GeneratePrivateKey()
	sk, _ := wgtypes.GeneratePrivateKey()
	tp := &taggedPair{clientPub: ck.PublicKey(), key: wgmsg.IndexKey(sk)}
	hexk := func(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }
	tp.clientTUN, tp.serverTUN = tuntest.NewChannelTUN(), tuntest.NewChannelTUN()
	quiet := device.NewLogger(device.LogLevelSilent, "")
	// The client's sends are seen by the server's receive hook below; the
	// client's own receive hook sees the server's messages.
	client := &sendHook{Bind: binds[0], fn: func(m []byte) {
		if stamp != 0 {
			b := stamp.Bytes()
			copy(m[1:4], b[:])
		}
		if wgmsg.Classify(m) == wgmsg.Transport {
			idx, _ := wgmsg.Receiver(m)
			tp.mu.Lock()
			tp.indexes = append(tp.indexes, idx)
			tp.mu.Unlock()
		}
	}}
	tp.bind = NewBind(binds[1])
	tp.client = device.NewDevice(tp.clientTUN.TUN(), client, quiet)
	tp.server = device.NewDevice(tp.serverTUN.TUN(), tp.bind, quiet)
	t.Cleanup(tp.client.Close)
	t.Cleanup(tp.server.Close)

	op, err := wgmsg.NewOpener(sk)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := wgmsg.NewTranslator(wgmsg.TranslatorConfig{Slot: testSlot, IndexKey: tp.key, PublicKey: op.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	const cid clientid.ID = 0x123456
	owner := func(static [32]byte) (clientid.ID, bool) { return cid, static == tp.clientPub }
	var fwd func(clientid.ID, netip.AddrPort, netip.Addr, []byte) bool
	if forward != nil {
		fwd = func(id clientid.ID, src netip.AddrPort, _ netip.Addr, msg []byte) bool {
			tp.mu.Lock()
			tp.forwards = append(tp.forwards, forwardCall{id, src, wgmsg.Classify(msg)})
			tp.mu.Unlock()
			return forward(id)
		}
	}
	tp.bind.hs.Store(newHandshakes(tr, op, owner, fwd))

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tp.server.IpcSet("private_key=" + hexk(sk) + "\nlisten_port=0\npublic_key=" + hexk(ck.PublicKey()) + "\nallowed_ip=1.0.0.1/32\n"))
	must(tp.server.Up())
	cfg, err := tp.server.IpcGet()
	must(err)
	port := regexp.MustCompile(`listen_port=(\d+)`).FindStringSubmatch(cfg)[1]
	must(tp.client.IpcSet("private_key=" + hexk(ck) + "\nlisten_port=0\npublic_key=" + hexk(sk.PublicKey()) + "\nallowed_ip=1.0.0.2/32\nendpoint=127.0.0.1:" + port + "\n"))
	must(tp.client.Up())
	return tp
}

// sendHook calls fn on every message the wrapped Bind sends.
type sendHook struct {
	conn.Bind
	fn func(msg []byte)
}

func (s *sendHook) Send(bufs [][]byte, ep conn.Endpoint) error {
	for _, b := range bufs {
		s.fn(b)
	}
	return s.Bind.Send(bufs, ep)
}

// dataIndexes returns the receiver indexes of the client's data messages
// so far, and forgets them.
func (tp *taggedPair) dataIndexes() []uint32 {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	out := tp.indexes
	tp.indexes = nil
	return out
}

func (tp *taggedPair) checkTagged(t *testing.T, when string) {
	t.Helper()
	idx := tp.dataIndexes()
	if len(idx) == 0 {
		t.Fatalf("%s: the client sent no data", when)
	}
	for _, i := range idx {
		if slot, ok := wgmsg.SlotOf(i, tp.key); !ok || slot != testSlot {
			t.Fatalf("%s: client data to index %#08x: slot %d, %v; want tagged with slot %d", when, i, slot, ok, testSlot)
		}
	}
}

// TestIndexesTagged: a stock client talking to a server whose Bind tags
// indexes only ever addresses the server's tagged indexes, across the
// client's handshake and one the server starts.
func TestIndexesTagged(t *testing.T) {
	tp := newTaggedPair(t, nil)
	if !tp.ping(t) {
		t.Fatal("no ping through a tagging server")
	}
	tp.checkTagged(t, "first session")

	// The server starts the next handshake: its current keypair gone, its
	// next data packet makes it initiate.
	var pub device.NoisePublicKey
	copy(pub[:], tp.clientPub[:])
	peer := tp.server.LookupPeer(pub)
	if peer == nil {
		t.Fatal("server lost its peer")
	}
	peer.ExpireCurrentKeypairs()
	src, dst := netip.MustParseAddr("1.0.0.2"), netip.MustParseAddr("1.0.0.1")
	tp.serverTUN.Outbound <- tuntest.Ping(dst, src)
	deadline := time.Now().Add(10 * time.Second)
	for tp.bind.hs.Load().serverInitiated.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !tp.ping(t) {
		t.Fatal("no ping after a server-initiated handshake")
	}
	tp.checkTagged(t, "server-initiated session")

	st := tp.bind.hs.Load().status(testSlot)
	if st.ServerInitiated == 0 || st.Tagged < 2 || st.Opened == 0 || st.Translated == 0 {
		t.Errorf("status %+v: want a server initiation, ≥2 tagged messages, an opened initiation and translated data", st)
	}
	if st.NoKeys != 0 || st.WrongKey != 0 {
		t.Errorf("status %+v: a handshake left untagged", st)
	}
}

// TestIndexesForward: the initiation of a client that another node owns is
// handed to Forward and this node sends no response.
func TestIndexesForward(t *testing.T) {
	tp := newTaggedPair(t, func(clientid.ID) bool { return true })
	tp.clientTUN.Outbound <- tuntest.Ping(netip.MustParseAddr("1.0.0.2"), netip.MustParseAddr("1.0.0.1"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		tp.mu.Lock()
		n := len(tp.forwards)
		tp.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the initiation was not forwarded")
		}
		time.Sleep(10 * time.Millisecond)
	}
	tp.mu.Lock()
	f := tp.forwards[0]
	tp.mu.Unlock()
	if f.cid != 0x123456 || f.typ != wgmsg.Initiation || !f.src.IsValid() {
		t.Errorf("forwarded %+v; want ClientID 0x123456, an initiation, a source", f)
	}
	select {
	case <-tp.serverTUN.Inbound:
		t.Fatal("the server completed a handshake it forwarded")
	case <-time.After(500 * time.Millisecond):
	}
	if st := tp.bind.hs.Load().status(testSlot); st.Forwarded == 0 || st.Tagged != 0 {
		t.Errorf("status %+v: want forwarded and nothing tagged", st)
	}
}

// TestIndexesStampedNotForwarded: a stamped initiation was already routed
// by the XDP front by its ClientID: the node serves it where it landed and
// never forwards it again, whatever its own view of the owner (two fronts
// disagreeing for a moment would send it to and fro).
func TestIndexesStampedNotForwarded(t *testing.T) {
	tp := newTaggedPairStamping(t, func(clientid.ID) bool { return true }, 0x123456)
	if !tp.ping(t) {
		t.Fatal("no ping: the stamped client's handshake was not served here")
	}
	tp.mu.Lock()
	n := len(tp.forwards)
	tp.mu.Unlock()
	if n != 0 {
		t.Errorf("a stamped initiation was handed to Forward %d times", n)
	}
}

// TestIndexesForwardDeclined: when Forward declines (this node owns the
// client), the response is tagged and sent.
func TestIndexesForwardDeclined(t *testing.T) {
	tp := newTaggedPair(t, func(clientid.ID) bool { return false })
	if !tp.ping(t) {
		t.Fatal("no ping when the owner is this node")
	}
	tp.checkTagged(t, "owner")
}

// TestTokenBucket: the open limiter allows its burst, then its rate.
func TestTokenBucket(t *testing.T) {
	b := tokenBucket{rate: 10, burst: 3, tokens: 3}
	now := time.Unix(1000, 0)
	for i := range 3 {
		if !b.take(now) {
			t.Fatalf("take %d of the burst refused", i)
		}
	}
	if b.take(now) {
		t.Fatal("take past the burst allowed")
	}
	if !b.take(now.Add(100 * time.Millisecond)) {
		t.Fatal("a token did not come back after 1/rate")
	}
	if b.take(now.Add(100 * time.Millisecond)) {
		t.Fatal("two tokens from one interval")
	}
}

// newTestHandshakes is a handshakes with fresh keys, owning nothing.
func newTestHandshakes(t testing.TB) *handshakes {
	t.Helper()
	sk, _ := wgtypes.GeneratePrivateKey()
	op, err := wgmsg.NewOpener(sk)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := wgmsg.NewTranslator(wgmsg.TranslatorConfig{Slot: testSlot, IndexKey: wgmsg.IndexKey(sk), PublicKey: op.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	return newHandshakes(tr, op, func([32]byte) (clientid.ID, bool) { return 1, true },
		func(clientid.ID, netip.AddrPort, netip.Addr, []byte) bool { return false })
}

// TestBindReceiveAllocsTagged: with tagged indexes on, receiving data and
// initiations still allocates nothing.
func TestBindReceiveAllocsTagged(t *testing.T) {
	b := NewBind(nil)
	b.hs.Store(newTestHandshakes(t))
	msgs := make([][]byte, 16)
	for i := range msgs {
		msgs[i] = make([]byte, 148)
		rand.Read(msgs[i])
		msgs[i][0] = byte(1 + 3*(i%2)) // initiations and data
		msgs[i][1], msgs[i][2], msgs[i][3] = 0, 0, 0
	}
	sizes := make([]int, len(msgs))
	eps := make([]conn.Endpoint, len(msgs))
	for i := range eps {
		eps[i] = &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("203.0.113.7:4000")}
	}
	fn := b.wrap(func(packets [][]byte, sz []int, ep []conn.Endpoint) (int, error) {
		for i := range packets {
			sz[i] = len(packets[i])
		}
		return len(packets), nil
	})
	if allocs := testing.AllocsPerRun(100, func() { fn(msgs, sizes, eps) }); allocs != 0 {
		t.Errorf("receive allocated %.1f times per batch, want 0", allocs)
	}
	if st := b.hs.Load().status(testSlot); st.NotOurs == 0 {
		t.Errorf("data messages did not reach the translator: %+v", st)
	}
}

// FuzzHandshakes feeds arbitrary messages to both directions of the
// Bind's index translation: nothing may panic, and a message that is not
// a handshake message must go out unchanged.
func FuzzHandshakes(f *testing.F) {
	for _, n := range []int{0, 1, 32, 64, 92, 148, 200} {
		for _, typ := range []byte{1, 2, 3, 4, 9} {
			m := make([]byte, n)
			if n > 0 {
				m[0] = typ
			}
			f.Add(m, true)
		}
	}
	h := newTestHandshakes(f)
	ep := &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("203.0.113.7:4000")}
	f.Fuzz(func(t *testing.T, msg []byte, in bool) {
		if in {
			h.received(msg, ep, false)
			return
		}
		typ := wgmsg.Classify(msg)
		before := slices.Clone(msg)
		send := h.sending(msg, ep)
		if typ != wgmsg.Initiation && typ != wgmsg.Response && (!send || !bytes.Equal(before, msg)) {
			t.Fatalf("a %v message was changed or withheld", typ)
		}
	})
}
