package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tai64n"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/server/registry"
	"github.com/wedge-edge/wedge/server/wgmsg"
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

// odLab is a node over in-memory binds and the wireguard-go clients that
// talk to it, one at a time, from 127.0.0.1:4 as the node sees them.
type odLab struct {
	n         *Node
	binds     [2]conn.Bind
	serverTUN *tuntest.ChannelTUN
	serverEP  conn.Endpoint // the node, as the client side addresses it
	clientEP  conn.Endpoint // the clients, as the node sees them

	mu    sync.Mutex
	inits [][]byte // initiations the clients sent
	sent  [][]byte // handshake messages the node sent
}

func newODLab(t *testing.T, opts ...func(*Config)) *odLab {
	t.Helper()
	l := &odLab{binds: bindtest.NewChannelBinds(), serverTUN: tuntest.NewChannelTUN()}
	hook := &sendHook{Bind: l.binds[1], fn: func(m []byte) {
		if len(m) > 0 && m[0] != msgTransport {
			l.mu.Lock()
			l.sent = append(l.sent, bytes.Clone(m))
			l.mu.Unlock()
		}
	}}
	l.n, _ = newTestNode(t, append([]func(*Config){func(c *Config) {
		c.Bind, c.TUN = hook, l.serverTUN.TUN()
	}}, opts...)...)
	cfg, err := l.n.dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	port := regexp.MustCompile(`listen_port=(\d+)`).FindStringSubmatch(cfg)[1]
	if l.serverEP, err = l.binds[0].ParseEndpoint("127.0.0.1:" + port); err != nil {
		t.Fatal(err)
	}
	l.clientEP = bindtest.ChannelEndpoint(4)
	return l
}

// client brings up a wireguard-go client with key ck towards the node.
func (l *odLab) client(t *testing.T, ck wgtypes.Key) (*device.Device, *tuntest.ChannelTUN) {
	t.Helper()
	tun := tuntest.NewChannelTUN()
	b := &sendHook{Bind: l.binds[0], fn: func(m []byte) {
		if wgmsg.Classify(m) == wgmsg.Initiation {
			l.mu.Lock()
			l.inits = append(l.inits, bytes.Clone(m))
			l.mu.Unlock()
		}
	}}
	d := device.NewDevice(tun.TUN(), b, device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(d.Close)
	hexk := func(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }
	if err := d.IpcSet("private_key=" + hexk(ck) + "\nlisten_port=0\npublic_key=" + hexk(l.n.PublicKey()) +
		"\nallowed_ip=0.0.0.0/0\nendpoint=" + l.serverEP.DstToString() + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := d.Up(); err != nil {
		t.Fatal(err)
	}
	return d, tun
}

// reaches sends one packet from registration c's client through tun and
// reports whether the node's netstack side got it within d.
func (l *odLab) reaches(tun *tuntest.ChannelTUN, c registry.Client, d time.Duration) bool {
	tun.Outbound <- tuntest.Ping(netip.MustParseAddr("192.0.2.9"), c.V4)
	select {
	case <-l.serverTUN.Inbound:
		return true
	case <-time.After(d):
		return false
	}
}

func (l *odLab) initiations() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]byte(nil), l.inits...)
}

// sentOf counts the handshake messages of type typ the node sent.
func (l *odLab) sentOf(typ wgmsg.Type) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := 0
	for _, m := range l.sent {
		if wgmsg.Classify(m) == typ {
			k++
		}
	}
	return k
}

func registerKey(t *testing.T, n *Node) (wgtypes.Key, registry.Client) {
	t.Helper()
	ck, _ := wgtypes.GeneratePrivateKey()
	c, err := n.Register(context.Background(), ck.PublicKey(), registry.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	return ck, c
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%s: not after 5 s", what)
		}
	}
}

