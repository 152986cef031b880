package main

import (
	"testing"

	"github.com/wedge-edge/wedge/netstack"
)

// TestBudgetFlags: the budget flags reach netstack's Limits and the
// egress dialer's share, 0 meaning "no limit" where netstack's zero would
// mean its default.
func TestBudgetFlags(t *testing.T) {
	c, err := flags(nil)
	if err != nil {
		t.Fatal(err)
	}
	l := c.budget.limits(0, 0)
	if l.FlowRate != netstack.DefaultFlowRate || l.BufferPerClient != netstack.DefaultBufferPerClient || c.budget.udpPortShare() != 8 {
		t.Errorf("defaults: %+v, UDP share %d", l, c.budget.udpPortShare())
	}
	c, err = flags([]string{"--flow-rate", "0", "--buffer-per-client", "0", "--udp-port-share", "0",
		"--max-pending-per-client", "7", "--flow-burst", "9"})
	if err != nil {
		t.Fatal(err)
	}
	l = c.budget.limits(10, 5)
	if l.FlowRate != -1 || l.BufferPerClient != -1 || c.budget.udpPortShare() != -1 {
		t.Errorf("0 for no limit: %+v, UDP share %d; want -1 each", l, c.budget.udpPortShare())
	}
	if l.MaxPendingPerClient != 7 || l.FlowBurst != 9 || l.MaxFlows != 10 || l.MaxFlowsPerClient != 5 {
		t.Errorf("limits %+v, want the flags' values", l)
	}
}
