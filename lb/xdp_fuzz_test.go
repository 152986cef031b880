package lb

import (
	"testing"
)

// FuzzXDP runs random frames through the program of the fixture's front
// node (xBaseState(0)) and holds it to the model in model_test.go: the same
// verdict and counter deltas, an output equal to the input (or to the
// decapsulated input), and XDP_TX only for a well-formed WireGuard packet
// to a VIP owned by another valid node, whose output must then be a
// correct GUE encapsulation of the input's IP packet. Never XDP_ABORTED.
//
//	go test -run '^$' -fuzz FuzzXDP -fuzztime 30s ./lb/
func FuzzXDP(f *testing.F) {
	requireBPF(f)
	o := xLoad(f)
	st := xBaseState(0)
	st.apply(f, o)

	for _, c := range xCases() {
		f.Add(c.frame)
	}
	// GUE to the front from its peers, so that decapsulation is reachable.
	// Their inner packets: to the VIPs, return traffic to egress
	// addresses (ours and another data center's), TCP to the node itself.
	for _, in := range [][]byte{xClient(xClient4, xCIDSelf, 4), xClient(xClient6, 0, 1),
		xReply(6, xEgressLocal, 40000, nil), xReply(17, xEgressRemote, 40000, []byte("x")),
		xReply(6, xUnderlay[0], 22, nil)} {
		f.Add(xGUE(xUnderlay[1], xUnderlay[0], xGUEPort, in[14:]))
	}

	f.Fuzz(func(t *testing.T, frame []byte) {
		// The kernel refuses test input shorter than an Ethernet header
		// or longer than a page minus head- and tailroom.
		if len(frame) < 14 || len(frame) > 1514 {
			t.Skip()
		}
		want := st.expect(frame)
		if err := xMismatch(t, o, frame, want, st.underlay()); err != nil {
			t.Fatalf("frame %x (model: %s %v): %v", frame, xdpVerdictName(want.verdict), want.counts, err)
		}
	})
}
