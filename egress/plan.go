package egress

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/wedge-edge/wedge/internal/api"
)

const (
	// MaxPlanSize bounds an egress plan file. Every node re-reads the plan
	// live, so a runaway generator must fail loudly instead of eating memory.
	MaxPlanSize = 4 << 20

	// MaxPlanAddrs4 bounds the IPv4 addresses of a plan, over all blocks.
	// Parsing expands every IPv4 address into per-(data center, country,
	// pool) lists so that selection is one scan; the bound keeps both the
	// expansion and the scan small.
	MaxPlanAddrs4 = 1 << 16

	// DefaultPorts is the source-port space of every IPv4 egress address
	// when the plan does not say "ports".
	DefaultPorts = "1024-65535"

	// DefaultSlice is the number of source ports per node when the plan
	// does not say "slice": 31 slices of DefaultPorts.
	DefaultSlice = 2048
)

// Plan is a parsed egress plan: the egress prefixes of every data center,
// tagged with the country and pool of the clients they serve, and the
// source-port slicing that lets every node of a data center share each IPv4
// address. A Plan is immutable and safe for concurrent use; to change the
// plan, parse the file again and swap the pointer.
//
// The plan is one JSON object, read by every node of every data center:
//
//	{
//	  "ports": "1024-65535",
//	  "slice": 2048,
//	  "data_centers": {
//	    "ams": {"country": "NL", "region": "NL-NH", "city": "Amsterdam"},
//	    "fra": {"country": "DE", "region": "DE-HE", "city": "Frankfurt"}
//	  },
//	  "ipv4": [
//	    {"prefix": "198.51.100.0/28",  "country": "NL", "pool": "trusted", "dc": "ams"},
//	    {"prefix": "198.51.100.16/29", "country": "DE", "pool": "trusted", "dc": "fra",
//	     "owners": {"198.51.100.20": "ams"}},
//	    {"prefix": "198.51.100.32/30", "country": "NL", "pool": "untrusted", "dc": "ams"}
//	  ],
//	  "ipv6": [
//	    {"prefix": "2001:db8:5100::/48", "country": "NL", "pool": "trusted", "dc": "ams"}
//	  ],
//	  "fallback": {
//	    "countries": {"BE": ["NL", "DE"]},
//	    "pools": {"untrusted": "NL", "trusted": "NL"}
//	  }
//	}
//
// "ports" (LO-HI, inclusive, 1-65535; default DefaultPorts) is the
// source-port space of every IPv4 egress address and "slice" (default
// DefaultSlice) the ports each node gets. Slice k, counted from 0, is
// [LO + k*slice, LO + (k+1)*slice - 1]; a last partial slice is unused. A
// node claims a slot 1-255 in its data center and uses slice slot-1 on
// every IPv4 address its data center owns, so nodes never collide on a
// source ip:port and return traffic can be steered by port. A slot beyond
// the last slice gets no IPv4 egress (Slice returns ErrNoSlice).
//
// Each IPv4 address belongs to exactly one data center: its block's "dc",
// unless the block's "owners" names another one for that single address.
// Moving an address between data centers is an edit of "owners" (or "dc");
// Select4 then hands it to the new owner's clients. IPv6 blocks are not
// sliced and have no "owners": a node uses its own /64 of a block, the one
// whose bits 56-63 are its slot inside the block's first /56 (NodeNet6), so
// an IPv6 block must be a /56 or shorter.
//
// Names: "country" is an ISO 3166-1 alpha-2 code in upper case ("NL");
// pools and data centers are named by [a-z0-9][a-z0-9-]{0,31}. Every data
// center a block or an owner names must be listed under "data_centers" with
// its country; "region" (ISO 3166-2, like "NL-NH", of that country) and
// "city" are optional.
//
// "fallback" says where a client goes when its data center has no address
// with its (country, pool): first the countries of "countries"[country], in
// order, then the pool's default country "pools"[pool], and last the data
// center's own country (so that a plan without "fallback" still serves
// clients whose country is unknown), always in the same pool and data
// center: an address owned by another data center would not get its
// replies back on this node.
//
// ParsePlan rejects, naming the place (`ipv4[1].owners["198.51.100.40"]`):
// unknown fields, data after the object, a file over MaxPlanSize, prefixes
// with host bits set, IPv4-mapped prefixes and prefixes listed under the
// wrong family, overlapping blocks of a family, more than MaxPlanAddrs4
// IPv4 addresses, a plan with no block at all, a bad port range or slice,
// and malformed or unknown names anywhere, fallback included.
type Plan struct {
	portLo  uint16
	slice   int // ports per slot
	nslices int // whole slices in the port range

	dcs map[string]DataCenter

	// v4 and v6 are the blocks sorted by address, for OwnerDC and Geofeed.
	v4, v6 []block

	// groups4 holds, per (data center, country, pool), the sorted IPv4
	// addresses the data center owns; byDC4 the same per data center.
	// groups6 holds the IPv6 blocks per tag, sorted.
	groups4 map[tags][]uint32
	byDC4   map[string][]uint32
	groups6 map[tags][]netip.Prefix

	fbCountries map[string][]string
	fbPools     map[string]string
}

