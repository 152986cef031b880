package registry

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wedge-edge/wedge/internal/clientid"
	"github.com/wedge-edge/wedge/server/etcdwatch"
)

// Etcd is the Store a cluster shares. Every registration is five keys
// under the prefix, written in one transaction that succeeds only if none
// of the unique ones exists yet, so two nodes registering at the same
// instant can never hand out the same ClientID or address:
//
//	PREFIX clients/ID          the record (JSON, as in Bolt)
//	PREFIX index/key/PUBHEX    → ID   one registration per public key
//	PREFIX index/cid/CIDHEX    → ID   unique ClientID
//	PREFIX index/addr/ADDR     → ID   unique inner addresses (v4 and v6)
//	PREFIX usage/ID            the client's usage in its period (usage.go)
//
// etcd acknowledges a transaction once a quorum has it on disk.
type Etcd struct {
	cli    *clientv3.Client
	prefix string
	pools  Pools
	// timeout bounds each call that has no deadline of its own: long
	// enough to ride out a leader election, short enough that an
	// unreachable etcd fails a registration (ErrUnavailable) while the
	// client still waits. A node refuses at once when it already knows
	// etcd is away (cluster.Membership.Connected).
	timeout time.Duration
}

var (
	_ Store   = (*Etcd)(nil)
	_ Watcher = (*Etcd)(nil)
)

// NewEtcd returns the registry stored under prefix (for example "/wedge/")
// in etcd. Closing it does not close cli.
func NewEtcd(cli *clientv3.Client, prefix string, pools Pools) (*Etcd, error) {
	if err := pools.Validate(); err != nil {
		return nil, err
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Etcd{cli: cli, prefix: prefix, pools: pools, timeout: 10 * time.Second}, nil
}

func (e *Etcd) kClient(id string) string { return e.prefix + "clients/" + id }
func (e *Etcd) kKey(pub wgtypes.Key) string {
	return e.prefix + "index/key/" + hex.EncodeToString(pub[:])
}
func (e *Etcd) kCID(id clientid.ID) string {
	return fmt.Sprintf("%sindex/cid/%06x", e.prefix, uint32(id))
}
func (e *Etcd) kAddr(a netip.Addr) string { return e.prefix + "index/addr/" + a.String() }
func (e *Etcd) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, e.timeout)
}

// Close does nothing: the client belongs to the caller.
func (e *Etcd) Close() error { return nil }

// unavailable maps etcd's and gRPC's ways of saying "not now" to
// ErrUnavailable, keeping the cause.
func unavailable(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrNoLeader) ||
		errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	return fmt.Errorf("registry: etcd: %w", err)
}

