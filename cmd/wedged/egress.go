package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/egress/geoip"
	"github.com/wedge-edge/wedge/lb"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/registry"
)

// egressPlan is a node's live egress plan (--egress-plan) and GeoIP
// database (--geoip). It learns each client's tags when the client
// handshakes (server.Config.OnHandshake: the country of its outer address,
// its pool), picks every flow's source from them (egress.Config.Route) and
// gives the XDP front its return-traffic steering (lb.EgressTable). Both
// files are re-read when they change; a bad new file is logged and the
// old one kept.
type egressPlan struct {
	planPath, geoPath string
	dc                string
	slot              uint8
	pool              string // every client's pool until registrations carry one
	log               *slog.Logger

	plan atomic.Pointer[egress.Plan]
	geo  atomic.Pointer[geoip.DB]
	tags sync.Map // netip.Addr, a client's inner address → clientTags

	mu       sync.Mutex // guards onReload
	onReload func()     // after a new plan is in place

	noCountry, fallbackCountry, fallbackPool, noEgress atomic.Uint64
}

// clientTags are what a client's egress is chosen by.
type clientTags struct {
	country, pool string
	key           uint32 // the ClientID: stable, spreads clients over addresses
	geo           string // GeoIP country of its handshake address, kept for onTags
}

// planPoll is how often the plan and GeoIP files are checked for changes.
const planPoll = 2 * time.Second

func newEgressPlan(planPath, geoPath, dc string, slot uint8, pool string, log *slog.Logger) (*egressPlan, error) {
	p, err := egress.LoadPlan(planPath)
	if err != nil {
		return nil, err
	}
	if _, ok := p.DataCenter(dc); !ok {
		return nil, fmt.Errorf("--egress-plan %s: this node's data center %q (--dc) is not in it (it has %v)", planPath, dc, p.DataCenters())
	}
	e := &egressPlan{planPath: planPath, geoPath: geoPath, dc: dc, slot: slot, pool: pool, log: log}
	e.plan.Store(p)
	if geoPath != "" {
		db, err := geoip.Open(geoPath)
		if err != nil {
			return nil, fmt.Errorf("--geoip: %w", err)
		}
		e.geo.Store(db)
		log.Info("geoip database loaded", "file", geoPath, "db", db.Info())
	}
	if _, _, err := p.Slice(slot); err != nil {
		log.Warn("egress plan: this node has no IPv4 port slice; its IPv4 flows fail", "slot", slot, "err", err)
	}
	log.Info("egress plan loaded", "file", planPath, "dc", dc, "addresses", len(p.Addrs4(dc)), "slot", slot)
	return e, nil
}

// run re-reads the files when they change, until ctx ends.
func (e *egressPlan) run(ctx context.Context) {
	var w fileWatch
	w.plan, _ = os.Stat(e.planPath)
	if e.geoPath != "" {
		w.geo, _ = os.Stat(e.geoPath)
	}
	t := time.NewTicker(planPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if db := e.geo.Swap(nil); db != nil {
				db.Close()
			}
			return
		case <-t.C:
			e.reload(&w)
		}
	}
}

// fileWatch is what reload last saw of the files.
type fileWatch struct{ plan, geo os.FileInfo }

// reload loads whichever file changed since w.
func (e *egressPlan) reload(w *fileWatch) {
	if fi, err := os.Stat(e.planPath); err == nil && changed(w.plan, fi) {
		w.plan = fi
		p, err := egress.LoadPlan(e.planPath)
		switch {
		case err != nil:
			e.log.Error("egress plan changed but is not valid; keeping the old one", "err", err)
		default:
			if _, ok := p.DataCenter(e.dc); !ok {
				e.log.Error("egress plan changed and lost this node's data center; keeping the old one", "dc", e.dc)
				break
			}
			e.plan.Store(p)
			e.log.Info("egress plan reloaded", "addresses", len(p.Addrs4(e.dc)))
			e.mu.Lock()
			f := e.onReload
			e.mu.Unlock()
			if f != nil {
				f()
			}
		}
	}
	if e.geoPath == "" {
		return
	}
	db, fi, err := geoip.OpenIfChanged(e.geoPath, w.geo)
	switch {
	case err != nil:
		if fi2, err2 := os.Stat(e.geoPath); err2 == nil && changed(w.geo, fi2) {
			w.geo = fi2 // log a bad file once
			e.log.Error("geoip database changed but cannot be read; keeping the old one", "err", err)
		}
	case db != nil:
		w.geo = fi
		if old := e.geo.Swap(db); old != nil {
			old.Close()
		}
		e.log.Info("geoip database reloaded", "db", db.Info())
	}
}

