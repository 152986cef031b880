package server

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tai64n"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/udpbind"
	"github.com/wedge-edge/wedge/server/registry"
	"github.com/wedge-edge/wedge/server/wgmsg"
)

// Peers on demand. A node's wireguard-go device holds a peer only for the
// clients it is talking to; the registry (the node's mirror of it, n.clients)
// holds every registered client. An initiation from a registered client
// without a peer is caught by the Bind before wireguard-go sees it (admit):
// the Bind opens it with the service key (wgmsg.Opener, one X25519) to read
// the initiator's static key, and for a registered client without a peer
// decrypts its timestamp too (a second X25519: it proves the initiator holds
// the key, or replays an initiation), adds the peer (allowed IPs as
// registered) and hands the initiation on, so the first handshake succeeds
// on the first try. wireguard-go then checks it all again as usual. A
// client with a peer costs the one open and goes through; a standard
// client another node owns (tagged indexes with forwarding) is forwarded
// there and gets no peer here.
//
// The door is guarded before the open, since MAC1 proves nothing (anyone
// knows the service public key):
//
//   - per source address (IPv6: its /64), at most doorSrcRate opens a second
//     (burst doorSrcBurst), and doorOpenRate in all;
//   - under load (wireguard-go's own handshake queue is, or more than
//     doorLoadRate opens a second were in vain: keys not registered, opens
//     that failed, replays; real clients rarely miss, a flood does), an
//     initiation must carry a valid MAC2 before it is opened: the Bind
//     answers it with a cookie reply made by wireguard-go's own
//     device.CookieChecker, as wireguard-go does for the peers it holds.
//     An initiation from an endpoint last opened as a client that has a
//     peer goes to wireguard-go unopened, and wireguard-go's own cookie
//     exchange applies to it (the door's cookie secret is not the
//     device's: asking such a client for the door's cookie too would send
//     it to and fro);
//   - a key that is not registered costs one open; its source endpoint is
//     remembered for missTTL (bounded), so that client's next initiations
//     cost nothing until it registers.
//
// A node holds at most max peers. When it is full, a new client's handshake
// evicts the peer idle the longest (no handshake or data for the longest,
// as of the last sweep); a peer that carried traffic within peerBusy is
// never evicted, and when every peer did, the handshake is refused and
// counted. A peer idle for idle (--peer-idle) is removed, and so is one
// whose first handshake never completes (unfinishedOnDemand after it was
// added; armed when it is added).
//
// wireguard-go refuses an initiation whose timestamp is not newer than the
// last it accepted from that peer; a removed peer forgets it. So when a peer
// is removed the node keeps the newest timestamp that client can have sent
// by then (replayStore: its client's clock offset, learnt from the
// initiation that added it, applied to the removal time), and refuses an
// initiation for a peerless key that is not newer: a captured initiation
// replayed after the eviction creates nothing. (The node's clock stepping
// forward between the add and the removal by more than replaySlack makes
// the record too new by the step: the client is refused until its clock
// passes it. TestPeerOnDemandFull found this with a fake clock.)
const (
	// DefaultMaxPeers is --max-peers' default: wireguard-go's limit per
	// device. At about 35 KB a peer that is 2.2 GiB, which the 24 GiB
	// machines wedge is measured on hold with room to spare; a smaller
	// machine sets it lower.
	DefaultMaxPeers = device.MaxPeers
	// DefaultPeerIdle is --peer-idle's default: a peer without a
	// handshake or data for this long is removed. 540 s is three of
	// wireguard-go's session lifetimes (180 s): a client with a session
	// rekeys every 2 minutes while it sends, so this only removes clients
	// that went quiet.
	DefaultPeerIdle = 540 * time.Second

	// unfinishedOnDemand: a peer added for an initiation whose handshake
	// does not complete (first data from the client) within this is
	// removed. A client retries its initiation every 5 s, so a lost
	// response still completes well within it.
	unfinishedOnDemand = 30 * time.Second
	// unfinishedInitiated: the same for a peer added so the node can start
	// a handshake itself (inheritance), which wireguard-go retries for 90 s.
	unfinishedInitiated = device.RekeyAttemptTime + 5*time.Second
	// peerBusy: a peer that carried traffic this recently is not evicted.
	peerBusy = 10 * time.Second
	// peerSweepEvery is how often the device's peers are read for their
	// activity (and idle ones removed), at most: a sweep reads the whole
	// UAPI dump (about 10 ms per 1,000 peers on the 2-core test machine),
	// so the next one waits peerSweepShare times as long as the last took,
	// up to peerBusy.
	peerSweepEvery = 2 * time.Second
	peerSweepShare = 10

	doorSrcRate   = 64
	doorSrcBurst  = 128
	doorSrcMax    = 1 << 16
	doorOpenRate  = 4096
	doorOpenBurst = 512
	doorLoadRate  = 128
	missTTL       = 30 * time.Second
	missMax       = 1 << 16
	knownEPMax    = 1 << 16
	// addWait: how long the receive goroutine waits for a peer's add.
	addWait = time.Second
	// replayMax bounds each of the replay store's two generations.
	replayMax = 1 << 18
	// replaySlack is taken off a removed peer's extrapolated timestamp:
	// the client's clock may drift from the node's by this much while
	// its peer is held without the node seeing a newer timestamp.
	replaySlack = time.Second
)

