package lb

// The hashes here are part of the wire contract between nodes: every node
// must build the same Maglev table from the same membership, and the XDP
// program computes Hash in C. They are pure integer arithmetic with fixed
// constants, so they are identical across processes, architectures and Go
// versions. Never replace them with hash/maphash or anything seeded at run
// time; TestMaglevGolden pins their output.

// Hash is the hash of a ClientID that picks its Maglev slot: the slot of cid
// in a table of size M is Hash(cid) % M. It is murmur3's 32-bit finalizer
// (fmix32), a bijection on uint32 with full avalanche, so consecutive
// ClientIDs land on unrelated slots. bpf/ implements the same function; the
// two must stay identical.
func Hash(cid uint32) uint32 {
	h := cid
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// FNV-1a 64-bit parameters (http://www.isthe.com/chongo/tech/comp/fnv/).
const (
	fnvOffset64 = 0xcbf29ce484222325
	fnvPrime64  = 0x100000001b3
)

// fnv1a64 is FNV-1a 64 of s followed by suffix, without allocating.
func fnv1a64(s, suffix string) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	for i := 0; i < len(suffix); i++ {
		h ^= uint64(suffix[i])
		h *= fnvPrime64
	}
	return h
}

// fmix64 is murmur3's 64-bit finalizer. FNV-1a diffuses a byte only upwards
// (one multiply per byte), so inputs that differ in one byte, like "node1"
// and "node2", give outputs that differ in few bits; the finalizer spreads
// every input bit over the whole word before it is reduced modulo the size.
func fmix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}

// Suffixes that make the two per-backend hashes of the Maglev paper
// independent functions of the node id.
const (
	maglevOffsetSuffix = "\x00maglev-offset"
	maglevSkipSuffix   = "\x00maglev-skip"
)

// maglevOffsetSkip returns the start and step of backend id's permutation of
// the slots of a table of (prime) size:
//
//	offset = fmix64(FNV-1a-64(id || "\x00maglev-offset")) % size
//	skip   = fmix64(FNV-1a-64(id || "\x00maglev-skip")) % (size-1) + 1
//
// Because size is prime and 1 <= skip < size, offset + j*skip (mod size) for
// j = 0..size-1 visits every slot exactly once.
func maglevOffsetSkip(id string, size uint32) (offset, skip uint32) {
	m := uint64(size)
	offset = uint32(fmix64(fnv1a64(id, maglevOffsetSuffix)) % m)
	skip = uint32(fmix64(fnv1a64(id, maglevSkipSuffix))%(m-1) + 1)
	return offset, skip
}
