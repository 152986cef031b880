package wgmsg

import (
	"crypto/hmac"
	"hash"

	"golang.org/x/crypto/blake2s"
)

// WireGuard's hash functions, on golang.org/x/crypto/blake2s. Only
// handshake messages (and the opener) use them, so the allocation or two
// per call is nothing next to an X25519; the transport path never hashes.

// hash2 is WireGuard's HASH(a || b): unkeyed BLAKE2s-256.
func hash2(out *[32]byte, a, b []byte) {
	h, _ := blake2s.New256(nil)
	h.Write(a)
	h.Write(b)
	h.Sum(out[:0])
}

func newBlake2s256() hash.Hash {
	h, _ := blake2s.New256(nil)
	return h
}

// hmac2 is HMAC-BLAKE2s-256(key, a || b), as in wireguard-go.
func hmac2(out *[32]byte, key, a, b []byte) {
	m := hmac.New(newBlake2s256, key)
	m.Write(a)
	m.Write(b)
	m.Sum(out[:0])
}

// mac128 is keyed BLAKE2s-128 of msg under key (WireGuard's MAC).
func mac128(out *[MACSize]byte, key, msg []byte) {
	h, err := blake2s.New128(key)
	if err != nil {
		panic(err) // keys here are always 32 bytes
	}
	h.Write(msg)
	h.Sum(out[:0])
}

// kdf1 and kdf2 are WireGuard's KDF1 and KDF2 (HKDF with HMAC-BLAKE2s).
func kdf1(t0 *[32]byte, key, input []byte) {
	var prk [32]byte
	hmac2(&prk, key, input, nil)
	hmac2(t0, prk[:], []byte{1}, nil)
	clear(prk[:])
}

func kdf2(t0, t1 *[32]byte, key, input []byte) {
	var prk [32]byte
	hmac2(&prk, key, input, nil)
	hmac2(t0, prk[:], []byte{1}, nil)
	hmac2(t1, prk[:], t0[:], []byte{2})
	clear(prk[:])
}