// TestPeerOnDemandFirstHandshake: a registered client without a peer
// handshakes once (no retry) and its first packet passes; the peer it got
// has the registered addresses and survives the sweeps while it is used.
func TestPeerOnDemandFirstHandshake(t *testing.T) {
	l := newODLab(t)
	ck, c := registerKey(t, l.n)
	if hasPeer(l.n, c.PublicKey) {
		t.Fatal("the registration added a peer")
	}
	_, tun := l.client(t, ck)
	start := time.Now()
	if !l.reaches(tun, c, 4*time.Second) {
		t.Fatal("the client's first packet did not arrive")
	}
	t.Logf("first packet through %v after the client's start", time.Since(start))
	if got := len(l.initiations()); got != 1 {
		t.Fatalf("the client sent %d initiations, want 1 (the first handshake on the first try)", got)
	}
	if got := l.sentOf(wgmsg.Response); got != 1 {
		t.Fatalf("the node sent %d responses, want 1", got)
	}
	cfg, _ := l.n.dev.IpcGet()
	if !bytes.Contains([]byte(cfg), []byte("allowed_ip="+c.V4.String()+"/32")) ||
		!bytes.Contains([]byte(cfg), []byte("allowed_ip="+c.V6.String()+"/128")) {
		t.Fatalf("the peer lacks the registered addresses:\n%s", cfg)
	}
	s := l.n.door.status()
	if s.Held != 1 || s.Added != 1 || s.Opens != 1 || s.Unregistered != 0 {
		t.Fatalf("door after one client: %+v", s)
	}
	// Completed, so not unfinished; used, so not idle.
	l.n.sweepOnce(time.Now().Add(unfinishedOnDemand + time.Second))
	if !hasPeer(l.n, c.PublicKey) {
		t.Fatal("a peer whose handshake completed was removed as unfinished")
	}
	// Its next initiation (a rekey) from the same place costs an open and
	// adds nothing.
	if st := l.n.Status(); st.Clients != 1 || st.Active != 1 || len(st.Peers) != 1 {
		t.Fatalf("status: %d clients, %d active, %d peers listed", st.Clients, st.Active, len(st.Peers))
	}
}

// TestPeerOnDemandReplayAfterEviction: the initiation that added a peer,
// replayed after the peer was evicted, creates nothing; the client's own
// next handshake (a newer timestamp) is let in.
func TestPeerOnDemandReplayAfterEviction(t *testing.T) {
	l := newODLab(t)
	ck, c := registerKey(t, l.n)
	d1, tun := l.client(t, ck)
	if !l.reaches(tun, c, 4*time.Second) {
		t.Fatal("the client's first packet did not arrive")
	}
	captured := l.initiations()[0]
	l.n.sweepOnce(time.Now()) // the sweep sees the handshake
	l.n.peerMu.Lock()
	l.n.removePeerLocked(c.PublicKey, time.Now(), removedEvicted)
	l.n.peerMu.Unlock()
	if hasPeer(l.n, c.PublicKey) {
		t.Fatal("evicted peer still in the device")
	}
	responses := l.n.bind.responses.Load()
	for range 3 {
		if err := l.binds[0].Send([][]byte{captured}, l.serverEP); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the replays refused", func() bool { return l.n.door.st.refusedReplay.Load() == 3 })
	if hasPeer(l.n, c.PublicKey) || l.n.bind.responses.Load() != responses {
		t.Fatalf("a replayed initiation created a peer (%v) or a response (%d → %d)",
			hasPeer(l.n, c.PublicKey), responses, l.n.bind.responses.Load())
	}
	// The client itself comes back (a new device: wireguard-go paces its
	// own initiations 5 s apart) with a newer timestamp: TAI64N is
	// whitened to 2^24 ns, so one made within that of the captured one
	// would be equal, and refused by wireguard-go as well.
	d1.Close()
	time.Sleep(40 * time.Millisecond)
	_, tun = l.client(t, ck)
	if !l.reaches(tun, c, 4*time.Second) {
		t.Fatal("the client's handshake after the eviction was not let in")
	}
	if s := l.n.door.status(); s.Added != 2 || s.Removed[removedEvicted] != 1 || s.RefusedReplay != 3 || s.ReplayKeys != 1 {
		t.Fatalf("door: %+v", s)
	}
}

// TestPeerEvictionOrder: a full node evicts the peer idle the longest,
// then the next; when every peer is busy it refuses, and counts it.
func TestPeerEvictionOrder(t *testing.T) {
	n, _ := newTestNode(t, func(c *Config) { c.MaxPeers = 2 })
	n.door.sweepOff.Store(true) // the test drives the clock
	var cs []registry.Client
	for range 5 {
		_, c := registerKey(t, n)
		cs = append(cs, c)
	}
	t0 := time.Now()
	holdPeer(t, n, cs[0], cs[1])
	n.door.mu.Lock()
	n.door.held[cs[0].PublicKey].active = t0.Add(-50 * time.Second)
	n.door.held[cs[1].PublicKey].active = t0.Add(-40 * time.Second)
	for _, c := range cs[:2] {
		n.door.held[c.PublicKey].done = true
	}
	n.door.mu.Unlock()
	n.sweepOnce(t0)
	held := func() (out []int) {
		for i, c := range cs {
			if hasPeer(n, c.PublicKey) {
				out = append(out, i)
			}
		}
		return out
	}
	if err := n.addPeer(cs[2], t0, unfinishedOnDemand, 0); err != nil {
		t.Fatal(err)
	}
	if got := held(); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("after the third client the device holds %v, want [1 2] (0 idle longest)", got)
	}
	if err := n.addPeer(cs[3], t0, unfinishedOnDemand, 0); err != nil {
		t.Fatal(err)
	}
	if got := held(); len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Fatalf("after the fourth client the device holds %v, want [2 3]", got)
	}
	// Both just handshook: busy. The fifth is refused, and counted.
	if err := n.addPeer(cs[4], t0.Add(time.Second), unfinishedOnDemand, 0); err != ErrPeersFull {
		t.Fatalf("fifth client while every peer is busy: %v, want ErrPeersFull", err)
	}
	if got := held(); len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Fatalf("a refused client changed the device: %v", got)
	}
	// Once they are idle past peerBusy (the next sweep sees it), it gets in.
	n.sweepOnce(t0.Add(peerBusy + time.Second))
	if err := n.addPeer(cs[4], t0.Add(peerBusy+time.Second), unfinishedOnDemand, 0); err != nil {
		t.Fatalf("fifth client after the others went idle: %v", err)
	}
	s := n.door.status()
	if s.RefusedFull != 1 || s.Removed[removedEvicted] != 3 || s.Held != 2 {
		t.Fatalf("door: %+v; want 1 refused, 3 evicted, 2 held", s)
	}
	if c := n.Counters(); c.PeersAdded != 5 || c.PeersRemoved != 3 {
		t.Fatalf("counters: %d added, %d removed; want 5, 3", c.PeersAdded, c.PeersRemoved)
	}
}

