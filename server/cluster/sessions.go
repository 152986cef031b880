package cluster

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wedge-edge/wedge/server/etcdwatch"
)

// Session replication: every node publishes the client sessions it holds,
// so that when it leaves (dies, is stopped, loses its lease) the node that
// inherits its slot (its heir, lb.HeirOf) can start a handshake with each
// of those clients at once, at the address where the client was last
// authenticated, instead of waiting for the client's own re-handshake
// (15 s or more). A node restarted within its lease reads its own records
// back for the same purpose (Previous).
//
// Keys, attached to the node's lease (they vanish with the node):
//
//	PREFIX sessions/DC/ID/CID   "ENDPOINT SINCE": the client's
//	                            authenticated address and the Unix second
//	                            its session with node ID began
//
// The records are as trustworthy as etcd (the registry lives there too):
// an endpoint in them was authenticated by a node of the cluster. Every
// node mirrors its data center's records (a few dozen bytes per active
// client); records of a node whose keys were deleted are kept for
// graveKeep, so that the heir still finds them when it learns of the
// departure after the deletion (both come from one lease expiry, on two
// watches).
const (
	sessionsDir = "sessions/"
	// graveKeep is how long a deleted record stays readable by SessionsOf.
	graveKeep = 30 * time.Second
	// sessionOps is the most operations of one etcd transaction (etcd's
	// default limit is 128).
	sessionOps = 100
)

// Session is one client session a node holds, as replicated.
type Session struct {
	// Endpoint is where the client was last authenticated.
	Endpoint netip.AddrPort
	// Since is the handshake that began the session on this node, to the
	// second: rekeys do not change it, so a record is written when a
	// session begins, moves to another endpoint or ends, not every two
	// minutes. Comparing two nodes' Since tells which one the client
	// went to last.
	Since time.Time
}

func (s Session) encode() string {
	return s.Endpoint.String() + " " + strconv.FormatInt(s.Since.Unix(), 10)
}

