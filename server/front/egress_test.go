package front

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/server/cluster"
)

// testPlan is egress's test plan of two data centers, ams and fra.
var testPlan = mustRead("../../egress/testdata/plan-two-dc.json")

func mustRead(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// The same plan with 198.51.100.4 moved to ams.
var movedPlan = strings.Replace(testPlan, `"owners": {"198.51.100.6": "ams"}`, `"owners": {"198.51.100.6": "ams", "198.51.100.4": "ams"}`, 1)

func TestEgressTable(t *testing.T) {
	p, err := egress.ParsePlan([]byte(testPlan))
	if err != nil {
		t.Fatal(err)
	}
	members := []cluster.Member{
		{ID: "a1", DC: "ams", Underlay: netip.MustParseAddr("198.18.1.1")},
		{ID: "f1", DC: "fra", Underlay: netip.MustParseAddr("198.18.5.1")},
		{ID: "f2", DC: "fra", Underlay: netip.MustParseAddr("198.18.5.2")},
	}
	tb := egressTable(p, "ams", members)
	if len(tb.Local) != 5 || tb.PortLo != 1024 || tb.Slice != 2048 || tb.Slices != 31 {
		t.Fatalf("local %v, slicing %d/%d/%d", tb.Local, tb.PortLo, tb.Slice, tb.Slices)
	}
	if len(tb.Remote) != 3 || tb.Remote[netip.MustParseAddr("198.51.100.4")] != "fra" {
		t.Fatalf("remote %v", tb.Remote)
	}
	if len(tb.DCs["fra"]) != 2 || len(tb.DCs) != 1 {
		t.Fatalf("data centers %v", tb.DCs)
	}

	// Move 198.51.100.4 to ams (egress.Router's reload takes the new plan
	// and tells the front: TestRouterReload).
	moved, err := egress.ParsePlan([]byte(movedPlan))
	if err != nil {
		t.Fatal(err)
	}
	if tb := egressTable(moved, "ams", members); len(tb.Local) != 6 || len(tb.Remote) != 2 {
		t.Fatalf("after the move: local %v, remote %v", tb.Local, tb.Remote)
	}
}
