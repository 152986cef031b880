package egress

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// What a parsed Plan answers: which IPv4 address or IPv6 net a client
// gets (Select4, Select6, along the fallback chain), which source ports
// a node uses (Slice, Slicing), and which data center owns an address
// (OwnerDC, Addrs4). Parsing and validation are in plan.go.

var (
	// ErrNoEgress is wrapped by every selection error: no address (or IPv6
	// block) of the data center matches the client's tags or any fallback.
	ErrNoEgress = errors.New("egress: no egress address")

	// ErrNoSlice is wrapped by Slice when a node's slot has no port slice:
	// that node cannot use IPv4 egress.
	ErrNoSlice = errors.New("egress: no port slice")
)

// Fallback says which step of the fallback chain a Choice came from, so the
// caller can count clients that did not get their own country.
type Fallback uint8

const (
	// NoFallback: the client's own country.
	NoFallback Fallback = iota
	// CountryFallback: a country of the plan's fallback.countries.
	CountryFallback
	// PoolFallback: the pool's default country, fallback.pools.
	PoolFallback
	// DataCenterFallback: the data center's own country, the last step,
	// so that a client of unknown country in a pool with no default (a
	// plan without "fallback", no GeoIP) is not stranded.
	DataCenterFallback
)

// String returns "none", "country", "pool" or "dc", fit for a metric label.
func (f Fallback) String() string {
	switch f {
	case NoFallback:
		return "none"
	case CountryFallback:
		return "country"
	case PoolFallback:
		return "pool"
	case DataCenterFallback:
		return "dc"
	}
	return "Fallback(" + strconv.Itoa(int(f)) + ")"
}

// Choice is the result of Select4 or Select6.
type Choice struct {
	// Addr is the IPv4 egress address (Select4 only).
	Addr netip.Addr
	// Net is the node's /64 of the chosen IPv6 block (Select6 only).
	Net netip.Prefix
	// Country is the country of the chosen egress: the client's own one
	// unless Fallback says otherwise.
	Country string
	// Fallback is the step of the fallback chain that found the egress.
	Fallback Fallback
}

// Slice returns the source ports, inclusive, that the node with slot uses
// on every IPv4 address its data center owns. Slots count from 1; a slot
// of 0 or beyond the plan's last whole slice gets an error wrapping
// ErrNoSlice, and that node cannot use IPv4 egress.
func (p *Plan) Slice(slot uint8) (lo, hi uint16, err error) {
	if slot == 0 || int(slot) > p.nslices {
		return 0, 0, fmt.Errorf("%w for slot %d: %d-port slices from port %d give slots 1-%d", ErrNoSlice, slot, p.slice, p.portLo, min(p.nslices, 255))
	}
	l := int(p.portLo) + (int(slot)-1)*p.slice
	return uint16(l), uint16(l + p.slice - 1), nil
}

// Slicing returns how every IPv4 address's ports are cut: slice k (from
// 0) is [portLo + k*size, portLo + (k+1)*size - 1], for k < slices. The
// XDP program steers return traffic by it.
func (p *Plan) Slicing() (portLo, size, slices uint16) {
	return p.portLo, uint16(p.slice), uint16(min(p.nslices, 255))
}

// Serves reports whether any block of the plan, in any data center, has
// country (when not empty) and whether any has pool (when not empty): a
// registration asking for tags the plan never serves is refused.
func (p *Plan) Serves(country, pool string) (hasCountry, hasPool bool) {
	hasCountry, hasPool = country == "", pool == ""
	for t := range p.groups4 {
		hasCountry = hasCountry || t.country == country
		hasPool = hasPool || t.pool == pool
	}
	for t := range p.groups6 {
		hasCountry = hasCountry || t.country == country
		hasPool = hasPool || t.pool == pool
	}
	return hasCountry, hasPool
}

// Pools returns the pools the plan's blocks name, in any data center,
// sorted.
func (p *Plan) Pools() []string {
	seen := map[string]bool{}
	for t := range p.groups4 {
		seen[t.pool] = true
	}
	for t := range p.groups6 {
		seen[t.pool] = true
	}
	return sortedKeys(seen)
}

// PoolDefault returns the pool's default country, "fallback"."pools"[pool],
// or "" when the plan names none.
func (p *Plan) PoolDefault(pool string) string { return p.fbPools[pool] }

// DataCenters returns the names of the plan's data centers, sorted.
func (p *Plan) DataCenters() []string { return sortedKeys(p.dcs) }

// DataCenter returns the data center called name.
func (p *Plan) DataCenter(name string) (DataCenter, bool) {
	d, ok := p.dcs[name]
	return d, ok
}

// Addrs4 returns, sorted, the IPv4 addresses data center dc owns now, over
// all countries and pools. The slice is the caller's.
func (p *Plan) Addrs4(dc string) []netip.Addr {
	us := p.byDC4[dc]
	if len(us) == 0 {
		return nil
	}
	out := make([]netip.Addr, len(us))
	for i, u := range us {
		out[i] = addr4(u)
	}
	return out
}