// DataCenter is one entry of the plan's "data_centers".
type DataCenter struct {
	Name    string
	Country string // ISO 3166-1 alpha-2, like "NL"
	Region  string // ISO 3166-2, like "NL-NH"; may be empty
	City    string // may be empty
}

type tags struct{ dc, country, pool string }

type block struct {
	prefix            netip.Prefix
	first, last       netip.Addr
	country, pool, dc string
	owners            map[netip.Addr]string // IPv4 only: addresses owned by another dc
	index             int                   // position in the file's list, for errors
}

type planJSON struct {
	Ports       *string           `json:"ports"`
	Slice       *int              `json:"slice"`
	DataCenters map[string]dcJSON `json:"data_centers"`
	IPv4        []blockJSON       `json:"ipv4"`
	IPv6        []blockJSON       `json:"ipv6"`
	Fallback    fallbackJSON      `json:"fallback"`
}

type dcJSON struct {
	Country string `json:"country"`
	Region  string `json:"region"`
	City    string `json:"city"`
}

type blockJSON struct {
	Prefix  string            `json:"prefix"`
	Country string            `json:"country"`
	Pool    string            `json:"pool"`
	DC      string            `json:"dc"`
	Owners  map[string]string `json:"owners"`
}

type fallbackJSON struct {
	Countries map[string][]string `json:"countries"`
	Pools     map[string]string   `json:"pools"`
}

// LoadPlan reads and parses the plan file at path (see Plan for the format).
// Its errors name the path.
func LoadPlan(path string) (*Plan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("egress plan: %w", err)
	}
	defer f.Close()
	// One byte more than allowed, so that parsePlan sees an oversized file.
	data, err := io.ReadAll(io.LimitReader(f, MaxPlanSize+1))
	if err == nil {
		var p *Plan
		if p, err = parsePlan(data); err == nil {
			return p, nil
		}
	}
	return nil, fmt.Errorf("egress plan %s: %w", path, err)
}

// ParsePlan parses a plan (see Plan for the format). It is deterministic and
// cheap enough to run on every change of the file.
func ParsePlan(data []byte) (*Plan, error) {
	p, err := parsePlan(data)
	if err != nil {
		return nil, fmt.Errorf("egress plan: %w", err)
	}
	return p, nil
}