// ErrPeersFull: the node holds its maximum of peers and every one carried
// traffic within the last few seconds.
var ErrPeersFull = errors.New("server: every peer is busy and the node holds its maximum")

// Why a peer was removed (the status's and the metrics' reasons).
const (
	removedDeleted    = "deleted"
	removedIdle       = "idle"
	removedUnfinished = "unfinished"
	removedEvicted    = "full" // evicted for a new client while full
)

// demand is the node's peer table: which registered clients have a peer in
// the device, since when, how active, and the door that adds them.
type demand struct {
	n      *Node
	op     *wgmsg.Opener
	mac1   [32]byte
	cookie device.CookieChecker
	max    int
	idle   time.Duration
	now    func() time.Time

	// forceLoad makes the door ask for cookies, sweepOff stops the
	// periodic sweep (tests).
	forceLoad, sweepOff atomic.Bool

	mu        sync.Mutex // guards what follows
	held      map[wgtypes.Key]*heldPeer
	victims   []wgtypes.Key // eviction order, idlest first (last sweep)
	misses    map[netip.AddrPort]miss
	knownEP   map[netip.AddrPort]wgtypes.Key // last key opened from an endpoint
	perSrc    *addrBudget
	openAll   tokenBucket
	load      tokenBucket
	loadUntil time.Time
	replay    replayStore

	st demandCounters
}

type heldPeer struct {
	added    time.Time
	deadline time.Duration // unfinished after this without a handshake
	active   time.Time     // last handshake or bytes moved, as of the last sweep
	rx, tx   uint64        // the device's counters at the last sweep
	done     bool          // a handshake completed
	// ts is the newest timestamp opened for the client (unix ns in its
	// clock, 0: none) and offset its clock minus the node's then.
	ts, offset int64
}

type miss struct {
	key   wgtypes.Key
	until time.Time
}

type demandCounters struct {
	added, refusedFull, refusedReplay                  atomic.Uint64
	removed                                            [4]atomic.Uint64 // by removedReasons
	opens, known, unregistered, missRemembered         atomic.Uint64
	openFailed, rateLimited, cookiesSent, passedUnload atomic.Uint64
	addSlow                                            atomic.Uint64
}

var removedReasons = [4]string{removedDeleted, removedIdle, removedUnfinished, removedEvicted}

func (c *demandCounters) removedFor(reason string) *atomic.Uint64 {
	return &c.removed[slices.Index(removedReasons[:], reason)]
}

func newDemand(n *Node, max int, idle time.Duration) (*demand, error) {
	op, err := wgmsg.NewOpener([32]byte(n.cfg.PrivateKey))
	if err != nil {
		return nil, err
	}
	d := &demand{
		n: n, op: op, mac1: wgmsg.MAC1Key(op.PublicKey()), max: max, idle: idle, now: time.Now,
		held: map[wgtypes.Key]*heldPeer{}, misses: map[netip.AddrPort]miss{},
		knownEP: map[netip.AddrPort]wgtypes.Key{},
		perSrc:  newAddrBudget(doorSrcRate, doorSrcBurst, doorSrcMax),
		openAll: tokenBucket{rate: doorOpenRate, burst: doorOpenBurst, tokens: doorOpenBurst},
		load:    tokenBucket{rate: doorLoadRate, burst: doorLoadRate, tokens: doorLoadRate},
		replay:  replayStore{max: replayMax},
	}
	d.cookie.Init(device.NoisePublicKey(op.PublicKey()))
	return d, nil
}