// TestPeerIdleAndUnfinished: a peer idle for --peer-idle is removed, not
// before; a peer whose handshake never completes is removed after
// unfinishedOnDemand, not before.
func TestPeerIdleAndUnfinished(t *testing.T) {
	const idle = time.Minute
	n, _ := newTestNode(t, func(c *Config) { c.PeerIdle = idle })
	n.door.sweepOff.Store(true) // the test drives the clock
	_, used := registerKey(t, n)
	_, never := registerKey(t, n)
	t0 := time.Now()
	holdPeer(t, n, used, never)
	n.door.mu.Lock()
	n.door.held[used.PublicKey].done = true // as a sweep sees a handshake
	n.door.mu.Unlock()

	n.sweepOnce(t0.Add(unfinishedOnDemand - time.Second))
	if !hasPeer(n, never.PublicKey) || !hasPeer(n, used.PublicKey) {
		t.Fatal("a peer was removed before its time")
	}
	n.sweepOnce(t0.Add(unfinishedOnDemand + time.Second))
	if hasPeer(n, never.PublicKey) {
		t.Fatal("a peer whose handshake never completed stayed")
	}
	if !hasPeer(n, used.PublicKey) {
		t.Fatal("a peer with a handshake went as unfinished")
	}
	n.sweepOnce(t0.Add(idle - time.Second))
	if !hasPeer(n, used.PublicKey) {
		t.Fatal("a peer went before --peer-idle")
	}
	n.sweepOnce(t0.Add(idle + time.Second))
	if hasPeer(n, used.PublicKey) {
		t.Fatal("an idle peer stayed")
	}
	s := n.door.status()
	if s.Removed[removedUnfinished] != 1 || s.Removed[removedIdle] != 1 || s.Held != 0 {
		t.Fatalf("door: %+v", s)
	}
	// The registrations stay: the clients come back when they handshake.
	if !n.registered(used.PublicKey) || !n.registered(never.PublicKey) {
		t.Fatal("removing peers removed registrations")
	}
}

// TestPeerActivityDefersIdle: bytes moving (seen by the sweep) keep a peer.
func TestPeerActivityDefersIdle(t *testing.T) {
	n, _ := newTestNode(t, func(c *Config) { c.PeerIdle = time.Minute })
	n.door.sweepOff.Store(true) // the test drives the clock
	_, c := registerKey(t, n)
	t0 := time.Now()
	holdPeer(t, n, c)
	d := n.door
	drop, _ := d.sweep(t0.Add(50*time.Second), []peerState{{PublicKey: c.PublicKey, LastHandshake: t0, RxBytes: 100}})
	if len(drop) != 0 {
		t.Fatalf("dropped %v", drop)
	}
	if drop, _ := d.sweep(t0.Add(100*time.Second), []peerState{{PublicKey: c.PublicKey, LastHandshake: t0, RxBytes: 100}}); len(drop) != 0 {
		t.Fatalf("a peer with data 50 s ago dropped: %v", drop)
	}
	if drop, _ := d.sweep(t0.Add(111*time.Second), []peerState{{PublicKey: c.PublicKey, LastHandshake: t0, RxBytes: 100}}); drop[c.PublicKey] != removedIdle {
		t.Fatalf("a peer idle 61 s with --peer-idle 1m: %v", drop)
	}
}

