package wgmsg

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"

	"github.com/wedge-edge/wedge/internal/testutil"
)

// Two stock wireguard-go devices in memory:
//
//	client device ── hooks: record ──┐                 ┌── hooks: Translator ── server device
//	 (plain wg)                      └─ ChannelBinds ──┘    Incoming on receive,
//	                                                        Outgoing on send
//
// The server's hooks are the node Bind's job: the client must only ever see
// tagged sender indexes, and both sides must keep working across handshakes
// started by either side.

// translatedPair is a pair whose server translates, with what both hooks saw.
type translatedPair struct {
	*pair
	tr      *Translator
	key     uint32
	opener  *Opener
	keys    PeerKeys // the client's, as the server Bind would hold them
	started atomic.Int32

	mu          sync.Mutex
	senders     []uint32 // sender indexes of the server's messages, as the client saw them
	opened      int      // client initiations the server opened
	openErrs    []error
	untagged    int // server handshake messages Outgoing left alone
	respIn      int // responses the server translated (it initiated)
	respRaw     int // responses to the server that were not to a tagged index
	respAtCl    int // responses the client received (it initiated)
	cookieIn    int // cookie replies to a tagged index the server translated
	junkCookies int // cookie replies to junk, seen by the server
}

func newTranslatedPair(t *testing.T) *translatedPair {
	t.Helper()
	service, client := newKeyPair(t), newKeyPair(t)
	tp := &translatedPair{key: IndexKey(service.priv), keys: NewPeerKeys(client.pub)}
	var err error
	tp.tr, err = NewTranslator(TranslatorConfig{Slot: testSlot, IndexKey: tp.key, PublicKey: service.pub})
	if err != nil {
		t.Fatal(err)
	}
	if tp.opener, err = NewOpener(service.priv); err != nil {
		t.Fatal(err)
	}
	clientHooks := &hookBind{recv: func(m []byte) {
		switch Classify(m) {
		case Initiation, Response:
			idx, _ := Sender(m)
			if idx == junkSender {
				return // TestCookieFromLoadedClient's, not the server's
			}
			tp.mu.Lock()
			tp.senders = append(tp.senders, idx)
			if Classify(m) == Response {
				tp.respAtCl++
			}
			tp.mu.Unlock()
		}
	}}
	serverHooks := &hookBind{
		recv: func(m []byte) {
			typ := Classify(m)
			if typ == Initiation {
				static, err := tp.opener.Open(m)
				tp.mu.Lock()
				if err != nil || static != client.pub {
					tp.openErrs = append(tp.openErrs, err)
				} else {
					tp.opened++
				}
				tp.mu.Unlock()
			}
			ours := tp.tr.Incoming(m)
			tp.mu.Lock()
			switch {
			case typ == Response && ours:
				tp.respIn++
			case typ == Response:
				tp.respRaw++
			case typ == CookieReply && ours:
				tp.cookieIn++
			case typ == CookieReply && binary.LittleEndian.Uint32(m[OffsetReceiver:]) == junkSender:
				tp.junkCookies++
			}
			tp.mu.Unlock()
		},
		send: func(m []byte) {
			switch Classify(m) {
			case Initiation, Response:
				if !tp.tr.Outgoing(m, &tp.keys) {
					tp.mu.Lock()
					tp.untagged++
					tp.mu.Unlock()
				}
			}
		},
	}
	tp.pair = newPair(t, client, service, clientHooks, serverHooks)
	return tp
}

// handshakes counts completed handshakes as seen on the wire: responses
// reaching their initiator.
func (tp *translatedPair) handshakes() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.respIn + tp.respRaw + tp.respAtCl
}

// rekeyAndWait makes one side handshake and waits for the response.
func (tp *translatedPair) rekeyAndWait(t *testing.T, fromServer bool) {
	t.Helper()
	// wireguard-go refuses an initiation less than 20 ms after the last one
	// it consumed from the same peer, or with the same TAI64N timestamp,
	// which has a resolution of 2^24 ns.
	time.Sleep(40 * time.Millisecond)
	before := tp.handshakes()
	tp.rekey(fromServer)
	testutil.WaitFor(t, 5*time.Second, "the handshake", func() bool { return tp.handshakes() > before })
}

func (tp *translatedPair) checkSenders(t *testing.T, want int) {
	t.Helper()
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if len(tp.senders) < want {
		t.Errorf("client saw %d server handshake messages, want at least %d", len(tp.senders), want)
	}
	for _, idx := range tp.senders {
		if slot, ok := SlotOf(idx, tp.key); !ok || slot != testSlot {
			t.Errorf("client got sender index %#08x: SlotOf = %d %v, want %d true", idx, slot, ok, testSlot)
		}
	}
}