// admit decides about one initiation (reserved bytes already zeroed; stamped:
// they held a ClientID) on its way to wireguard-go: false drops it. It runs
// on the receive goroutine.
func (d *demand) admit(msg []byte, ep conn.Endpoint, stamped bool) bool {
	if len(msg) != wgmsg.InitiationSize || !wgmsg.CheckMAC1(&d.mac1, msg) {
		return true // wireguard-go drops it, at no cost to the door
	}
	src, ok := endpointAddrPort(ep)
	if !ok {
		return true
	}
	now := d.now()
	d.mu.Lock()
	loaded := d.forceLoad.Load() || now.Before(d.loadUntil) || d.n.dev.IsUnderLoad()
	if loaded {
		if k, ok := d.knownEP[src]; ok && d.held[k] != nil {
			// A client with a peer: wireguard-go's own cookie exchange
			// guards it (see the comment at the top).
			d.mu.Unlock()
			d.st.passedUnload.Add(1)
			return true
		}
		if !d.cookie.CheckMAC2(msg, ep.DstToBytes()) {
			d.mu.Unlock()
			d.sendCookie(msg, ep)
			return false
		}
	}
	if m, ok := d.misses[src]; ok && now.Before(m.until) && !d.n.registered(m.key) {
		d.mu.Unlock()
		d.st.missRemembered.Add(1)
		return false
	}
	if !d.perSrc.take(srcPrefix(src.Addr()), now) || !d.openAll.take(now) {
		d.mu.Unlock()
		d.st.rateLimited.Add(1)
		return false
	}
	d.mu.Unlock()

	d.st.opens.Add(1)
	var c registry.Client
	var registered, held bool
	static, ts, authenticated, err := d.op.OpenIf(msg, func(k [32]byte) bool {
		c, registered = d.n.client(wgtypes.Key(k))
		d.mu.Lock()
		held = d.held[wgtypes.Key(k)] != nil
		d.mu.Unlock()
		return registered && !held
	})
	key := wgtypes.Key(static)
	switch {
	case err != nil:
		d.st.openFailed.Add(1)
		d.missed(now)
		return false // wireguard-go would refuse it too
	case !registered:
		d.st.unregistered.Add(1)
		d.mu.Lock()
		if len(d.misses) >= missMax {
			clear(d.misses)
		}
		d.misses[src] = miss{key: key, until: now.Add(missTTL)}
		d.mu.Unlock()
		d.missed(now)
		return false
	}
	d.mu.Lock()
	if len(d.knownEP) >= knownEPMax {
		clear(d.knownEP)
	}
	d.knownEP[src] = key
	d.mu.Unlock()
	if held || !authenticated {
		d.st.known.Add(1)
		return true
	}
	tsn := tai64nNanos(ts)
	d.mu.Lock()
	last, evicted := d.replay.get(key)
	d.mu.Unlock()
	if evicted && tsn <= last {
		d.st.refusedReplay.Add(1)
		d.missed(now)
		return false
	}
	if hs := d.n.bind.hs.Load(); hs != nil && hs.fwd != nil && !stamped {
		// A standard client another node owns (handshakes.go): its
		// initiation goes there, and this node adds no peer for it.
		var dst netip.Addr
		if e, ok := ep.(*udpbind.Endpoint); ok {
			dst = e.Src().Unmap()
		}
		if hs.fwd(c.ClientID, src, dst, msg) {
			hs.forwarded.Add(1)
			return false
		}
	}
	// The peer is added on another goroutine, waited for at most
	// addWait: wireguard-go's configuration lock is held by whoever
	// closes the device or rebinds its sockets while waiting for this
	// receive goroutine to return, so taking it here could deadlock. A
	// slow add drops this initiation; the client's retry finds the peer.
	res := make(chan error, 1)
	go func() { res <- d.n.addPeer(c, now, unfinishedOnDemand, tsn) }()
	t := time.NewTimer(addWait)
	defer t.Stop()
	select {
	case err := <-res:
		if err != nil {
			if !errors.Is(err, ErrPeersFull) {
				d.n.log.Warn("peer on demand not added", "id", c.ID, "err", err)
			}
			return false
		}
		return true
	case <-d.n.done:
		return false
	case <-t.C:
		d.st.addSlow.Add(1)
		return false
	}
}