func parseSession(v []byte) (Session, error) {
	ep, ts, ok := strings.Cut(string(v), " ")
	if !ok {
		return Session{}, fmt.Errorf("cluster: session record %q: want ENDPOINT UNIXTIME", v)
	}
	ap, err := netip.ParseAddrPort(ep)
	if err != nil || ap.Port() == 0 {
		return Session{}, fmt.Errorf("cluster: session record %q: bad endpoint", v)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sec <= 0 {
		return Session{}, fmt.Errorf("cluster: session record %q: bad time", v)
	}
	return Session{Endpoint: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Since: time.Unix(sec, 0)}, nil
}

// sessionKey names client cid's record under node id of data center dc.
func (m *Membership) sessionKey(dc, id string, cid uint32) string {
	return fmt.Sprintf("%s%s%s/%s/%06x", m.prefix, sessionsDir, dc, id, cid)
}

// parseSessionKey splits a key of the data center's directory dir into its
// node id and ClientID.
func parseSessionKey(dir, key string) (string, uint32, bool) {
	id, c, ok := strings.Cut(strings.TrimPrefix(key, dir), "/")
	if !ok || id == "" || len(c) != 6 {
		return "", 0, false
	}
	cid, err := strconv.ParseUint(c, 16, 32)
	if err != nil || cid == 0 {
		return "", 0, false
	}
	return id, uint32(cid), true
}

// grave is a deleted record and when it was deleted.
type grave struct {
	s  Session
	at time.Time
}

// sessions is the Membership's replication state; guarded by
// Membership.sessMu.
type sessions struct {
	want      map[uint32]Session // what SetSessions asked for
	wantSet   bool               // SetSessions was called: want is the node's
	published map[uint32]Session // what is in etcd on pubLease
	pubLease  clientv3.LeaseID
	// others are the other nodes' records of this data center, graves
	// their recently deleted ones.
	others map[string]map[uint32]Session
	graves map[string]map[uint32]grave
	// previous are this node's records of a previous run whose lease
	// it adopted (Join), until Previous takes them.
	previous map[uint32]Session
}

// SetSessions publishes the sessions this node holds (by ClientID), for
// its heir. It returns at once; a goroutine writes the difference to what
// is published, in a few transactions, and writes everything again on a
// new lease.
func (m *Membership) SetSessions(s map[uint32]Session) {
	m.sessMu.Lock()
	m.sess.want, m.sess.wantSet = maps.Clone(s), true
	m.sessMu.Unlock()
	select {
	case m.sessKick <- struct{}{}:
	default:
	}
}

// Previous returns, once, the sessions a previous run of this node held
// when it was restarted within its lease (Join adopts the lease rather
// than waiting for it to lapse): the restarted node starts a handshake
// with each, so its clients come back after one handshake.
func (m *Membership) Previous() map[uint32]Session {
	m.sessMu.Lock()
	defer m.sessMu.Unlock()
	p := m.sess.previous
	m.sess.previous = nil
	return p
}

// SessionsOf returns node id's replicated sessions: its live records and
// those deleted within the last graveKeep (a departed node's, read by its
// heir).
func (m *Membership) SessionsOf(id string) map[uint32]Session {
	now := time.Now()
	m.sessMu.Lock()
	defer m.sessMu.Unlock()
	out := maps.Clone(m.sess.others[id])
	if out == nil {
		out = map[uint32]Session{}
	}
	for cid, g := range m.sess.graves[id] {
		if _, live := out[cid]; !live && now.Sub(g.at) < graveKeep {
			out[cid] = g.s
		}
	}
	return out
}

// SessionElsewhere returns the latest-begun session another node of this data
// center publishes for client cid, and that node's id; the records of
// node except (one that just left) are not counted.
func (m *Membership) SessionElsewhere(cid uint32, except string) (string, Session, bool) {
	m.sessMu.Lock()
	defer m.sessMu.Unlock()
	var best Session
	var node string
	for id, recs := range m.sess.others {
		if s, ok := recs[cid]; ok && id != except && (node == "" || s.Since.After(best.Since)) {
			best, node = s, id
		}
	}
	return node, best, node != ""
}

// DepartedSession returns the newest recently deleted record of client
// cid by a node that is no longer a member: the session a dead node held.
func (m *Membership) DepartedSession(cid uint32) (string, Session, bool) {
	now := time.Now()
	type cand struct {
		id string
		s  Session
	}
	var cands []cand
	m.sessMu.Lock()
	for id, g := range m.sess.graves {
		if e, ok := g[cid]; ok && now.Sub(e.at) < graveKeep {
			cands = append(cands, cand{id, e.s})
		}
	}
	m.sessMu.Unlock()
	var best Session
	var node string
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range cands {
		if _, live := m.nodes[c.id]; !live && (node == "" || c.s.Since.After(best.Since)) {
			best, node = c.s, c.id
		}
	}
	return node, best, node != ""
}

// writeSessions runs until ctx ends: it brings etcd to what SetSessions
// asked for whenever asked, and retries every second after a failure or
// a new lease.
func (m *Membership) writeSessions(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.sessKick:
		case <-t.C:
			m.buryOld(time.Now())
		}
		if err := m.syncSessions(ctx); err != nil {
			m.setError(err)
		}
	}
}

// syncSessions writes the difference between want and published.
func (m *Membership) syncSessions(ctx context.Context) error {
	m.mu.Lock()
	lease, dc, id := m.lease, m.self.DC, m.self.ID
	m.mu.Unlock()
	if lease == 0 {
		return nil // no lease: nothing can be attached; the next one gets all
	}
	m.sessMu.Lock()
	if !m.sess.wantSet {
		// Nothing said yet: a restarted node's previous records stay
		// until it has taken its sessions back and published its own.
		m.sessMu.Unlock()
		return nil
	}
	if m.sess.pubLease != lease {
		m.sess.published, m.sess.pubLease = map[uint32]Session{}, lease
	}
	want, pub := m.sess.want, m.sess.published
	var ops []clientv3.Op
	for cid, s := range want {
		if p, ok := pub[cid]; !ok || p != s {
			ops = append(ops, clientv3.OpPut(m.sessionKey(dc, id, cid), s.encode(), clientv3.WithLease(lease)))
		}
	}
	for cid := range pub {
		if _, ok := want[cid]; !ok {
			ops = append(ops, clientv3.OpDelete(m.sessionKey(dc, id, cid)))
		}
	}
	m.sessMu.Unlock()
	for len(ops) > 0 {
		n := min(len(ops), sessionOps)
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := m.cli.Txn(wctx).Then(ops[:n]...).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("cluster: publishing sessions: %w", err)
		}
		ops = ops[n:]
	}
	m.sessMu.Lock()
	if m.sess.pubLease == lease {
		m.sess.published = want
	}
	m.sessMu.Unlock()
	return nil
}

