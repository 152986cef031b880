package wgmsg

import (
	"crypto/ecdh"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.zx2c4.com/wireguard/tai64n"
)

// Errors from Open, in the order it checks.
var (
	ErrSize      = errors.New("wgmsg: not the size of a handshake initiation")
	ErrType      = errors.New("wgmsg: not a handshake initiation")
	ErrMAC1      = errors.New("wgmsg: invalid mac1")
	ErrEphemeral = errors.New("wgmsg: invalid ephemeral key")
	ErrStatic    = errors.New("wgmsg: static key does not decrypt")
	ErrTimestamp = errors.New("wgmsg: timestamp does not decrypt")
)

// Noise parameters of WireGuard (the protocol's Construction and Identifier).
const (
	noiseConstruction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	wgIdentifier      = "WireGuard v1 zx2c4 Jason@zx2c4.com"
)

// zeroNonce is the nonce of every AEAD in the handshake: each key seals once.
var zeroNonce [chacha20poly1305.NonceSize]byte

// initialChainKey is HASH(Construction); initialHash is
// HASH(initialChainKey || Identifier).
var initialChainKey, initialHash [32]byte

func init() {
	hash2(&initialChainKey, []byte(noiseConstruction), nil)
	hash2(&initialHash, initialChainKey[:], []byte(wgIdentifier))
}

// An Opener reads the initiator's static public key out of handshake
// initiations sent to the service key: the only identity a standard client
// sends. It is safe for concurrent use.
type Opener struct {
	priv *ecdh.PrivateKey
	pub  [32]byte
	mac1 [32]byte
	// hash0 is HASH(initialHash || responder public key): the transcript
	// hash before the initiator's first field, the same for every
	// initiation.
	hash0 [32]byte
}

// NewOpener returns an Opener for the service key pair. The key need not be
// clamped: X25519 clamps, as wireguard-go does when it loads a key.
func NewOpener(servicePrivateKey [32]byte) (*Opener, error) {
	if isZero(servicePrivateKey[:]) {
		return nil, errors.New("wgmsg: zero service private key")
	}
	priv, err := ecdh.X25519().NewPrivateKey(servicePrivateKey[:])
	if err != nil {
		return nil, fmt.Errorf("wgmsg: service private key: %w", err)
	}
	o := &Opener{priv: priv}
	copy(o.pub[:], priv.PublicKey().Bytes())
	o.mac1 = MAC1Key(o.pub)
	hash2(&o.hash0, initialHash[:], o.pub[:])
	return o, nil
}

// PublicKey returns the service public key.
func (o *Opener) PublicKey() [32]byte { return o.pub }

// Open checks msg's MAC1 against the service public key and then follows the
// responder's side of the Noise IK handshake up to decrypting the initiator's
// static public key: one X25519 and one AEAD. It does not modify msg.
// Stamped reserved bytes must be zeroed first (they are under MAC1). On
// error the key is zero.
//
// The key is a claim, not a proof: the static field is sealed with a key
// from the ephemeral DH alone, so anyone can put any public key there, and a
// captured initiation can be replayed. That is enough to route the initiation
// to the client's owner, whose wireguard-go checks the rest; anything that
// costs more, such as loading the client's peer, wants OpenTimestamp.
func (o *Opener) Open(msg []byte) (initiatorStatic [32]byte, err error) {
	var st openState
	err = o.open(&st, msg)
	st.clear()
	return st.static, err
}

// OpenTimestamp is Open followed by decrypting the initiation's TAI64N
// timestamp, which authenticates the initiator: the timestamp is sealed with
// a key that mixes in DH(service, initiator static), which only the holder of
// the static private key can compute. That is one more X25519 as well as one
// more AEAD, so it costs about twice Open. It does not refuse replays:
// wireguard-go accepts an initiation only if its timestamp is after the last
// one it accepted from that peer, so a node that loads peers when they
// handshake should keep the last timestamp per client and compare (After).
// On error the key and timestamp are zero.
func (o *Opener) OpenTimestamp(msg []byte) (initiatorStatic [32]byte, ts tai64n.Timestamp, err error) {
	static, ts, _, err := o.OpenIf(msg, func([32]byte) bool { return true })
	return static, ts, err
}

