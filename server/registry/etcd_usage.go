package registry

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wedge-edge/wedge/server/etcdwatch"
)

var (
	_ UsageStore   = (*Etcd)(nil)
	_ UsageWatcher = (*Etcd)(nil)
)

// usageChunk is how many clients one AddUsage transaction carries: two
// compares and one put each, within etcd's default --max-txn-ops (128).
const usageChunk = 64

func (e *Etcd) kUsage(id string) string { return e.prefix + "usage/" + id }

// AddUsage adds deltas to node's entries (UsageStore.AddUsage): for each
// chunk of usageChunk clients, one read of their records and one
// transaction that writes them all, guarded by each record's revision and
// its registration's existence. When another node wrote one of them
// meanwhile (or a reset did), the chunk is read and tried again; an entry
// that already carries batch (our earlier try committed and its answer
// was lost) is not added again.
func (e *Etcd) AddUsage(ctx context.Context, node string, batch uint64, deltas []Delta) (map[string]Usage, error) {
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	out := make(map[string]Usage, len(deltas))
	for len(deltas) > 0 {
		n := min(len(deltas), usageChunk)
		if err := e.addChunk(ctx, node, batch, deltas[:n], out); err != nil {
			return out, err
		}
		deltas = deltas[n:]
	}
	return out, nil
}

func (e *Etcd) addChunk(ctx context.Context, node string, batch uint64, deltas []Delta, out map[string]Usage) error {
	for attempt := 0; ; attempt++ {
		var reads []clientv3.Op
		for _, d := range deltas {
			reads = append(reads, clientv3.OpGet(e.kClient(d.ID), clientv3.WithKeysOnly()), clientv3.OpGet(e.kUsage(d.ID)))
		}
		resp, err := e.commit(ctx, func(actx context.Context) (*clientv3.TxnResponse, error) {
			return e.cli.Txn(actx).Then(reads...).Commit()
		})
		if err != nil {
			return err
		}
		var cmps []clientv3.Cmp
		var puts []clientv3.Op
		next := map[string]Usage{}
		for i, d := range deltas {
			if !validID(d.ID) || len(resp.Responses[2*i].GetResponseRange().Kvs) == 0 {
				continue // gone: its bytes go with it
			}
			var u Usage
			var rev int64
			if kvs := resp.Responses[2*i+1].GetResponseRange().Kvs; len(kvs) > 0 {
				if u, err = decodeUsage(kvs[0].Value); err != nil {
					// A record this node cannot read (a newer or broken
					// writer) is left alone rather than stopping every
					// other client's counts: this delta is dropped.
					continue
				}
				rev = kvs[0].ModRevision
			}
			u, done := u.add(node, batch, d)
			if done {
				out[d.ID] = u
				continue
			}
			rec, err := encodeUsage(u)
			if err != nil {
				return err
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(e.kUsage(d.ID)), "=", rev),
				clientv3.Compare(clientv3.CreateRevision(e.kClient(d.ID)), ">", 0))
			puts = append(puts, clientv3.OpPut(e.kUsage(d.ID), string(rec)))
			next[d.ID] = u
		}
		if len(puts) == 0 {
			return nil
		}
		txn, err := e.commit(ctx, func(actx context.Context) (*clientv3.TxnResponse, error) {
			return e.cli.Txn(actx).If(cmps...).Then(puts...).Commit()
		})
		if err != nil {
			return err
		}
		if txn.Succeeded {
			for id, u := range next {
				out[id] = u
			}
			return nil
		}
		// Another writer came between our read and our write: read again.
		// Each try loses only to a write that succeeded, so this ends.
		if attempt >= 100 {
			return fmt.Errorf("%w: usage of %d clients still contended after %d tries", ErrUnavailable, len(deltas), attempt)
		}
	}
}