// buryOld forgets graves older than graveKeep.
func (m *Membership) buryOld(now time.Time) {
	m.sessMu.Lock()
	defer m.sessMu.Unlock()
	for id, g := range m.sess.graves {
		for cid, e := range g {
			if now.Sub(e.at) >= graveKeep {
				delete(g, cid)
			}
		}
		if len(g) == 0 {
			delete(m.sess.graves, id)
		}
	}
}

// readPrevious loads this node's own records (a previous run's, on the
// lease Join adopts).
func (m *Membership) readPrevious(ctx context.Context, lease clientv3.LeaseID) (int, error) {
	dir := m.prefix + sessionsDir + m.self.DC + "/"
	resp, err := m.cli.Get(ctx, dir+m.self.ID+"/", clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("cluster: etcd: %w", err)
	}
	prev := map[uint32]Session{}
	for _, kv := range resp.Kvs {
		id, cid, ok := parseSessionKey(dir, string(kv.Key))
		if !ok || id != m.self.ID {
			continue
		}
		if s, err := parseSession(kv.Value); err == nil {
			prev[cid] = s
		}
	}
	m.sessMu.Lock()
	m.sess.previous = prev
	// They are in etcd on the adopted lease: the first SetSessions
	// writes only the difference.
	m.sess.published, m.sess.pubLease = maps.Clone(prev), lease
	m.sessMu.Unlock()
	return len(prev), nil
}

// sessMirror applies the data center's sessions/ directory.
type sessMirror struct {
	m       *Membership
	dir, id string // the directory, this node's id
}

func (h sessMirror) Reset(kvs []*mvccpb.KeyValue, _ int64) {
	m := h.m
	now := time.Now()
	fresh := map[string]map[uint32]Session{}
	for _, kv := range kvs {
		if id, cid, s, ok := h.parse(kv); ok {
			if fresh[id] == nil {
				fresh[id] = map[uint32]Session{}
			}
			fresh[id][cid] = s
		}
	}
	m.sessMu.Lock()
	defer m.sessMu.Unlock()
	// What vanished while the watch was away was deleted then.
	for id, recs := range m.sess.others {
		for cid, s := range recs {
			if _, ok := fresh[id][cid]; !ok {
				m.buryLocked(id, cid, s, now)
			}
		}
	}
	m.sess.others = fresh
}

func (h sessMirror) Event(ev *clientv3.Event) {
	m := h.m
	if ev.Type == clientv3.EventTypeDelete {
		id, cid, ok := parseSessionKey(h.dir, string(ev.Kv.Key))
		if !ok {
			return
		}
		m.sessMu.Lock()
		if s, ok := m.sess.others[id][cid]; ok {
			delete(m.sess.others[id], cid)
			if len(m.sess.others[id]) == 0 {
				delete(m.sess.others, id)
			}
			m.buryLocked(id, cid, s, time.Now())
		}
		m.sessMu.Unlock()
		return
	}
	id, cid, s, ok := h.parse(ev.Kv)
	if !ok {
		return
	}
	m.sessMu.Lock()
	if m.sess.others[id] == nil {
		m.sess.others[id] = map[uint32]Session{}
	}
	m.sess.others[id][cid] = s
	m.sessMu.Unlock()
}

// parse reads one record of another node; its own (a previous run's,
// read by readPrevious) and malformed ones are skipped.
func (h sessMirror) parse(kv *mvccpb.KeyValue) (string, uint32, Session, bool) {
	id, cid, ok := parseSessionKey(h.dir, string(kv.Key))
	if !ok || id == h.id {
		return "", 0, Session{}, false
	}
	s, err := parseSession(kv.Value)
	if err != nil {
		return "", 0, Session{}, false
	}
	return id, cid, s, true
}

func (m *Membership) buryLocked(id string, cid uint32, s Session, now time.Time) {
	if m.sess.graves[id] == nil {
		m.sess.graves[id] = map[uint32]grave{}
	}
	m.sess.graves[id][cid] = grave{s: s, at: now}
}

// watchSessions mirrors the data center's records until ctx ends.
func (m *Membership) watchSessions(ctx context.Context) {
	m.mu.Lock()
	dir, id := m.prefix+sessionsDir+m.self.DC+"/", m.self.ID
	m.mu.Unlock()
	etcdwatch.Run(ctx, m.cli, dir, sessMirror{m: m, dir: dir, id: id}, etcdwatch.Options{
		OnError: func(err error) { m.setError(err) },
	})
}