// initiationFrom captures a genuine initiation of client ck towards the
// node, which the node never sees (a device whose packets go nowhere).
func initiationFrom(t testing.TB, ck wgtypes.Key, server wgtypes.Key) []byte {
	t.Helper()
	binds := bindtest.NewChannelBinds()
	got := make(chan []byte, 4)
	b := &sendHook{Bind: binds[0], fn: func(m []byte) {
		if wgmsg.Classify(m) == wgmsg.Initiation {
			select {
			case got <- bytes.Clone(m):
			default:
			}
		}
	}}
	tun := tuntest.NewChannelTUN()
	d := device.NewDevice(tun.TUN(), b, device.NewLogger(device.LogLevelSilent, ""))
	defer d.Close()
	hexk := func(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }
	if err := d.IpcSet("private_key=" + hexk(ck) + "\nlisten_port=0\npublic_key=" + hexk(server) +
		"\nallowed_ip=0.0.0.0/0\nendpoint=127.0.0.1:9\n"); err != nil {
		t.Fatal(err)
	}
	if err := d.Up(); err != nil {
		t.Fatal(err)
	}
	tun.Outbound <- tuntest.Ping(netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("100.96.0.9"))
	select {
	case m := <-got:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no initiation")
	}
	return nil
}

// randomInitiation is an initiation with a valid MAC1 for pub and random
// contents: it passes MAC1 and fails the open.
func randomInitiation(pub wgtypes.Key) []byte {
	m := make([]byte, wgmsg.InitiationSize)
	rand.Read(m)
	m[0], m[1], m[2], m[3] = 1, 0, 0, 0
	var g device.CookieGenerator
	g.Init(device.NoisePublicKey(pub))
	g.AddMacs(m)
	return m
}

// TestDoorUnknownKeyRemembered: an unregistered key costs one open; its
// next initiations from the same place cost none, until it registers.
func TestDoorUnknownKeyRemembered(t *testing.T) {
	l := newODLab(t)
	d := l.n.door
	ck, _ := wgtypes.GeneratePrivateKey()
	init1 := initiationFrom(t, ck, l.n.PublicKey())
	init2 := initiationFrom(t, ck, l.n.PublicKey())
	for i, m := range [][]byte{init1, init2, init1} {
		if d.admit(bytes.Clone(m), l.clientEP, false) {
			t.Fatalf("initiation %d of an unregistered key let through", i)
		}
	}
	if s := d.status(); s.Opens != 1 || s.Unregistered != 1 || s.MissRemembered != 2 {
		t.Fatalf("door: %+v; want 1 open, 1 unregistered, 2 remembered", s)
	}
	// From elsewhere it costs an open again (a miss is remembered by
	// source: another source proves nothing about this one).
	if d.admit(bytes.Clone(init2), bindtest.ChannelEndpoint(3), false) {
		t.Fatal("let through from another source")
	}
	// Registered now: the next initiation is opened and let in at once.
	c, err := l.n.Register(context.Background(), ck.PublicKey(), registry.Tags{})
	if err != nil {
		t.Fatal(err)
	}
	if !d.admit(bytes.Clone(init2), l.clientEP, false) {
		t.Fatal("a client registered after its miss was remembered is still refused")
	}
	if !hasPeer(l.n, c.PublicKey) {
		t.Fatal("no peer for the newly registered client")
	}
	if s := d.status(); s.Opens != 3 || s.Added != 1 {
		t.Fatalf("door: %+v", s)
	}
}

// TestDoorRateLimit: one source gets doorSrcBurst opens at once, then
// doorSrcRate a second; what is over is dropped unopened, and counted.
func TestDoorRateLimit(t *testing.T) {
	n, _ := newTestNode(t)
	d := n.door
	d.sweepOff.Store(true) // before the clock is replaced
	t0 := time.Now()
	d.now = func() time.Time { return t0 }
	ep := bindtest.ChannelEndpoint(4)
	let := 0
	for range doorSrcBurst + 50 {
		if d.admit(randomInitiation(n.PublicKey()), ep, false) {
			let++
		}
	}
	s := d.status()
	if s.Opens != doorSrcBurst || s.RateLimited != 50 || s.OpenFailed != doorSrcBurst || let != 0 {
		t.Fatalf("door after %d initiations at once from one source: %+v (%d let through)", doorSrcBurst+50, s, let)
	}
	// A second later: doorSrcRate more.
	t1 := t0.Add(time.Second)
	d.now = func() time.Time { return t1 }
	before := d.st.opens.Load()
	for range doorSrcRate + 10 {
		d.admit(randomInitiation(n.PublicKey()), ep, false)
	}
	if got := d.st.opens.Load() - before; got != doorSrcRate {
		t.Fatalf("%d opens a second later, want %d", got, doorSrcRate)
	}
	// An initiation whose MAC1 is wrong is left to wireguard-go (which
	// drops it), unopened and uncounted.
	bad := randomInitiation(n.PublicKey())
	bad[wgmsg.OffsetInitiationMAC1] ^= 1
	if !d.admit(bad, ep, false) || d.st.opens.Load() != before+doorSrcRate {
		t.Fatal("a bad MAC1 was opened")
	}
}

