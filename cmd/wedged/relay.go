package main

// WARP+ smart routing (--relay): the node's relay listener, which dials
// the origin for flows other data centers' nodes relay here (the exit),
// and the dialer that sends this node's plus clients' TCP flows through
// another data center when the path table finds that faster (the
// entry). server/relay is the transport, server/paths the table; this
// file joins them to the egress and the netstack.

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/internal/ratelog"
	"github.com/wedge-edge/wedge/netstack"
	"github.com/wedge-edge/wedge/server/cluster"
	"github.com/wedge-edge/wedge/server/paths"
	"github.com/wedge-edge/wedge/server/relay"
)

// relayKeepalive is the Exit-Tcp-Keepalive-Duration a relayed flow asks
// for: the exit's connection to the origin probes after this long idle,
// as a direct flow's does (egress: 15 s).
const relayKeepalive = 15 * time.Second

// relayListen parses --relay: the address the listener binds and the one
// published for the other data centers (an unspecified IP is published as
// the node's underlay address).
func relayListen(c *config, member *cluster.Membership) (listen, publish netip.AddrPort, err error) {
	if c.relay == "" {
		return listen, publish, nil
	}
	if member == nil {
		return listen, publish, errors.New("--relay needs a cluster (--etcd): it carries flows between data centers")
	}
	listen, err = netip.ParseAddrPort(c.relay)
	if err != nil || listen.Port() == 0 {
		return listen, publish, fmt.Errorf("--relay %q: want ip:port (0.0.0.0:PORT listens on all and publishes --underlay's address)", c.relay)
	}
	publish = listen
	if listen.Addr().IsUnspecified() {
		publish = netip.AddrPortFrom(member.Self().Underlay, listen.Port())
	}
	return listen, publish, nil
}

// relayParts are the node's relay: the listener and server (exit), the
// client (entry), and which data center each exit address is in (for the
// path table's hooks).
type relayParts struct {
	server *relay.Server
	client *relay.Client
	ln     net.Listener
	exits  sync.Map // exit relay address → its data center
	done   chan struct{}
}

// startRelay starts the exit's listener on listen and the entry's client.
// Nil without --relay.
func startRelay(listen netip.AddrPort, key wgtypes.Key, nodeID string, eg *egressParts, table *paths.Table, log *slog.Logger) (*relayParts, error) {
	if !listen.IsValid() || table == nil {
		return nil, nil
	}
	creds, err := relay.NewCredentials(key, nodeID)
	if err != nil {
		return nil, fmt.Errorf("--relay: %w", err)
	}
	lim := &ratelog.Limiter{}
	logf := func(format string, args ...any) {
		if n, ok := lim.Allow(format); ok {
			log.Info(fmt.Sprintf(format, args...), "suppressed", n)
		}
	}
	srv, err := relay.NewServer(relay.ServerConfig{Credentials: creds, Dial: exitDial(eg), Logf: logf})
	if err != nil {
		return nil, fmt.Errorf("--relay: %w", err)
	}
	r := &relayParts{server: srv, done: make(chan struct{})}
	obs := table.Observer()
	r.client, err = relay.NewClient(relay.ClientConfig{
		Credentials: creds,
		Logf:        logf,
		OnRTT: func(exit string, rtt time.Duration) {
			if dc, ok := r.exits.Load(exit); ok {
				obs.ObserveDC(dc.(string), rtt)
			}
		},
		OnDown: func(exit string) {
			if dc, ok := r.exits.Load(exit); ok {
				obs.DCDown(dc.(string))
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("--relay: %w", err)
	}
	if r.ln, err = net.Listen("tcp", listen.String()); err != nil {
		r.client.Close()
		return nil, fmt.Errorf("--relay: %w", err)
	}
	go func() {
		defer close(r.done)
		if err := srv.Serve(r.ln); err != nil && !errors.Is(err, net.ErrClosed) {
			log.Error("relay listener stopped", "err", err)
		}
	}()
	log.Info("relay listening", "addr", r.ln.Addr().String())
	return r, nil
}

// close drains the exit (open relayed flows get up to 5 s) and closes the
// entry's connections.
func (r *relayParts) close() {
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.server.Shutdown(ctx)
	r.server.Close()
	<-r.done
	r.client.Close()
}

// exitDial is the exit's relay.DialFunc: the flow leaves through this
// node's egress as its own clients' do (ACL, port slice), from an address
// with the client's country and pool (the egress plan's choice for those
// tags; without a plan, --egress's). The origin's address spreads relayed
// clients over a pool's addresses as the ClientID spreads local ones.
func exitDial(eg *egressParts) relay.DialFunc {
	return func(ctx context.Context, dst netip.AddrPort, tags relay.Tags, keepalive time.Duration) (net.Conn, error) {
		var route func(netip.AddrPort) (egress.Source, error)
		if r := eg.router; r != nil {
			h := fnv.New32a()
			b := dst.Addr().As16()
			h.Write(b[:])
			t := egress.Tags{Country: tags.Country, Pool: tags.Pool, Key: h.Sum32()}
			route = func(dst netip.AddrPort) (egress.Source, error) { return r.RouteTags(t, dst) }
		}
		c, err := eg.dialer.DialTCPFor(ctx, route, dst)
		if err != nil {
			if errors.Is(err, egress.ErrDenied) {
				return nil, fmt.Errorf("%w: %w", relay.ErrDenied, err)
			}
			return nil, err
		}
		if err := relay.SetKeepalive(c, keepalive); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// plusDialer is the netstack's Dialer with WARP+: a TCP flow of a plus
// client (Node.Plus: plus and within its quota) goes through the exit the
// path table picks for its destination, falling back to direct within a
// second when the exit is down, refuses or is slow (relay.Client); every
// other flow, UDP and ping go direct.
type plusDialer struct {
	netstack.Dialer // the egress: direct
	table           *paths.Table
	relay           *relayParts
	// plus reports whether the client at an inner address has the plus
	// tier; tags are its egress tags (country, pool) for the exit.
	plus func(netip.Addr) bool
	tags func(netip.Addr) relay.Tags
}

var _ netstack.Dialer = (*plusDialer)(nil)

func (d *plusDialer) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	direct := func(ctx context.Context) (net.Conn, error) { return d.Dialer.DialTCP(ctx, src, dst) }
	if !d.plus(src.Addr()) {
		return direct(ctx)
	}
	r := d.table.Route(dst.Addr())
	if !r.Relayed() || r.Relay == "" {
		return direct(ctx)
	}
	d.relay.exits.Store(r.Relay, r.Exit)
	c, _, err := d.relay.client.DialOrDirect(ctx, r.Relay, dst,
		relay.Meta{Tags: d.tags(src.Addr()), Keepalive: relayKeepalive}, direct)
	return c, err
}

// dialer is the netstack's Dialer: plusDialer with a relay, else the
// egress dialer itself.
func (r *relayParts) dialer(eg *egressParts, table *paths.Table) netstack.Dialer {
	if r == nil {
		return eg.dialer
	}
	return &plusDialer{
		Dialer: eg.dialer,
		table:  table,
		relay:  r,
		plus:   eg.clients.plus,
		tags: func(a netip.Addr) relay.Tags {
			if eg.router == nil {
				return relay.Tags{}
			}
			t, _ := eg.router.TagsOf(a)
			return relay.Tags{Country: t.Country, Pool: t.Pool}
		},
	}
}