func TestTranslatedSessions(t *testing.T) {
	tp := newTranslatedPair(t)
	tp.ping(t, true) // the client initiates
	tp.ping(t, false)

	const rekeys = 6
	for i := range rekeys {
		fromServer := i%2 == 0
		tp.rekeyAndWait(t, fromServer)
		tp.ping(t, true)
		tp.ping(t, false)
	}

	tp.checkSenders(t, 1+rekeys)
	tp.mu.Lock()
	if tp.untagged != 0 {
		t.Errorf("%d server handshake messages left untranslated", tp.untagged)
	}
	if tp.respRaw != 0 {
		t.Errorf("server got %d responses to untagged indexes, want 0", tp.respRaw)
	}
	if tp.respIn != rekeys/2 {
		t.Errorf("server translated %d responses, want %d (one per handshake it started)", tp.respIn, rekeys/2)
	}
	if tp.opened != 1+rekeys/2 || len(tp.openErrs) != 0 {
		t.Errorf("server opened %d client initiations (errors %v), want %d", tp.opened, tp.openErrs, 1+rekeys/2)
	}
	tp.mu.Unlock()
	st := tp.tr.Stats()
	if st.Unknown != 0 || st.Rejected != 0 || st.WrongKey != 0 || st.SkippedMAC2 != 0 || st.Full != 0 || st.StaleMAC2 != 0 {
		t.Errorf("stats: %+v", st)
	}
	if st.Tagged < 1+rekeys || st.Translated == 0 {
		t.Errorf("stats: %+v, want at least %d tagged and some translated", st, 1+rekeys)
	}
}

// junkSender is the sender index of the junk initiations that put the
// client under load; untagged, so the server passes their cookie replies on.
const junkSender = 1

// TestCookieFromLoadedClient drives wireguard-go's cookie path through the
// Translator. Junk initiations with a valid MAC1 put the client under load
// (wireguard-go: 128 queued handshake messages); it then answers the
// server's initiation with a cookie reply to the tagged sender index. The
// server wireguard-go can only consume it resealed (TestCookieReplyResealed),
// and shows that it did by putting a MAC2 on its next initiation, which
// Outgoing must leave untranslated; the handshake then completes on
// wireguard-go's own index.
func TestCookieFromLoadedClient(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a device")
	}
	tp := newTranslatedPair(t)
	tp.ping(t, true)

	clientMAC1 := MAC1Key(tp.clientKey.pub)
	junk := make([][]byte, 2000)
	for i := range junk {
		m := make([]byte, InitiationSize)
		m[0] = byte(Initiation)
		binary.LittleEndian.PutUint32(m[OffsetSender:], junkSender)
		for j := OffsetInitiationEphemeral; j < OffsetInitiationMAC1; j++ {
			m[j] = byte(i*31 + j)
		}
		SetMAC1(&clientMAC1, m)
		junk[i] = m
	}
	// Straight into the client, past the server's hooks: to both of the
	// client's receive channels, as the server's endpoint for the client
	// may be either.
	for _, ep := range []conn.Endpoint{bindtest.ChannelEndpoint(2), bindtest.ChannelEndpoint(4)} {
		if err := tp.serverInner.Send(junk[:len(junk)/2], ep); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 5*time.Second, "the client to answer junk with cookies", func() bool {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		return tp.junkCookies > 0
	})

	time.Sleep(40 * time.Millisecond)
	tp.rekey(true)
	testutil.WaitFor(t, 5*time.Second, "a cookie reply to the server's tagged index", func() bool {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		return tp.cookieIn > 0
	})
	// wireguard-go consumes the reply in a handshake worker; until then
	// its next initiation has no MAC2 and draws another cookie. Retry.
	testutil.WaitFor(t, 5*time.Second, "an initiation with a MAC2", func() bool {
		if tp.tr.Stats().SkippedMAC2 > 0 {
			return true
		}
		time.Sleep(30 * time.Millisecond)
		tp.rekey(true)
		return false
	})
	tp.ping(t, false)
	tp.ping(t, true)

	st := tp.tr.Stats()
	if st.Rejected != 0 {
		t.Errorf("stats: %+v, want nothing rejected", st)
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.respRaw == 0 {
		t.Error("no response on wireguard-go's own index: the MAC2 handshake did not complete")
	}
	// The client saw the MAC2 initiation's untranslated index; every other
	// index it saw is tagged.
	var tagged int
	for _, idx := range tp.senders {
		if slot, ok := SlotOf(idx, tp.key); ok && slot == testSlot {
			tagged++
		}
	}
	if tagged < len(tp.senders)-int(st.SkippedMAC2) {
		t.Errorf("client saw %d tagged of %d sender indexes with %d left untranslated", tagged, len(tp.senders), st.SkippedMAC2)
	}
}
