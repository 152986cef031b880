// Package etcdwatch mirrors an etcd key prefix into memory: one snapshot,
// then every change in order. It resumes a broken watch from the last
// revision it delivered, so no event is missed across an etcd outage, and
// takes a fresh snapshot when etcd has compacted that revision away.
//
// As all of server/, it must not import gVisor, client/, netstack/ or e2e/.
package etcdwatch

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Handler receives the mirror's view. Calls are never concurrent.
type Handler interface {
	// Reset replaces the whole view with kvs, the prefix as of rev.
	Reset(kvs []*mvccpb.KeyValue, rev int64)
	// Event applies one change. Deletes carry the previous value in PrevKv
	// when etcd still has it.
	Event(ev *clientv3.Event)
}

// Options tune Run.
type Options struct {
	// From, if > 0, resumes after revision From instead of starting with a
	// snapshot (the caller already holds the state as of From).
	From int64
	// OnError is told about every failure Run retries (nil: ignored).
	OnError func(error)
	// OnSync is told the revision the mirror is known complete up to, after
	// each snapshot, batch of events or progress notification.
	OnSync func(rev int64)
}

// Backoff between retries after an error.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// Run mirrors prefix into h until ctx is done. It returns ctx.Err().
func Run(ctx context.Context, cli *clientv3.Client, prefix string, h Handler, o Options) error {
	rev := o.From
	backoff := minBackoff
	fail := func(err error) {
		if o.OnError != nil && ctx.Err() == nil {
			o.OnError(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
	synced := func(r int64) {
		if o.OnSync != nil {
			o.OnSync(r)
		}
	}
	for ctx.Err() == nil {
		if rev == 0 {
			resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
			if err != nil {
				fail(err)
				continue
			}
			h.Reset(resp.Kvs, resp.Header.Revision)
			rev = resp.Header.Revision
			synced(rev)
		}
		// WithRequireLeader: a member cut off from the quorum ends the
		// watch instead of going silent, and the client moves on.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1),
			clientv3.WithPrevKV(), clientv3.WithProgressNotify())
		var err error
		for wr := range wch {
			if wr.CompactRevision != 0 || errors.Is(wr.Err(), rpctypes.ErrCompacted) {
				// The revisions we missed are gone: start over from a
				// snapshot; Reset lets the handler drop what vanished.
				rev = 0
				err = rpctypes.ErrCompacted
				break
			}
			if err = wr.Err(); err != nil {
				break
			}
			backoff = minBackoff
			for _, ev := range wr.Events {
				h.Event(ev)
				rev = ev.Kv.ModRevision
			}
			if wr.IsProgressNotify() && wr.Header.Revision > rev {
				rev = wr.Header.Revision
			}
			synced(rev)
		}
		cancel()
		if ctx.Err() != nil {
			break
		}
		if err == nil {
			err = errors.New("etcdwatch: watch channel closed")
		}
		fail(err)
	}
	return ctx.Err()
}
