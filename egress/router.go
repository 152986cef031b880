package egress

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wedge-edge/wedge/egress/geoip"
)

// Router is a node's live egress plan and GeoIP database: it picks every
// flow's source (its Route is a Config.Route) from the tags of the client
// the flow comes from. It learns each client's tags when the client
// handshakes (OnHandshake: its registration's pool and country override,
// else the GeoIP country of the address it handshook from) and when its
// registration's tags change (OnTags). Run re-reads both files when they
// change, Reload at once (SIGHUP); a bad new file is logged and the old
// one kept.
//
// A Router knows clients by their inner addresses only: it does not import
// the registry, the cluster or the XDP front. The front reads the plan in
// use (Plan) to steer return traffic, and is told of a new one
// (SetOnReload).
type Router struct {
	planPath, geoPath string
	dc                string
	slot              uint8
	pool              string
	log               *slog.Logger

	plan atomic.Pointer[Plan]
	geo  atomic.Pointer[geoip.DB]
	tags sync.Map // netip.Addr, a client's inner address → clientTags

	mu       sync.Mutex // guards onReload
	onReload func()     // after a new plan is in place

	watchMu sync.Mutex // serializes reloads: Run's polls and Reload
	watch   fileWatch  // what was last loaded of the files

	noCountry, fallbackCountry, fallbackPool, fallbackDC, noEgress atomic.Uint64
}

// RouterConfig is what NewRouter builds a Router from.
type RouterConfig struct {
	// Plan is the egress plan to start with, loaded from PlanFile
	// (LoadPlan). It must have the data center DC. Required.
	Plan *Plan
	// PlanFile is the plan's file, which Run re-reads when it changes.
	// Required.
	PlanFile string

	// GeoIP is the GeoIP database clients' countries come from, opened
	// from GeoIPFile (geoip.Open); nil with GeoIPFile empty means no
	// GeoIP: a client has the country of its registration's override
	// only. The Router owns it: Run closes it when it returns.
	GeoIP     *geoip.DB
	GeoIPFile string

	// DC is this node's data center, Slot its port slice (and IPv6 /64)
	// in it (cluster.Member.Slot; 1 for a node alone).
	DC   string
	Slot uint8

	// Pool is the pool of every client whose registration names none.
	Pool string

	// Logger receives the Router's log lines: loads and reloads, never
	// one per flow. Required.
	Logger *slog.Logger
}

// Client is a client as a Router knows it: its inner addresses, the key
// that spreads clients over a data center's addresses (its ClientID,
// stable), and its registration's tags (empty: the default).
type Client struct {
	V4, V6        netip.Addr
	Key           uint32
	Pool, Country string
}

// clientTags are what a client's egress is chosen by.
type clientTags struct {
	country, pool string
	key           uint32 // the ClientID: stable, spreads clients over addresses
	geo           string // GeoIP country of its handshake address, kept for OnTags
}

// routerPoll is how often Run checks the plan and GeoIP files for changes.
const routerPoll = 2 * time.Second

// NewRouter validates cfg and returns a Router serving cfg.Plan. It logs
// the plan loaded, and warns when the node's slot has no IPv4 port slice
// (its IPv4 flows then fail with ErrNoEgress) and about the defaults the
// plan lacks (warnDefaults).
func NewRouter(cfg RouterConfig) (*Router, error) {
	switch {
	case cfg.Plan == nil:
		return nil, errors.New("egress: router: nil Plan")
	case cfg.PlanFile == "":
		return nil, errors.New("egress: router: no PlanFile to re-read the plan from")
	case cfg.Logger == nil:
		return nil, errors.New("egress: router: nil Logger")
	case (cfg.GeoIP == nil) != (cfg.GeoIPFile == ""):
		return nil, errors.New("egress: router: GeoIP and GeoIPFile go together")
	}
	if _, ok := cfg.Plan.DataCenter(cfg.DC); !ok {
		return nil, fmt.Errorf("egress: router: data center %q is not in the plan (it has %v)", cfg.DC, cfg.Plan.DataCenters())
	}
	r := &Router{planPath: cfg.PlanFile, geoPath: cfg.GeoIPFile, dc: cfg.DC, slot: cfg.Slot, pool: cfg.Pool, log: cfg.Logger}
	r.plan.Store(cfg.Plan)
	// The files as they were loaded, just before: Run reloads what changes
	// from now on.
	r.watch.plan, _ = os.Stat(cfg.PlanFile)
	if cfg.GeoIPFile != "" {
		r.watch.geo, _ = os.Stat(cfg.GeoIPFile)
	}
	if cfg.GeoIP != nil {
		r.geo.Store(cfg.GeoIP)
		r.log.Info("geoip database loaded", "file", cfg.GeoIPFile, "db", cfg.GeoIP.Info())
	}
	if _, _, err := cfg.Plan.Slice(cfg.Slot); err != nil {
		r.log.Warn("egress plan: this node has no IPv4 port slice; its IPv4 flows fail", "slot", cfg.Slot, "err", err)
	}
	r.log.Info("egress plan loaded", "file", cfg.PlanFile, "dc", cfg.DC, "addresses", len(cfg.Plan.Addrs4(cfg.DC)), "slot", cfg.Slot)
	r.warnDefaults(cfg.Plan)
	return r, nil
}

