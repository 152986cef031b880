package lb

// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
// Software Network Load Balancer", NSDI 2016, section 3.4) maps a ClientID to
// the node that owns it. Every node computes the table from the membership
// alone, so all nodes agree on every owner without talking to each other; the
// XDP program looks up slot Hash(cid) % Size() in a copy of Slots().

import (
	"errors"
	"fmt"
	"slices"
)

// DefaultTableSize is the Maglev table size nodes use unless configured
// otherwise. It is prime, as Maglev requires, and admits up to
// DefaultTableSize/MinSlotsPerBackend = 655 backends.
const DefaultTableSize = 65537

// MinSlotsPerBackend is the smallest ratio of table size to backend count
// NewTable accepts. Maglev gives every backend either floor(size/N) or
// ceil(size/N) slots; with at least 100 slots each, that one-slot difference
// is at most 1% of a backend's share.
const MinSlotsPerBackend = 100

// MaxTableSize is the largest table size NewTable accepts. A table with more
// slots than there are 24-bit ClientIDs balances nothing better.
const MaxTableSize = 1 << 24

// NoBackend is the slot value of a table without backends.
const NoBackend = ^uint32(0)

// Errors NewTable returns, wrapped with the details.
var (
	ErrTableSize = errors.New("lb: invalid Maglev table size")
	ErrBackends  = errors.New("lb: invalid Maglev backends")
)

// Table is an immutable Maglev lookup table. It is safe for concurrent use.
type Table struct {
	backends []string // sorted node ids
	slots    []uint32 // index into backends, or NoBackend
}

// NewTable builds the Maglev table of size slots for the given backends (node
// ids). The result depends only on the set of backends and on size, never on
// the order of the slice, which NewTable does not modify.
//
// size must be prime, at most MaxTableSize, and at least MinSlotsPerBackend
// times the number of backends. Node ids must be non-empty and distinct. With
// no backends the table is valid and Owner reports no owner.
//
// Each backend's permutation of the slots is offset, offset+skip,
// offset+2*skip, ... (mod size), where, with fmix64 murmur3's 64-bit
// finalizer,
//
//	offset = fmix64(FNV-1a-64(id || "\x00maglev-offset")) % size
//	skip   = fmix64(FNV-1a-64(id || "\x00maglev-skip")) % (size-1) + 1
//
// Backends, in sorted order, take turns claiming the next free slot of their
// permutation until every slot is taken.
func NewTable(backends []string, size uint32) (*Table, error) {
	if size > MaxTableSize || !isPrime(size) {
		return nil, fmt.Errorf("%w: %d is not a prime <= %d", ErrTableSize, size, MaxTableSize)
	}
	if uint64(size) < uint64(len(backends))*MinSlotsPerBackend {
		return nil, fmt.Errorf("%w: %d slots for %d backends, need at least %d per backend",
			ErrTableSize, size, len(backends), MinSlotsPerBackend)
	}
	sorted := slices.Clone(backends)
	slices.Sort(sorted)
	for i, id := range sorted {
		if id == "" {
			return nil, fmt.Errorf("%w: empty node id", ErrBackends)
		}
		if i > 0 && sorted[i-1] == id {
			return nil, fmt.Errorf("%w: duplicate node id %q", ErrBackends, id)
		}
	}
	return &Table{backends: sorted, slots: maglevFill(sorted, size)}, nil
}

// maglevFill populates a table of size slots for backends, in the given
// order. It is the paper's algorithm with each permutation generated on the
// fly instead of stored: pos[i] is the slot backend i tries next. It needs
// size to be prime but, unlike NewTable, accepts any number of backends; with
// more backends than slots the last ones get none.
func maglevFill(backends []string, size uint32) []uint32 {
	slots := make([]uint32, size)
	for i := range slots {
		slots[i] = NoBackend
	}
	n := uint32(len(backends))
	if n == 0 {
		return slots
	}
	pos := make([]uint32, n)
	skip := make([]uint32, n)
	for i, id := range backends {
		pos[i], skip[i] = maglevOffsetSkip(id, size)
	}
	for filled := uint32(0); ; {
		for i := uint32(0); i < n; i++ {
			c, s := pos[i], skip[i]
			for slots[c] != NoBackend {
				if c += s; c >= size { // c+s < 2*MaxTableSize: no overflow
					c -= size
				}
			}
			slots[c] = i
			if c += s; c >= size {
				c -= size
			}
			pos[i] = c
			if filled++; filled == size {
				return slots
			}
		}
	}
}

// isPrime reports whether n is prime, by trial division (n < 2^32, so at most
// 2^15 divisions).
func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := uint32(3); uint64(d)*uint64(d) <= uint64(n); d += 2 {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Size returns the number of slots.
func (t *Table) Size() uint32 { return uint32(len(t.slots)) }

// Backends returns the node ids in sorted order, the order Slots indexes.
// The caller owns the returned slice.
func (t *Table) Backends() []string { return slices.Clone(t.backends) }

// Slots returns, for each of the Size() slots, the index into Backends() of
// the slot's owner, or NoBackend for every slot when there are no backends.
// This is what the XDP loader copies into the BPF array. The caller owns the
// returned slice.
func (t *Table) Slots() []uint32 { return slices.Clone(t.slots) }

// Owner returns the node id that owns cid, and false when the table has no
// backends.
func (t *Table) Owner(cid uint32) (string, bool) {
	if len(t.backends) == 0 {
		return "", false
	}
	return t.backends[t.slots[Hash(cid)%uint32(len(t.slots))]], true
}
