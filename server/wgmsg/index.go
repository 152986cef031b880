package wgmsg

import "encoding/binary"

// Index layout; see the package comment.
const (
	IndexRandomBits = 20
	IndexRandomMask = 1<<IndexRandomBits - 1
	indexCheckShift = 20
	indexSlotShift  = 24
)

// Hash is murmur3's 32-bit finalizer (fmix32). It must stay identical to
// lb.Hash and to the XDP program's hash: the check bits of a tagged index are
// computed with it on both sides. It is copied rather than imported so that
// this package does not pull in lb (and cilium/ebpf); a test pins the two
// together.
func Hash(x uint32) uint32 {
	h := x
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

const indexKeyLabel = "wedge index key v1"

// IndexKey derives the cluster's index key from the service private key: the
// first four bytes, little-endian, of BLAKE2s-256("wedge index key v1" ||
// key). Nodes share the service key, so they share the index key.
func IndexKey(servicePrivateKey [32]byte) uint32 {
	var h [32]byte
	hash2(&h, []byte(indexKeyLabel), servicePrivateKey[:])
	k := binary.LittleEndian.Uint32(h[:])
	clear(h[:])
	return k
}

func indexCheck(slot uint8, r, key uint32) uint32 {
	return Hash(r^key^uint32(slot)<<indexCheckShift) >> 28
}

// Tag returns the tagged index of slot with random part r (only its low 20
// bits are used). slot must be 1..255: slot 0 makes an index SlotOf reports
// as untagged.
func Tag(slot uint8, r, key uint32) uint32 {
	r &= IndexRandomMask
	return uint32(slot)<<indexSlotShift | indexCheck(slot, r, key)<<indexCheckShift | r
}

// SlotOf returns the slot idx is tagged with. ok is false when the slot is 0
// or the check bits do not match; an index made by something other than Tag
// still passes with probability 255/4096.
func SlotOf(idx, key uint32) (slot uint8, ok bool) {
	slot = uint8(idx >> indexSlotShift)
	if slot == 0 {
		return 0, false
	}
	if (idx>>indexCheckShift)&0xf != indexCheck(slot, idx&IndexRandomMask, key) {
		return 0, false
	}
	return slot, true
}