func parsePlan(data []byte) (*Plan, error) {
	if len(data) > MaxPlanSize {
		return nil, fmt.Errorf("larger than %d MiB", MaxPlanSize>>20)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var raw planJSON
	if err := dec.Decode(&raw); err != nil {
		return nil, jsonError(data, err)
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); err != io.EOF {
		rest := bytes.TrimLeft(data[end:], " \t\r\n")
		return nil, fmt.Errorf("%s: data after the plan object", lineCol(data, int64(len(data)-len(rest))))
	}

	p := &Plan{
		dcs:         make(map[string]DataCenter, len(raw.DataCenters)),
		groups4:     make(map[tags][]uint32),
		byDC4:       make(map[string][]uint32),
		groups6:     make(map[tags][]netip.Prefix),
		fbCountries: make(map[string][]string, len(raw.Fallback.Countries)),
		fbPools:     make(map[string]string, len(raw.Fallback.Pools)),
	}
	if err := p.parsePorts(raw.Ports, raw.Slice); err != nil {
		return nil, err
	}
	if err := p.parseDCs(raw.DataCenters); err != nil {
		return nil, err
	}
	if len(raw.IPv4) == 0 && len(raw.IPv6) == 0 {
		return nil, errors.New("no egress prefixes: both ipv4 and ipv6 are empty")
	}
	var err error
	if p.v4, err = p.parseBlocks("ipv4", raw.IPv4); err != nil {
		return nil, err
	}
	if p.v6, err = p.parseBlocks("ipv6", raw.IPv6); err != nil {
		return nil, err
	}
	if err := p.parseFallback(raw.Fallback); err != nil {
		return nil, err
	}

	// The blocks are sorted, so appending in address order keeps every
	// list sorted.
	for _, b := range p.v4 {
		for a, last := u32(b.first), u32(b.last); ; a++ {
			dc := b.dc
			if o, ok := b.owners[addr4(a)]; ok {
				dc = o
			}
			t := tags{dc, b.country, b.pool}
			p.groups4[t] = append(p.groups4[t], a)
			p.byDC4[dc] = append(p.byDC4[dc], a)
			if a == last {
				break
			}
		}
	}
	for _, b := range p.v6 {
		t := tags{b.dc, b.country, b.pool}
		p.groups6[t] = append(p.groups6[t], b.prefix)
	}
	return p, nil
}

// jsonError adds the line and column to the decoder's errors that carry an
// offset, since a plan is edited by hand.
func jsonError(data []byte, err error) error {
	// Both offsets count the bytes read, so the last one read is the culprit
	// (for a type error, the end of the offending value).
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("%s: %w", lineCol(data, se.Offset-1), err)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("%s: %w", lineCol(data, te.Offset-1), err)
	}
	if errors.Is(err, io.EOF) {
		return errors.New("empty file")
	}
	return err
}

// lineCol names the byte at index i of data as "line L, column C", both
// counted from 1 (columns in bytes).
func lineCol(data []byte, i int64) string {
	i = min(max(i, 0), int64(len(data)))
	before := data[:i]
	line := bytes.Count(before, []byte("\n")) + 1
	col := len(before) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return fmt.Sprintf("line %d, column %d", line, col)
}

func (p *Plan) parsePorts(ports *string, slice *int) error {
	s := DefaultPorts
	if ports != nil {
		s = *ports
	}
	los, his, ok := strings.Cut(s, "-")
	lo, err1 := strconv.ParseUint(los, 10, 16)
	hi, err2 := strconv.ParseUint(his, 10, 16)
	if !ok || err1 != nil || err2 != nil || lo == 0 || hi < lo {
		return fmt.Errorf("ports: %q is not a port range (want LO-HI with 1 <= LO <= HI <= 65535, like %q)", s, DefaultPorts)
	}
	size := int(hi-lo) + 1
	p.portLo, p.slice = uint16(lo), DefaultSlice
	if slice != nil {
		p.slice = *slice
	}
	if p.slice < 1 || p.slice > size {
		return fmt.Errorf("slice: %d ports per node does not fit ports %s (want 1 to %d)", p.slice, s, size)
	}
	p.nslices = size / p.slice
	return nil
}