// TestDoorCookieUnderLoad: under load an initiation of a client without a
// peer gets a cookie reply (made by wireguard-go's CookieChecker) instead
// of an open; the same initiation with that cookie's MAC2 is opened and
// its peer added. A client with a peer is passed to wireguard-go, whose
// own cookie exchange applies to it.
func TestDoorCookieUnderLoad(t *testing.T) {
	l := newODLab(t)
	d := l.n.door
	ck, c := registerKey(t, l.n)
	msg := initiationFrom(t, ck, l.n.PublicKey())
	d.forceLoad.Store(true)
	var g device.CookieGenerator
	g.Init(device.NoisePublicKey(l.n.PublicKey()))
	g.AddMacs(msg) // as the client did: no cookie yet, no MAC2
	if d.admit(bytes.Clone(msg), l.clientEP, false) {
		t.Fatal("under load an initiation without MAC2 was let through")
	}
	if s := d.status(); s.CookiesSent != 1 || s.Opens != 0 {
		t.Fatalf("door: %+v; want a cookie reply and no open", s)
	}
	var reply []byte
	waitFor(t, "the cookie reply sent", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, m := range l.sent {
			if wgmsg.Classify(m) == wgmsg.CookieReply {
				reply = m
				return true
			}
		}
		return false
	})
	if l.n.Counters().Bind.CookieReplies != 1 {
		t.Fatal("the door's cookie reply is not in the node's cookie reply count")
	}
	var cr device.MessageCookieReply
	cr.Type = uint32(reply[0])
	cr.Receiver = uint32(reply[4]) | uint32(reply[5])<<8 | uint32(reply[6])<<16 | uint32(reply[7])<<24
	copy(cr.Nonce[:], reply[wgmsg.OffsetCookieNonce:])
	copy(cr.Cookie[:], reply[wgmsg.OffsetCookie:])
	if !g.ConsumeReply(&cr) {
		t.Fatal("the client cannot use the cookie reply")
	}
	g.AddMacs(msg) // the client's retry: now with MAC2
	if !d.admit(bytes.Clone(msg), l.clientEP, false) {
		t.Fatalf("under load an initiation with a valid MAC2 was refused: %+v", d.status())
	}
	if !hasPeer(l.n, c.PublicKey) {
		t.Fatal("no peer added")
	}
	// The client now has a peer: under load its initiations (with
	// wireguard-go's own cookie, or none) go to wireguard-go unopened.
	opens := d.st.opens.Load()
	if !d.admit(initiationFrom(t, ck, l.n.PublicKey()), l.clientEP, false) || d.st.opens.Load() != opens {
		t.Fatal("under load an initiation from a client with a peer was not passed on unopened")
	}
	// A stranger under load with a forged MAC2 gets a cookie, not an open.
	if d.admit(randomInitiation(l.n.PublicKey()), bindtest.ChannelEndpoint(3), false) || d.st.opens.Load() != opens {
		t.Fatal("a stranger was opened under load")
	}
}

// TestReplayStore: the newest timestamp per key is kept, in at most two
// generations.
func TestReplayStore(t *testing.T) {
	r := replayStore{max: 4}
	key := func(i byte) wgtypes.Key { return wgtypes.Key{i, 1, 2, 3, 4, 5, 6, 7} }
	r.put(key(1), 10)
	r.put(key(1), 5)
	if ts, ok := r.get(key(1)); !ok || ts != 10 {
		t.Fatalf("get after an older put: %d %v", ts, ok)
	}
	for i := range byte(8) {
		r.put(key(10+i), int64(i))
	}
	if r.len() > 2*r.max {
		t.Fatalf("%d entries, bound %d", r.len(), 2*r.max)
	}
	if _, ok := r.get(key(1)); ok {
		t.Fatal("the oldest generation was kept")
	}
	if ts, ok := r.get(key(17)); !ok || ts != 7 {
		t.Fatalf("newest: %d %v", ts, ok)
	}
}