// missed charges an open spent in vain to the load measure: beyond
// doorLoadRate a second the door asks for cookies for a second.
func (d *demand) missed(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.load.take(now) {
		d.loadUntil = now.Add(device.UnderLoadAfterTime)
	}
}

// sendCookie answers msg with a cookie reply (MAC2's cookie for its source
// address), as wireguard-go does under load.
func (d *demand) sendCookie(msg []byte, ep conn.Endpoint) {
	sender := binary.LittleEndian.Uint32(msg[wgmsg.OffsetSender:])
	reply, err := d.cookie.CreateReply(msg, sender, ep.DstToBytes())
	if err != nil {
		return
	}
	pkt := make([]byte, wgmsg.CookieReplySize)
	binary.LittleEndian.PutUint32(pkt[0:], reply.Type)
	binary.LittleEndian.PutUint32(pkt[4:], reply.Receiver)
	copy(pkt[wgmsg.OffsetCookieNonce:], reply.Nonce[:])
	copy(pkt[wgmsg.OffsetCookie:], reply.Cookie[:])
	d.st.cookiesSent.Add(1)
	if err := d.n.bind.Send([][]byte{pkt}, ep); err != nil {
		d.n.log.Debug("cookie reply not sent", "err", err)
	}
}

// srcPrefix is what the per-source limit counts by: an IPv4 address, an
// IPv6 /64.
func srcPrefix(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// tai64nNanos is a TAI64N timestamp as wireguard-go makes them (its
// label's base is 2^62 + 10, and the rest Unix seconds) in Unix
// nanoseconds: 8 bytes instead of 12, ordered as the timestamps are.
func tai64nNanos(ts tai64n.Timestamp) int64 {
	const base = uint64(0x400000000000000a)
	secs := binary.BigEndian.Uint64(ts[:8]) - base
	return int64(secs)*1e9 + int64(binary.BigEndian.Uint32(ts[8:]))
}

// unixNanosTAI is t in tai64nNanos's scale.
func unixNanosTAI(t time.Time) int64 { return t.UnixNano() }

// victimLocked pops the idlest peer that carried no traffic within
// peerBusy. d.mu is held.
func (d *demand) victimLocked(now time.Time) (wgtypes.Key, bool) {
	for len(d.victims) > 0 {
		k := d.victims[0]
		d.victims = d.victims[1:]
		if h := d.held[k]; h != nil && now.Sub(h.active) >= peerBusy {
			return k, true
		}
	}
	return wgtypes.Key{}, false
}

// sweep takes in the device's peers: their activity, and which to remove
// (idle, or never finished their handshake); it also orders the eviction
// candidates. first are the peers whose first handshake it saw.
func (d *demand) sweep(now time.Time, peers []peerState) (drop map[wgtypes.Key]string, first []peerState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range peers {
		h := d.held[p.PublicKey]
		if h == nil {
			continue
		}
		if p.RxBytes != h.rx || p.TxBytes != h.tx {
			h.rx, h.tx, h.active = p.RxBytes, p.TxBytes, now
		}
		if !p.LastHandshake.IsZero() {
			if !h.done {
				first = append(first, p)
			}
			h.done = true
			if p.LastHandshake.After(h.active) {
				h.active = p.LastHandshake
			}
		}
	}
	d.victims = d.victims[:0]
	for k, h := range d.held {
		switch {
		case !h.done && now.Sub(h.added) >= h.deadline:
			if drop == nil {
				drop = map[wgtypes.Key]string{}
			}
			drop[k] = removedUnfinished
		case now.Sub(h.active) >= d.idle:
			if drop == nil {
				drop = map[wgtypes.Key]string{}
			}
			drop[k] = removedIdle
		case now.Sub(h.active) >= peerBusy:
			d.victims = append(d.victims, k)
		}
	}
	slices.SortFunc(d.victims, func(a, b wgtypes.Key) int { return d.held[a].active.Compare(d.held[b].active) })
	return drop, first
}

// forget takes k out of the table when its peer was removed, keeping the
// newest timestamp its client can have sent (see the comment at the top).
// It returns the peer's counters at the last sweep.
func (d *demand) forget(k wgtypes.Key, now time.Time, reason string) (rx, tx uint64, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := d.held[k]
	if h == nil {
		return 0, 0, false
	}
	delete(d.held, k)
	if h.ts != 0 && reason != removedDeleted {
		d.replay.put(k, max(h.ts, unixNanosTAI(now)+h.offset-int64(replaySlack)))
	}
	d.st.removedFor(reason).Add(1)
	return h.rx, h.tx, true
}

// replayStore keeps, per key (its first 8 bytes: keys are uniformly random
// and registered ones chosen by their holders), the newest timestamp a
// removed peer's client can have sent: 16 bytes an entry in two
// generations of at most max entries, the older dropped when the newer
// fills (its keys lose their protection: they were removed longest ago).
type replayStore struct {
	max      int
	cur, old map[uint64]int64
}

func (r *replayStore) get(k wgtypes.Key) (int64, bool) {
	id := binary.LittleEndian.Uint64(k[:8])
	a, ok1 := r.cur[id]
	b, ok2 := r.old[id]
	return max(a, b), ok1 || ok2
}

func (r *replayStore) put(k wgtypes.Key, ts int64) {
	id := binary.LittleEndian.Uint64(k[:8])
	if r.cur == nil {
		r.cur = map[uint64]int64{}
	}
	if t, ok := r.cur[id]; ok && t >= ts {
		return
	}
	if _, ok := r.cur[id]; !ok && len(r.cur) >= r.max {
		r.old, r.cur = r.cur, map[uint64]int64{}
	}
	r.cur[id] = ts
}

func (r *replayStore) len() int { return len(r.cur) + len(r.old) }

// addPeer puts registered client c into the device, evicting the idlest
// peer if the node is full (ErrPeersFull if every peer is busy). unfinished
// arms its removal should its handshake not complete; ts is the timestamp
// of the initiation that brought it (0: none).
func (n *Node) addPeer(c registry.Client, now time.Time, unfinished time.Duration, ts int64) error {
	d := n.door
	n.peerMu.Lock()
	defer n.peerMu.Unlock()
	n.mu.Lock()
	cur, ok := n.clients[c.PublicKey]
	n.mu.Unlock()
	if !ok || cur.ID != c.ID {
		return registry.ErrNotFound // deleted meanwhile
	}
	d.mu.Lock()
	if d.held[c.PublicKey] != nil {
		d.mu.Unlock()
		return nil
	}
	var victim wgtypes.Key
	full := len(d.held) >= d.max
	if full {
		if victim, ok = d.victimLocked(now); !ok {
			d.mu.Unlock()
			d.st.refusedFull.Add(1)
			return ErrPeersFull
		}
	}
	d.mu.Unlock()
	if full {
		n.removePeerLocked(victim, now, removedEvicted)
	}
	var b strings.Builder
	writePeer(&b, cur)
	if err := n.dev.IpcSet(b.String()); err != nil {
		return err
	}
	h := &heldPeer{added: now, active: now, deadline: unfinished, ts: ts}
	if ts != 0 {
		h.offset = ts - unixNanosTAI(now)
	}
	d.mu.Lock()
	d.held[c.PublicKey] = h
	d.mu.Unlock()
	d.st.added.Add(1)
	n.peersAdded.Add(1)
	return nil
}

// removePeerLocked takes k's peer out of the device and the table.
// n.peerMu is held.
func (n *Node) removePeerLocked(k wgtypes.Key, now time.Time, reason string) {
	rx, tx, ok := n.door.forget(k, now, reason)
	if !ok {
		return
	}
	n.removePeer(k)
	n.peersRemoved.Add(1)
	n.mu.Lock()
	delete(n.seen, k)
	if n.usage.gone != nil {
		n.usage.gone[k] = [2]uint64{rx, tx}
	}
	n.mu.Unlock()
}

// sweepPeers removes idle and unfinished peers, every peerSweepEvery or
// less often with many peers (see peerSweepShare).
func (n *Node) sweepPeers() {
	defer n.wg.Done()
	t := time.NewTimer(peerSweepEvery)
	defer t.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-t.C:
			next := peerSweepEvery
			if !n.door.sweepOff.Load() {
				start := time.Now()
				n.sweepOnce(n.door.now())
				next = min(max(next, peerSweepShare*time.Since(start)), peerBusy)
			}
			t.Reset(next)
		}
	}
}