func (p *Plan) parseDCs(dcs map[string]dcJSON) error {
	for _, name := range sortedKeys(dcs) {
		d := dcs[name]
		place := fmt.Sprintf("data_centers[%q]", name)
		if !validName(name) {
			return fmt.Errorf("%s: %s", place, nameRule)
		}
		if d.Country == "" {
			return fmt.Errorf("%s.country: missing", place)
		}
		if err := checkCountry(d.Country); err != nil {
			return fmt.Errorf("%s.country: %w", place, err)
		}
		if d.Region != "" && !validRegion(d.Region, d.Country) {
			return fmt.Errorf("%s.region: %q is not an ISO 3166-2 code of %s (want like %q)", place, d.Region, d.Country, d.Country+"-AB")
		}
		if !validText(d.City) {
			return fmt.Errorf("%s.city: %q has control characters or is not UTF-8", place, d.City)
		}
		p.dcs[name] = DataCenter{Name: name, Country: d.Country, Region: d.Region, City: d.City}
	}
	return nil
}

// parseBlocks validates the blocks of one family ("ipv4" or "ipv6") and
// returns them sorted by address.
func (p *Plan) parseBlocks(fam string, list []blockJSON) ([]block, error) {
	v4 := fam == "ipv4"
	blocks := make([]block, 0, len(list))
	total := 0
	for i, bj := range list {
		place := fmt.Sprintf("%s[%d]", fam, i)
		pfx, err := p.parsePrefix(v4, bj.Prefix)
		if err != nil {
			return nil, fmt.Errorf("%s.prefix: %w", place, err)
		}
		if err := checkCountry(bj.Country); err != nil {
			return nil, fmt.Errorf("%s.country: %w", place, err)
		}
		if !validName(bj.Pool) {
			return nil, fmt.Errorf("%s.pool: %q: %s", place, bj.Pool, nameRule)
		}
		if err := p.checkDC(bj.DC); err != nil {
			return nil, fmt.Errorf("%s.dc: %w", place, err)
		}
		b := block{prefix: pfx, first: pfx.Addr(), last: lastAddr(pfx), country: bj.Country, pool: bj.Pool, dc: bj.DC, index: i}
		if v4 {
			total += 1 << (32 - pfx.Bits())
			if total > MaxPlanAddrs4 {
				return nil, fmt.Errorf("%s.prefix: %s brings the plan to %d IPv4 addresses, more than %d", place, pfx, total, MaxPlanAddrs4)
			}
		} else if len(bj.Owners) > 0 {
			return nil, fmt.Errorf("%s.owners: only IPv4 addresses move between data centers; split the IPv6 block instead", place)
		}
		for _, k := range sortedKeys(bj.Owners) {
			oplace := fmt.Sprintf("%s.owners[%q]", place, k)
			a, err := netip.ParseAddr(k)
			switch {
			case err != nil || a.Zone() != "":
				return nil, fmt.Errorf("%s: not an IPv4 address", oplace)
			case a.Is4In6():
				return nil, fmt.Errorf("%s: IPv4-mapped; write %s", oplace, a.Unmap())
			case !pfx.Contains(a):
				return nil, fmt.Errorf("%s: not inside %s", oplace, pfx)
			}
			if err := p.checkDC(bj.Owners[k]); err != nil {
				return nil, fmt.Errorf("%s: %w", oplace, err)
			}
			if b.owners == nil {
				b.owners = make(map[netip.Addr]string, len(bj.Owners))
			}
			b.owners[a] = bj.Owners[k]
		}
		blocks = append(blocks, b)
	}
	sort.SliceStable(blocks, func(i, j int) bool { return blocks[i].first.Less(blocks[j].first) })
	for k := 1; k < len(blocks); k++ {
		a, b := blocks[k-1], blocks[k]
		if b.first.Compare(a.last) <= 0 {
			if a.index > b.index {
				a, b = b, a
			}
			return nil, fmt.Errorf("%s[%d].prefix: %s overlaps %s[%d] %s", fam, b.index, b.prefix, fam, a.index, a.prefix)
		}
	}
	return blocks, nil
}