// commit runs a transaction, trying again while etcd is only briefly away
// (a member died and the client moves to another, a leader election):
// etcd's client retries reads by itself but never a write. Each caller's
// transaction is safe to repeat.
func (e *Etcd) commit(ctx context.Context, txn func(context.Context) (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
	for {
		// One try may hang on a member whose leader just died (until
		// etcd's own request timeout, 7 s by default): give each try
		// attemptTimeout, and have a member that knows it has no leader
		// refuse at once.
		actx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), attemptTimeout)
		resp, err := txn(actx)
		cancel()
		if err == nil {
			return resp, nil
		}
		err = unavailable(err)
		if !errors.Is(err, ErrUnavailable) || ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// attemptTimeout bounds one try of a write transaction.
const attemptTimeout = 2 * time.Second

// Create registers pub. It draws a random ClientID and random addresses
// and lets the transaction decide; a collision (rare until a pool is
// nearly full) retries, and after a few the draw is made from the free
// addresses actually left, so a full pool ends in ErrExhausted.
func (e *Etcd) Create(ctx context.Context, want Client) (Client, error) {
	pub := want.PublicKey
	if err := want.Tags.Validate(); err != nil {
		return Client{}, err
	}
	if want.ID != "" && !validID(want.ID) {
		return Client{}, fmt.Errorf("registry: id %q: want 32 lower-case hex characters", want.ID)
	}
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	for attempt := 0; attempt < 32; attempt++ {
		if err := ctx.Err(); err != nil {
			return Client{}, unavailable(err)
		}
		cid := randomClientID()
		var v4, v6 netip.Addr
		var err error
		if attempt < 4 {
			v4, v6 = randomAddr(e.pools.V4), randomAddr(e.pools.V6)
		} else {
			if v4, err = e.freeAddr(ctx, e.pools.V4); err != nil {
				return Client{}, err
			}
			if v6, err = e.freeAddr(ctx, e.pools.V6); err != nil {
				return Client{}, err
			}
			if attempt >= 8 {
				if cid, err = e.freeCID(ctx); err != nil {
					return Client{}, err
				}
			}
		}
		c := want
		if c.ID == "" {
			c.ID = newID()
		}
		c.ClientID, c.V4, c.V6 = cid, v4, v6
		c.Created = time.Now().UTC().Truncate(time.Second)
		rec, err := encode(c)
		if err != nil {
			return Client{}, err
		}
		unique := []string{e.kKey(pub), e.kCID(cid), e.kAddr(v4), e.kAddr(v6), e.kClient(c.ID)}
		var cmps []clientv3.Cmp
		var puts []clientv3.Op
		for _, k := range unique {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			v := c.ID
			if k == e.kClient(c.ID) {
				v = string(rec)
			}
			puts = append(puts, clientv3.OpPut(k, v))
		}
		resp, err := e.commit(ctx, func(actx context.Context) (*clientv3.TxnResponse, error) {
			return e.cli.Txn(actx).If(cmps...).Then(puts...).Else(clientv3.OpGet(e.kKey(pub))).Commit()
		})
		if err != nil {
			return Client{}, err
		}
		if resp.Succeeded {
			return c, nil
		}
		if len(resp.Responses) > 0 {
			if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
				if string(kvs[0].Value) == c.ID {
					// An earlier try of this very transaction committed
					// and its answer was lost with the connection.
					return c, nil
				}
				return Client{}, ErrExists
			}
		}
	}
	return Client{}, fmt.Errorf("%w: no free ClientID or address found after 32 tries", ErrExhausted)
}

// randomAddr draws a random usable address of pool.
func randomAddr(pool netip.Prefix) netip.Addr {
	pool = pool.Masked()
	hostBits := pool.Addr().BitLen() - pool.Bits()
	for {
		a := addOffset(pool.Addr(), randomBits(hostBits))
		if usable(pool, a) {
			return a
		}
	}
}

// randomBits returns a random number below 2^n (n ≤ 128) as 16 bytes.
func randomBits(n int) [16]byte {
	var b [16]byte
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	for i := 0; i < 128-n; i++ {
		b[i/8] &^= 0x80 >> (i % 8)
	}
	return b
}

// addOffset returns base + off, where off is right-aligned in 16 bytes and
// fits the host part of base's pool.
func addOffset(base netip.Addr, off [16]byte) netip.Addr {
	if base.Is4() {
		b := base.As4()
		for i := range 4 {
			b[i] |= off[12+i]
		}
		return netip.AddrFrom4(b)
	}
	b := base.As16()
	for i := range 16 {
		b[i] |= off[i]
	}
	return netip.AddrFrom16(b)
}

// freeAddr lists the addresses in use and picks a random free one of pool.
// Only called when random draws keep colliding, i.e. for nearly full
// (small) pools; a large pool is scanned only up to 1<<16 candidates.
func (e *Etcd) freeAddr(ctx context.Context, pool netip.Prefix) (netip.Addr, error) {
	resp, err := e.cli.Get(ctx, e.prefix+"index/addr/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return netip.Addr{}, unavailable(err)
	}
	used := map[netip.Addr]bool{}
	for _, kv := range resp.Kvs {
		if a, err := netip.ParseAddr(strings.TrimPrefix(string(kv.Key), e.prefix+"index/addr/")); err == nil {
			used[a] = true
		}
	}
	pool = pool.Masked()
	var free []netip.Addr
	a := pool.Addr()
	for range 1 << 16 {
		if !a.IsValid() || !pool.Contains(a) {
			break
		}
		if usable(pool, a) && !used[a] {
			free = append(free, a)
		}
		a = a.Next()
	}
	if len(free) == 0 {
		return netip.Addr{}, fmt.Errorf("%w: pool %v is full", ErrExhausted, pool)
	}
	return free[rand.IntN(len(free))], nil
}

