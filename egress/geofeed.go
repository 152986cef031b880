package egress

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
)

// geofeedHeader is the first line of every geofeed, so a reader can tell where it came from.
const geofeedHeader = "# wedge egress plan geofeed (RFC 8805)\n"

// Geofeed writes the plan as an RFC 8805 geofeed, so that geolocation
// providers place each egress address in the country of the clients it
// serves. Each line is "prefix,country,region,city,postal": a block's
// country comes from its "country" tag, and region, city and postal code
// are empty, because the plan tags blocks with a country only (the data
// center's region is where the servers are, not where the clients are).
//
// Data center ownership plays no part. Adjacent blocks of the same country
// are merged, and each merged range is written as the fewest prefixes that
// cover exactly its addresses, never one outside the plan or of another
// country. Lines are sorted, IPv4 before IPv6, and the output is the same
// for the same plan.
func (p *Plan) Geofeed(w io.Writer) error {
	bw := bufio.NewWriter(w)
	bw.WriteString(geofeedHeader)
	for _, blocks := range [][]block{p.v4, p.v6} {
		for _, s := range mergeSpans(blocks) {
			for _, pfx := range rangePrefixes(s.first, s.last) {
				fmt.Fprintf(bw, "%s,%s,,,\n", pfx, s.country)
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("egress plan: writing geofeed: %w", err)
	}
	return nil
}

// span is an inclusive address range of one country.
type span struct {
	first, last netip.Addr
	country     string
}

// mergeSpans joins blocks (sorted, not overlapping, one family) that touch
// and share a country.
func mergeSpans(blocks []block) []span {
	var out []span
	for _, b := range blocks {
		if n := len(out); n > 0 && out[n-1].country == b.country && out[n-1].last.Next() == b.first {
			out[n-1].last = b.last
			continue
		}
		out = append(out, span{b.first, b.last, b.country})
	}
	return out
}

// rangePrefixes returns the fewest prefixes that cover exactly the
// addresses first through last (same family, first <= last), in order.
// Greedily taking, at each start, the widest prefix that begins there and
// does not pass last gives the minimum.
func rangePrefixes(first, last netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for {
		bits := first.BitLen()
		for bits > 0 {
			wider := netip.PrefixFrom(first, bits-1)
			if wider.Masked().Addr() != first || lastAddr(wider).Compare(last) > 0 {
				break
			}
			bits--
		}
		pfx := netip.PrefixFrom(first, bits)
		out = append(out, pfx)
		end := lastAddr(pfx)
		if end.Compare(last) >= 0 {
			return out
		}
		first = end.Next()
	}
}
