package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/server/etcdwatch"
)

// State is a node's membership state; Member and Health are how the
// cluster sees a node and its etcd connection. They are part of the status
// report clients read, so they are the API's types (internal/api).
type (
	State  = api.State
	Member = api.Member
	Health = api.Health
)

// The states a node is in.
const (
	Active   = api.Active
	Draining = api.Draining
)

// packPins encodes ClientIDs (24-bit, nonzero) for Member.Pins: sorted,
// without duplicates.
func packPins(ids []uint32) []byte {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	out := make([]byte, 0, 3*len(ids))
	for _, id := range ids {
		if id == 0 || id > 0xffffff {
			continue
		}
		out = append(out, byte(id>>16), byte(id>>8), byte(id))
	}
	return out
}

// Keys under the prefix:
//
//	PREFIX members/nodes/ID   the Member as JSON, attached to the node's lease
//	PREFIX members/drain/ID   present while ID is draining (no lease)
//	PREFIX members/slots/DC/N the id of the node holding slot N (1..255) of
//	                          data center DC, attached to its lease
//	PREFIX service/public_key the service's public key, set by the first node
const (
	nodesDir = "members/nodes/"
	drainDir = "members/drain/"
	slotsDir = "members/slots/"
)

// MaxSlot is the most nodes one data center can hold: a session index has
// 8 bits for the node (server/wgmsg).
const MaxSlot = 255

// Options for Join.
type Options struct {
	// TTL of the node's lease: how long after a node dies the others stop
	// counting it (default 5 s; etcd's floor is about 1.5 s).
	TTL time.Duration
	// Log receives one line per change of the connection's state.
	Log *slog.Logger
}

// Membership keeps this node in the cluster and mirrors every node's
// membership. Create it with Join; stop it with Close.
type Membership struct {
	cli    *clientv3.Client
	prefix string
	ttl    time.Duration
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{}

	mu       sync.Mutex
	self     Member
	nodes    map[string]Member
	drains   map[string]bool
	subs     map[int]func([]Member)
	nextSub  int
	notifyMu sync.Mutex // serializes calls to subscribers
	health   Health
	lease    clientv3.LeaseID
	probedOK time.Time
	// joined is when the node's record was last put on a new lease: when
	// the other nodes first saw it (zero for a lease adopted from a
	// previous run, which they never saw leave).
	joined time.Time

	sessMu   sync.Mutex // guards sess
	sess     sessions
	sessKick chan struct{}
}

// ErrIDInUse: another live node has this node id.
var ErrIDInUse = errors.New("cluster: node id in use")