func (n *Node) sweepOnce(now time.Time) {
	peers, err := n.peers()
	if err != nil {
		return
	}
	drop, first := n.door.sweep(now, peers)
	if len(first) > 0 && n.marking.Load() {
		// A peer may be gone before the expiry's next look (every
		// 15 s): record first handshakes as the sweep sees them.
		n.markFrom(first)
	}
	if len(drop) == 0 {
		return
	}
	n.peerMu.Lock()
	for k, reason := range drop {
		n.removePeerLocked(k, now, reason)
	}
	n.peerMu.Unlock()
	n.log.Debug("peers removed", "count", len(drop))
}

// ensurePeer makes sure registered client key has a peer, for a handshake
// the node starts itself (inheritance).
func (n *Node) ensurePeer(key wgtypes.Key) (*device.Peer, error) {
	if p := n.dev.LookupPeer(device.NoisePublicKey(key)); p != nil {
		return p, nil
	}
	c, ok := n.client(key)
	if !ok {
		return nil, registry.ErrNotFound
	}
	if err := n.addPeer(c, n.door.now(), unfinishedInitiated, 0); err != nil {
		return nil, err
	}
	if p := n.dev.LookupPeer(device.NoisePublicKey(key)); p != nil {
		return p, nil
	}
	return nil, registry.ErrNotFound // removed meanwhile
}