// OpenIf is Open, then, if more accepts the initiator's static key, the
// rest of OpenTimestamp, without doing Open's X25519 again: a node
// loading peers on demand learns who an initiation claims to be for one
// X25519, and pays the second only for a client it may load. authenticated
// reports whether the timestamp was decrypted (more accepted the key and
// the timestamp opened). On error the key and timestamp are zero.
func (o *Opener) OpenIf(msg []byte, more func(static [32]byte) bool) (initiatorStatic [32]byte, ts tai64n.Timestamp, authenticated bool, err error) {
	var st openState
	defer st.clear()
	if err = o.open(&st, msg); err != nil {
		return initiatorStatic, ts, false, err
	}
	if !more(st.static) {
		return st.static, ts, false, nil
	}
	ts, err = o.timestamp(&st, msg)
	if err != nil {
		return initiatorStatic, ts, false, err
	}
	return st.static, ts, true, nil
}

// timestamp decrypts the initiation's timestamp, st being what open left.
func (o *Opener) timestamp(st *openState, msg []byte) (ts tai64n.Timestamp, err error) {
	// The timestamp's key: the chaining key mixed with DH(s_r, S_i), under
	// the transcript hash that now includes the encrypted static.
	hash2(&st.hash, st.hash[:], msg[OffsetInitiationStatic:OffsetInitiationTimestamp])
	pub, err := ecdh.X25519().NewPublicKey(st.static[:])
	if err != nil {
		return ts, fmt.Errorf("%w: %w", ErrStatic, err)
	}
	ss, err := o.priv.ECDH(pub)
	if err != nil {
		// A low-order static key: wireguard-go refuses such a peer too.
		return ts, fmt.Errorf("%w: %w", ErrStatic, err)
	}
	kdf2(&st.chainKey, &st.key, st.chainKey[:], ss)
	clear(ss)
	aead, _ := chacha20poly1305.New(st.key[:])
	buf := &struct {
		ts tai64n.Timestamp
		ad [32]byte
	}{ad: st.hash}
	if _, err := aead.Open(buf.ts[:0], zeroNonce[:], msg[OffsetInitiationTimestamp:OffsetInitiationMAC1], buf.ad[:]); err != nil {
		return ts, ErrTimestamp
	}
	return buf.ts, nil
}

type openState struct {
	hash, chainKey, key [32]byte
	static              [32]byte
}

func (st *openState) clear() {
	clear(st.hash[:])
	clear(st.chainKey[:])
	clear(st.key[:])
}

func (o *Opener) open(st *openState, msg []byte) error {
	if len(msg) != InitiationSize {
		return ErrSize
	}
	if Type(msg[0]) != Initiation {
		return ErrType
	}
	// MAC1 first: it costs a hash, where the rest costs an X25519.
	if !CheckMAC1(&o.mac1, msg) {
		return ErrMAC1
	}
	return o.openStatic(st, msg)
}

// openStatic is open past MAC1, apart so that the buffers the AEAD retains
// (and so the heap holds) are not allocated for messages MAC1 rejects.
func (o *Opener) openStatic(st *openState, msg []byte) error {
	eph := msg[OffsetInitiationEphemeral:OffsetInitiationStatic]
	hash2(&st.hash, o.hash0[:], eph)
	kdf1(&st.chainKey, initialChainKey[:], eph)
	pub, err := ecdh.X25519().NewPublicKey(eph)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrEphemeral, err)
	}
	ss, err := o.priv.ECDH(pub)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrEphemeral, err)
	}
	kdf2(&st.chainKey, &st.key, st.chainKey[:], ss)
	clear(ss)
	aead, _ := chacha20poly1305.New(st.key[:])
	buf := &struct{ static, ad [32]byte }{ad: st.hash}
	_, err = aead.Open(buf.static[:0], zeroNonce[:], msg[OffsetInitiationStatic:OffsetInitiationTimestamp], buf.ad[:])
	if err != nil {
		return ErrStatic
	}
	st.static = buf.static
	clear(buf.static[:])
	return nil
}
