package paths

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Summary is what one node publishes: its hottest prefixes and its RTTs
// to the other data centers, as measured at At.
type Summary struct {
	// At is when the summary was made; a record older than the Table's
	// Stale is ignored (its publisher is stuck).
	At time.Time
	// Relay is the address of the node's relay listener ("" if unknown):
	// where another data center sends the flows it relays through here.
	Relay string
	// DCs are the node's RTTs to other data centers, by name.
	DCs map[string]Measure
	// Prefixes are its measurements of destination prefixes, at most the
	// publisher's cap.
	Prefixes []Entry
}

// Entry is one prefix of a Summary.
type Entry struct {
	Prefix netip.Prefix
	Measure
	// Dst is the last destination (address and port) dialed in Prefix:
	// a target for a data center that probes the prefix.
	Dst netip.AddrPort
}

// summaryMagic is the first line of an encoded Summary; a reader skips a
// record of another version.
const summaryMagic = "wedge-paths 1"

// Encode writes s as text, one item a line, times as milliseconds (At as
// Unix milliseconds, each measurement's age relative to At, RTTs in
// microseconds):
//
//	wedge-paths 1
//	at UNIXMS
//	relay HOST:PORT
//	dc NAME RTTUS SAMPLES AGEMS
//	p PREFIX RTTUS SAMPLES AGEMS DST
//
// About 50 bytes a prefix: 1,000 prefixes are 50 kB, well inside etcd's
// default 1.5 MiB request limit.
func (s Summary) Encode() []byte {
	var b strings.Builder
	b.Grow(64 + 56*len(s.Prefixes) + 32*len(s.DCs))
	fmt.Fprintf(&b, "%s\nat %d\n", summaryMagic, s.At.UnixMilli())
	if s.Relay != "" {
		fmt.Fprintf(&b, "relay %s\n", s.Relay)
	}
	age := func(t time.Time) int64 { return max(0, s.At.Sub(t).Milliseconds()) }
	dcs := make([]string, 0, len(s.DCs))
	for dc := range s.DCs {
		dcs = append(dcs, dc)
	}
	slices.Sort(dcs)
	for _, dc := range dcs {
		m := s.DCs[dc]
		fmt.Fprintf(&b, "dc %s %d %d %d\n", dc, m.RTT.Microseconds(), m.Samples, age(m.Updated))
	}
	for _, e := range s.Prefixes {
		dst := "-"
		if e.Dst.IsValid() {
			dst = e.Dst.String()
		}
		fmt.Fprintf(&b, "p %s %d %d %d %s\n", e.Prefix, e.RTT.Microseconds(), e.Samples, age(e.Updated), dst)
	}
	return []byte(b.String())
}

// ParseSummary reads an encoded Summary. Lines it does not understand are
// skipped (a newer writer may add kinds); a wrong first line, or no "at"
// line, is an error. At most maxEntries prefixes are read.
func ParseSummary(v []byte, maxEntries int) (Summary, error) {
	lines := strings.Split(string(v), "\n")
	if len(lines) == 0 || lines[0] != summaryMagic {
		return Summary{}, fmt.Errorf("paths: summary: want first line %q", summaryMagic)
	}
	s := Summary{DCs: map[string]Measure{}}
	var ats bool
	measure := func(rtt, n, age string) (Measure, bool) {
		r, err1 := strconv.ParseInt(rtt, 10, 64)
		c, err2 := strconv.ParseUint(n, 10, 64)
		a, err3 := strconv.ParseInt(age, 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || r <= 0 || a < 0 {
			return Measure{}, false
		}
		return Measure{RTT: time.Duration(r) * time.Microsecond, Samples: c,
			Updated: s.At.Add(-time.Duration(a) * time.Millisecond)}, true
	}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "at" && len(f) == 2:
			ms, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || ms <= 0 {
				return Summary{}, fmt.Errorf("paths: summary: bad time %q", f[1])
			}
			s.At, ats = time.UnixMilli(ms), true
		case !ats:
			// Ages are relative to At, which comes first.
			return Summary{}, fmt.Errorf("paths: summary: %q before the time", f[0])
		case f[0] == "relay" && len(f) == 2:
			s.Relay = f[1]
		case f[0] == "dc" && len(f) == 5:
			if m, ok := measure(f[2], f[3], f[4]); ok && len(s.DCs) < maxDCs {
				s.DCs[f[1]] = m
			}
		case f[0] == "p" && len(f) == 6 && len(s.Prefixes) < maxEntries:
			p, err := netip.ParsePrefix(f[1])
			if err != nil || p != PrefixOf(p.Addr()) {
				continue
			}
			m, ok := measure(f[2], f[3], f[4])
			if !ok {
				continue
			}
			e := Entry{Prefix: p, Measure: m}
			if d, err := netip.ParseAddrPort(f[5]); err == nil && PrefixOf(d.Addr()) == p {
				e.Dst = d
			}
			s.Prefixes = append(s.Prefixes, e)
		}
	}
	if !ats {
		return Summary{}, fmt.Errorf("paths: summary: no time")
	}
	return s, nil
}

// rebase moves s to the clock of its reader: At becomes at, when the
// reader received it, and every measurement's time moves with it, so
// that the publisher's clock, however far off, does not make its figures
// look older or newer than they are.
func (s Summary) rebase(at time.Time) Summary {
	d := at.Sub(s.At)
	out := s
	out.At = at
	out.DCs = make(map[string]Measure, len(s.DCs))
	for dc, m := range s.DCs {
		m.Updated = m.Updated.Add(d)
		out.DCs[dc] = m
	}
	out.Prefixes = make([]Entry, len(s.Prefixes))
	for i, e := range s.Prefixes {
		e.Updated = e.Updated.Add(d)
		out.Prefixes[i] = e
	}
	return out
}
