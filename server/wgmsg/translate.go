package wgmsg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Translator limits.
const (
	// DefaultExpiry is how long a mapping lives unused. wireguard-go keeps
	// a keypair's index for at most 3×RejectAfterTime = 540 s.
	DefaultExpiry = 10 * time.Minute
	// MinExpiry is RejectAfterTime: a mapping is created when its
	// handshake message leaves, and the session it names accepts packets
	// for up to 180 s after that; a shorter expiry could drop the mapping
	// of a live but quiet session.
	MinExpiry = 180 * time.Second
	// DefaultMaxEntries is four indexes (a handshake and three keypairs)
	// for each of wireguard-go's 65,536 peers.
	DefaultMaxEntries = 1 << 18
	// MaxEntries keeps the table at most half of the 2^20 random parts, so
	// a fresh random part is free on the first or second draw.
	MaxEntries = 1 << 19
)

// TranslatorConfig is what a Translator is made with.
type TranslatorConfig struct {
	Slot     uint8  // this node's slot, 1..255
	IndexKey uint32 // IndexKey(service private key)
	// PublicKey is the public key of the device the Translator serves
	// (the service key). A response's MAC1 covers its receiver index, so
	// a translated response is MACed again with MAC1Key(PublicKey).
	PublicKey  [32]byte
	Expiry     time.Duration // 0: DefaultExpiry; at least MinExpiry
	MaxEntries int           // 0: DefaultMaxEntries; at most MaxEntries
}

// A Translator gives the session indexes wireguard-go hands out the node's
// slot, and translates them back. Outgoing replaces the sender index of each
// handshake message with a tagged index and re-MACs it; Incoming rewrites a
// tagged receiver index back to wireguard-go's.
//
// When either returns false the message is unchanged and should be passed on
// as it is: wireguard-go drops what it does not know, and a message it sent
// untranslated (a MAC2, a full table) still works wherever the peer's
// packets reach this node by other means.
//
// It is safe for concurrent use. Incoming allocates nothing for transport
// messages and takes one shard's read lock; Outgoing takes a mutex.
type Translator struct {
	slot   uint8
	key    uint32
	mac1   [32]byte
	expiry int64 // ns
	max    int

	mu      sync.Mutex // guards byLocal and entries; taken before any shard's
	byLocal map[uint32]*entry
	entries int

	tagged, skippedMAC2, wrongKey, full, expired atomic.Uint64

	shards [shardCount]shard
}

// shardCount spreads Incoming's read locks and counters: concurrent
// receivers of different sessions touch different cache lines.
const shardCount = 64

type shard struct {
	mu       sync.RWMutex
	byTagged map[uint32]*entry

	translated, unknown, notOurs, rejected, staleMAC2 atomic.Uint64

	_ [64]byte // keeps the next shard's lock off these counters' line
}

type entry struct {
	local, tagged uint32 // immutable
	used          atomic.Bool

	// Guarded by the shard's mu.
	seen int64 // when a Sweep last found it used (or its creation), ns
	// A cookie reply is sealed with the MAC1 of the message it answers as
	// associated data: the peer saw sentMAC1, wireguard-go remembers
	// wireguardMAC1, so Incoming reseals one with the other.
	sentMAC1, wireguardMAC1 [MACSize]byte
	cookieKey               [32]byte // the peer's CookieKey
}