// Join announces self under prefix and keeps it announced until Close: a
// lease of opts.TTL kept alive, granted again after an outage outlived it.
// It fails if another live node already uses self.ID; a previous run of
// this node (same id and underlay address, killed before its lease ran out)
// is replaced. Join needs etcd to answer once; it gives up when ctx ends.
func Join(ctx context.Context, cli *clientv3.Client, prefix string, self Member, o Options) (*Membership, error) {
	if self.ID == "" || strings.ContainsAny(self.ID, "/ \t\n") {
		return nil, fmt.Errorf("cluster: node id %q must be non-empty, without '/' or spaces", self.ID)
	}
	if o.TTL == 0 {
		o.TTL = 5 * time.Second
	}
	if o.TTL < 2*time.Second {
		return nil, fmt.Errorf("cluster: lease TTL %v is below 2 s (etcd's floor is about 1.5 s)", o.TTL)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	self.State = Active
	if self.Started.IsZero() {
		self.Started = time.Now().UTC().Truncate(time.Second)
	}
	m := &Membership{
		cli: cli, prefix: prefix, ttl: o.TTL, log: o.Log,
		done: make(chan struct{}), kick: make(chan struct{}, 1),
		self: self, nodes: map[string]Member{}, drains: map[string]bool{},
		subs:     map[int]func([]Member){},
		sessKick: make(chan struct{}, 1),
		sess: sessions{others: map[string]map[uint32]Session{}, graves: map[string]map[uint32]grave{},
			published: map[uint32]Session{}},
	}
	m.health.Endpoints = cli.Endpoints()
	if err := m.claim(ctx); err != nil {
		return nil, err
	}
	// claim just wrote to etcd with quorum: the node is connected now, not
	// at the probe's first answer, so a registration made the moment the
	// node is up is not refused as "etcd unreachable".
	m.probedOK = time.Now()
	m.health.Connected, m.health.Since = true, m.probedOK.UTC()
	rctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	var wg sync.WaitGroup
	wg.Add(5)
	go func() { defer wg.Done(); m.keepAlive(rctx) }()
	go func() { defer wg.Done(); m.probe(rctx) }()
	go func() { defer wg.Done(); m.writeSessions(rctx) }()
	go func() { defer wg.Done(); m.watchSessions(rctx) }()
	go func() {
		defer wg.Done()
		etcdwatch.Run(rctx, cli, prefix+"members/", mirror{m}, etcdwatch.Options{
			OnError: func(err error) { m.setError(err) },
			OnSync: func(rev int64) {
				m.mu.Lock()
				m.health.Revision = rev
				m.mu.Unlock()
			},
		})
	}()
	go func() { wg.Wait(); close(m.done) }()
	return m, nil
}

// claim takes the node's key: fresh, or over its own previous run's.
func (m *Membership) claim(ctx context.Context) error {
	resp, err := m.cli.Get(ctx, m.prefix+nodesDir+m.self.ID)
	if err != nil {
		return fmt.Errorf("cluster: etcd: %w", err)
	}
	if len(resp.Kvs) > 0 {
		var old Member
		json.Unmarshal(resp.Kvs[0].Value, &old)
		if old.Underlay != m.self.Underlay || old.DC != m.self.DC {
			return fmt.Errorf("%w: %q is live at %v in %q (each node needs its own --node-id)",
				ErrIDInUse, m.self.ID, old.Underlay, old.DC)
		}
		// Our own previous run, killed or restarted before its lease
		// ran out: adopt that lease, so the others see no change at all
		// (the node keeps its slot, its pins and its place in every
		// table) and read back the sessions it held, which the node
		// re-handshakes at once (Previous). A lease etcd no longer has
		// (or cannot tell about) is ended and the node joins afresh.
		m.self.Slot = old.Slot
		if l := clientv3.LeaseID(resp.Kvs[0].Lease); l != 0 {
			if ok, err := m.adopt(ctx, l); err != nil {
				return err
			} else if ok {
				return nil
			}
			m.cli.Revoke(ctx, l)
		}
	}
	return m.grant(ctx)
}

// adopt takes over lease l of this node's previous run if it is still
// alive and its slot key is still this node's.
func (m *Membership) adopt(ctx context.Context, l clientv3.LeaseID) (bool, error) {
	if m.self.Slot == 0 {
		return false, nil
	}
	// KeepAliveOnce both tells that the lease lives and renews it, so it
	// cannot lapse between this check and the keep-alive loop's start.
	if ka, err := m.cli.KeepAliveOnce(ctx, l); err != nil || ka.TTL <= 0 {
		return false, nil
	}
	slotKey := fmt.Sprintf("%s%s%s/%d", m.prefix, slotsDir, m.self.DC, m.self.Slot)
	r, err := m.cli.Get(ctx, slotKey)
	if err != nil {
		return false, fmt.Errorf("cluster: etcd: %w", err)
	}
	if len(r.Kvs) == 0 || string(r.Kvs[0].Value) != m.self.ID || clientv3.LeaseID(r.Kvs[0].Lease) != l {
		return false, nil
	}
	n, err := m.readPrevious(ctx, l)
	if err != nil {
		return false, err
	}
	m.mu.Lock()
	m.lease = l
	m.health.Lease = fmt.Sprintf("%x", int64(l))
	val, _ := json.Marshal(m.self)
	m.mu.Unlock()
	if _, err := m.cli.Put(ctx, m.prefix+nodesDir+m.self.ID, string(val), clientv3.WithLease(l)); err != nil {
		return false, fmt.Errorf("cluster: etcd: %w", err)
	}
	m.log.Info("cluster: restarted within the lease: took it over", "node", m.self.ID, "lease", fmt.Sprintf("%x", int64(l)),
		"sessions", n)
	return true, nil
}

// grant makes a new lease and puts the node's key on it.
func (m *Membership) grant(ctx context.Context) error {
	l, err := m.cli.Grant(ctx, int64((m.ttl+time.Second-1)/time.Second))
	if err != nil {
		return fmt.Errorf("cluster: etcd lease: %w", err)
	}
	slot, err := m.claimSlot(ctx, l.ID)
	if err != nil {
		m.cli.Revoke(ctx, l.ID)
		return err
	}
	m.mu.Lock()
	m.self.Slot = slot
	val, _ := json.Marshal(m.self)
	m.mu.Unlock()
	if _, err := m.cli.Put(ctx, m.prefix+nodesDir+m.self.ID, string(val), clientv3.WithLease(l.ID)); err != nil {
		// Without its record the node would hold a slot on a live lease
		// and look departed: its heir would take its clients. Give the
		// lease (and the slot) back and try again.
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		m.cli.Revoke(rctx, l.ID)
		cancel()
		return fmt.Errorf("cluster: etcd: %w", err)
	}
	m.mu.Lock()
	m.lease = l.ID
	m.health.Lease = fmt.Sprintf("%x", int64(l.ID))
	m.joined = time.Now()
	m.mu.Unlock()
	return nil
}

// Joined returns when the other nodes first saw this node on its current
// lease (its record's put), or the zero time when the node took over the
// lease of its own previous run, which they never saw leave. A front
// counts the node's own join grace from it, as the other fronts count
// theirs from when they saw the record appear.
func (m *Membership) Joined() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.joined
}