// Usage returns the usage of registration id.
func (e *Etcd) Usage(ctx context.Context, id string) (Usage, error) {
	if !validID(id) {
		return Usage{}, ErrNotFound
	}
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	resp, err := e.cli.Txn(ctx).Then(clientv3.OpGet(e.kClient(id), clientv3.WithKeysOnly()), clientv3.OpGet(e.kUsage(id))).Commit()
	if err != nil {
		return Usage{}, unavailable(err)
	}
	if len(resp.Responses[0].GetResponseRange().Kvs) == 0 {
		return Usage{}, ErrNotFound
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		return decodeUsage(kvs[0].Value)
	}
	return Usage{}, nil
}

// ResetUsage starts a new period of registration id: one put, if the
// registration exists.
func (e *Etcd) ResetUsage(ctx context.Context, id string) (Usage, error) {
	if !validID(id) {
		return Usage{}, ErrNotFound
	}
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	u := Usage{Since: time.Now().UTC().Truncate(time.Second)}
	rec, err := encodeUsage(u)
	if err != nil {
		return Usage{}, err
	}
	txn, err := e.commit(ctx, func(actx context.Context) (*clientv3.TxnResponse, error) {
		return e.cli.Txn(actx).If(clientv3.Compare(clientv3.CreateRevision(e.kClient(id)), ">", 0)).
			Then(clientv3.OpPut(e.kUsage(id), string(rec))).Commit()
	})
	if err != nil {
		return Usage{}, err
	}
	if !txn.Succeeded {
		return Usage{}, ErrNotFound
	}
	return u, nil
}

// ListUsage returns a page of registrations with their usage, both read
// at one revision (UsageStore.ListUsage).
func (e *Etcd) ListUsage(ctx context.Context, after string, limit int) ([]ClientUsage, error) {
	limit = pageLimit(limit)
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	from := e.kClient(after) + "\x00"
	if after == "" {
		from = e.kClient("")
	}
	end := clientv3.GetPrefixRangeEnd(e.kClient(""))
	resp, err := e.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(int64(limit)),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, unavailable(err)
	}
	cs := e.decodeAll(resp.Kvs)
	if len(cs) == 0 {
		return nil, nil
	}
	first := strings.TrimPrefix(string(resp.Kvs[0].Key), e.kClient(""))
	last := strings.TrimPrefix(string(resp.Kvs[len(resp.Kvs)-1].Key), e.kClient(""))
	uresp, err := e.cli.Get(ctx, e.kUsage(first), clientv3.WithRange(e.kUsage(last)+"\x00"), clientv3.WithRev(resp.Header.Revision))
	if err != nil {
		return nil, unavailable(err)
	}
	usage := map[string]Usage{}
	for _, kv := range uresp.Kvs {
		if u, err := decodeUsage(kv.Value); err == nil {
			usage[strings.TrimPrefix(string(kv.Key), e.kUsage(""))] = u
		}
	}
	out := make([]ClientUsage, len(cs))
	for i, c := range cs {
		out[i] = ClientUsage{Client: c, Usage: usage[c.ID]}
	}
	return out, nil
}

// WatchUsage implements UsageWatcher.
func (e *Etcd) WatchUsage(ctx context.Context, fn func(UsageEvent)) error {
	return etcdwatch.Run(ctx, e.cli, e.kUsage(""), usageHandler{e, fn}, etcdwatch.Options{})
}

type usageHandler struct {
	e  *Etcd
	fn func(UsageEvent)
}

func (h usageHandler) Reset(kvs []*mvccpb.KeyValue, rev int64) {
	all := make(map[string]Usage, len(kvs))
	for _, kv := range kvs {
		if u, err := decodeUsage(kv.Value); err == nil {
			all[strings.TrimPrefix(string(kv.Key), h.e.kUsage(""))] = u
		}
	}
	h.fn(UsageEvent{Reset: true, All: all})
}

func (h usageHandler) Event(ev *clientv3.Event) {
	id := strings.TrimPrefix(string(ev.Kv.Key), h.e.kUsage(""))
	switch ev.Type {
	case clientv3.EventTypePut:
		if u, err := decodeUsage(ev.Kv.Value); err == nil {
			h.fn(UsageEvent{ID: id, Usage: u})
		}
	case clientv3.EventTypeDelete:
		h.fn(UsageEvent{ID: id, Deleted: true})
	}
}
