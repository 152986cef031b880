package server

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/internal/udpbind"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/wgmsg"
)

// IndexConfig turns on owner-tagged session indexes (Node.EnableIndexes):
// how a standard client, which stamps no ClientID, keeps reaching its
// owner node when its address changes. See server/wgmsg/doc.go for the
// index layout and README.md ("Standard clients roam") for the whole path.
type IndexConfig struct {
	// Slot is this node's slot in its data center (cluster.Member.Slot),
	// 1..255: the top byte of every index the node hands out, which the
	// XDP fronts route on.
	Slot uint8
	// Forward sends a handshake initiation, which this node's wireguard-go
	// accepted and answered, to the node that owns client cid instead, and
	// reports whether it did; this node's response is then dropped. src is
	// the client's address, dst the address it sent to (the VIP). It is
	// called on wireguard-go's handshake goroutines and should not block.
	// Nil: every client is served here.
	Forward func(cid clientid.ID, src netip.AddrPort, dst netip.Addr, msg []byte) bool
	// VIPs are the anycast addresses clients send to (one per family at
	// most): a handshake the node starts with a client it inherited
	// (inherit.go) leaves from the one of the client's family, as every
	// message of a session does.
	VIPs []netip.Addr
	// Heir, in a cluster, names the heir of a departed node's slot among
	// the members (lb.HeirOf, as the fronts compute it): when it is this
	// node, it takes the departed node's sessions over (inherit.go). Nil:
	// no node inherits.
	Heir func(slot uint8, ms []cluster.Member) (string, bool)
}

// Opens per second the node spends on identifying initiators, and the
// burst it allows. An open is one X25519 for a handshake wireguard-go has
// already accepted (three of its own), so the limit only bites when
// wireguard-go itself is saturated; above it responses are dropped and the
// client retries in 5 s, rather than being served by a node that may not
// own it.
const (
	openRate  = 4096
	openBurst = 512
)

// handshakes is the Bind's part of tagged indexes: it remembers recent
// initiations so that, when wireguard-go answers one, the initiator's
// static key can be read (wgmsg.Opener) for the response's MAC1 and for
// finding the client's owner.
type handshakes struct {
	tr    *wgmsg.Translator // nil: indexes are not tagged (observe only)
	op    *wgmsg.Opener
	owner func(static [32]byte) (clientid.ID, bool)
	fwd   func(cid clientid.ID, src netip.AddrPort, dst netip.Addr, msg []byte) bool
	// observe, if set, learns each initiator this node answers and the
	// address it handshook from, before the response leaves.
	observe func(static [32]byte, src netip.AddrPort)

	mu     sync.Mutex // guards inits, byEP, keys, bucket
	inits  [initSlots]initEntry
	byEP   map[netip.AddrPort][32]byte // last initiator static per endpoint
	keys   map[[32]byte]*wgmsg.PeerKeys
	bucket tokenBucket

	opened, openFailed, openLimited, notRecorded, forwarded, serverInitiated, noKeys atomic.Uint64
}

// initSlots is how many initiations are remembered (direct-mapped by
// sender index). A response follows its initiation within milliseconds; a
// flood can only evict entries, which leaves that response untranslated.
const initSlots = 4096

// keysMax bounds the endpoint and key caches; they are cleared when full.
const keysMax = 1 << 16

type initEntry struct {
	sender uint32
	used   bool
	// stamped: the initiation carried a ClientID, so the XDP front
	// already routed it by that ClientID; it is served where it landed,
	// never forwarded again (two fronts whose tables disagree for a
	// moment would otherwise send it to and fro until wireguard-go drops
	// it as a replay, and the client waits 5 s).
	stamped bool
	src     netip.AddrPort
	dst     netip.Addr
	msg     [wgmsg.InitiationSize]byte
}

func newHandshakes(tr *wgmsg.Translator, op *wgmsg.Opener, owner func([32]byte) (clientid.ID, bool),
	fwd func(clientid.ID, netip.AddrPort, netip.Addr, []byte) bool) *handshakes {
	return &handshakes{tr: tr, op: op, owner: owner, fwd: fwd,
		byEP: map[netip.AddrPort][32]byte{}, keys: map[[32]byte]*wgmsg.PeerKeys{},
		bucket: tokenBucket{rate: openRate, burst: openBurst, tokens: openBurst}}
}