// registered reports whether key is a registered client's.
func (n *Node) registered(key wgtypes.Key) bool {
	_, ok := n.client(key)
	return ok
}

// client returns the registered client with key.
func (n *Node) client(key wgtypes.Key) (registry.Client, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.clients[key]
	return c, ok
}

// PeersStatus is the status report's section on peers on demand.
type PeersStatus struct {
	// Held are the peers in the device now, Max the most it holds.
	Held int `json:"held"`
	Max  int `json:"max"`
	// IdleSeconds is --peer-idle.
	IdleSeconds float64 `json:"idle_seconds"`
	Added       uint64  `json:"added"`
	// Removed counts peers taken out, by why: deleted (the
	// registration), idle, unfinished (handshake never completed),
	// full (evicted for a new client while the node was full).
	Removed map[string]uint64 `json:"removed"`
	// Refused counts handshakes of registered clients not let in: full
	// (every peer busy) and replay (not newer than an evicted peer's).
	RefusedFull   uint64 `json:"refused_full"`
	RefusedReplay uint64 `json:"refused_replay"`
	// The door: initiations opened (X25519), of which from a client with
	// a peer (known) or not registered; not opened: a remembered miss,
	// over a rate limit, answered with a cookie, passed under load for a
	// client with a peer; and opens that failed.
	Opens          uint64 `json:"opens"`
	Known          uint64 `json:"known"`
	Unregistered   uint64 `json:"unregistered"`
	MissRemembered uint64 `json:"miss_remembered"`
	OpenFailed     uint64 `json:"open_failed"`
	RateLimited    uint64 `json:"rate_limited"`
	CookiesSent    uint64 `json:"cookie_replies"`
	PassedLoaded   uint64 `json:"passed_under_load"`
	// AddSlow counts initiations dropped because adding their peer took
	// longer than a second (the device busy being reconfigured or closed).
	AddSlow uint64 `json:"add_slow"`
	// ReplayKeys are the removed clients whose timestamps are kept.
	ReplayKeys int `json:"replay_keys"`
}

func (d *demand) status() PeersStatus {
	s := PeersStatus{
		Max: d.max, IdleSeconds: d.idle.Seconds(), Added: d.st.added.Load(),
		Removed:     map[string]uint64{},
		RefusedFull: d.st.refusedFull.Load(), RefusedReplay: d.st.refusedReplay.Load(),
		Opens: d.st.opens.Load(), Known: d.st.known.Load(), Unregistered: d.st.unregistered.Load(),
		MissRemembered: d.st.missRemembered.Load(), OpenFailed: d.st.openFailed.Load(),
		RateLimited: d.st.rateLimited.Load(), CookiesSent: d.st.cookiesSent.Load(),
		PassedLoaded: d.st.passedUnload.Load(), AddSlow: d.st.addSlow.Load(),
	}
	for i, r := range removedReasons {
		s.Removed[r] = d.st.removed[i].Load()
	}
	d.mu.Lock()
	s.Held, s.ReplayKeys = len(d.held), d.replay.len()
	d.mu.Unlock()
	return s
}