// TestTAI64NOrder: the compact form orders as the timestamps do, on the
// scale of unixNanosTAI, and a removed peer's record follows the client's
// clock, not the node's.
func TestTAI64NOrder(t *testing.T) {
	a := tai64nNanos(tai64n.Now())
	time.Sleep(40 * time.Millisecond) // wireguard-go whitens to 2^24 ns
	b := tai64nNanos(tai64n.Now())
	now := time.Now()
	if a >= b || unixNanosTAI(now)-b < 0 || unixNanosTAI(now)-b > int64(100*time.Millisecond) {
		t.Fatalf("a %d, b %d, now %d", a, b, unixNanosTAI(now))
	}
	n, _ := newTestNode(t)
	_, c := registerKey(t, n)
	ahead := time.Hour // the client's clock is an hour ahead
	ts := unixNanosTAI(now.Add(ahead))
	if err := n.addPeer(c, now, unfinishedOnDemand, ts); err != nil {
		t.Fatal(err)
	}
	n.peerMu.Lock()
	n.removePeerLocked(c.PublicKey, now.Add(time.Minute), removedIdle)
	n.peerMu.Unlock()
	rec, ok := n.door.replay.get(c.PublicKey)
	want := unixNanosTAI(now.Add(time.Minute+ahead)) - int64(replaySlack)
	if !ok || rec != want {
		t.Fatalf("record %d %v, want %d (the client's clock at the removal, less the slack)", rec, ok, want)
	}
}

// TestDoorForwardsWithoutPeer: with tagged indexes and forwarding, a
// standard client another node owns has its initiation forwarded there by
// the door, and gets no peer here; a stamped one (the front already routed
// it by its ClientID) is served here.
func TestDoorForwardsWithoutPeer(t *testing.T) {
	l := newODLab(t)
	var mu sync.Mutex
	var fwd []clientid.ID
	if err := l.n.EnableIndexes(IndexConfig{Slot: 7, Forward: func(cid clientid.ID, _ netip.AddrPort, _ netip.Addr, _ []byte) bool {
		mu.Lock()
		defer mu.Unlock()
		fwd = append(fwd, cid)
		return true
	}}); err != nil {
		t.Fatal(err)
	}
	ck, c := registerKey(t, l.n)
	if l.n.door.admit(initiationFrom(t, ck, l.n.PublicKey()), l.clientEP, false) {
		t.Fatal("an initiation forwarded to its owner was also let in")
	}
	mu.Lock()
	got := append([]clientid.ID(nil), fwd...)
	mu.Unlock()
	if len(got) != 1 || got[0] != c.ClientID || hasPeer(l.n, c.PublicKey) {
		t.Fatalf("forwarded %v (want [%v]); peer here: %v", got, c.ClientID, hasPeer(l.n, c.PublicKey))
	}
	if is := l.n.indexStatus(); is == nil || is.Forwarded != 1 {
		t.Fatalf("index status %+v, want 1 forwarded", is)
	}
	time.Sleep(40 * time.Millisecond) // a newer TAI64N
	if !l.n.door.admit(initiationFrom(t, ck, l.n.PublicKey()), l.clientEP, true) || !hasPeer(l.n, c.PublicKey) {
		t.Fatal("a stamped initiation was not served here")
	}
}

// FuzzAdmit: whatever an initiation holds (its MAC1 made valid, so the door
// opens it), the door neither panics nor lets in a key it cannot open.
func FuzzAdmit(f *testing.F) {
	n, _ := newTestNode(f)
	ck, _ := wgtypes.GeneratePrivateKey()
	f.Add(make([]byte, wgmsg.InitiationSize), false)
	f.Add(randomInitiation(ck.PublicKey()), true)
	var g device.CookieGenerator
	g.Init(device.NoisePublicKey(n.PublicKey()))
	// A second between initiations: the rate limits do not hide the rest.
	clock := time.Now()
	n.door.now = func() time.Time { clock = clock.Add(time.Second); return clock }
	n.door.sweepOff.Store(true)
	f.Fuzz(func(t *testing.T, b []byte, stamped bool) {
		m := make([]byte, wgmsg.InitiationSize)
		copy(m, b)
		m[0], m[1], m[2], m[3] = 1, 0, 0, 0
		g.AddMacs(m)
		held := n.door.status().Held
		n.door.admit(m, bindtest.ChannelEndpoint(4), stamped)
		if n.door.status().Held != held {
			t.Fatal("a peer was added for an initiation of no registered key")
		}
	})
}