// warnDefaults warns, at each load of plan p, about what clients without
// tags of their own meet on this node: a default pool (RouterConfig.Pool)
// with no address in the plan, whose clients get no egress, and each pool
// with no default country ("fallback"."pools"), whose clients of unknown
// country (no GeoIP, or an address it does not know) leave from an
// address of the data center's own country, or get no egress when the
// data center has none in that pool.
func (r *Router) warnDefaults(p *Plan) {
	if _, hasPool := p.Serves("", r.pool); !hasPool {
		r.log.Warn("egress plan has no address in the default pool (--egress-pool): clients whose registration names no pool get no egress",
			"pool", r.pool, "pools", p.Pools())
	}
	dc, _ := p.DataCenter(r.dc)
	for _, pool := range p.Pools() {
		if p.PoolDefault(pool) != "" {
			continue
		}
		_, err4 := p.Select4("", pool, r.dc, 0)
		_, err6 := p.Select6("", pool, r.dc, max(r.slot, 1), 0)
		if err4 != nil && err6 != nil {
			r.log.Warn("egress plan: pool has no default country (fallback.pools) and this data center no address of its own country in it: its clients of unknown country get no egress here",
				"pool", pool, "dc", r.dc, "dc_country", dc.Country)
			continue
		}
		r.log.Warn("egress plan: pool has no default country (fallback.pools): its clients of unknown country leave from an address of the data center's own country",
			"pool", pool, "dc", r.dc, "dc_country", dc.Country, "ipv4", err4 == nil, "ipv6", err6 == nil)
	}
}

// Plan is the plan in use now. A Plan is immutable: a reload swaps it.
func (r *Router) Plan() *Plan { return r.plan.Load() }

// Run re-reads the files when they change, until ctx ends; then it closes
// the GeoIP database.
func (r *Router) Run(ctx context.Context) {
	t := time.NewTicker(routerPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if db := r.geo.Swap(nil); db != nil {
				db.Close()
			}
			return
		case <-t.C:
			r.watchMu.Lock()
			r.reload(&r.watch)
			r.watchMu.Unlock()
		}
	}
}

// fileWatch is what reload last saw of the files.
type fileWatch struct{ plan, geo os.FileInfo }

// reload loads whichever file changed since w.
func (r *Router) reload(w *fileWatch) {
	if fi, err := os.Stat(r.planPath); err == nil && fileChanged(w.plan, fi) {
		w.plan = fi
		_ = r.reloadPlan() // logged
	}
	if r.geoPath == "" {
		return
	}
	db, fi, err := geoip.OpenIfChanged(r.geoPath, w.geo)
	switch {
	case err != nil:
		if fi2, err2 := os.Stat(r.geoPath); err2 == nil && fileChanged(w.geo, fi2) {
			w.geo = fi2 // log a bad file once
			r.log.Error("geoip database changed but cannot be read; keeping the old one", "err", err)
		}
	case db != nil:
		w.geo = fi
		if old := r.geo.Swap(db); old != nil {
			old.Close()
		}
		r.log.Info("geoip database reloaded", "db", db.Info())
	}
}

// Reload re-reads the plan file and the GeoIP database (if any) now,
// whether or not they changed, as a SIGHUP asks: each one that loads is
// put in place, each one that does not is logged and the one in use kept.
// Flows already open keep their source; a client's GeoIP country is looked
// up again at its next handshake. It returns the files it reloaded
// ("egress-plan", "geoip") and the errors of those it kept. Run need not
// be running; Reload and Run's polls do not overlap.
func (r *Router) Reload() (reloaded []string, err error) {
	r.watchMu.Lock()
	defer r.watchMu.Unlock()
	fi, statErr := os.Stat(r.planPath)
	if perr := r.reloadPlan(); perr != nil {
		err = perr
	} else {
		reloaded = append(reloaded, "egress-plan")
	}
	if statErr == nil {
		r.watch.plan = fi // Run's next poll need not load it again
	}
	if r.geoPath == "" {
		return reloaded, err
	}
	gfi, statErr := os.Stat(r.geoPath)
	db, gerr := geoip.Open(r.geoPath)
	if gerr != nil {
		r.log.Error("geoip database cannot be read; keeping the old one", "file", r.geoPath, "err", gerr)
		return reloaded, errors.Join(err, fmt.Errorf("--geoip: %w", gerr))
	}
	if statErr == nil {
		r.watch.geo = gfi
	}
	if old := r.geo.Swap(db); old != nil {
		old.Close()
	}
	r.log.Info("geoip database reloaded", "file", r.geoPath, "db", db.Info())
	return append(reloaded, "geoip"), err
}