// freeCID picks a random free ClientID from the ones actually in use.
func (e *Etcd) freeCID(ctx context.Context) (clientid.ID, error) {
	resp, err := e.cli.Get(ctx, e.prefix+"index/cid/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, unavailable(err)
	}
	if int64(len(resp.Kvs)) >= int64(clientid.Max) {
		return 0, fmt.Errorf("%w: no free ClientID", ErrExhausted)
	}
	used := make(map[clientid.ID]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var v uint32
		if _, err := fmt.Sscanf(strings.TrimPrefix(string(kv.Key), e.prefix+"index/cid/"), "%06x", &v); err == nil {
			used[clientid.ID(v)] = true
		}
	}
	start := randomClientID()
	for i := clientid.ID(0); i < clientid.Max; i++ {
		id := (start+i-1)%clientid.Max + 1
		if !used[id] {
			return id, nil
		}
	}
	return 0, fmt.Errorf("%w: no free ClientID", ErrExhausted)
}

// Get returns the registration with id.
func (e *Etcd) Get(ctx context.Context, id string) (Client, error) {
	if !validID(id) {
		return Client{}, ErrNotFound
	}
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, e.kClient(id))
	if err != nil {
		return Client{}, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return Client{}, ErrNotFound
	}
	return decode(resp.Kvs[0].Value)
}