// NewTranslator returns a Translator for cfg.
func NewTranslator(cfg TranslatorConfig) (*Translator, error) {
	if cfg.Slot == 0 {
		return nil, errors.New("wgmsg: translator: slot 0 is reserved for untagged indexes")
	}
	if isZero(cfg.PublicKey[:]) {
		return nil, errors.New("wgmsg: translator: zero public key")
	}
	if cfg.Expiry == 0 {
		cfg.Expiry = DefaultExpiry
	}
	if cfg.Expiry < MinExpiry {
		return nil, fmt.Errorf("wgmsg: translator: expiry %v is under %v, which would drop live sessions", cfg.Expiry, MinExpiry)
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.MaxEntries < 0 || cfg.MaxEntries > MaxEntries {
		return nil, fmt.Errorf("wgmsg: translator: max entries %d not in 1..%d", cfg.MaxEntries, MaxEntries)
	}
	t := &Translator{
		slot:    cfg.Slot,
		key:     cfg.IndexKey,
		mac1:    MAC1Key(cfg.PublicKey),
		expiry:  int64(cfg.Expiry),
		max:     cfg.MaxEntries,
		byLocal: make(map[uint32]*entry),
	}
	for i := range t.shards {
		t.shards[i].byTagged = make(map[uint32]*entry)
	}
	return t, nil
}

func (t *Translator) shardOf(idx uint32) *shard { return &t.shards[idx%shardCount] }

// Outgoing gives the initiation or response msg, about to be sent to the
// peer whose keys are peer, a tagged sender index, and recomputes its MAC1.
// The same wireguard-go index always gets the same tagged index while its
// mapping lives. It changes nothing and returns false when msg is not an
// initiation or response, carries a MAC2 (which covers the index and cannot
// be recomputed outside wireguard-go), has a MAC1 that is not valid under
// peer (so the caller passed the wrong peer's keys), or the table is full.
func (t *Translator) Outgoing(msg []byte, peer *PeerKeys) (changed bool) {
	if peer == nil {
		return false
	}
	switch Classify(msg) {
	case Initiation, Response:
	default:
		return false
	}
	if HasMAC2(msg) {
		t.skippedMAC2.Add(1)
		return false
	}
	if !CheckMAC1(&peer.MAC1, msg) {
		t.wrongKey.Add(1)
		return false
	}
	e := t.entryFor(binary.LittleEndian.Uint32(msg[OffsetSender:]))
	if e == nil {
		t.full.Add(1)
		return false
	}
	mac1 := msg[len(msg)-2*MACSize : len(msg)-MACSize]
	var wgMAC1 [MACSize]byte
	copy(wgMAC1[:], mac1)
	binary.LittleEndian.PutUint32(msg[OffsetSender:], e.tagged)
	SetMAC1(&peer.MAC1, msg)

	sh := t.shardOf(e.tagged)
	sh.mu.Lock()
	e.wireguardMAC1 = wgMAC1
	copy(e.sentMAC1[:], mac1)
	e.cookieKey = peer.Cookie
	sh.mu.Unlock()
	t.tagged.Add(1)
	return true
}

// allocTries bounds the draws for a free random part; with the table at most
// half full, failing them all has probability 2^-32.
const allocTries = 32

// entryFor returns the mapping of wireguard-go's index local, making one
// with a fresh tagged index if there is none, or nil when the table is full.
func (t *Translator) entryFor(local uint32) *entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.byLocal[local]; e != nil {
		e.used.Store(true)
		return e
	}
	if t.entries >= t.max {
		return nil
	}
	for range allocTries {
		tagged := Tag(t.slot, rand.Uint32(), t.key)
		sh := t.shardOf(tagged)
		sh.mu.Lock()
		if sh.byTagged[tagged] == nil {
			e := &entry{local: local, tagged: tagged, seen: time.Now().UnixNano()}
			sh.byTagged[tagged] = e
			sh.mu.Unlock()
			t.byLocal[local] = e
			t.entries++
			return e
		}
		sh.mu.Unlock()
	}
	return nil
}

// Incoming rewrites the receiver index of a response, cookie reply or
// transport message from the tagged index Outgoing handed out to
// wireguard-go's own. A response is MACed again with the device's key (its
// MAC1 is checked first, so an invalid one stays invalid); a cookie reply is
// resealed to the MAC1 wireguard-go remembers (see entry). It returns false
// and changes nothing for other messages, for indexes not tagged with this
// node's slot, for tagged indexes it does not hold (expired, or made up), and
// for responses and cookie replies that do not verify.
//
// For transport messages, the per-packet case, it allocates nothing.
// Call it after the reserved bytes are zeroed.
func (t *Translator) Incoming(msg []byte) (ok bool) {
	typ := Classify(msg)
	off := receiverOffset(typ)
	if off < 0 {
		return false
	}
	idx := binary.LittleEndian.Uint32(msg[off:])
	sh := t.shardOf(idx)
	if slot, ok := SlotOf(idx, t.key); !ok || slot != t.slot {
		sh.notOurs.Add(1)
		return false
	}
	sh.mu.RLock()
	e := sh.byTagged[idx]
	sh.mu.RUnlock()
	if e == nil {
		sh.unknown.Add(1)
		return false
	}
	switch typ {
	case Response:
		if !CheckMAC1(&t.mac1, msg) {
			sh.rejected.Add(1)
			return false
		}
		binary.LittleEndian.PutUint32(msg[off:], e.local)
		SetMAC1(&t.mac1, msg)
		if HasMAC2(msg) {
			// Now invalid; wireguard-go checks MAC2 only under load.
			sh.staleMAC2.Add(1)
		}
	case CookieReply:
		if !t.reseal(sh, e, msg) {
			sh.rejected.Add(1)
			return false
		}
		binary.LittleEndian.PutUint32(msg[off:], e.local)
	default:
		binary.LittleEndian.PutUint32(msg[off:], e.local)
	}
	if !e.used.Load() {
		e.used.Store(true)
	}
	sh.translated.Add(1)
	return true
}