func changed(old, cur os.FileInfo) bool {
	return old == nil || !os.SameFile(old, cur) || old.ModTime() != cur.ModTime() || old.Size() != cur.Size()
}

// setOnReload sets what runs after a new plan is in place.
func (e *egressPlan) setOnReload(f func()) {
	e.mu.Lock()
	e.onReload = f
	e.mu.Unlock()
}

// onHandshake records client c's tags: its registration's pool (else
// --egress-pool) and country override, else the country of the address it
// handshook from. It runs before the handshake's response leaves.
func (e *egressPlan) onHandshake(c registry.Client, src netip.AddrPort) {
	var geo string
	if db := e.geo.Load(); db != nil {
		geo, _ = db.Country(src.Addr())
	}
	t := e.tagsOf(c, geo)
	if t.country == "" {
		e.noCountry.Add(1)
	}
	e.store(c, t)
}

// onTags applies a registration's changed tags to a client that has
// handshaken here, at once (server.Config.OnTags): its next flows leave
// from addresses with the new tags; flows already open keep their source.
// The country of its handshake address stays what an empty country
// override falls back to. A client not seen yet gets its tags at its
// handshake.
func (e *egressPlan) onTags(c registry.Client) {
	for _, a := range []netip.Addr{c.V4, c.V6} {
		if v, ok := e.tags.Load(a); ok && a.IsValid() {
			e.tags.Store(a, e.tagsOf(c, v.(clientTags).geo))
		}
	}
}

// tagsOf is client c's tags with geo the country of its handshake address.
func (e *egressPlan) tagsOf(c registry.Client, geo string) clientTags {
	t := clientTags{pool: e.pool, country: c.Tags.Country, key: uint32(c.ClientID), geo: geo}
	if c.Tags.Pool != "" {
		t.pool = c.Tags.Pool
	}
	if t.country == "" {
		t.country = geo
	}
	return t
}

func (e *egressPlan) store(c registry.Client, t clientTags) {
	if c.V4.IsValid() {
		e.tags.Store(c.V4, t)
	}
	if c.V6.IsValid() {
		e.tags.Store(c.V6, t)
	}
}

// route picks the source of a flow of the client at inner address client
// (egress.Config.Route). A client not seen handshaking here (none should
// send without one) gets no country: its pool's default.
func (e *egressPlan) route(client netip.Addr, dst netip.AddrPort) (egress.Source, error) {
	v, ok := e.tags.Load(client)
	t, _ := v.(clientTags)
	if !ok {
		t = clientTags{pool: e.pool, key: binary.BigEndian.Uint32(client.AsSlice()[len(client.AsSlice())-4:])}
	}
	p := e.plan.Load()
	if dst.Addr().Unmap().Is4() {
		ch, err := p.Select4(t.country, t.pool, e.dc, t.key)
		if err != nil {
			e.noEgress.Add(1)
			return egress.Source{}, err
		}
		lo, hi, err := p.Slice(e.slot)
		if err != nil {
			e.noEgress.Add(1)
			return egress.Source{}, fmt.Errorf("%w: %w", egress.ErrNoEgress, err)
		}
		e.countFallback(ch)
		return egress.Source{Addr: ch.Addr, PortLo: lo, PortHi: hi}, nil
	}
	ch, err := p.Select6(t.country, t.pool, e.dc, e.slot, t.key)
	if err != nil {
		e.noEgress.Add(1)
		return egress.Source{}, err
	}
	e.countFallback(ch)
	// The /64 is the node's by a local route: IPv6 bind wants free bind.
	return egress.Source{Addr: addrIn64(ch.Net, t.key), FreeBind: true}, nil
}