// received handles one message on its way to wireguard-go (reserved bytes
// already zeroed): a tagged receiver index is translated back; an
// initiation is remembered, with whether it was stamped.
func (h *handshakes) received(msg []byte, ep conn.Endpoint, stamped bool) {
	if len(msg) == 0 {
		return
	}
	if msg[0] != byte(wgmsg.Initiation) {
		if h.tr != nil {
			h.tr.Incoming(msg)
		}
		return
	}
	if len(msg) != wgmsg.InitiationSize {
		return
	}
	src, ok := endpointAddrPort(ep)
	if !ok {
		return
	}
	var dst netip.Addr
	if e, ok := ep.(*udpbind.Endpoint); ok {
		dst = e.Src().Unmap()
	}
	sender := binary.LittleEndian.Uint32(msg[wgmsg.OffsetSender:])
	h.mu.Lock()
	e := &h.inits[wgmsg.Hash(sender)%initSlots]
	e.sender, e.used, e.src, e.dst, e.stamped = sender, true, src, dst, stamped
	copy(e.msg[:], msg)
	h.mu.Unlock()
}

// sending rewrites the handshake message wireguard-go sends to ep, and
// reports false when it is not to be sent at all (forwarded to its owner,
// or dropped by the open limit).
func (h *handshakes) sending(msg []byte, ep conn.Endpoint) bool {
	switch wgmsg.Classify(msg) {
	case wgmsg.Response:
		return h.response(msg, ep)
	case wgmsg.Initiation:
		if h.tr == nil {
			return true
		}
		// Server-initiated (session recovery, data to a quiet client):
		// the peer is the one last seen handshaking from ep.
		dst, ok := endpointAddrPort(ep)
		if !ok {
			return true
		}
		h.mu.Lock()
		static, ok := h.byEP[dst]
		var keys *wgmsg.PeerKeys
		if ok {
			keys = h.keysLocked(static)
		}
		h.mu.Unlock()
		if keys == nil {
			h.noKeys.Add(1)
			return true
		}
		h.serverInitiated.Add(1)
		h.tr.Outgoing(msg, keys)
	}
	return true
}

func (h *handshakes) response(msg []byte, ep conn.Endpoint) bool {
	dst, ok := endpointAddrPort(ep)
	if !ok {
		return true
	}
	receiver := binary.LittleEndian.Uint32(msg[wgmsg.OffsetResponseReceiver:])
	var init [wgmsg.InitiationSize]byte
	var local netip.Addr
	var stamped bool
	h.mu.Lock()
	e := &h.inits[wgmsg.Hash(receiver)%initSlots]
	found := e.used && e.sender == receiver && e.src == dst
	if found {
		init, local, stamped = e.msg, e.dst, e.stamped
		e.used = false
	}
	allowed := found && h.bucket.take(time.Now())
	h.mu.Unlock()
	switch {
	case !found:
		// Evicted by a flood: untranslated, the session still works
		// where the client's packets reach this node by its ClientID or
		// by ECMP.
		h.notRecorded.Add(1)
		return true
	case !allowed:
		h.openLimited.Add(1)
		return false
	}
	static, err := h.op.Open(init[:])
	if err != nil {
		// wireguard-go accepted what we cannot open: not ours to judge.
		h.openFailed.Add(1)
		return true
	}
	h.opened.Add(1)
	if h.fwd != nil && !stamped {
		if cid, ok := h.owner(static); ok && h.fwd(cid, dst, local, init[:]) {
			h.forwarded.Add(1)
			return false
		}
	}
	if h.observe != nil {
		h.observe(static, dst)
	}
	if h.tr == nil {
		return true
	}
	h.mu.Lock()
	if len(h.byEP) >= keysMax {
		clear(h.byEP)
	}
	h.byEP[dst] = static
	keys := h.keysLocked(static)
	h.mu.Unlock()
	h.tr.Outgoing(msg, keys)
	return true
}

// expect records that the peer at dst is static, for a handshake the node
// starts there before that peer ever handshook from it (inherit.go): its
// initiation is tagged like any other.
func (h *handshakes) expect(dst netip.AddrPort, static wgtypes.Key) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.byEP) >= keysMax {
		clear(h.byEP)
	}
	h.byEP[dst] = static
}

// keysLocked returns the cached keys of static. h.mu is held.
func (h *handshakes) keysLocked(static [32]byte) *wgmsg.PeerKeys {
	if k, ok := h.keys[static]; ok {
		return k
	}
	if len(h.keys) >= keysMax {
		clear(h.keys)
	}
	k := wgmsg.NewPeerKeys(static)
	h.keys[static] = &k
	return &k
}

// IndexStatus is the status report's view of tagged indexes.
type IndexStatus struct {
	Slot            uint8  `json:"slot"`
	Opened          uint64 `json:"initiations_opened"`
	OpenFailed      uint64 `json:"open_failed"`
	OpenLimited     uint64 `json:"open_limited"`
	NotRecorded     uint64 `json:"responses_without_initiation"`
	Forwarded       uint64 `json:"initiations_forwarded"`
	ServerInitiated uint64 `json:"server_initiations"`
	NoKeys          uint64 `json:"server_initiations_untagged"`
	wgmsg.TranslatorStats
}

