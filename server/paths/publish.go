package paths

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wedge-edge/wedge/server/etcdwatch"
)

// pathsDir is the directory of the summaries under the cluster's prefix:
//
//	PREFIX paths/DC/NODE   node NODE's Summary (Encode), on its lease
//
// A node's record vanishes with its lease; one whose node stopped
// publishing without losing its lease is ignored once older than the
// Table's Stale. Times in a record are the publisher's, relative to its
// "at"; a reader takes a record that arrives as a change as made when it
// arrived, so the nodes' clocks need not agree.
const pathsDir = "paths/"

// RunOptions are Run's.
type RunOptions struct {
	// Prefix is the cluster's etcd prefix (cmd/wedged's --etcd-prefix).
	Prefix string
	// Lease returns the node's current lease, 0 while it has none
	// (cluster.Membership.Lease): the summary is written on it, so it
	// vanishes with the node.
	Lease func() clientv3.LeaseID
	// OnError is told of every failed write or broken watch (nil:
	// ignored); both are retried.
	OnError func(error)
}

// Run publishes t's summary every Refresh under PREFIX paths/DC/NODE on
// the node's lease, and mirrors every other node's summary into t, until
// ctx ends.
func Run(ctx context.Context, cli *clientv3.Client, t *Table, o RunOptions) {
	if !strings.HasSuffix(o.Prefix, "/") {
		o.Prefix += "/"
	}
	fail := func(err error) {
		if o.OnError != nil && err != nil && ctx.Err() == nil {
			o.OnError(err)
		}
	}
	dir := o.Prefix + pathsDir
	done := make(chan struct{})
	go func() {
		defer close(done)
		etcdwatch.Run(ctx, cli, dir, mirror{t: t, dir: dir}, etcdwatch.Options{OnError: fail})
	}()
	key := dir + t.o.DC + "/" + t.o.Node
	tick := time.NewTicker(t.o.Refresh)
	defer tick.Stop()
	for {
		if l := o.Lease(); l != 0 {
			pctx, cancel := context.WithTimeout(ctx, min(t.o.Refresh, 2*time.Second))
			_, err := cli.Put(pctx, key, string(t.Summary().Encode()), clientv3.WithLease(l))
			cancel()
			if err != nil {
				fail(fmt.Errorf("paths: publishing the summary: %w", err))
			}
		}
		select {
		case <-ctx.Done():
			<-done
			return
		case <-tick.C:
		}
	}
}

// mirror applies the paths/ directory to a Table.
type mirror struct {
	t   *Table
	dir string
}

// parseKey splits a key into data center and node.
func (h mirror) parseKey(key []byte) (dc, node string, ok bool) {
	dc, node, ok = strings.Cut(strings.TrimPrefix(string(key), h.dir), "/")
	return dc, node, ok && dc != "" && node != "" && !strings.Contains(node, "/")
}

func (h mirror) Reset(kvs []*mvccpb.KeyValue, _ int64) {
	all := map[nodeKey]Summary{}
	for _, kv := range kvs {
		dc, node, ok := h.parseKey(kv.Key)
		if !ok {
			continue
		}
		if s, err := ParseSummary(kv.Value, h.t.o.MaxEntries); err == nil {
			if now := h.t.o.Now(); s.At.After(now) {
				s = s.rebase(now) // a publisher's clock ahead of this one's
			}
			all[nodeKey{dc, node}] = s
		}
	}
	h.t.resetSummaries(all)
}

func (h mirror) Event(ev *clientv3.Event) {
	dc, node, ok := h.parseKey(ev.Kv.Key)
	if !ok {
		return
	}
	if ev.Type == clientv3.EventTypeDelete {
		h.t.DeleteSummary(dc, node)
		return
	}
	s, err := ParseSummary(ev.Kv.Value, h.t.o.MaxEntries)
	if err != nil {
		// Not a summary this node can read: drop the node's previous one
		// rather than keep trusting it.
		h.t.DeleteSummary(dc, node)
		return
	}
	// A change arrives as it is written (a few milliseconds): read its
	// times on this node's clock. A snapshot (Reset) keeps the
	// publisher's, since it may hold records written long ago.
	h.t.SetSummary(dc, node, s.rebase(h.t.o.Now()))
}
