package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"time"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/egress/geoip"
	"github.com/wedge-edge/wedge/netstack"
	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/registry"
)

var _ netstack.Dialer = (*egress.Dialer)(nil)

// egressParts are the node's egress: the dialer every flow leaves by and,
// with --egress-plan, the router that picks its source.
type egressParts struct {
	router  *egress.Router // nil without --egress-plan
	dialer  *egress.Dialer
	clients *clientIndex // the budgets' ClientOf, filled once the node is up
}

// startEgress opens the egress plan (if any), keeps it and the GeoIP
// database up to date until ctx ends, and builds the dialer.
func startEgress(ctx context.Context, c *config, s *settings, member *cluster.Membership, observe func(net.Conn, netip.AddrPort)) (*egressParts, error) {
	// The node's own addresses the ACL must deny even if they are on no
	// interface: the advertised endpoints and the API.
	own := []netip.Addr{s.apiAddr.Addr()}
	for _, e := range s.endpoints {
		if ap, err := netip.ParseAddrPort(e); err == nil {
			own = append(own, ap.Addr())
		}
	}
	eg := &egressParts{clients: &clientIndex{}}
	var route func(netip.Addr, netip.AddrPort) (egress.Source, error)
	if c.egressPlan != "" {
		// Slots come with the cluster's membership; a node alone is slot 1.
		slot := uint8(1)
		if member != nil {
			slot = member.Self().Slot
		}
		r, err := openRouter(c, slot, s.log.With("component", "egress-plan"))
		if err != nil {
			return nil, err
		}
		go r.Run(ctx)
		own = append(own, r.OwnAddrs()...)
		eg.router, route = r, r.Route
	}
	var err error
	eg.dialer, err = egress.New(egress.Config{
		Sources: s.sources, PortLo: s.portLo, PortHi: s.portHi, Allow: s.allow, Own: own, Route: route, Logger: s.log.With("component", "egress"),
		UDPPortShare: c.budget.udpPortShare(), ClientOf: eg.clients.of,
		ObserveTCP: observe,
	})
	if err != nil {
		return nil, err
	}
	guardInfra(ctx, eg.dialer.ACL(), infraStatic(ctx, c, s), member)
	return eg, nil
}

// openRouter loads --egress-plan and --geoip into the node's egress router.
func openRouter(c *config, slot uint8, log *slog.Logger) (*egress.Router, error) {
	p, err := egress.LoadPlan(c.egressPlan)
	if err != nil {
		return nil, err
	}
	if _, ok := p.DataCenter(c.dc); !ok {
		return nil, fmt.Errorf("--egress-plan %s: this node's data center %q (--dc) is not in it (it has %v)", c.egressPlan, c.dc, p.DataCenters())
	}
	var db *geoip.DB
	if c.geoip != "" {
		if db, err = geoip.Open(c.geoip); err != nil {
			return nil, fmt.Errorf("--geoip: %w", err)
		}
	}
	r, err := egress.NewRouter(egress.RouterConfig{Plan: p, PlanFile: c.egressPlan, GeoIP: db, GeoIPFile: c.geoip,
		DC: c.dc, Slot: slot, Pool: c.egressPool, Logger: log})
	if err != nil && db != nil {
		db.Close()
	}
	return r, err
}

// dnsDial is netstack.Config.DNSDial: with an egress plan, the node's DNS
// queries leave from the router's DNS source; without, nil (the default).
func (eg *egressParts) dnsDial() func(context.Context, string, netip.AddrPort) (net.Conn, error) {
	r := eg.router
	if r == nil {
		return nil
	}
	return func(ctx context.Context, network string, dst netip.AddrPort) (net.Conn, error) {
		src, err := r.DNSSource(dst)
		if err != nil {
			return nil, err
		}
		return eg.dialer.DialNode(ctx, network, src, dst)
	}
}

// hook has the device tell the router of handshakes and tag changes, and
// vet registrations' tags against the plan.
func (eg *egressParts) hook(cfg *server.Config) {
	r := eg.router
	if r == nil {
		return
	}
	cfg.OnHandshake = func(c registry.Client, src netip.AddrPort) { r.OnHandshake(routerClient(c), src) }
	cfg.OnTags = func(c registry.Client) { r.OnTags(routerClient(c)) }
	cfg.ValidTags = func(t registry.Tags) error { return r.ValidTags(t.Pool, t.Country) }
}

// routerClient is c as the egress router knows it.
func routerClient(c registry.Client) egress.Client {
	return egress.Client{V4: c.V4, V6: c.V6, Key: uint32(c.ClientID), Pool: c.Tags.Pool, Country: c.Tags.Country}
}

// infraStatic is the part of the cluster's infrastructure (egress.Infra)
// that flags name: the etcd endpoints' addresses (host names resolved
// now), the DNS upstream, and the GUE port when this node has a front or
// a cluster.
func infraStatic(ctx context.Context, c *config, s *settings) egress.Infra {
	var in egress.Infra
	if s.dnsUp.IsValid() {
		in.DNS = []netip.AddrPort{s.dnsUp}
	}
	if c.xdp != "" || c.etcd != "" {
		in.Ports = []uint16{uint16(c.guePort)}
	}
	if c.etcd == "" {
		return in
	}
	endpoints, err := cluster.ParseEndpoints(c.etcd)
	if err != nil {
		return in // joinCluster has refused them already
	}
	for _, e := range endpoints {
		host := e
		if u, err := url.Parse(e); err == nil && u.Host != "" {
			host = u.Host
		}
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if a, err := netip.ParseAddr(host); err == nil {
			in.Etcd = append(in.Etcd, a)
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
		cancel()
		if err != nil {
			s.log.Warn("egress ACL: etcd endpoint not resolved; clients are not kept from its addresses", "endpoint", e, "err", err)
		}
		in.Etcd = append(in.Etcd, addrs...)
	}
	return in
}

// guardInfra puts the cluster's infrastructure into the egress ACL: the
// static part and, in a cluster, every member's underlay, updated on each
// membership change until ctx ends. A member that leaves stays denied:
// its address is still the cluster's.
func guardInfra(ctx context.Context, acl *egress.ACL, static egress.Infra, member *cluster.Membership) {
	if member == nil {
		acl.SetInfra(static)
		return
	}
	seen := map[netip.Addr]bool{}
	cancel := member.Subscribe(func(ms []cluster.Member) {
		acl.SetInfra(withMembers(static, seen, ms))
	})
	context.AfterFunc(ctx, cancel)
}

// withMembers is static plus the underlays of ms and of every member in
// seen, which it adds ms to. Calls are not concurrent (Subscribe).
func withMembers(static egress.Infra, seen map[netip.Addr]bool, ms []cluster.Member) egress.Infra {
	for _, m := range ms {
		if m.Underlay.IsValid() {
			seen[m.Underlay] = true
		}
	}
	in := static
	in.Members = make([]netip.Addr, 0, len(seen))
	for a := range seen {
		in.Members = append(in.Members, a)
	}
	return in
}