func (h *handshakes) status(slot uint8) IndexStatus {
	var ts wgmsg.TranslatorStats
	if h.tr != nil {
		ts = h.tr.Stats()
	}
	return IndexStatus{
		Slot: slot, Opened: h.opened.Load(), OpenFailed: h.openFailed.Load(),
		OpenLimited: h.openLimited.Load(), NotRecorded: h.notRecorded.Load(),
		Forwarded: h.forwarded.Load(), ServerInitiated: h.serverInitiated.Load(),
		NoKeys: h.noKeys.Load(), TranslatorStats: ts,
	}
}

// tokenBucket is a plain token bucket; the caller serializes.
type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func (b *tokenBucket) take(now time.Time) bool {
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweepEvery is how often expired index mappings are dropped.
const sweepEvery = 30 * time.Second

// EnableIndexes makes every session index this node hands out from now on
// carry cfg.Slot (wgmsg.Tag), so that the XDP fronts send a standard
// client's responses, cookie replies and data to this node whatever
// address they come from, and, with cfg.Forward, sends the initiations of
// clients another node owns there. It can be called once; sessions made
// before it keep wireguard-go's own indexes.
func (n *Node) EnableIndexes(cfg IndexConfig) error {
	if cfg.Slot == 0 {
		return errors.New("server: tagged indexes need a slot (1..255)")
	}
	priv := [32]byte(n.cfg.PrivateKey)
	op, err := wgmsg.NewOpener(priv)
	if err != nil {
		return err
	}
	tr, err := wgmsg.NewTranslator(wgmsg.TranslatorConfig{
		Slot: cfg.Slot, IndexKey: wgmsg.IndexKey(priv), PublicKey: op.PublicKey(),
	})
	if err != nil {
		return err
	}
	hs := newHandshakes(tr, op, n.clientIDOf, cfg.Forward)
	old := n.bind.hs.Load()
	if old != nil && old.tr != nil {
		return errors.New("server: tagged indexes are already on")
	}
	hs.observe = n.observer()
	if !n.bind.hs.CompareAndSwap(old, hs) {
		return errors.New("server: tagged indexes are already on")
	}
	n.indexSlot.Store(uint32(cfg.Slot))
	n.vips = cfg.VIPs
	if n.cfg.Cluster != nil {
		n.wg.Add(1)
		go n.replicate(hs)
		if cfg.Heir != nil {
			n.wg.Add(1)
			go n.inheritLoop(cfg.Heir)
		}
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		t := time.NewTicker(sweepEvery)
		defer t.Stop()
		for {
			select {
			case <-n.done:
				return
			case now := <-t.C:
				tr.Sweep(now)
			}
		}
	}()
	n.log.Info("tagged session indexes on", "slot", cfg.Slot, "forward", cfg.Forward != nil)
	return nil
}

// observer is the handshakes' observe function for Config.OnHandshake,
// nil without it.
func (n *Node) observer() func([32]byte, netip.AddrPort) {
	if n.cfg.OnHandshake == nil {
		return nil
	}
	return func(static [32]byte, src netip.AddrPort) {
		n.mu.Lock()
		c, ok := n.clients[wgtypes.Key(static)]
		n.mu.Unlock()
		if ok {
			n.cfg.OnHandshake(c, src)
		}
	}
}

// observeHandshakes makes the Bind open the initiations wireguard-go
// answers, for Config.OnHandshake, while tagged indexes are off.
func (n *Node) observeHandshakes() error {
	if n.cfg.OnHandshake == nil {
		return nil
	}
	op, err := wgmsg.NewOpener([32]byte(n.cfg.PrivateKey))
	if err != nil {
		return err
	}
	hs := newHandshakes(nil, op, n.clientIDOf, nil)
	hs.observe = n.observer()
	n.bind.hs.Store(hs)
	return nil
}

// clientIDOf is the ClientID of the registered client with public key
// static.
func (n *Node) clientIDOf(static [32]byte) (clientid.ID, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.clients[wgtypes.Key(static)]
	return c.ClientID, ok
}

// indexStatus is the status report's section on tagged indexes, nil while
// they are off.
func (n *Node) indexStatus() *IndexStatus {
	hs := n.bind.hs.Load()
	if hs == nil || hs.tr == nil {
		return nil
	}
	s := hs.status(uint8(n.indexSlot.Load()))
	return &s
}