// validID keeps ids to what newID makes, so an API path can never name a
// key outside clients/.
func validID(id string) bool {
	if len(id) != 32 || strings.ToLower(id) != id {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// Delete removes the registration with id and its index keys in one
// transaction, guarded by the record's revision so a concurrent change is
// never half undone.
func (e *Etcd) Delete(ctx context.Context, id string) (Client, error) {
	return e.DeleteIf(ctx, id, nil)
}

// DeleteIf is Delete when cond (nil: always) accepts the record as read;
// the transaction compares the record's revision, so a record changed
// after cond saw it (another node recorded the client's first handshake)
// is read and judged again, never deleted on an old view. Several nodes
// expiring the same registration at once delete it once; the others get
// ErrNotFound.
func (e *Etcd) DeleteIf(ctx context.Context, id string, cond func(Client) error) (Client, error) {
	if !validID(id) {
		return Client{}, ErrNotFound
	}
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	var seen *Client
	for {
		resp, err := e.cli.Get(ctx, e.kClient(id))
		if err != nil {
			return Client{}, unavailable(err)
		}
		if len(resp.Kvs) == 0 {
			if seen != nil && cond == nil {
				// Gone since we read it: our own delete whose answer was
				// lost, or another one; either way it held this.
				return *seen, nil
			}
			return Client{}, ErrNotFound
		}
		c, err := decode(resp.Kvs[0].Value)
		if err != nil {
			return Client{}, err
		}
		if cond != nil {
			if err := cond(c); err != nil {
				return Client{}, err
			}
		}
		txn, err := e.commit(ctx, func(actx context.Context) (*clientv3.TxnResponse, error) {
			return e.cli.Txn(actx).
				If(clientv3.Compare(clientv3.ModRevision(e.kClient(id)), "=", resp.Kvs[0].ModRevision)).
				Then(clientv3.OpDelete(e.kClient(id)), clientv3.OpDelete(e.kKey(c.PublicKey)),
					clientv3.OpDelete(e.kCID(c.ClientID)), clientv3.OpDelete(e.kAddr(c.V4)),
					clientv3.OpDelete(e.kAddr(c.V6)), clientv3.OpDelete(e.kUsage(id))).
				Commit()
		})
		if err != nil {
			return Client{}, err
		}
		if txn.Succeeded {
			return c, nil
		}
		seen = &c
	}
}

// SetTags replaces the tags of registration id (Update); tags equal to
// the stored ones write nothing.
func (e *Etcd) SetTags(ctx context.Context, id string, t Tags) (Client, error) {
	if err := t.Validate(); err != nil {
		return Client{}, err
	}
	return e.Update(ctx, id, func(c *Client) error { c.Tags = t; return nil })
}

// Update rewrites the record of registration id in a transaction guarded
// by the record's revision, so a registration deleted (or changed) since
// it was read is never written back; a changed one is read again and fn
// runs again. Only the record changes, so watchers get one EventPut. A
// change fn does not make writes nothing (so a retry of a write whose
// answer was lost ends there).
func (e *Etcd) Update(ctx context.Context, id string, fn func(*Client) error) (Client, error) {
	if !validID(id) {
		return Client{}, ErrNotFound
	}
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	for {
		resp, err := e.cli.Get(ctx, e.kClient(id))
		if err != nil {
			return Client{}, unavailable(err)
		}
		if len(resp.Kvs) == 0 {
			return Client{}, ErrNotFound
		}
		old, err := decode(resp.Kvs[0].Value)
		if err != nil {
			return Client{}, err
		}
		c := old
		if err := fn(&c); err != nil {
			return Client{}, err
		}
		if err := checkUpdate(old, c); err != nil {
			return Client{}, err
		}
		if c == old {
			return c, nil
		}
		rec, err := encode(c)
		if err != nil {
			return Client{}, err
		}
		txn, err := e.commit(ctx, func(actx context.Context) (*clientv3.TxnResponse, error) {
			return e.cli.Txn(actx).
				If(clientv3.Compare(clientv3.ModRevision(e.kClient(id)), "=", resp.Kvs[0].ModRevision)).
				Then(clientv3.OpPut(e.kClient(id), string(rec))).
				Commit()
		})
		if err != nil {
			return Client{}, err
		}
		if txn.Succeeded {
			return c, nil
		}
	}
}

// List returns every registration.
func (e *Etcd) List(ctx context.Context) ([]Client, error) {
	ctx, cancel := e.ctx(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, e.prefix+"clients/", clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	return e.decodeAll(resp.Kvs), nil
}

func (e *Etcd) decodeAll(kvs []*mvccpb.KeyValue) []Client {
	out := make([]Client, 0, len(kvs))
	for _, kv := range kvs {
		// A record another (newer or broken) writer made that we cannot
		// read is skipped rather than stopping every node.
		if c, err := decode(kv.Value); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// Watch implements Watcher.
func (e *Etcd) Watch(ctx context.Context, fn func(Event)) error {
	return e.WatchFrom(ctx, fn, nil)
}

// WatchFrom is Watch with a hook told about every error it retries (an
// unreachable etcd, a compaction) and every revision it has caught up to.
func (e *Etcd) WatchFrom(ctx context.Context, fn func(Event), o *etcdwatch.Options) error {
	var opts etcdwatch.Options
	if o != nil {
		opts = *o
	}
	return etcdwatch.Run(ctx, e.cli, e.prefix+"clients/", watchHandler{e, fn}, opts)
}

type watchHandler struct {
	e  *Etcd
	fn func(Event)
}

func (h watchHandler) Reset(kvs []*mvccpb.KeyValue, rev int64) {
	h.fn(Event{Type: EventReset, Clients: h.e.decodeAll(kvs)})
}

func (h watchHandler) Event(ev *clientv3.Event) {
	id := strings.TrimPrefix(string(ev.Kv.Key), h.e.prefix+"clients/")
	switch ev.Type {
	case clientv3.EventTypePut:
		if c, err := decode(ev.Kv.Value); err == nil {
			h.fn(Event{Type: EventPut, Client: c})
		}
	case clientv3.EventTypeDelete:
		c := Client{ID: id}
		if ev.PrevKv != nil {
			if prev, err := decode(ev.PrevKv.Value); err == nil {
				c = prev
			}
		}
		h.fn(Event{Type: EventDelete, Client: c})
	}
}