// reseal decrypts the cookie reply msg with the MAC1 the peer saw as
// associated data and seals it again with the MAC1 wireguard-go computed, so
// that wireguard-go can consume it. msg is unchanged when it does not
// decrypt.
func (t *Translator) reseal(sh *shard, e *entry, msg []byte) bool {
	sh.mu.RLock()
	sent, wg, key := e.sentMAC1, e.wireguardMAC1, e.cookieKey
	sh.mu.RUnlock()
	aead, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		return false
	}
	nonce := msg[OffsetCookieNonce:OffsetCookie]
	var cookie [MACSize]byte
	if _, err := aead.Open(cookie[:0], nonce, msg[OffsetCookie:], sent[:]); err != nil {
		return false
	}
	aead.Seal(msg[OffsetCookie:OffsetCookie], nonce, cookie[:], wg[:])
	clear(cookie[:])
	return true
}

// Sweep removes the mappings unused for at least the expiry and returns how
// many it removed. Use is recorded as a flag, not a time, to keep Incoming
// cheap: a mapping used since the previous Sweep is kept and its idle time
// counted from now. So a mapping is never removed sooner than the expiry
// after its last use, and at most two sweep intervals later than that: call
// it every minute or so. It holds each shard's lock in turn, and Outgoing's
// for the whole pass.
func (t *Translator) Sweep(now time.Time) (removed int) {
	n := now.UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, e := range sh.byTagged {
			if e.used.Swap(false) {
				e.seen = n
				continue
			}
			if n-e.seen >= t.expiry {
				delete(sh.byTagged, k)
				delete(t.byLocal, e.local)
				removed++
			}
		}
		sh.mu.Unlock()
	}
	t.entries -= removed
	t.expired.Add(uint64(removed))
	return removed
}

// TranslatorStats are a Translator's counters since it was made.
type TranslatorStats struct {
	Entries int `json:"entries"` // mappings held now

	// Outgoing.
	Tagged      uint64 `json:"tagged"`       // handshake messages given a tagged sender index
	SkippedMAC2 uint64 `json:"skipped_mac2"` // left untranslated: they carried a MAC2
	WrongKey    uint64 `json:"wrong_key"`    // left untranslated: MAC1 not valid under the keys given
	Full        uint64 `json:"full"`         // left untranslated: no room for a mapping

	// Incoming.
	Translated uint64 `json:"translated"` // receiver index translated back
	Unknown    uint64 `json:"unknown"`    // tagged with this slot but not held (expired, made up)
	NotOurs    uint64 `json:"not_ours"`   // not tagged with this slot
	Rejected   uint64 `json:"rejected"`   // known index, but the MAC1 or cookie did not verify
	StaleMAC2  uint64 `json:"stale_mac2"` // translated responses whose MAC2 the rewrite invalidated

	Expired uint64 `json:"expired"` // mappings removed by Sweep
}

// Stats returns the counters. They are read one by one, not as a snapshot.
func (t *Translator) Stats() TranslatorStats {
	t.mu.Lock()
	s := TranslatorStats{Entries: t.entries}
	t.mu.Unlock()
	s.Tagged = t.tagged.Load()
	s.SkippedMAC2 = t.skippedMAC2.Load()
	s.WrongKey = t.wrongKey.Load()
	s.Full = t.full.Load()
	s.Expired = t.expired.Load()
	for i := range t.shards {
		sh := &t.shards[i]
		s.Translated += sh.translated.Load()
		s.Unknown += sh.unknown.Load()
		s.NotOurs += sh.notOurs.Load()
		s.Rejected += sh.rejected.Load()
		s.StaleMAC2 += sh.staleMAC2.Load()
	}
	return s
}