// TestNoPeerPatchDelete: a client that never handshook here (no peer) is
// changed and deleted through the API as any other.
func TestNoPeerPatchDelete(t *testing.T) {
	n, _ := newTestNode(t)
	h := n.routes()
	_, c := registerKey(t, n)
	if code, body := do(t, h, "PATCH", "/v1/reg/"+c.ID, `{"country":"NL"}`); code != 200 {
		t.Fatalf("PATCH of a client without a peer: %d %v", code, body)
	}
	if got, ok := n.client(c.PublicKey); !ok || got.Tags.Country != "NL" {
		t.Fatalf("node view after the PATCH: %+v", got)
	}
	if hasPeer(n, c.PublicKey) {
		t.Fatal("a PATCH added a peer")
	}
	if code, _ := do(t, h, "DELETE", "/v1/reg/"+c.ID, ""); code != 204 {
		t.Fatalf("DELETE of a client without a peer: %d", code)
	}
	if n.registered(c.PublicKey) || n.door.status().Removed[removedDeleted] != 0 {
		t.Fatalf("after DELETE: registered %v, peers removed %v", n.registered(c.PublicKey), n.door.status().Removed)
	}
}

// TestEvictedUsage: what an evicted peer counted after the last usage
// reading (as of the sweep before its eviction) is still added.
func TestEvictedUsage(t *testing.T) {
	n, _ := newTestNode(t, func(c *Config) { c.UsageInterval = time.Hour })
	n.door.sweepOff.Store(true)
	_, c := registerKey(t, n)
	holdPeer(t, n, c)
	n.mu.Lock()
	n.usage.last[c.PublicKey] = [2]uint64{100, 200} // the last usage reading
	n.mu.Unlock()
	n.door.sweep(time.Now(), []peerState{{PublicKey: c.PublicKey, RxBytes: 150, TxBytes: 260, LastHandshake: time.Now()}})
	n.peerMu.Lock()
	n.removePeerLocked(c.PublicKey, time.Now(), removedIdle)
	n.peerMu.Unlock()
	n.readCounters()
	n.mu.Lock()
	d := n.usage.pending[c.ID]
	_, still := n.usage.last[c.PublicKey]
	n.mu.Unlock()
	if d.Rx != 50 || d.Tx != 60 {
		t.Fatalf("pending usage after the eviction: %+v, want rx 50, tx 60", d)
	}
	if still {
		t.Fatal("the removed peer's last reading was kept")
	}
}

// TestInheritAddsPeer: a handshake the node starts itself (an heir) adds
// the client's peer, with the longer unfinished deadline.
func TestInheritAddsPeer(t *testing.T) {
	n, _ := newTestNode(t)
	_, c := registerKey(t, n)
	if err := n.handshakeAt(c.PublicKey, netip.MustParseAddrPort("127.0.0.1:1"), true); err != nil {
		t.Fatal(err)
	}
	n.door.mu.Lock()
	h := n.door.held[c.PublicKey]
	n.door.mu.Unlock()
	if h == nil || h.deadline != unfinishedInitiated || !hasPeer(n, c.PublicKey) {
		t.Fatalf("held %+v, in the device %v", h, hasPeer(n, c.PublicKey))
	}
	ghost, _ := wgtypes.GeneratePrivateKey()
	if err := n.handshakeAt(ghost.PublicKey(), netip.MustParseAddrPort("127.0.0.1:4"), true); err == nil {
		t.Fatal("a handshake with an unregistered key was started")
	}
}

// TestSweepMarksFirstHandshake: the peer sweep records a client's first
// handshake (for registration expiry) as soon as it sees it, since the
// peer may be gone before the expiry's own look.
func TestSweepMarksFirstHandshake(t *testing.T) {
	l := newODLab(t)
	l.n.door.sweepOff.Store(true)
	l.n.StartExpiry(ExpiryConfig{MarkEvery: time.Hour})
	ck, _ := wgtypes.GeneratePrivateKey()
	c, err := l.n.RegisterClient(context.Background(), registry.Client{PublicKey: ck.PublicKey(), AwaitingHandshake: true})
	if err != nil {
		t.Fatal(err)
	}
	_, tun := l.client(t, ck)
	if !l.reaches(tun, c, 4*time.Second) {
		t.Fatal("the client's first packet did not arrive")
	}
	l.n.sweepOnce(time.Now())
	got, err := l.n.cfg.Store.Get(context.Background(), c.ID)
	if err != nil || got.AwaitingHandshake || got.FirstHandshake.IsZero() {
		t.Fatalf("after the sweep saw the handshake: %+v, %v", got, err)
	}
}

