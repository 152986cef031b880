package server

// Usage and quotas: the node counts each client's bytes from the device's
// peers, adds what it counted to the client's usage in the registry every
// Config.UsageInterval, follows every client's usage (its own writes, and
// in a cluster the other nodes' through etcd) and keeps the set of
// clients over their quota, whose new flows the netstack refuses
// (OverQuota). Sessions are never torn down for it.

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/server/registry"
)

// DefaultUsageInterval is how often a node adds its counts to the
// registry.
const DefaultUsageInterval = 30 * time.Second

// overCheckEvery is how often the node recomputes which clients are over
// their quota from what it knows (the usage it follows, the quotas it
// holds): a quota crossed anywhere is enforced on every node within
// UsageInterval + overCheckEvery (+ the watch's delay).
const overCheckEvery = 5 * time.Second

// usageState is the node's side of usage counting.
type usageState struct {
	store registry.UsageStore // nil: the store keeps no usage
	node  string              // this node's entry in usage records

	// Owned by the counting goroutine (and Close's final flush, after it
	// ended): the device's counters at the last reading, by peer, the
	// deltas not yet added, and a batch whose write failed, tried again
	// as it was (the same batch id, so it is never added twice).
	last     map[wgtypes.Key][2]uint64
	pending  map[string]registry.Delta
	inflight *usageBatch
	failing  bool

	// mirror is every client's usage as this node knows it, by
	// registration id; guarded by Node.mu.
	mirror map[string]registry.Usage
	// gone holds the counters of peers removed since the last reading
	// (as of the peer sweep before the removal), so what they counted
	// since is not lost; guarded by Node.mu, nil without usage.
	gone map[wgtypes.Key][2]uint64
	// over is the set of free clients' ClientIDs over their quota (their
	// new flows are refused), plus the set of plus clients' within theirs
	// (their flows may be relayed: WARP+); both replaced whole. A plus
	// client over its quota is in neither: it falls back to the free
	// tier, as WARP+ data did, and is not refused.
	over, plus atomic.Pointer[map[clientid.ID]bool]
	// flushes and flushErrors count AddUsage calls and their failures.
	flushes, flushErrors atomic.Uint64
}

type usageBatch struct {
	id     uint64
	deltas []registry.Delta
}

// startUsage sets up usage counting if the store keeps usage.
func (n *Node) startUsage() {
	us, ok := n.cfg.Store.(registry.UsageStore)
	if !ok {
		return
	}
	n.usage.store = us
	n.usage.node = "local"
	if n.cfg.Cluster != nil {
		n.usage.node = n.cfg.Cluster.Self().ID
	}
	n.usage.last = map[wgtypes.Key][2]uint64{}
	n.usage.pending = map[string]registry.Delta{}
	n.mu.Lock()
	n.usage.mirror = map[string]registry.Usage{}
	n.usage.gone = map[wgtypes.Key][2]uint64{}
	n.mu.Unlock()
	empty, none := map[clientid.ID]bool{}, map[clientid.ID]bool{}
	n.usage.over.Store(&empty)
	n.usage.plus.Store(&none)
	if w, ok := n.cfg.Store.(registry.UsageWatcher); ok {
		ctx, cancel := context.WithCancel(context.Background())
		n.wg.Add(2)
		go func() {
			defer n.wg.Done()
			<-n.done
			cancel()
		}()
		go func() {
			defer n.wg.Done()
			w.WatchUsage(ctx, n.applyUsage)
		}()
	} else {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.loadUsage()
		}()
	}
	n.usageStopped = make(chan struct{})
	go n.countUsage()
	n.AddStats("usage", n.usageStatus)
}

// loadUsage reads every client's usage from a store no other node writes
// (bbolt): from then on this node's own writes keep the mirror.
func (n *Node) loadUsage() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	after := ""
	for {
		page, err := n.usage.store.ListUsage(ctx, after, registry.MaxUsagePage)
		if err != nil {
			if ctx.Err() == nil {
				n.log.Error("usage: load", "err", err)
			}
			return
		}
		if len(page) == 0 {
			break
		}
		n.mu.Lock()
		for _, cu := range page {
			if _, ok := n.usage.mirror[cu.ID]; !ok {
				n.usage.mirror[cu.ID] = cu.Usage
			}
		}
		n.mu.Unlock()
		after = page[len(page)-1].ID
	}
	n.checkOver()
}

