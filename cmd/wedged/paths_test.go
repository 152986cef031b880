package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/internal/etcdtest"
	"github.com/wedge-edge/wedge/internal/testutil"
	"github.com/wedge-edge/wedge/server/cluster"
)

// TestStartPaths: in a cluster the node publishes its path summary on its
// lease and feeds the table from egress; alone it keeps none.
func TestStartPaths(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	alone := startPaths(context.Background(), &nodeStore{}, netip.AddrPort{}, log)
	if alone.table != nil || alone.observe() != nil {
		t.Fatal("a node alone keeps a path table")
	}
	alone.stop()

	e := etcdtest.Start(t)
	cli := e.Client(t)
	m, err := cluster.Join(context.Background(), cli, "/w/", cluster.Member{ID: "n1", DC: "dc1", Underlay: netip.MustParseAddr("198.18.1.1")},
		cluster.Options{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	pt := startPaths(context.Background(), &nodeStore{member: m, cli: cli, prefix: "/w/"}, netip.AddrPort{}, log)
	defer pt.stop()
	if pt.table == nil || pt.observe() == nil {
		t.Fatal("no path table in a cluster")
	}
	testutil.WaitFor(t, 10*time.Second, "the summary on the node's lease", func() bool {
		r, err := cli.Get(context.Background(), "/w/paths/dc1/n1")
		return err == nil && len(r.Kvs) == 1 && r.Kvs[0].Lease == int64(m.Lease())
	})
	pt.stop()
}

// TestProbeDialsACL: destination probes obey the egress ACL; the relay
// listeners of other nodes (underlay addresses) are not subject to it.
func TestProbeDialsACL(t *testing.T) {
	d, err := egress.New(egress.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	dial, node := probeDials(&egressParts{dialer: d}, nil)
	if _, err := dial(context.Background(), dst); !errors.Is(err, egress.ErrDenied) {
		t.Fatalf("destination probe to loopback: %v, want ErrDenied", err)
	}
	c, err := node(context.Background(), dst)
	if err != nil {
		t.Fatalf("relay probe: %v", err)
	}
	c.Close()
}