// BenchmarkDoorAdmit: what the door costs an initiation: cold (a
// registered client without a peer: two X25519, the peer added) and known
// (a client with a peer: one X25519).
func BenchmarkDoorAdmit(b *testing.B) {
	n, _ := newTestNode(b)
	n.door.sweepOff.Store(true)
	ck, _ := wgtypes.GeneratePrivateKey()
	c, err := n.Register(context.Background(), ck.PublicKey(), registry.Tags{})
	if err != nil {
		b.Fatal(err)
	}
	msg := initiationFrom(b, ck, n.PublicKey())
	// One source per iteration (the per-source limit is not measured).
	clock := time.Now()
	n.door.now = func() time.Time { clock = clock.Add(time.Second); return clock }
	ep := bindtest.ChannelEndpoint(4)
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			if !n.door.admit(msg, ep, false) {
				b.Fatal("refused")
			}
			b.StopTimer()
			n.peerMu.Lock()
			n.removePeerLocked(c.PublicKey, clock, removedDeleted) // keeps no replay record
			n.peerMu.Unlock()
			b.StartTimer()
		}
	})
	holdPeer(b, n, c)
	b.Run("known", func(b *testing.B) {
		for b.Loop() {
			if !n.door.admit(msg, ep, false) {
				b.Fatal("refused")
			}
		}
	})
}

// TestDoorLoadFromMisses: a flood of initiations from many sources that
// open to nothing puts the door under load after doorLoadRate of them;
// the rest get cookie replies, unopened.
func TestDoorLoadFromMisses(t *testing.T) {
	n, _ := newTestNode(t, func(c *Config) { c.Bind = conn.NewStdNetBind(); c.ListenPort = 0 })
	d := n.door
	d.sweepOff.Store(true)
	t0 := time.Now()
	d.now = func() time.Time { return t0 }
	parse := conn.NewStdNetBind()
	const flood = doorLoadRate + 100
	for i := range flood {
		ep, err := parse.ParseEndpoint(fmt.Sprintf("192.0.2.%d:%d", 1+i%250, 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		if d.admit(randomInitiation(n.PublicKey()), ep, false) {
			t.Fatal("a random initiation was let through")
		}
	}
	s := d.status()
	if s.Opens != doorLoadRate+1 || s.CookiesSent != flood-doorLoadRate-1 {
		t.Fatalf("door after %d random initiations at once: %+v; want %d opens, the rest cookie replies", flood, s, doorLoadRate+1)
	}
	// A second later the load has passed.
	t1 := t0.Add(device.UnderLoadAfterTime + time.Millisecond)
	d.now = func() time.Time { return t1 }
	ep, _ := parse.ParseEndpoint("198.51.100.1:1")
	d.admit(randomInitiation(n.PublicKey()), ep, false)
	if got := d.status(); got.Opens != s.Opens+1 {
		t.Fatalf("after the load passed: %+v", got)
	}
}

// TestPeerOnDemandFull: with room for one peer, a second client's first
// handshake evicts the first client once it is idle, and is refused
// (counted, no response) while the peer it would evict is busy.
func TestPeerOnDemandFull(t *testing.T) {
	l := newODLab(t, func(c *Config) { c.MaxPeers = 1 })
	l.n.door.sweepOff.Store(true)
	ka, a := registerKey(t, l.n)
	kb, b := registerKey(t, l.n)
	da, tun := l.client(t, ka)
	if !l.reaches(tun, a, 4*time.Second) {
		t.Fatal("client a's first packet did not arrive")
	}
	da.Close()
	l.n.sweepOnce(time.Now()) // sees a's bytes
	// a has been quiet past peerBusy, as a later sweep would see it (the
	// node's clock must not jump: a removed peer's replay record follows
	// it).
	d := l.n.door
	d.mu.Lock()
	d.held[a.PublicKey].active = time.Now().Add(-peerBusy - time.Second)
	d.victims = append(d.victims[:0], a.PublicKey)
	d.mu.Unlock()
	db, tun := l.client(t, kb)
	if !l.reaches(tun, b, 4*time.Second) {
		t.Fatal("client b's first packet did not arrive on a full node with an idle peer")
	}
	if hasPeer(l.n, a.PublicKey) || !hasPeer(l.n, b.PublicKey) {
		t.Fatalf("peers: a %v, b %v; want b alone", hasPeer(l.n, a.PublicKey), hasPeer(l.n, b.PublicKey))
	}
	db.Close()
	// b just handshook: busy. a's handshake is refused, and counted.
	l.n.sweepOnce(time.Now())
	responses := l.n.bind.responses.Load()
	time.Sleep(40 * time.Millisecond) // a newer TAI64N than a's last
	_, tun = l.client(t, ka)
	if l.reaches(tun, a, 500*time.Millisecond) {
		t.Fatal("client a got in while the only peer was busy")
	}
	s := l.n.door.status()
	if s.RefusedFull != 1 || s.Removed[removedEvicted] != 1 || s.Held != 1 || l.n.bind.responses.Load() != responses {
		t.Fatalf("door: %+v, responses %d → %d; want 1 refused, 1 evicted, no response", s, responses, l.n.bind.responses.Load())
	}
}
