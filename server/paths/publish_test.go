package paths

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wedge-edge/wedge/internal/etcdtest"
	"github.com/wedge-edge/wedge/internal/testutil"
	"github.com/wedge-edge/wedge/server/cluster"
)

// node is one cluster node with its table, publishing and watching.
type node struct {
	m    *cluster.Membership
	ob   *Observer
	tab  *Table
	stop func()
}

func startNode(t *testing.T, e *etcdtest.Etcd, dc, id, underlay string) *node {
	t.Helper()
	cli := e.Client(t)
	m, err := cluster.Join(context.Background(), cli, "/w/", cluster.Member{ID: id, DC: dc, Underlay: netip.MustParseAddr(underlay)},
		cluster.Options{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ob := NewObserver(ObserverOptions{})
	tab := NewTable(Options{DC: dc, Node: id, Observer: ob, Refresh: 200 * time.Millisecond, Relay: underlay + ":7443"})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		Run(ctx, cli, tab, RunOptions{Prefix: "/w", Lease: m.Lease, OnError: func(err error) { t.Logf("%s: %v", id, err) }})
	}()
	n := &node{m: m, ob: ob, tab: tab}
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			m.Close()
		})
	}
	t.Cleanup(n.stop)
	return n
}

// TestPublishWatch: a node's summary reaches the other data center through
// etcd, on the node's lease, is refreshed, and vanishes with the node.
func TestPublishWatch(t *testing.T) {
	e := etcdtest.Start(t)
	b := startNode(t, e, "dc2", "b", "198.18.2.1")
	b.ob.Observe(origin, 40*ms1)
	cli := e.Client(t)
	testutil.WaitFor(t, 10*time.Second, "b's summary in etcd", func() bool {
		r, err := cli.Get(context.Background(), "/w/paths/dc2/b")
		return err == nil && len(r.Kvs) == 1 && strings.Contains(string(r.Kvs[0].Value), "p 203.0.113.0/24 40000 1 ")
	})
	r, _ := cli.Get(context.Background(), "/w/paths/dc2/b")
	if l := clientv3.LeaseID(r.Kvs[0].Lease); l == 0 || l != b.m.Lease() {
		t.Fatalf("summary on lease %x, want b's %x", l, b.m.Lease())
	}
	// a starts after b published: its watch's snapshot has it.
	a := startNode(t, e, "dc1", "a", "198.18.1.1")
	a.ob.Observe(origin, 100*ms1)
	a.ob.ObserveDC("dc2", 10*ms1)
	testutil.WaitFor(t, 10*time.Second, "a relays through b", func() bool {
		r := a.tab.Route(origin.Addr())
		return r.Exit == "dc2" && r.Node == "b" && r.Relay == "198.18.2.1:7443" && r.Via == 50*ms1
	})
	// A later change arrives by the watch: b's RTT gets worse.
	b.ob.o.MinWeight = 1
	b.ob.Observe(origin, 200*ms1)
	testutil.WaitFor(t, 10*time.Second, "a goes direct after b's RTT rose", func() bool {
		r := a.tab.Route(origin.Addr())
		return !r.Relayed() && r.Via == 210*ms1
	})
	b.ob.Observe(origin, 30*ms1)
	testutil.WaitFor(t, 10*time.Second, "a relays through b again", func() bool {
		return a.tab.Route(origin.Addr()).Exit == "dc2"
	})
	// b's own table knows a's summary (dc1 → dc2 RTT), not its own.
	testutil.WaitFor(t, 10*time.Second, "b reads a's RTT to dc2", func() bool {
		st := b.tab.Snapshot(0)
		return len(st.DCs) == 1 && st.DCs[0].DC == "dc1" && st.DCs[0].RTTMs == 10
	})
	// b leaves: its lease is revoked, its summary deleted.
	b.stop()
	testutil.WaitFor(t, 10*time.Second, "a forgets b", func() bool {
		return !a.tab.Route(origin.Addr()).Relayed() && len(a.tab.Snapshot(0).DCs) == 0
	})
	if r, _ := cli.Get(context.Background(), "/w/paths/", clientv3.WithPrefix(), clientv3.WithKeysOnly()); len(r.Kvs) != 1 {
		t.Fatalf("keys left under paths/: %v", r.Kvs)
	}
	// A publisher whose clock is an hour behind: its live records count
	// as fresh.
	old := Summary{At: time.Now().Add(-time.Hour), DCs: map[string]Measure{"dc1": {RTT: 3 * ms1, Samples: 1, Updated: time.Now().Add(-time.Hour)}}}
	if _, err := cli.Put(context.Background(), "/w/paths/dc3/z", string(old.Encode())); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "a reads z's summary as fresh", func() bool {
		st := a.tab.Snapshot(0)
		return len(st.DCs) == 1 && st.DCs[0].DC == "dc3" && st.DCs[0].RTTMs == 3 && st.DCs[0].AgeS < 5
	})
	cli.Delete(context.Background(), "/w/paths/dc3/z")
	testutil.WaitFor(t, 10*time.Second, "a forgets z", func() bool { return len(a.tab.Snapshot(0).DCs) == 0 })
	// A record this version cannot read drops the node's summary.
	a.tab.SetSummary("dc2", "c", Summary{At: time.Now(), Prefixes: []Entry{{Prefix: originP, Measure: Measure{RTT: time.Millisecond, Updated: time.Now()}}}})
	if _, err := cli.Put(context.Background(), "/w/paths/dc2/c", "wedge-paths 9\n"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "a drops c's unreadable summary", func() bool {
		return len(a.tab.Snapshot(0).DCs) == 0
	})
	a.stop()
}