// OwnerDC returns the data center that owns egress address a (for IPv6,
// the data center of the block holding a), so that replies to a can be
// steered there. An IPv4-mapped a is looked up as IPv4.
func (p *Plan) OwnerDC(a netip.Addr) (string, bool) {
	a = a.Unmap()
	blocks := p.v6
	if a.Is4() {
		blocks = p.v4
	}
	// The last block starting at or before a is the only one that can hold it.
	i := sort.Search(len(blocks), func(i int) bool { return a.Less(blocks[i].first) }) - 1
	if i < 0 || !blocks[i].prefix.Contains(a) {
		return "", false
	}
	if dc, ok := blocks[i].owners[a]; ok {
		return dc, true
	}
	return blocks[i].dc, true
}

// Select4 picks the IPv4 egress address for a client of data center dc
// with tags (country, pool). Among the matching addresses dc owns, key
// (say, a hash of the client's identity) picks one by rendezvous hashing:
// the same key gets the same address while the set is unchanged, and
// adding, removing or moving one address moves only the clients that
// gain or lose it. With no match the fallback chain is tried (see Plan);
// country may be empty when unknown, leaving the pool's default and then
// the data center's own country.
// The cost is one hash per candidate address, so callers choose once per
// client, not per flow. The error wraps ErrNoEgress.
func (p *Plan) Select4(country, pool, dc string, key uint32) (Choice, error) {
	var c Choice
	err := p.walk("ipv4", country, pool, dc, &c, func(t tags) bool {
		addrs := p.groups4[t]
		if len(addrs) == 0 {
			return false
		}
		best, bestW := addrs[0], weight4(key, addrs[0])
		for _, a := range addrs[1:] {
			if w := weight4(key, a); w > bestW {
				best, bestW = a, w
			}
		}
		c.Addr = addr4(best)
		return true
	})
	return c, err
}

// Select6 is Select4 for IPv6: key picks one of the matching blocks dc
// owns, and the Choice carries the /64 of that block that belongs to the
// node with slot (NodeNet6). Which address of the /64 a client gets is up
// to the caller.
func (p *Plan) Select6(country, pool, dc string, slot uint8, key uint32) (Choice, error) {
	if slot == 0 {
		return Choice{}, errors.New("egress plan: slot 0: node slots are 1-255")
	}
	var c Choice
	err := p.walk("ipv6", country, pool, dc, &c, func(t tags) bool {
		blocks := p.groups6[t]
		if len(blocks) == 0 {
			return false
		}
		best, bestW := blocks[0], weight6(key, blocks[0])
		for _, b := range blocks[1:] {
			if w := weight6(key, b); w > bestW {
				best, bestW = b, w
			}
		}
		c.Net, _ = NodeNet6(best, slot) // cannot fail: blocks are checked at parse
		return true
	})
	return c, err
}

// walk runs try on the steps of the fallback chain, skipping countries
// already tried, and fills c's Country and Fallback from the first step
// that succeeds.
func (p *Plan) walk(fam, country, pool, dc string, c *Choice, try func(tags) bool) error {
	if _, ok := p.dcs[dc]; !ok {
		return fmt.Errorf("%w: unknown data center %q", ErrNoEgress, dc)
	}
	var tried []string
	step := func(country string, f Fallback) bool {
		if country == "" || slices.Contains(tried, country) {
			return false
		}
		tried = append(tried, country)
		if !try(tags{dc, country, pool}) {
			return false
		}
		c.Country, c.Fallback = country, f
		return true
	}
	if step(country, NoFallback) {
		return nil
	}
	if country != "" {
		for _, fc := range p.fbCountries[country] {
			if step(fc, CountryFallback) {
				return nil
			}
		}
	}
	if step(p.fbPools[pool], PoolFallback) {
		return nil
	}
	// Every data center has a country (parsePlan), so tried is never empty.
	if step(p.dcs[dc].Country, DataCenterFallback) {
		return nil
	}
	return fmt.Errorf("%w: data center %q has no %s address in pool %q for %s", ErrNoEgress, dc, fam, pool, strings.Join(tried, ", "))
}

// NodeNet6 returns the /64 of block that belongs to the node with slot: the
// one whose bits 56-63 are the slot, inside the block's first /56. block
// must be an IPv6 prefix of /56 or shorter and slot at least 1.
func NodeNet6(block netip.Prefix, slot uint8) (netip.Prefix, error) {
	a := block.Addr()
	if !block.IsValid() || !a.Is6() || a.Is4In6() || block.Bits() > 56 {
		return netip.Prefix{}, fmt.Errorf("egress plan: %s is not an IPv6 prefix of /56 or shorter", block)
	}
	if slot == 0 {
		return netip.Prefix{}, errors.New("egress plan: slot 0: node slots are 1-255")
	}
	b := block.Masked().Addr().As16()
	b[7] = slot
	return netip.PrefixFrom(netip.AddrFrom16(b), 64), nil
}

// weight4 is the rendezvous weight of IPv4 address a for key. (key, a) fills
// the 64-bit input and splitmix64 is a bijection, so no two addresses tie.
func weight4(key, a uint32) uint64 {
	return splitmix64(uint64(key)<<32 | uint64(a))
}

// weight6 is the rendezvous weight of an IPv6 block for key; ties, if the
// hash ever has one, go to the lower block.
func weight6(key uint32, b netip.Prefix) uint64 {
	a := b.Addr().As16()
	hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
	return splitmix64(splitmix64(hi^uint64(key)) ^ lo)
}

// splitmix64 is the finalizer of Vigna's SplitMix64: every input bit
// affects every output bit, which rendezvous hashing needs.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