// reloadPlan loads the plan file, which changed (or a SIGHUP asks), and
// takes it if it is valid and still has this node's data center.
func (r *Router) reloadPlan() error {
	p, err := LoadPlan(r.planPath)
	if err != nil {
		r.log.Error("egress plan changed but is not valid; keeping the old one", "err", err)
		return err
	}
	if _, ok := p.DataCenter(r.dc); !ok {
		r.log.Error("egress plan changed and lost this node's data center; keeping the old one", "dc", r.dc)
		return fmt.Errorf("egress plan %s: this node's data center %q is not in it", r.planPath, r.dc)
	}
	r.plan.Store(p)
	r.log.Info("egress plan reloaded", "file", r.planPath, "addresses", len(p.Addrs4(r.dc)))
	r.warnDefaults(p)
	r.mu.Lock()
	f := r.onReload
	r.mu.Unlock()
	if f != nil {
		f()
	}
	return nil
}

func fileChanged(old, cur os.FileInfo) bool {
	return old == nil || !os.SameFile(old, cur) || old.ModTime() != cur.ModTime() || old.Size() != cur.Size()
}

// SetOnReload sets what runs after a new plan is in place (in Run's
// goroutine); nil for nothing.
func (r *Router) SetOnReload(f func()) {
	r.mu.Lock()
	r.onReload = f
	r.mu.Unlock()
}

// OnHandshake records client c's tags: its pool (else RouterConfig.Pool)
// and country override, else the GeoIP country of src, the address it
// handshook from. The node calls it before the handshake's response
// leaves.
func (r *Router) OnHandshake(c Client, src netip.AddrPort) {
	var geo string
	if db := r.geo.Load(); db != nil {
		geo, _ = db.Country(src.Addr())
	}
	t := r.tagsOf(c, geo)
	if t.country == "" {
		r.noCountry.Add(1)
	}
	r.store(c, t)
}

// OnTags applies a registration's changed tags to a client that has
// handshaken here, at once: its next flows leave from addresses with the
// new tags; flows already open keep their source. The country of its
// handshake address stays what an empty country override falls back to.
// A client not seen yet gets its tags at its handshake.
func (r *Router) OnTags(c Client) {
	for _, a := range []netip.Addr{c.V4, c.V6} {
		if v, ok := r.tags.Load(a); ok && a.IsValid() {
			r.tags.Store(a, r.tagsOf(c, v.(clientTags).geo))
		}
	}
}

// tagsOf is client c's tags with geo the country of its handshake address.
func (r *Router) tagsOf(c Client, geo string) clientTags {
	t := clientTags{pool: r.pool, country: c.Country, key: c.Key, geo: geo}
	if c.Pool != "" {
		t.pool = c.Pool
	}
	if t.country == "" {
		t.country = geo
	}
	return t
}

func (r *Router) store(c Client, t clientTags) {
	if c.V4.IsValid() {
		r.tags.Store(c.V4, t)
	}
	if c.V6.IsValid() {
		r.tags.Store(c.V6, t)
	}
}

// Tags are what a flow's source is chosen by: the client's country (its
// registration's override, else the GeoIP country of the address it
// handshook from; "" when neither), its pool, and a key that spreads
// clients over a pool's addresses (the ClientID). A relayed flow carries
// its client's country and pool to the exit (server/relay).
type Tags struct {
	Country, Pool string
	Key           uint32
}

// TagsOf returns the tags of the client at inner address client, and
// whether it has handshaken here (if not: the node's pool, no country).
func (r *Router) TagsOf(client netip.Addr) (Tags, bool) {
	t, ok := r.lookup(client)
	return Tags{Country: t.country, Pool: t.pool, Key: t.key}, ok
}

func (r *Router) lookup(client netip.Addr) (clientTags, bool) {
	v, ok := r.tags.Load(client)
	t, _ := v.(clientTags)
	if !ok {
		s := client.AsSlice()
		if len(s) < 4 {
			return clientTags{pool: r.pool}, false
		}
		t = clientTags{pool: r.pool, key: binary.BigEndian.Uint32(s[len(s)-4:])}
	}
	return t, ok
}