// dnsSource is where the node's DNS queries to dst (the upstream) leave
// from: an address tagged with the data center's own country, not a
// client's, so that resolvers and CDNs see where the traffic really leaves
// and answer for there. The pool is --egress-pool; fallbacks apply.
func (e *egressPlan) dnsSource(dst netip.AddrPort) (egress.Source, error) {
	p := e.plan.Load()
	dc, _ := p.DataCenter(e.dc)
	if dst.Addr().Unmap().Is4() {
		ch, err := p.Select4(dc.Country, e.pool, e.dc, 0)
		if err != nil {
			return egress.Source{}, err
		}
		lo, hi, err := p.Slice(e.slot)
		if err != nil {
			return egress.Source{}, fmt.Errorf("%w: %w", egress.ErrNoEgress, err)
		}
		return egress.Source{Addr: ch.Addr, PortLo: lo, PortHi: hi}, nil
	}
	ch, err := p.Select6(dc.Country, e.pool, e.dc, e.slot, 0)
	if err != nil {
		return egress.Source{}, err
	}
	return egress.Source{Addr: addrIn64(ch.Net, 0), FreeBind: true}, nil
}

func (e *egressPlan) countFallback(ch egress.Choice) {
	switch ch.Fallback {
	case egress.CountryFallback:
		e.fallbackCountry.Add(1)
	case egress.PoolFallback:
		e.fallbackPool.Add(1)
	}
}

// addrIn64 is the client's own address in the node's /64: the interface
// identifier derives from key, so a client keeps its IPv6 source while it
// stays on the node and clients do not share one.
func addrIn64(n netip.Prefix, key uint32) netip.Addr {
	b := n.Masked().Addr().As16()
	x := uint64(key)*0x9e3779b97f4a7c15 | 1 // never the subnet-router anycast ::0
	binary.BigEndian.PutUint64(b[8:], x)
	return netip.AddrFrom16(b)
}

// table is the XDP front's steering for the current plan and membership:
// this data center's addresses sliced, the others' sent to their data
// centers' live nodes.
func (e *egressPlan) table(members []cluster.Member) lb.EgressTable {
	p := e.plan.Load()
	lo, size, n := p.Slicing()
	t := lb.EgressTable{Local: p.Addrs4(e.dc), PortLo: lo, Slice: size, Slices: n,
		Remote: map[netip.Addr]string{}, DCs: map[string][]netip.Addr{}}
	for _, dc := range p.DataCenters() {
		if dc == e.dc {
			continue
		}
		for _, a := range p.Addrs4(dc) {
			t.Remote[a] = dc
		}
	}
	for _, m := range members {
		if m.DC != e.dc && m.Underlay.Is4() && !slices.Contains(t.DCs[m.DC], m.Underlay) {
			t.DCs[m.DC] = append(t.DCs[m.DC], m.Underlay)
		}
	}
	return t
}

// validTags refuses registration tags the plan never serves
// (server.Config.ValidTags).
func (e *egressPlan) validTags(t registry.Tags) error {
	hasCountry, hasPool := e.plan.Load().Serves(t.Country, t.Pool)
	switch {
	case !hasPool:
		return fmt.Errorf("the egress plan has no address in pool %q", t.Pool)
	case !hasCountry:
		return fmt.Errorf("the egress plan has no address in country %s", t.Country)
	}
	return nil
}

// ownAddrs are every IPv4 egress address of the plan, which inner flows
// may not reach (the ACL's own addresses).
func (e *egressPlan) ownAddrs() []netip.Addr {
	p := e.plan.Load()
	var out []netip.Addr
	for _, dc := range p.DataCenters() {
		out = append(out, p.Addrs4(dc)...)
	}
	return out
}

// stats is the status report's egress_plan section.
func (e *egressPlan) stats() map[string]any {
	n := 0
	e.tags.Range(func(any, any) bool { n++; return true })
	return map[string]any{
		"dc": e.dc, "slot": e.slot, "addresses": len(e.plan.Load().Addrs4(e.dc)),
		"inner_addresses_tagged": n, "no_country": e.noCountry.Load(),
		"fallback_country": e.fallbackCountry.Load(), "fallback_pool": e.fallbackPool.Load(),
		"no_egress": e.noEgress.Load(), "geoip": e.geo.Load() != nil,
	}
}
