package paths

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSummaryRoundTrip(t *testing.T) {
	at := time.UnixMilli(1_800_000_000_123)
	s := Summary{
		At:    at,
		Relay: "198.18.2.1:7443",
		DCs:   map[string]Measure{"dc1": {RTT: 10_250 * time.Microsecond, Samples: 3, Updated: at.Add(-1500 * time.Millisecond)}},
		Prefixes: []Entry{
			{Prefix: pfx("203.0.113.0/24"), Dst: ap("203.0.113.7:443"), Measure: Measure{RTT: 80 * ms1, Samples: 12, Updated: at.Add(-2 * time.Second)}},
			{Prefix: pfx("2001:db8:1::/48"), Measure: Measure{RTT: 5 * ms1, Samples: 1, Updated: at}},
		},
	}
	got, err := ParseSummary(s.Encode(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Fatalf("round trip:\n got %+v\nwant %+v\n%s", got, s, s.Encode())
	}
	// The cap on entries.
	if got, _ := ParseSummary(s.Encode(), 1); len(got.Prefixes) != 1 {
		t.Fatalf("cap 1: %d prefixes", len(got.Prefixes))
	}
	// 1,000 prefixes stay small.
	big := Summary{At: at}
	for i := range 1000 {
		big.Prefixes = append(big.Prefixes, Entry{Prefix: pfx(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)),
			Dst: ap(fmt.Sprintf("10.%d.%d.1:443", i/256, i%256)), Measure: Measure{RTT: time.Duration(i+1) * 1234 * time.Microsecond, Samples: 999, Updated: at}})
	}
	if n := len(big.Encode()); n > 64<<10 {
		t.Errorf("1,000 prefixes encode to %d bytes", n)
	}
	if got, err := ParseSummary(big.Encode(), 1000); err != nil || !reflect.DeepEqual(got.Prefixes, big.Prefixes) {
		t.Errorf("1,000 prefixes: round trip differs (%v)", err)
	}
}

func TestParseSummaryBad(t *testing.T) {
	for _, bad := range []string{
		"",
		"wedge-paths 2\nat 1\n",
		"wedge-paths 1\n",
		"wedge-paths 1\np 10.0.0.0/24 1 1 0 -\nat 1800000000000\n",
		"wedge-paths 1\nat x\n",
	} {
		if _, err := ParseSummary([]byte(bad), 10); err == nil {
			t.Errorf("ParseSummary(%q) succeeded", bad)
		}
	}
	// Bad lines are skipped, good ones kept.
	s, err := ParseSummary([]byte(strings.Join([]string{
		"wedge-paths 1", "at 1800000000000",
		"p 10.0.0.0/16 1000 1 0 -",          // not a /24
		"p 10.0.0.5/24 1000 1 0 -",          // not masked
		"p 10.0.1.0/24 0 1 0 -",             // no RTT
		"p 10.0.2.0/24 1000 1 -5 -",         // negative age
		"p 10.0.3.0/24 1000 1 0 10.9.9.9:1", // a Dst outside: dropped
		"future line",
		"dc dc2 2000 4 100",
	}, "\n")), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Prefixes) != 1 || s.Prefixes[0].Prefix != pfx("10.0.3.0/24") || s.Prefixes[0].Dst.IsValid() || s.DCs["dc2"].RTT != 2*ms1 {
		t.Fatalf("parsed %+v", s)
	}
}