// Route picks the source of a flow of the client at inner address client
// to dst (a Config.Route). A client not seen handshaking here (none should
// send without one) gets no country: its pool's default.
func (r *Router) Route(client netip.Addr, dst netip.AddrPort) (Source, error) {
	t, _ := r.lookup(client)
	return r.route(t, dst)
}

// RouteTags picks the source of a flow with tags t to dst: a flow relayed
// here, whose client is another data center's. An empty pool is the
// node's (RouterConfig.Pool); the plan's fallbacks apply as to Route.
func (r *Router) RouteTags(t Tags, dst netip.AddrPort) (Source, error) {
	ct := clientTags{country: t.Country, pool: t.Pool, key: t.Key}
	if ct.pool == "" {
		ct.pool = r.pool
	}
	return r.route(ct, dst)
}

func (r *Router) route(t clientTags, dst netip.AddrPort) (Source, error) {
	p := r.plan.Load()
	if dst.Addr().Unmap().Is4() {
		ch, err := p.Select4(t.country, t.pool, r.dc, t.key)
		if err != nil {
			r.noEgress.Add(1)
			return Source{}, err
		}
		lo, hi, err := p.Slice(r.slot)
		if err != nil {
			r.noEgress.Add(1)
			return Source{}, fmt.Errorf("%w: %w", ErrNoEgress, err)
		}
		r.countFallback(ch)
		return Source{Addr: ch.Addr, PortLo: lo, PortHi: hi}, nil
	}
	ch, err := p.Select6(t.country, t.pool, r.dc, r.slot, t.key)
	if err != nil {
		r.noEgress.Add(1)
		return Source{}, err
	}
	r.countFallback(ch)
	// The /64 is the node's by a local route: IPv6 bind wants free bind.
	return Source{Addr: addrIn64(ch.Net, t.key), FreeBind: true}, nil
}

// DNSSource is where the node's DNS queries to dst (the upstream) leave
// from: an address tagged with the data center's own country, not a
// client's, so that resolvers and CDNs see where the traffic really leaves
// and answer for there. The pool is RouterConfig.Pool; fallbacks apply.
func (r *Router) DNSSource(dst netip.AddrPort) (Source, error) {
	p := r.plan.Load()
	dc, _ := p.DataCenter(r.dc)
	if dst.Addr().Unmap().Is4() {
		ch, err := p.Select4(dc.Country, r.pool, r.dc, 0)
		if err != nil {
			return Source{}, err
		}
		lo, hi, err := p.Slice(r.slot)
		if err != nil {
			return Source{}, fmt.Errorf("%w: %w", ErrNoEgress, err)
		}
		return Source{Addr: ch.Addr, PortLo: lo, PortHi: hi}, nil
	}
	ch, err := p.Select6(dc.Country, r.pool, r.dc, r.slot, 0)
	if err != nil {
		return Source{}, err
	}
	return Source{Addr: addrIn64(ch.Net, 0), FreeBind: true}, nil
}

func (r *Router) countFallback(ch Choice) {
	switch ch.Fallback {
	case CountryFallback:
		r.fallbackCountry.Add(1)
	case PoolFallback:
		r.fallbackPool.Add(1)
	case DataCenterFallback:
		r.fallbackDC.Add(1)
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

// ValidTags refuses registration tags the plan never serves: a pool it
// has no address in, or a country it has no address in.
func (r *Router) ValidTags(pool, country string) error {
	hasCountry, hasPool := r.plan.Load().Serves(country, pool)
	switch {
	case !hasPool:
		return fmt.Errorf("the egress plan has no address in pool %q", pool)
	case !hasCountry:
		return fmt.Errorf("the egress plan has no address in country %s", country)
	}
	return nil
}

// OwnAddrs are every IPv4 egress address of the plan, which inner flows
// may not reach (Config.Own).
func (r *Router) OwnAddrs() []netip.Addr {
	p := r.plan.Load()
	var out []netip.Addr
	for _, dc := range p.DataCenters() {
		out = append(out, p.Addrs4(dc)...)
	}
	return out
}

// Stats is the status report's egress_plan section.
func (r *Router) Stats() map[string]any {
	n := 0
	r.tags.Range(func(any, any) bool { n++; return true })
	return map[string]any{
		"dc": r.dc, "slot": r.slot, "addresses": len(r.plan.Load().Addrs4(r.dc)),
		"inner_addresses_tagged": n, "no_country": r.noCountry.Load(),
		"fallback_country": r.fallbackCountry.Load(), "fallback_pool": r.fallbackPool.Load(), "fallback_dc": r.fallbackDC.Load(),
		"no_egress": r.noEgress.Load(), "geoip": r.geo.Load() != nil,
	}
}