// claimSlot takes a free slot of the node's data center on lease l: the
// one it had before (a new lease after an outage, or a restart), so the
// sessions it still holds keep routing, else the lowest free one.
func (m *Membership) claimSlot(ctx context.Context, l clientv3.LeaseID) (uint8, error) {
	m.mu.Lock()
	prev, id, dir := m.self.Slot, m.self.ID, m.prefix+slotsDir+m.self.DC+"/"
	m.mu.Unlock()
	resp, err := m.cli.Get(ctx, dir, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("cluster: etcd: %w", err)
	}
	holder := map[uint8]string{}
	for _, kv := range resp.Kvs {
		n, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), dir))
		if err == nil && n >= 1 && n <= MaxSlot {
			holder[uint8(n)] = string(kv.Value)
		}
	}
	order := make([]uint8, 0, MaxSlot+1)
	if prev != 0 {
		order = append(order, prev)
	}
	for n := 1; n <= MaxSlot; n++ {
		order = append(order, uint8(n))
	}
	for _, n := range order {
		h, taken := holder[n]
		if taken && h != id {
			continue
		}
		key := fmt.Sprintf("%s%d", dir, n)
		cond := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		if taken { // ours, on a lease about to lapse
			cond = clientv3.Compare(clientv3.Value(key), "=", id)
		}
		r, err := m.cli.Txn(ctx).If(cond).Then(clientv3.OpPut(key, id, clientv3.WithLease(l))).Commit()
		if err != nil {
			return 0, fmt.Errorf("cluster: etcd: %w", err)
		}
		if r.Succeeded {
			return n, nil
		}
		holder[n] = "" // lost a race for it: try the next
	}
	return 0, fmt.Errorf("cluster: data center %q has no free node slot (at most %d live nodes)", m.self.DC, MaxSlot)
}

// keepAlive holds the lease; when it is lost (an outage longer than the
// TTL) it grants a new one as soon as etcd answers again. It also
// republishes the node's record when SetClients changed it.
func (m *Membership) keepAlive(ctx context.Context) {
	for ctx.Err() == nil {
		m.mu.Lock()
		lease := m.lease
		m.mu.Unlock()
		if lease == 0 {
			gctx, cancel := context.WithTimeout(ctx, m.ttl)
			err := m.grant(gctx)
			cancel()
			if err != nil {
				m.setError(err)
				sleep(ctx, time.Second)
				continue
			}
			m.log.Info("cluster: joined again with a new lease", "node", m.self.ID)
			continue
		}
		kctx, cancel := context.WithCancel(ctx)
		ch, err := m.cli.KeepAlive(kctx, lease)
		if err != nil {
			cancel()
			m.setError(err)
			m.dropLease(lease)
			continue
		}
		m.hold(ctx, ch, lease)
		cancel()
		if ctx.Err() != nil {
			break // Close: the lease stays set, for Close to revoke
		}
		m.dropLease(lease)
	}
}