// applyUsage applies a change of usage from the cluster's store.
func (n *Node) applyUsage(ev registry.UsageEvent) {
	n.mu.Lock()
	switch {
	case ev.Reset:
		n.usage.mirror = ev.All
	case ev.Deleted:
		delete(n.usage.mirror, ev.ID)
	default:
		n.usage.mirror[ev.ID] = ev.Usage
	}
	n.mu.Unlock()
	if ev.Reset {
		n.checkOver()
	}
}

// countUsage reads the device's counters and adds them to the registry
// every UsageInterval, and recomputes the clients over quota every
// overCheckEvery, until Close.
func (n *Node) countUsage() {
	defer close(n.usageStopped)
	every := n.cfg.UsageInterval
	if every <= 0 {
		every = DefaultUsageInterval
	}
	flush := time.NewTicker(every)
	defer flush.Stop()
	check := time.NewTicker(min(overCheckEvery, every))
	defer check.Stop()
	n.checkOver() // the plus tier from the start, not after the first tick
	for {
		select {
		case <-n.done:
			return
		case <-flush.C:
			n.flushUsage(context.Background(), every)
		case <-check.C:
			n.checkOver()
		}
	}
}

// readCounters adds what the device counted since the last reading to
// the pending deltas.
func (n *Node) readCounters() {
	peers, err := n.peers()
	if err != nil {
		return
	}
	u := &n.usage
	seen := make(map[wgtypes.Key]bool, len(peers))
	n.mu.Lock()
	add := func(k wgtypes.Key, rx, tx uint64) {
		if rx == 0 && tx == 0 {
			return
		}
		c, ok := n.clients[k]
		if !ok {
			return
		}
		d := u.pending[c.ID]
		d.ID, d.Rx, d.Tx = c.ID, d.Rx+rx, d.Tx+tx
		u.pending[c.ID] = d
	}
	// A peer removed since the last reading: what it counted until the
	// sweep before its removal (the peers on demand).
	tail := func(k wgtypes.Key, prev [2]uint64) {
		if g, ok := u.gone[k]; ok && g[0] >= prev[0] && g[1] >= prev[1] {
			add(k, g[0]-prev[0], g[1]-prev[1])
		}
	}
	for _, p := range peers {
		seen[p.PublicKey] = true
		prev := u.last[p.PublicKey]
		if _, ok := u.gone[p.PublicKey]; ok {
			// Removed and added again: the old peer's tail, then
			// the new one from zero.
			tail(p.PublicKey, prev)
			prev = [2]uint64{}
			delete(u.gone, p.PublicKey)
		}
		u.last[p.PublicKey] = [2]uint64{p.RxBytes, p.TxBytes}
		// A device restarted counts from zero: then all it counted
		// is new.
		rx, tx := p.RxBytes-prev[0], p.TxBytes-prev[1]
		if p.RxBytes < prev[0] || p.TxBytes < prev[1] {
			rx, tx = p.RxBytes, p.TxBytes
		}
		add(p.PublicKey, rx, tx)
	}
	for k := range u.gone {
		tail(k, u.last[k])
	}
	clear(u.gone)
	n.mu.Unlock()
	for k := range u.last {
		if !seen[k] {
			delete(u.last, k)
		}
	}
}

// flushUsage reads the counters and adds the pending deltas to the
// registry: first a batch that failed before, as it was, then the new
// ones as a new batch. A batch that fails stays for the next time, so no
// byte is lost while the store is away (only those of a node that dies
// meanwhile).
func (n *Node) flushUsage(ctx context.Context, timeout time.Duration) {
	u := &n.usage
	n.readCounters()
	if u.inflight == nil && len(u.pending) > 0 {
		b := &usageBatch{id: rand.Uint64() | 1}
		for _, d := range u.pending {
			b.deltas = append(b.deltas, d)
		}
		u.inflight, u.pending = b, map[string]registry.Delta{}
	}
	if u.inflight == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	got, err := u.store.AddUsage(ctx, u.node, u.inflight.id, u.inflight.deltas)
	n.mu.Lock()
	for id, us := range got {
		n.usage.mirror[id] = us
	}
	n.mu.Unlock()
	u.flushes.Add(1)
	if err != nil {
		u.flushErrors.Add(1)
		if !u.failing {
			n.log.Warn("usage: adding this node's counts to the registry failed; kept for the next try", "err", err)
		}
		u.failing = true
		return
	}
	if u.failing {
		n.log.Info("usage: counts added to the registry again")
	}
	u.failing, u.inflight = false, nil
	n.checkOver()
	if len(u.pending) > 0 {
		// Counted while a failed batch was retried: add them now.
		n.flushUsage(ctx, timeout)
	}
}