func (p *Plan) parsePrefix(v4 bool, s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("missing")
	}
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a prefix (want ADDRESS/BITS)", s)
	}
	a := pfx.Addr()
	switch {
	case a.Is4In6():
		if pfx.Bits() >= 96 {
			return netip.Prefix{}, fmt.Errorf("%s is IPv4-mapped; list it under ipv4 as %s", pfx, netip.PrefixFrom(a.Unmap(), pfx.Bits()-96).Masked())
		}
		return netip.Prefix{}, fmt.Errorf("%s is IPv4-mapped", pfx)
	case v4 && !a.Is4():
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv4 prefix; IPv6 blocks go under ipv6", pfx)
	case !v4 && !a.Is6():
		return netip.Prefix{}, fmt.Errorf("%s is not an IPv6 prefix; IPv4 blocks go under ipv4", pfx)
	case pfx != pfx.Masked():
		return netip.Prefix{}, fmt.Errorf("%s has host bits set; the canonical form is %s", pfx, pfx.Masked())
	case !v4 && pfx.Bits() > 56:
		return netip.Prefix{}, fmt.Errorf("%s is longer than /56: each node takes the /64 of its slot inside the block's first /56", pfx)
	}
	return pfx, nil
}

func (p *Plan) checkDC(name string) error {
	if name == "" {
		return errors.New("missing data center")
	}
	if _, ok := p.dcs[name]; !ok {
		return fmt.Errorf("unknown data center %q (not in data_centers)", name)
	}
	return nil
}

func (p *Plan) parseFallback(fb fallbackJSON) error {
	for _, c := range sortedKeys(fb.Countries) {
		place := fmt.Sprintf("fallback.countries[%q]", c)
		if err := checkCountry(c); err != nil {
			return fmt.Errorf("%s: %w", place, err)
		}
		for j, to := range fb.Countries[c] {
			if err := checkCountry(to); err != nil {
				return fmt.Errorf("%s[%d]: %w", place, j, err)
			}
			if to == c {
				return fmt.Errorf("%s[%d]: %s falls back to itself", place, j, c)
			}
			if slices.Contains(fb.Countries[c][:j], to) {
				return fmt.Errorf("%s[%d]: %s is listed twice", place, j, to)
			}
		}
		p.fbCountries[c] = slices.Clone(fb.Countries[c])
	}
	for _, pool := range sortedKeys(fb.Pools) {
		place := fmt.Sprintf("fallback.pools[%q]", pool)
		if !validName(pool) {
			return fmt.Errorf("%s: %s", place, nameRule)
		}
		if err := checkCountry(fb.Pools[pool]); err != nil {
			return fmt.Errorf("%s: %w", place, err)
		}
		p.fbPools[pool] = fb.Pools[pool]
	}
	return nil
}

const nameRule = "not a valid name (want [a-z0-9][a-z0-9-]{0,31}, the API's pool rule)"

// validName reports whether s has the form of a pool or data center name.
// Pools follow the registration API's rule (api.ValidPool), so every pool a
// plan names can be asked for and every pool a client asks for can be
// named here; data center names follow the same rule.
func validName(s string) bool { return api.ValidPool(s) }

// checkCountry checks the form of an ISO 3166-1 alpha-2 code (the API's
// rule, api.ValidCountry); whether the code is assigned is not checked,
// the plan's authors know their countries.
func checkCountry(s string) error {
	if !api.ValidCountry(s) {
		return fmt.Errorf("%q is not an ISO 3166-1 alpha-2 code (want two upper-case letters, like \"NL\")", s)
	}
	return nil
}

func upper(c byte) bool { return 'A' <= c && c <= 'Z' }

// validRegion reports whether s has the form of an ISO 3166-2 code of
// country: the country, a hyphen and one to three letters or digits.
func validRegion(s, country string) bool {
	sub, ok := strings.CutPrefix(s, country+"-")
	if !ok || len(sub) < 1 || len(sub) > 3 {
		return false
	}
	for i := 0; i < len(sub); i++ {
		if !upper(sub[i]) && !('0' <= sub[i] && sub[i] <= '9') {
			return false
		}
	}
	return true
}

func validText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addr4(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	b := a.AsSlice()
	for i := p.Bits(); i < len(b)*8; {
		if i%8 == 0 {
			b[i/8] = 0xff
			i += 8
			continue
		}
		b[i/8] |= 0xff >> (i % 8)
		i += 8 - i%8
	}
	last, _ := netip.AddrFromSlice(b)
	return last
}