// hold consumes keep-alive answers until the lease is lost and republishes
// the node's record when asked to.
func (m *Membership) hold(ctx context.Context, ch <-chan *clientv3.LeaseKeepAliveResponse, lease clientv3.LeaseID) {
	for {
		select {
		case <-ctx.Done():
			return
		case r, ok := <-ch:
			if !ok || r == nil {
				m.setError(fmt.Errorf("lease %x lost (etcd unreachable longer than %v?)", int64(lease), m.ttl))
				return
			}
		case <-m.kick:
			m.mu.Lock()
			val, _ := json.Marshal(m.self)
			m.mu.Unlock()
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := m.cli.Put(pctx, m.prefix+nodesDir+m.self.ID, string(val), clientv3.WithLease(lease))
			cancel()
			if err != nil {
				m.setError(err)
				m.poke() // try again later
			}
		}
	}
}

func (m *Membership) dropLease(l clientv3.LeaseID) {
	m.mu.Lock()
	if m.lease == l {
		m.lease = 0
		m.health.Lease = ""
	}
	m.mu.Unlock()
}

func (m *Membership) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// probe reads from etcd once a second with quorum, which is what a
// registration needs, and keeps Health.Connected and MembersRevision.
func (m *Membership) probe(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		// The newest key under members/: how far the view's watch
		// should be.
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := m.cli.Get(pctx, m.prefix+"members/", clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend), clientv3.WithLimit(1))
		cancel()
		now := time.Now()
		m.mu.Lock()
		if err == nil {
			m.probedOK = now
			if len(resp.Kvs) > 0 {
				m.health.MembersRevision = resp.Kvs[0].ModRevision
			}
		}
		connected := !m.probedOK.IsZero() && now.Sub(m.probedOK) < 3*time.Second
		changed := connected != m.health.Connected
		if changed {
			m.health.Connected, m.health.Since = connected, now.UTC()
		}
		m.mu.Unlock()
		if err != nil {
			m.setError(err)
		}
		if changed && connected {
			m.log.Info("cluster: etcd reachable", "endpoints", m.health.Endpoints)
		} else if changed {
			m.log.Warn("cluster: etcd unreachable; serving known clients, refusing registrations", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Membership) setError(err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	m.mu.Lock()
	m.health.LastError, m.health.ErrorAt = err.Error(), time.Now().UTC()
	m.mu.Unlock()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Self returns this node's record.
func (m *Membership) Self() Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.self
	if m.drains[s.ID] {
		s.State = Draining
	}
	return s
}

// SetClients updates the client count this node publishes (written only
// when it changed).
func (m *Membership) SetClients(n int) {
	m.mu.Lock()
	changed := m.self.Clients != n
	m.self.Clients = n
	m.mu.Unlock()
	if changed {
		m.poke()
	}
}

// SetPins publishes the clients this node keeps (Member.Pins; nil
// withdraws them all); pinned tells the fronts that a draining node's
// list is complete. Written only when it changed. A node's record can
// carry a few hundred thousand pins within etcd's default 1.5 MiB
// request limit.
func (m *Membership) SetPins(pinned bool, ids []uint32) {
	var packed []byte
	if len(ids) > 0 {
		packed = packPins(ids)
	}
	m.mu.Lock()
	changed := m.self.Pinned != pinned || !bytes.Equal(m.self.Pins, packed)
	m.self.Pinned, m.self.Pins = pinned, packed
	m.mu.Unlock()
	if changed {
		m.poke()
	}
}

// Health returns the node's view of its etcd connection.
func (m *Membership) Health() Health {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.health
	h.Endpoints = slices.Clone(h.Endpoints)
	return h
}

// Connected reports whether etcd answered a quorum read in the last 3 s.
func (m *Membership) Connected() bool { return m.Health().Connected }

// Members returns the live nodes, sorted by id.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.membersLocked()
}