// finalFlush adds what the node counted since its last flush on the way
// out (Close), within a short time.
func (n *Node) finalFlush() {
	if n.usage.store == nil {
		return
	}
	for range 2 { // a failed batch, then the newest counts
		n.flushUsage(context.Background(), 2*time.Second)
		if n.usage.inflight != nil {
			return
		}
	}
}

// checkOver recomputes the free clients over their quota and the plus
// clients within theirs.
func (n *Node) checkOver() {
	if n.usage.store == nil {
		return
	}
	over, plus := map[clientid.ID]bool{}, map[clientid.ID]bool{}
	n.mu.Lock()
	for _, c := range n.clients {
		exceeded := c.QuotaBytes > 0 && n.usage.mirror[c.ID].Over(c.QuotaBytes)
		switch {
		case c.Plus && !exceeded:
			plus[c.ClientID] = true
		case !c.Plus && exceeded:
			over[c.ClientID] = true
		}
	}
	n.mu.Unlock()
	if old := n.usage.over.Load(); old == nil || !sameSet(*old, over) {
		n.log.Info("usage: clients over quota", "count", len(over))
	}
	n.usage.over.Store(&over)
	n.usage.plus.Store(&plus)
}

func sameSet(a, b map[clientid.ID]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// OverQuota reports whether the client with ClientID id is a free client
// over its quota: its new flows are to be refused (the netstack asks it
// once per new flow, through wedged). A plus client over its quota is not:
// it loses the plus tier instead (Plus).
func (n *Node) OverQuota(id clientid.ID) bool {
	p := n.usage.over.Load()
	return p != nil && (*p)[id]
}

// Plus reports whether the client with ClientID id has the plus tier now:
// registered plus and within its quota, as of the last check (every
// overCheckEvery, and when usage or a registration changes). Only plus
// clients' flows are relayed to another data center (WARP+).
func (n *Node) Plus(id clientid.ID) bool {
	p := n.usage.plus.Load()
	return p != nil && (*p)[id]
}

// usageOf is c's usage for the API: from the store, or the node's own
// view when the store cannot be reached.
func (n *Node) usageOf(ctx context.Context, c registry.Client) *api.Usage {
	if n.usage.store == nil {
		return nil
	}
	us, err := n.usage.store.Usage(ctx, c.ID)
	if err != nil {
		n.mu.Lock()
		us = n.usage.mirror[c.ID].Clone()
		n.mu.Unlock()
	}
	return apiUsage(c, us)
}

func apiUsage(c registry.Client, us registry.Usage) *api.Usage {
	since := us.Since
	if since.IsZero() {
		since = c.Created
	}
	return &api.Usage{RxBytes: us.Rx(), TxBytes: us.Tx(), Since: since, OverQuota: us.Over(c.QuotaBytes)}
}

// ResetUsage starts a new usage period of registration id (PATCH
// {"usage_reset": true}); the client's new flows are admitted again on
// this node at once, on the others within overCheckEvery of the change
// reaching them.
func (n *Node) ResetUsage(ctx context.Context, id string) (registry.Usage, error) {
	if n.usage.store == nil {
		return registry.Usage{}, errNoUsage
	}
	us, err := n.usage.store.ResetUsage(ctx, id)
	if err != nil {
		return registry.Usage{}, err
	}
	n.mu.Lock()
	n.usage.mirror[id] = us
	n.mu.Unlock()
	n.checkOver()
	n.log.Info("usage reset", "id", id)
	return us, nil
}

var errNoUsage = errors.New("server: this node's registry keeps no usage")

// UsageStatus is the usage section of the status report.
type UsageStatus struct {
	Node        string `json:"node"`
	OverQuota   int    `json:"over_quota"`
	Flushes     uint64 `json:"flushes"`
	FlushErrors uint64 `json:"flush_errors"`
}

func (n *Node) usageStatus() any {
	var over int
	if p := n.usage.over.Load(); p != nil {
		over = len(*p)
	}
	return UsageStatus{Node: n.usage.node, OverQuota: over,
		Flushes: n.usage.flushes.Load(), FlushErrors: n.usage.flushErrors.Load()}
}
