package wgmsg

import "crypto/subtle"

// WireGuard's labels for the keys derived from a public key.
const (
	labelMAC1   = "mac1----"
	labelCookie = "cookie--"
)

// MAC1Key returns HASH(LABEL_MAC1 || publicKey): the key of the MAC1 of every
// handshake message sent to the holder of publicKey.
func MAC1Key(publicKey [32]byte) [32]byte {
	var k [32]byte
	hash2(&k, []byte(labelMAC1), publicKey[:])
	return k
}

// CookieKey returns HASH(LABEL_COOKIE || publicKey): the key that seals the
// cookie replies the holder of publicKey sends.
func CookieKey(publicKey [32]byte) [32]byte {
	var k [32]byte
	hash2(&k, []byte(labelCookie), publicKey[:])
	return k
}

// PeerKeys are the keys derived from a peer's public key that rewriting
// messages to that peer needs. Deriving them costs two hashes; callers keep
// them per peer.
type PeerKeys struct {
	MAC1   [32]byte // MAC1Key(peer)
	Cookie [32]byte // CookieKey(peer)
}

// NewPeerKeys derives the keys for the peer with publicKey.
func NewPeerKeys(publicKey [32]byte) PeerKeys {
	return PeerKeys{MAC1: MAC1Key(publicKey), Cookie: CookieKey(publicKey)}
}

// ComputeMAC1 sets mac to the MAC1 of the handshake message msg under key:
// keyed BLAKE2s-128 over everything before the two MACs, which includes the
// reserved bytes 1..3. msg must be at least 32 bytes long.
func ComputeMAC1(mac *[MACSize]byte, key *[32]byte, msg []byte) {
	mac128(mac, key[:], msg[:len(msg)-2*MACSize])
}

// CheckMAC1 reports whether msg's MAC1 is valid under key, in constant time.
// It is false for messages shorter than the two MACs, and for stamped
// messages whose reserved bytes have not been zeroed.
func CheckMAC1(key *[32]byte, msg []byte) bool {
	if len(msg) < 2*MACSize {
		return false
	}
	var mac [MACSize]byte
	ComputeMAC1(&mac, key, msg)
	off := len(msg) - 2*MACSize
	return subtle.ConstantTimeCompare(mac[:], msg[off:off+MACSize]) == 1
}

// SetMAC1 writes msg's MAC1 under key. msg must be at least 32 bytes long.
// MAC2 covers MAC1, so a message with a MAC2 is invalid afterwards.
func SetMAC1(key *[32]byte, msg []byte) {
	var mac [MACSize]byte
	ComputeMAC1(&mac, key, msg)
	copy(msg[len(msg)-2*MACSize:], mac[:])
}

// HasMAC2 reports whether msg carries a MAC2 (a nonzero last 16 bytes):
// wireguard-go sets one only while it holds a fresh cookie from the
// receiver, which happens when the receiver was under load.
func HasMAC2(msg []byte) bool {
	return len(msg) >= 2*MACSize && !isZero(msg[len(msg)-MACSize:])
}