func (m *Membership) membersLocked() []Member {
	out := make([]Member, 0, len(m.nodes))
	for _, n := range m.nodes {
		n.State = Active
		if m.drains[n.ID] {
			n.State = Draining
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Subscribe calls fn with the live members now and after every change,
// until the returned function is called. Calls for one subscriber are not
// concurrent; fn must not block for long.
func (m *Membership) Subscribe(fn func([]Member)) (cancel func()) {
	m.notifyMu.Lock()
	defer m.notifyMu.Unlock()
	m.mu.Lock()
	id := m.nextSub
	m.nextSub++
	m.subs[id] = fn
	now := m.membersLocked()
	m.mu.Unlock()
	fn(now)
	return func() {
		m.mu.Lock()
		delete(m.subs, id)
		m.mu.Unlock()
	}
}

// SetDrain marks node id draining (on) or active again (off). The mark is
// kept in etcd without a lease: it outlives the node's restarts.
func (m *Membership) SetDrain(ctx context.Context, id string, on bool) error {
	if id == "" || strings.ContainsAny(id, "/ \t\n") {
		return fmt.Errorf("cluster: bad node id %q", id)
	}
	key := m.prefix + drainDir + id
	var err error
	if on {
		_, err = m.cli.Put(ctx, key, time.Now().UTC().Format(time.RFC3339))
	} else {
		_, err = m.cli.Delete(ctx, key)
	}
	if err != nil {
		return fmt.Errorf("cluster: etcd: %w", err)
	}
	return nil
}

// Close leaves the cluster: the node's lease is revoked so the others see
// it gone at once rather than after the TTL.
func (m *Membership) Close() error {
	m.cancel()
	<-m.done
	m.mu.Lock()
	lease := m.lease
	m.mu.Unlock()
	if lease != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		m.cli.Revoke(ctx, lease)
	}
	return nil
}

// mirror applies the members/ prefix to the Membership.
type mirror struct{ m *Membership }

func (h mirror) Reset(kvs []*mvccpb.KeyValue, rev int64) {
	m := h.m
	m.mu.Lock()
	m.nodes, m.drains = map[string]Member{}, map[string]bool{}
	for _, kv := range kvs {
		m.applyLocked(string(kv.Key), kv.Value, false)
	}
	m.mu.Unlock()
	m.notify()
}

func (h mirror) Event(ev *clientv3.Event) {
	m := h.m
	m.mu.Lock()
	m.applyLocked(string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
	m.mu.Unlock()
	m.notify()
}

func (m *Membership) applyLocked(key string, val []byte, deleted bool) {
	rest := strings.TrimPrefix(key, m.prefix+"members/")
	switch {
	case strings.HasPrefix(rest, "nodes/"):
		id := strings.TrimPrefix(rest, "nodes/")
		if deleted {
			delete(m.nodes, id)
			return
		}
		var mem Member
		if err := json.Unmarshal(val, &mem); err != nil || mem.ID != id {
			return // not ours to read: skip rather than trust it
		}
		m.nodes[id] = mem
	case strings.HasPrefix(rest, "drain/"):
		id := strings.TrimPrefix(rest, "drain/")
		if deleted {
			delete(m.drains, id)
		} else {
			m.drains[id] = true
		}
	}
}

func (m *Membership) notify() {
	m.notifyMu.Lock()
	defer m.notifyMu.Unlock()
	m.mu.Lock()
	now := m.membersLocked()
	subs := make([]func([]Member), 0, len(m.subs))
	for _, fn := range m.subs {
		subs = append(subs, fn)
	}
	m.mu.Unlock()
	for _, fn := range subs {
		fn(slices.Clone(now))
	}
}

// Lease returns the node's current lease, 0 while it has none (after an
// outage longer than the TTL, until a new one is granted): other records
// of the node that must vanish with it are written on it (the path
// table's summary, server/paths).
func (m *Membership) Lease() clientv3.LeaseID {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease
}
